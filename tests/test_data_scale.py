"""The data build distributed: sources cut into work units, run by the local executor with 1 or 4 worker
processes and by datatrove's local multi-task executor, give the same bytes (mix, shards, rejects,
lockfile); dedup and decontamination stay global across units; reading a source in parts reads what reading
it whole reads; the cross-unit near-dedup equals the sequential datasketch rule."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.data.build import BuildSettings, build, compare_dirs
from pipelines.data.clean import NearDeduper, word_hashes
from pipelines.data.dedup import resolve_duplicates
from pipelines.data.plan import ExecutorSettings, plan_parts, plan_units
from pipelines.data.readers import read_local, read_part, read_source
from pipelines.errors import BadInput, MidtrainError
from pipelines.recipe import LocalSource, NearDedup, Recipe
from tests.helpers import planted_docs, planted_tools, prose, sigint_as_from_a_terminal

UNIT_MB = 0.004  # ~4 KB units: the small corpus below becomes dozens of units

RECIPE = {
    "name": "scale-mix",
    "seed": 3,
    "total_tokens": 40_000,
    "eval_fraction": 0.1,
    "max_seq_len": 2048,
    "shard_rows": 20,
    "allow_shortfall": True,
    "decontamination": {"sets": ["bfcl"]},
    "categories": {
        "tool": {"share": 0.5, "sources": [{"name": "tools", "type": "local", "format": "trace"}]},
        "code": {"share": 0.2, "sources": [{"name": "code", "type": "local", "format": "text"}]},
        "text": {
            "share": 0.3,
            "sources": [
                {"name": "docs", "type": "local", "format": "text"},
                {"name": "more-docs", "type": "local", "format": "text", "text_field": "body"},
            ],
        },
    },
}


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Planted problems of test_data_build, plus duplicates that land in other units than their originals:
    the last docs repeat early ones exactly and nearly, and `more-docs` (a parquet file of many row groups)
    repeats a doc of `docs`."""
    folder = tmp_path_factory.mktemp("scale")
    _jsonl(folder / "tools.jsonl", planted_tools())
    docs = planted_docs()
    docs.append({"id": "late-exact", "text": docs[2]["text"].replace(" ", "  ")})
    docs.append({"id": "late-near", "text": docs[3]["text"] + " Then it ended."})
    _jsonl(folder / "docs.jsonl", docs)
    code = folder / "code"
    for i in range(12):
        (code / f"pkg{i % 3}").mkdir(parents=True, exist_ok=True)
        body = "\n".join(
            f"def f_{i}_{j}(x):\n    return x * {j} + {i}  # {prose(i * 50 + j, 12)}" for j in range(8)
        )
        (code / f"pkg{i % 3}" / f"mod{i}.py").write_text(body + "\n", encoding="utf-8")
    more = [{"id": f"m{i}", "body": prose(900 + i, 150)} for i in range(30)]
    more.append({"id": "cross-source-dup", "body": docs[5]["text"]})
    pq.write_table(pa.Table.from_pylist(more), folder / "more.parquet", row_group_size=4)
    return folder


def _recipe(corpus: Path) -> Recipe:
    data = json.loads(json.dumps(RECIPE))
    paths = {"tools": "tools.jsonl", "code": "code", "docs": "docs.jsonl", "more-docs": "more.parquet"}
    for cat in data["categories"].values():
        for src in cat["sources"]:
            src["path"] = str(corpus / paths[src["name"]])
    return Recipe.model_validate(data)


@pytest.fixture(scope="module")
def settings(embedded_model_dir: Path) -> BuildSettings:
    return BuildSettings(tokenizer=str(embedded_model_dir))


@pytest.fixture(scope="module")
def whole(corpus: Path, settings: BuildSettings) -> tuple[Path, dict]:
    """The reference: every source one unit, one process."""
    result = build(_recipe(corpus), corpus / "whole", settings)
    return result.out_dir, result.manifest


@pytest.mark.integration
def test_units_workers_and_datatrove_tasks_build_identical_bytes(
    corpus: Path, settings: BuildSettings, whole: tuple[Path, dict]
) -> None:
    recipe = _recipe(corpus)
    units = plan_units(recipe, {}, ExecutorSettings(unit_mb=UNIT_MB).unit_bytes)
    by_source = {
        name: sum(u.source == name for u in units) for name in ("tools", "code", "docs", "more-docs")
    }
    assert all(n >= 3 for n in by_source.values()), by_source  # every source really is cut into parts
    runs = {
        "1 worker": (1, ExecutorSettings(unit_mb=UNIT_MB)),
        "4 workers": (4, ExecutorSettings(unit_mb=UNIT_MB)),
        "datatrove 4 tasks, 2 at a time": (
            1,
            ExecutorSettings(kind="datatrove", unit_mb=UNIT_MB, tasks=4, workers=2),
        ),
    }
    reference, manifest = whole
    for label, (num_proc, executor) in runs.items():
        out = corpus / label.replace(" ", "-").replace(",", "")
        build(recipe, out, settings, num_proc=num_proc, executor=executor)
        result = compare_dirs(reference, out)
        assert result.identical, (label, result)
        assert {"manifest.json", "rejects.jsonl", "train-00000.parquet"} <= set(result.compared)
        assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())
    assert manifest["mix"]["total_tokens"] > 20_000


@pytest.mark.integration
def test_ray_local_cluster_builds_identical_bytes(
    corpus: Path, settings: BuildSettings, whole: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """datatrove's Ray executor on a Ray cluster of this machine (`ray.init()` starts one: the multi-node path,
    one node) builds the bytes of one process. Needs Ray (`make test-ray` installs it); CI runs datatrove's
    local executor above instead."""
    ray = pytest.importorskip("ray")
    from datatrove.executor.ray import RayPipelineExecutor

    ranks_sent: list[int] = []
    submit = RayPipelineExecutor.run
    monkeypatch.setattr(
        RayPipelineExecutor, "run", lambda self: ranks_sent.append(self.world_size) or submit(self)
    )
    # A new cluster, never one this machine already runs; two CPUs and a small object store: the units' outputs
    # are files, nothing large goes through Ray.
    ray.init(address="local", num_cpus=2, object_store_memory=100 * 2**20, include_dashboard=False)
    try:
        out = corpus / "ray-4-tasks"
        build(_recipe(corpus), out, settings, executor=ExecutorSettings(kind="ray", unit_mb=UNIT_MB, tasks=4))
    finally:
        ray.shutdown()
    # The build handed its units to Ray's executor as 4 ranks (that they ran there, the bytes below show).
    assert ranks_sent == [4]
    result = compare_dirs(whole[0], out)
    assert result.identical, result
    assert {"manifest.json", "rejects.jsonl", "train-00000.parquet"} <= set(result.compared)


@pytest.mark.integration
def test_ray_multi_node_cluster_builds_identical_bytes(
    corpus: Path, settings: BuildSettings, whole: tuple[Path, dict]
) -> None:
    """The multi-node path with Ray's own local multi-node cluster (`ray.cluster_utils.Cluster`: a head and
    two more nodes, each its own raylet, object store and worker processes, as `ray start --address` makes them
    on other machines). The head offers no CPU, as a head node often does, so every task runs on another node
    than the driver's and its results come back as files in the work folder (shared here by being one machine).
    Needs Ray (`make test-ray`)."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    small = {"object_store_memory": 80 * 2**20, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, **small})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1, **small)
        ray.init(address=cluster.address)
        cluster.wait_for_nodes()
        nodes = [n for n in ray.nodes() if n["Alive"]]
        assert sorted(n["Resources"].get("CPU", 0) for n in nodes) == [0, 1, 1]
        out = corpus / "ray-3-nodes"
        build(_recipe(corpus), out, settings, executor=ExecutorSettings(kind="ray", unit_mb=UNIT_MB, tasks=4))
    finally:
        ray.shutdown()
        cluster.shutdown()
    result = compare_dirs(whole[0], out)
    assert result.identical, result
    assert {"manifest.json", "rejects.jsonl", "train-00000.parquet"} <= set(result.compared)


def _slurm_settings(**extra: str) -> dict:
    """`data.executor.slurm` for the test cluster: one core per task, so the 2-core node runs two at once."""
    partition = os.environ.get("MIDTRAIN_TEST_SLURM_PARTITION", "local")
    return {"partition": partition, "time": "00:10:00", "cpus_per_task": 1, "mem_per_cpu_gb": 2} | extra


def _slurm_queue() -> str:
    """This user's jobs still in the queue, pending or running."""
    for _ in range(20):  # a cancelled array leaves the queue within seconds
        queue = subprocess.run(["squeue", "--noheader", "--me"], capture_output=True, text=True, check=True)
        if not queue.stdout.strip():
            return ""
        time.sleep(0.5)
    return queue.stdout


def _slurm_cluster_answers() -> bool:
    if not shutil.which("sbatch"):
        return False
    answer = subprocess.run(["sinfo", "--noheader"], capture_output=True, text=True, check=False)
    return answer.returncode == 0 and bool(answer.stdout.strip())


@pytest.mark.integration
def test_slurm_job_array_builds_identical_bytes(
    corpus: Path, settings: BuildSettings, whole: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """datatrove's Slurm executor submits the units as a job array with sbatch to a real Slurm cluster
    (`make test-slurm` starts a one-node one from scripts/slurm_local_cluster.sh) and the driver waits on
    squeue: the bytes of one process. Skipped where no Slurm cluster answers, as in CI."""
    if not _slurm_cluster_answers():
        pytest.skip("no Slurm cluster answers sinfo (make test-slurm starts one on this machine)")
    from pipelines.data import executors

    monkeypatch.setattr(executors, "SLURM_POLL_SECONDS", 1)
    seen: dict = {}
    wait = executors._wait_for_slurm

    def watched(
        executor, job_ids: list[str], work: Path, logs: Path
    ) -> None:  # before a good build removes it
        wait(executor, job_ids, work, logs)
        seen["jobs"] = list(job_ids)
        seen["completed"] = sorted(p.name for p in (logs / "completions").iterdir())
        seen["script"] = (logs / "launch_script.slurm").read_text(encoding="utf-8")

    monkeypatch.setattr(executors, "_wait_for_slurm", watched)
    out = corpus / "slurm-4-tasks"
    slurm = _slurm_settings()
    build(
        _recipe(corpus),
        out,
        settings,
        executor=ExecutorSettings(kind="slurm", unit_mb=UNIT_MB, tasks=4, slurm=slurm),
    )
    # The units ran as the 4 array tasks of one Slurm job, each marked complete by datatrove, in this
    # interpreter's environment (sbatch passed on a PATH without it: the venv is not activated under pytest).
    assert seen["completed"] == ["00000", "00001", "00002", "00003"], seen
    # One job: the array (datatrove's stats-merge job, queued `afterok` on it, is not submitted).
    assert len(seen["jobs"]) == 1
    assert _slurm_queue() == "", _slurm_queue()
    assert "#SBATCH --array=0-3" in seen["script"]
    assert f"export PATH={Path(sys.executable).parent}:$PATH" in seen["script"]
    assert not (corpus / "slurm-4-tasks.executor-logs").exists()  # a good build keeps no logs
    result = compare_dirs(whole[0], out)
    assert result.identical, result
    assert {"manifest.json", "rejects.jsonl", "train-00000.parquet"} <= set(result.compared)


@pytest.mark.integration
def test_slurm_tasks_that_cannot_start_fail_the_build_and_keep_their_logs(
    corpus: Path, settings: BuildSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The array's tasks die before running a unit (here: an environment line that hides datatrove's launcher,
    the failure a real cluster showed before `driver_environment`): the driver sees the job leave the queue,
    fails with exit 1 and the logs folder it names, which holds Slurm's own output of the tasks."""
    if not _slurm_cluster_answers():
        pytest.skip("no Slurm cluster answers sinfo (make test-slurm starts one on this machine)")
    from pipelines.data import executors

    monkeypatch.setattr(executors, "SLURM_POLL_SECONDS", 1)
    out = corpus / "slurm-broken-env"
    slurm = _slurm_settings(env_command="export PATH=/usr/bin:/bin")
    with pytest.raises(MidtrainError) as failure:
        build(
            _recipe(corpus),
            out,
            settings,
            executor=ExecutorSettings(kind="slurm", unit_mb=UNIT_MB, tasks=2, slurm=slurm),
        )
    logs = corpus / "slurm-broken-env.executor-logs"
    assert not isinstance(failure.value, BadInput)
    assert "left the queue with tasks unfinished" in str(failure.value)
    assert str(logs) in str(failure.value)
    task_output = "".join(p.read_text(encoding="utf-8") for p in (logs / "slurm_logs").glob("*.out"))
    assert "launch_pickled_pipeline" in task_output, task_output
    assert not out.exists()
    assert not list(corpus.glob(".slurm-broken-env.build-*"))  # the work folder went, the logs stayed


@pytest.mark.integration
def test_a_slurm_job_sbatch_refuses_is_exit_2(corpus: Path, settings: BuildSettings) -> None:
    """A partition the cluster does not have: sbatch refuses the array; a user error, not a traceback."""
    if not _slurm_cluster_answers():
        pytest.skip("no Slurm cluster answers sinfo (make test-slurm starts one on this machine)")
    slurm = _slurm_settings(partition="no-such-partition")
    with pytest.raises(BadInput, match=r"sbatch refused the data build's job array"):
        build(_recipe(corpus), corpus / "slurm-refused", settings,
              executor=ExecutorSettings(kind="slurm", unit_mb=UNIT_MB, tasks=2, slurm=slurm))  # fmt: skip
    assert not (corpus / "slurm-refused").exists()
    assert _slurm_queue() == ""


@pytest.mark.integration
def test_an_interrupted_slurm_build_cancels_its_job(
    corpus: Path, settings: BuildSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while the driver waits: the job array is cancelled (its tasks would write into a work folder the
    build removes), the interrupt propagates, nothing is left queued."""
    if not _slurm_cluster_answers():
        pytest.skip("no Slurm cluster answers sinfo (make test-slurm starts one on this machine)")
    from pipelines.data import executors

    jobs: list[str] = []

    def interrupted(executor, job_ids: list[str], work: Path, logs: Path) -> None:
        jobs.extend(job_ids)
        raise KeyboardInterrupt

    monkeypatch.setattr(executors, "_wait_for_slurm", interrupted)
    slurm = _slurm_settings()
    with pytest.raises(KeyboardInterrupt):
        build(
            _recipe(corpus),
            corpus / "slurm-interrupted",
            settings,
            executor=ExecutorSettings(kind="slurm", unit_mb=UNIT_MB, tasks=4, slurm=slurm),
        )
    assert len(jobs) == 1
    state = subprocess.run(["scontrol", "show", "job", jobs[0]], capture_output=True, text=True, check=False)
    assert "JobState=CANCELLED" in state.stdout, state.stdout + state.stderr
    assert not (corpus / "slurm-interrupted").exists()
    assert _slurm_queue() == "", _slurm_queue()  # nothing left pending behind the array either


@pytest.mark.integration
def test_shards_written_a_row_group_at_a_time_are_the_bytes_of_the_whole_shard_written_at_once(
    corpus: Path, settings: BuildSettings, whole: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write step holds one output row group, not one shard: with 7-row row groups each 20-row shard is
    gathered from three buckets (one shard per pass over the spill here), and its bytes equal the same rows
    written in one call (the old way, and what a lockfile recorded before); the mix is the reference build's."""
    from pipelines.data import build as build_module

    monkeypatch.setattr(build_module, "OUTPUT_ROW_GROUP", 7)
    monkeypatch.setattr(build_module, "MAX_OPEN_BUCKETS", 4)  # one shard per pass over the spill
    out = build(_recipe(corpus), corpus / "row-groups", settings).out_dir
    reference, _ = whole
    for shard in sorted(reference.glob("*.parquet")):  # the same rows in the same order, row groups aside
        assert pq.read_table(out / shard.name).equals(pq.read_table(shard)), shard.name
    shards = sorted(out.glob("*.parquet"))
    assert len(shards) >= 3
    for shard in shards:
        file = pq.ParquetFile(shard)
        sizes = [file.metadata.row_group(i).num_rows for i in range(file.num_row_groups)]
        assert all(n == 7 for n in sizes[:-1]) and 0 < sizes[-1] <= 7, (shard.name, sizes)
        once = corpus / "once.parquet"
        with pq.ParquetWriter(once, build_module.OUTPUT_SCHEMA, **build_module.PARQUET_OPTIONS) as writer:
            writer.write_table(file.read().combine_chunks(), row_group_size=7)
        assert once.read_bytes() == shard.read_bytes(), shard.name


@pytest.mark.integration
def test_dedup_and_decontamination_are_global_across_units(whole: tuple[Path, dict]) -> None:
    out, manifest = whole
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    by_id = {r.get("trace_id"): r for r in rejects}
    assert (
        by_id["late-exact"]["reason"] == "exact_duplicate"
        and "docs.jsonl:3 (docs)" in by_id["late-exact"]["detail"]
    )
    assert (
        by_id["late-near"]["reason"] == "near_duplicate"
        and "docs.jsonl:4 (docs)" in by_id["late-near"]["detail"]
    )
    cross = by_id["cross-source-dup"]
    assert cross["reason"] == "exact_duplicate" and cross["row_id"].endswith("more.parquet[30]")
    assert by_id["bfcl-planted"]["reason"] == "contaminated:bfcl"
    assert (
        by_id["dup-of-t0"]["reason"] == "exact_duplicate" and by_id["near-t1"]["reason"] == "near_duplicate"
    )
    rows_in = sum(s["rows_in"] for s in manifest["sources"])
    kept = sum(s["rows_clean"] for s in manifest["sources"])
    assert rows_in == kept + len(rejects) == kept + manifest["rejects"]["total"]


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["local", "datatrove"])
def test_a_bad_row_in_a_worker_is_exit_2_naming_the_file(
    corpus: Path, settings: BuildSettings, kind: str
) -> None:
    """Local workers and datatrove's tasks alike: exit 2 naming the file; the scratch folder goes; datatrove's
    logs stay beside the output, named in the message, and the next build replaces them."""
    broken = corpus / "broken.jsonl.gz"
    broken.write_bytes(gzip.compress(b'{"id": "x", "text": "hello"}\n' * 50)[:-20])
    data = json.loads(json.dumps(RECIPE))
    data["categories"] = {
        "text": {
            "share": 1.0,
            "sources": [{"name": "b", "type": "local", "path": str(broken), "format": "text"}],
        }
    }
    out = corpus / f"broken-out-{kind}"
    executor = ExecutorSettings(kind=kind, unit_mb=UNIT_MB, workers=2)
    for _ in range(2):  # the second build finds the first one's logs and replaces them
        with pytest.raises(BadInput, match=r"broken.jsonl.gz: truncated or corrupt") as failure:
            build(Recipe.model_validate(data), out, settings, num_proc=2, executor=executor)
    assert not out.exists()
    assert not list(corpus.glob(f".{out.name}.build-*"))  # the scratch folder is gone too
    logs = corpus / f"{out.name}.executor-logs"
    if kind == "local":
        assert not logs.exists()
    else:
        assert f"(the executor's logs are kept in {logs})" in str(failure.value)
        assert list((logs / "logs").glob("task_*.log"))


def test_a_folder_in_the_way_of_the_executor_logs_is_refused_untouched(
    corpus: Path, settings: BuildSettings
) -> None:
    """datatrove's executors keep their logs in `<out>.executor-logs`: a folder of that name that is not such a
    logs folder (the user's, even empty, or another midtrain output) stops the build before any work, as it is."""
    from pipelines import folders

    out = corpus / "logs-in-the-way"
    logs = corpus / "logs-in-the-way.executor-logs"
    executor = ExecutorSettings(kind="datatrove", unit_mb=UNIT_MB, workers=2)
    cases = {"user files": {"notes.txt": "mine"}, "empty": {}}
    for label, files in cases.items():
        logs.mkdir()
        for name, text in files.items():
            (logs / name).write_text(text, encoding="utf-8")
        with pytest.raises(BadInput, match=r"is not one of its logs folders"):
            build(_recipe(corpus), out, settings, executor=executor)
        assert sorted(p.name for p in logs.iterdir()) == sorted(files), label
        assert not out.exists()
        shutil.rmtree(logs)
    logs.mkdir()
    folders.mark(logs, "output folder")  # another midtrain output that happens to have the name
    with pytest.raises(BadInput, match=r"is not one of its logs folders"):
        build(_recipe(corpus), out, settings, executor=executor)
    assert (logs / folders.OUTPUT_MARKER).is_file()


# -- reading in parts ----------------------------------------------------------------------------------------
def _part_rows(source: LocalSource, unit_bytes: int) -> list[tuple[str, object]]:
    parts = plan_parts(source, None, unit_bytes)
    assert len(parts) > 1
    return [row for part in parts for row in read_part(source, part)]


def test_jsonl_parts_keep_line_numbers_blank_lines_bom_and_bad_rows(tmp_path: Path) -> None:
    lines = ['\ufeff{"id": "first"}'] + [json.dumps({"id": f"r{i}", "pad": "x" * (i % 7)}) for i in range(40)]
    lines[9] = ""  # a blank line is skipped, not a row
    lines[17] = "{not json"
    path = tmp_path / "rows.jsonl"
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    source = LocalSource(name="s", type="local", path=str(path))
    assert _part_rows(source, 97) == list(read_local(source))


def test_parquet_and_document_parts_read_what_the_whole_source_reads(tmp_path: Path) -> None:
    table = pa.Table.from_pylist([{"id": f"p{i}", "text": prose(i, 30)} for i in range(25)])
    pq.write_table(table, tmp_path / "rows.parquet", row_group_size=3)
    source = LocalSource(name="p", type="local", path=str(tmp_path / "rows.parquet"))
    assert _part_rows(source, 500) == list(read_local(source))
    docs = tmp_path / "docs"
    for i in range(9):
        (docs / f"d{i % 2}").mkdir(parents=True, exist_ok=True)
        (docs / f"d{i % 2}" / f"f{i}.txt").write_text(prose(i, 40), encoding="utf-8")
    text = LocalSource(name="t", type="local", path=str(docs), format="text")
    assert _part_rows(text, 600) == list(read_local(text))


def test_hub_dataset_parts_are_index_ranges_with_the_same_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.data import plan
    from pipelines.data.readers import read_hf
    from pipelines.recipe import HFSource

    folder = tmp_path / "ds"
    folder.mkdir()
    pq.write_table(
        pa.Table.from_pylist([{"text": prose(i, 10), "n": i} for i in range(23)]), folder / "train.parquet"
    )
    monkeypatch.setattr(plan, "HF_PART_ROWS", 5)
    source = HFSource(name="h", type="hf", dataset=str(folder), revision="main", format="text")
    parts = plan_parts(source, None, 1)
    assert [(p["start"], p["stop"]) for p in parts] == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]
    assert [row for part in parts for row in read_part(source, part)] == list(read_hf(source))
    capped = source.model_copy(update={"max_rows": 12})
    parts = plan_parts(capped, None, 1)
    assert [(p["start"], p["stop"]) for p in parts] == [(0, 5), (5, 10), (10, 12)]
    assert [row for part in parts for row in read_part(capped, part)] == list(read_source(capped))


# -- the global near-dedup rule --------------------------------------------------------------------------------
def test_cross_unit_near_dedup_equals_the_sequential_datasketch_rule(tmp_path: Path) -> None:
    """Chains (A~B~C with A !~ C), exact copies and unrelated rows, split into units at random: the global pass
    drops exactly the rows the in-process datasketch LSH drops, naming the same kept row."""
    config = NearDedup(threshold=0.7, num_perm=64)
    rng = random.Random(7)
    base = [prose(2000 + i, 120).split() for i in range(12)]
    texts = []
    for words in base:
        for _ in range(rng.randint(1, 4)):  # drifting variants: each a few words away from the previous one
            texts.append(" ".join(words))
            for _ in range(rng.randint(2, 9)):
                words[rng.randrange(len(words))] = rng.choice(["alpha", "beta", "gamma", "delta", "omega"])
    rng.shuffle(texts)
    reference = NearDeduper(config)
    expected = {}
    for i, text in enumerate(texts):
        verdict = reference.check_and_add(word_hashes(text), str(i))
        if verdict is not None:
            expected[i] = int(verdict.detail.removeprefix("near-duplicate of "))
    assert 5 <= len(expected) < len(texts) - 5  # the fixture exercises both outcomes
    signer = NearDeduper(config)
    cuts = sorted(rng.sample(range(1, len(texts)), 6))
    units = []
    for u, (start, stop) in enumerate(zip([0, *cuts], [*cuts, len(texts)], strict=True)):
        folder = tmp_path / f"u{u}"
        folder.mkdir()
        sigs = [signer.signature_values(word_hashes(t)) for t in texts[start:stop]]
        digests = np.array([[u, i % 256, i // 256] + [0] * 13 for i in range(start, stop)], dtype=np.uint8)
        np.save(folder / "digest.npy", digests)  # all distinct: this test is about near dedup
        np.save(folder / "has_sig.npy", np.ones(stop - start, dtype=bool))
        np.save(folder / "sig.npy", np.stack(sigs))
        units.append((folder, start))
    from pipelines.data.dedup import UnitKeys

    found = resolve_duplicates([UnitKeys(f) for f, _ in units], signer.bands)
    got = {
        start + cand: dup.kept
        for (_, start), dups in zip(units, found, strict=True)
        for cand, dup in dups.items()
    }
    assert got == expected


def test_cli_executor_options_are_checked_before_any_work(
    corpus: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    import yaml

    from pipelines.cli import main

    recipe = corpus / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(corpus).model_dump(mode="json")))
    for options, message in (
        (["--executor", "spark"], "kind"),
        (["--executor", "slurm"], "needs data.executor.slurm.partition"),
        (["--workers", "0"], "workers"),
    ):
        argv = ["midtrain", "data", "build", str(recipe), "--out", str(corpus / "cli-out"), *options]
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as exit_info:
            main()
        assert exit_info.value.code == 2, options
        assert message in capsys.readouterr().err, options
        assert not (corpus / "cli-out").exists()


# -- the executors' processes --------------------------------------------------------------------------------
@pytest.mark.integration
def test_every_data_module_imports_alone_in_a_fresh_process() -> None:
    """A Slurm or Ray task (and a forkserver worker) starts from a fresh interpreter and unpickles the step:
    each module must import first, on its own (ingest and build import each other)."""
    import subprocess
    import sys

    for module in ("ingest", "datatrove_steps", "executors", "build", "plan", "dedup"):
        done = subprocess.run(
            [sys.executable, "-c", f"import pipelines.data.{module}"], capture_output=True, text=True
        )
        assert done.returncode == 0, (module, done.stderr[-2000:])


def test_a_worker_loads_the_drivers_tokenizer_without_importing_torch(
    tmp_path: Path, settings: BuildSettings
) -> None:
    """A process that runs units (a fresh interpreter, as a forkserver worker or a cluster task is) loads the
    tokenizer the driver saved in the work folder, with the class AutoTokenizer chose: the same template,
    response template and token ids, without AutoTokenizer's import of torch (+400 MB of RSS per worker)."""
    from pipelines.chat import chat_encoding
    from pipelines.data import ingest
    from pipelines.data.build import tokenizer_for

    driver = tokenizer_for(settings.tokenizer, settings.chat_template, settings.tokenizer_revision,
                           settings.tool_format)  # fmt: skip
    ingest.write_unit_tokenizer(tmp_path, driver)
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]  # fmt: skip
    messages = [
        {"role": "user", "content": "Weather in Paris, please?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "12 C, rain"},
        {"role": "assistant", "content": "It is 12 C and raining in Paris."},
    ]  # fmt: skip
    script = f"""
import json, sys
from pathlib import Path
import psutil
from pipelines.chat import chat_encoding
from pipelines.data import ingest
from pipelines.data.plan import BuildSettings

settings = BuildSettings(**{dataclasses.asdict(settings)!r})
tokenizer = ingest.unit_tokenizer(Path({str(tmp_path)!r}), settings)
print(json.dumps({{
    "ids": chat_encoding(tokenizer, {messages!r}, tools={tools!r})["input_ids"],
    "template": tokenizer.chat_template,
    "response_template": tokenizer.response_template,
    "pad": tokenizer.pad_token,
    "class": type(tokenizer).__name__,
    "torch": "torch" in sys.modules,
    "auto": "transformers.models.auto.tokenization_auto" in sys.modules,
    "rss_mb": psutil.Process().memory_info().rss / 2**20,
}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    worker = json.loads(done.stdout.strip().splitlines()[-1])
    assert worker["ids"] == chat_encoding(driver, messages, tools=tools)["input_ids"]
    assert (worker["template"], worker["response_template"], worker["pad"], worker["class"]) == (
        driver.chat_template, driver.response_template, driver.pad_token, type(driver).__name__,
    )  # fmt: skip
    assert not worker["torch"] and not worker["auto"], worker
    assert worker["rss_mb"] < 300, worker["rss_mb"]  # AutoTokenizer's path: ~520 MB


@pytest.mark.integration
def test_local_workers_start_from_a_forkserver_and_die_on_terminate() -> None:
    """Never a fork of the threaded driver (a worker forked holding a lock never dies); SIGTERM kills a worker
    even mid-task, and Ctrl-C is left to the driver."""
    import signal
    import time

    from pipelines.data.executors import init_worker, worker_context

    context = worker_context()
    assert context.get_start_method() == "forkserver"
    pool = context.Pool(2, initializer=init_worker)
    try:
        handlers = pool.map(signal.getsignal, [signal.SIGTERM, signal.SIGINT])
        assert handlers == [signal.SIG_DFL, signal.SIG_IGN]
        pool.map_async(time.sleep, [120, 120])
        time.sleep(0.5)  # both workers inside their task
        started = time.monotonic()
    finally:
        pool.terminate()
        pool.join()
    assert time.monotonic() - started < 15


@pytest.mark.integration
def test_a_worker_killed_mid_unit_fails_the_build_saying_how() -> None:
    """A Pool replaces a dead worker and drops its unit: the driver checks its workers while it waits."""
    import signal
    import time

    from pipelines.data.executors import _check_alive, worker_context

    worker = worker_context().Process(target=time.sleep, args=(120,))
    worker.start()
    _check_alive([worker])  # alive: nothing to say
    os.kill(worker.pid, signal.SIGKILL)  # what the kernel's OOM killer sends
    worker.join(15)
    with pytest.raises(MidtrainError, match=r"killed by SIGKILL before its unit finished: out of memory\?"):
        _check_alive([worker])


@pytest.mark.parametrize("ended_with", [-15, 255], ids=["sigterm", "status-lost-to-a-racing-poll"])
def test_an_ambiguous_exit_counts_as_a_death_only_when_the_pool_did_not_cause_it(ended_with: int) -> None:
    """A Pool stops all its workers with SIGTERM once done (or once a rank raised): that is never a death, and
    neither is a clean exit whose status a second poller drained (forkserver reads it as 255). A worker ended
    so from outside is a death once the grace has passed, while its pool runs on with ranks to do."""
    from types import SimpleNamespace

    from pipelines.data.executors import _AMBIGUOUS_EXIT_GRACE_S, _AMBIGUOUS_EXITS, _ambiguous_deaths

    class Ranks:
        def __init__(self, incomplete: list[int] | Exception) -> None:
            self.incomplete = incomplete

        def get_incomplete_ranks(self) -> list[int]:
            if isinstance(self.incomplete, Exception):
                raise self.incomplete
            return self.incomplete

    assert ended_with in _AMBIGUOUS_EXITS
    killed = SimpleNamespace(pid=1, exitcode=ended_with)
    replacement = SimpleNamespace(pid=3, exitcode=None)
    stopped = [killed, SimpleNamespace(pid=2, exitcode=ended_with)]
    at = {1: 100.0, 2: 100.0}
    late = 100.0 + _AMBIGUOUS_EXIT_GRACE_S
    assert _ambiguous_deaths([killed, replacement], at, late, Ranks([1])) == [killed]
    assert _ambiguous_deaths([killed, replacement], at, late - 1, Ranks([1])) == []  # within the grace
    assert _ambiguous_deaths(stopped, at, late, Ranks([1])) == []  # the pool's own stop: nobody left alive
    assert _ambiguous_deaths([killed, replacement], at, late, Ranks([])) == []  # every rank done
    assert _ambiguous_deaths([killed, replacement], at, late, Ranks(OSError("gone"))) == []  # no verdict


@pytest.mark.integration
def test_a_clean_exit_a_second_poller_reads_as_255_is_ambiguous_and_said_so() -> None:
    """The Pool's worker handler and the build's watcher both poll each worker; under forkserver the one that
    reads second sees exit status 255 for a worker that exited 0. 255 is therefore among `_AMBIGUOUS_EXITS` (the
    watcher decides it after the grace), and where a 255 is reported it says the status may have been lost."""
    import threading

    from pipelines.data.executors import _AMBIGUOUS_EXITS, _check_alive, worker_context

    context = worker_context()
    codes = []
    for _ in range(20):
        worker = context.Process(target=int)  # exits 0 at once
        worker.start()
        both = threading.Barrier(2)

        def poll(worker: Any = worker, both: threading.Barrier = both) -> None:
            both.wait()
            while worker.exitcode is None:
                pass

        pollers = [threading.Thread(target=poll) for _ in range(2)]
        for poller in pollers:
            poller.start()
        for poller in pollers:
            poller.join(30)
        codes.append(worker.exitcode)
        if worker.exitcode == 255:
            with pytest.raises(MidtrainError, match="exit status 255: its own exit code, or a status lost"):
                _check_alive([worker])
    assert set(codes) <= {0, 255} and set(codes) - {0} <= _AMBIGUOUS_EXITS, codes


def _start_two_unit_build(tmp_path: Path, executor: str) -> tuple[subprocess.Popen, list[Any]]:
    """`midtrain data build` of two slow units on 2 workers, in its own process group as from a terminal;
    returns once both workers are inside a unit, with the build's process tree at that moment."""
    import psutil

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(  # two units that read the standard library: still running when the signal comes
        "name: slow\ntotal_tokens: 100000\nallow_shortfall: true\ndecontamination: {sets: []}\n"
        "categories:\n  code: {share: 1.0, sources: [{name: a, type: python_code}, {name: b, type: python_code}]}\n"
    )
    command = ["data", "build", str(recipe), "--out", str(tmp_path / "out"), "--num-proc", "2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", *command, "--executor", executor],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal gives it
        preexec_fn=sigint_as_from_a_terminal,
    )
    deadline = time.monotonic() + 180
    while len(list(tmp_path.glob(".out.build-*/units/*"))) < 2:  # both workers are inside a unit
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    return proc, psutil.Process(proc.pid).children(recursive=True)


@pytest.mark.integration
@pytest.mark.parametrize("executor", ["local", "datatrove"])
def test_ctrl_c_on_a_multi_worker_build_leaves_no_process_behind(tmp_path: Path, executor: str) -> None:
    """Ctrl-C reaches the whole process group: the workers ignore it, the driver stops its pool (terminate:
    SIGTERM, the workers' default action) and exits 130; the workers, the forkserver and the scratch folder
    are gone. (A single-process build's SIGINT/SIGTERM: tests/test_hostile.py.)"""
    import signal

    import psutil

    proc, descendants = _start_two_unit_build(tmp_path, executor)
    assert len(descendants) >= 3  # the forkserver and two workers (and the resource tracker)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr + stdout and not (tmp_path / "out").exists()
    _, alive = psutil.wait_procs(descendants, timeout=20)
    assert not alive, [p.cmdline() for p in alive]
    assert not list(tmp_path.glob(".out.*")), "the scratch folder of the interrupted build was left behind"


@pytest.mark.integration
def test_a_datatrove_worker_ended_by_sigterm_fails_the_build(tmp_path: Path) -> None:
    """SIGTERM is also how datatrove's Pool stops its workers when done, so the watcher cannot call every
    SIGTERM a death; one sent from outside mid-unit (an admin's `kill`) left the Pool waiting for the lost rank
    forever. Now: the build fails within seconds, saying so, and leaves no process or scratch folder."""
    import signal

    import psutil

    proc, descendants = _start_two_unit_build(tmp_path, "datatrove")
    # datatrove's workers come from its forkserver (the only processes whose parent is one).
    workers = [p for p in descendants if "forkserver" in " ".join((p.parent() or p).cmdline())]
    assert len(workers) == 2, [p.cmdline() for p in descendants]
    workers[0].send_signal(signal.SIGTERM)
    try:
        stdout, stderr = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:  # how it was before: the Pool waits for the lost rank forever
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the build still waits 90 s after its worker was killed")
    assert proc.returncode not in (0, 130), stderr
    assert f"data worker process {workers[0].pid} was killed by SIGTERM before its unit finished" in stderr
    assert "Traceback" not in stderr + stdout and not (tmp_path / "out").exists()
    _, alive = psutil.wait_procs(descendants, timeout=20)
    assert not alive, [p.cmdline() for p in alive]
    # Nor the worker the Pool started in the killed one's place (not among the descendants seen before).
    deadline = time.monotonic() + 20
    while (left := _process_group(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, [p.cmdline() for p in left]
    assert not list(tmp_path.glob(".out.*"))


def _process_group(pgid: int) -> list[Any]:
    """The live processes of a process group (a test's build runs in its own)."""
    import psutil

    members = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


# -- the billion-token recipe and its commands ----------------------------------------------------------------
def _hub_lengths(monkeypatch: pytest.MonkeyPatch) -> None:
    """Row counts of the order of the Hub datasets' (planning only needs len(); max_rows caps the big ones)."""
    from pipelines.data import readers

    lengths = {
        "Salesforce/xlam-function-calling-60k": 60_000,
        "NousResearch/hermes-function-calling-v1": 1_893,
        "Team-ACE/ToolACE": 11_300,
        "bigcode/the-stack-dedup": 12_962_249,
        "HuggingFaceFW/fineweb-edu": 9_672_101,
    }
    monkeypatch.setattr(readers, "load_hf", lambda spec: range(lengths[spec.dataset]))


def test_the_billion_token_recipe_plans_parallel_units(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.run_config import REPO_ROOT, load_recipe

    _hub_lengths(monkeypatch)
    recipe = load_recipe(REPO_ROOT / "data_recipes" / "agentic-hub-1b.yaml")
    assert recipe.total_tokens == 1_000_000_000
    assert {name: cat.share for name, cat in recipe.categories.items()} == {
        "tool": 0.45,
        "code": 0.25,
        "text": 0.30,
    }
    units = plan_units(recipe, {}, ExecutorSettings().unit_bytes)
    per_source: dict[str, int] = {}
    for unit in units:
        per_source[unit.source] = per_source.get(unit.source, 0) + 1
    assert per_source["fineweb-edu"] == 4  # max_rows 350k: ranges of 100k rows
    assert per_source["the-stack-dedup-python"] == 2
    assert [per_source[f"generated-{i}"] for i in range(32)] == [1] * 32
    generated = [s for _, s in recipe.sources() if s.name.startswith("generated-")]
    assert [s.seed for s in generated] == list(range(32))
    assert sum(s.n for s in generated) == 1_600_000
    assert len({json.dumps(s.cluster_by_pattern, sort_keys=True) for s in generated}) == 1  # the YAML merge
    # 3 tool sets, 32 generated, 2 + 1 code, 4 + 1 text: the array's useful width (docs/data-at-scale.md)
    assert len(units) == 43


def test_the_documented_cluster_commands_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every `midtrain data build` command in docs/data-at-scale.md runs the CLI up to the build call, with
    the executor it says."""
    import shlex
    import sys

    from pipelines.cli import main
    from pipelines.data import build as build_module
    from pipelines.run_config import REPO_ROOT

    text = (REPO_ROOT / "docs" / "data-at-scale.md").read_text(encoding="utf-8").replace("\\\n", " ")
    commands = [line.strip() for line in text.splitlines() if "midtrain data build data_recipes" in line]
    seen: dict[str, dict] = {}

    def fake_build(
        recipe: Recipe, out_dir: Path, num_proc: int = 1, executor: ExecutorSettings | None = None
    ):
        seen[executor.kind] = {"num_proc": num_proc, **executor.model_dump()}
        raise SystemExit(0)

    monkeypatch.setattr(build_module, "build", fake_build)
    for command in commands:
        words = shlex.split(command)
        words = words[words.index("midtrain") :]
        monkeypatch.setattr(sys, "argv", words)
        with pytest.raises(SystemExit) as exit_info:
            main()
        assert exit_info.value.code == 0, command
    assert set(seen) == {"local", "slurm", "ray"}
    assert seen["local"]["num_proc"] == 32
    assert seen["slurm"]["tasks"] == 43 and seen["slurm"]["slurm"]["partition"] == "cpu"
    assert seen["slurm"]["slurm"]["env_command"].startswith("source ")
    assert seen["ray"]["tasks"] == 43
