"""The mix as a standard dataset, outside midtrain: TRL's `SFTTrainer` trains on its `messages`/`tools` columns;
`midtrain publish` stages it as a Hub dataset repo (card, lockfile, shards) next to the adapters; and
`midtrain data build --from-hub` rebuilds that repo byte for byte. huggingface_hub's and datasets' real code
paths run against tests/hub_standin.py serving the dry-run folder (no Hub here)."""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines import publish
from pipelines.artifacts import EvalResults
from pipelines.data import build as data_build
from pipelines.errors import BadInput
from pipelines.run_config import RunConfig
from tests.helpers import make_adapter
from tests.hub_standin import DatasetRepo, HubStandIn

RECIPE = {
    "name": "mixds",
    "seed": 0,
    "total_tokens": 9000,
    "eval_fraction": 0.2,
    "max_seq_len": 2048,
    "decontamination": {"sets": []},
    "categories": {
        "tool": {
            "share": 0.6,
            "sources": [{"name": "gen", "type": "generated", "domains": ["calculator"], "n": 16, "seed": 0}],
        },
        "text": {
            "share": 0.4,
            "sources": [{"name": "docs", "type": "pydoc_text", "max_chunk_chars": 3000}],
        },
    },
}
REPO = "acme/mixds-data"
REPO_ROOT = Path(__file__).resolve().parents[1]


def _config(root: Path, **publish_section: object) -> RunConfig:
    return RunConfig.model_validate(
        {
            "name": "mixds",
            "output_dir": str(root / "runs"),
            "model": {"name_or_path": "embedded:smollm2-135m-instruct"},
            "data": {"recipe": RECIPE},
            "publish": publish_section,
            "tracking": {"report_to": ["none"]},
        }
    )


@pytest.fixture(scope="module")
def run(
    tmp_path_factory: pytest.TempPathFactory, embedded_model_dir: Path, tiny_model_dir: Path
) -> RunConfig:
    """A run whose mix is built from inputs any machine has (generated traces, Python's docs) with the embedded
    model's tokenizer, plus an adapter and eval results, so publish has everything to stage."""
    config = _config(tmp_path_factory.mktemp("mixds"))
    data_build.run(config)
    make_adapter(tiny_model_dir, config.run_dir / "sft" / "tool", seed=1)
    targets = {"sft/tool": {"bfcl": {"simple_python": 0.5, "irrelevance": 1.0, "overall": 0.75, "n": 4}}}
    EvalResults(model="tiny", limit=2, targets=targets, skipped={}, seconds={}).write(config.run_dir / "eval")
    return config


def test_sft_trainer_trains_on_the_messages_and_tools_columns(run: RunConfig, tiny_model_dir: Path) -> None:
    """TRL tokenizes `messages` + `tools` itself (the rendered columns dropped): with the mix's chat template it
    gets exactly the mix's `input_ids`, and it trains on them."""
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    mix = datasets.load_dataset("parquet", data_dir=str(run.run_dir / "data"))
    assert sorted(mix) == ["train", "validation"]
    tool_rows = mix["train"].filter(lambda row: row["kind"] == "tool")
    assert tool_rows.num_rows >= 3
    args = SFTConfig(
        output_dir=str(run.run_dir / "trl"),
        max_steps=2,
        per_device_train_batch_size=1,
        learning_rate=1e-3,
        logging_steps=1,
        max_length=None,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
    )
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
        train_dataset=tool_rows.select_columns(["messages", "tools"]),
        args=args,
    )
    assert trainer.train_dataset["input_ids"] == tool_rows["input_ids"]
    output = trainer.train()
    assert output.global_step == 2 and math.isfinite(output.training_loss)


def test_a_dry_run_publish_stages_the_mix_as_a_dataset_repo(run: RunConfig, tmp_path: Path) -> None:
    plan = publish.run(run, dry_run_dir=tmp_path / "out")
    assert plan.datasets == ["your-username/midtrain-mixds-data"] and not plan.skipped
    folder = tmp_path / "out" / "midtrain-mixds-data"
    data = run.run_dir / "data"
    listed = set(data_build.mf.read_manifest(data)["files"])
    assert {"README.md", "rejects.jsonl", "train-00000.parquet", "validation-00000.parquet"} <= listed
    assert {p.name for p in folder.iterdir()} == listed | {"manifest.json", "mix.png"}
    for name in listed | {"manifest.json"}:
        assert (folder / name).read_bytes() == (data / name).read_bytes(), name
    card = (tmp_path / "out" / "midtrain-mixds-sft-tool" / "README.md").read_text()
    assert yaml.safe_load(card.split("---\n", 2)[1])["datasets"] == ["your-username/midtrain-mixds-data"]


def test_a_mix_that_reads_local_files_is_not_published_and_says_why(run: RunConfig, tmp_path: Path) -> None:
    """A lockfile naming this machine's files (here: a local tokenizer folder) rebuilds nowhere else: `auto`
    leaves the mix out with the reason, `always` refuses."""
    from pipelines.run_config import PublishSection

    manifest_path = run.run_dir / "data" / "manifest.json"
    saved = manifest_path.read_text()
    local = saved.replace('"tokenizer": "embedded:smollm2-135m-instruct"', f'"tokenizer": "{tmp_path}"', 1)
    assert local != saved
    manifest_path.write_text(local)
    try:
        plan = publish.run(run, dry_run_dir=tmp_path / "auto")
        assert plan.datasets == [] and "the tokenizer (a local folder" in plan.skipped["data"]
        always = run.model_copy(update={"publish": PublishSection(dataset="always")})
        with pytest.raises(BadInput, match="publish.dataset is `always`.*tokenizer"):
            publish.run(always, dry_run_dir=tmp_path / "always")
    finally:
        manifest_path.write_text(saved)


@pytest.fixture
def hub(tmp_path: Path):
    with HubStandIn() as hub:
        yield hub


def cli(hub: HubStandIn, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in its own process, with the Hub at the stand-in (HF_ENDPOINT is read at import time)."""
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    command = [sys.executable, "-m", "pipelines.cli", *args]
    return subprocess.run(
        command, capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=600, check=False
    )


def _commit(folder: Path) -> tuple[str, dict[str, bytes]]:
    files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
    files[".gitattributes"] = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"
    return hashlib.sha1(b"".join(files.values())).hexdigest(), files


LOAD = """
import sys, datasets
mix = datasets.load_dataset(sys.argv[1])
tool = next(row for row in mix["train"] if row["kind"] == "tool")
print(sorted(mix), mix["train"].num_rows, type(tool["messages"][0]).__name__)
"""


def test_data_build_from_hub_rebuilds_the_published_repo_byte_for_byte(
    run: RunConfig, hub: HubStandIn, tmp_path: Path
) -> None:
    publish.run(run, dry_run_dir=tmp_path / "out")
    sha, files = _commit(tmp_path / "out" / "midtrain-mixds-data")
    tampered = dict(files, **{"validation-00000.parquet": files["train-00000.parquet"]})
    repo = DatasetRepo()
    repo.commit(sha, files, "main")
    repo.commit(hashlib.sha1(b"tampered").hexdigest(), tampered, "tampered")
    hub.repos[REPO] = repo

    rebuilt = cli(hub, tmp_path, "data", "build", "--from-hub", REPO, "--out", str(tmp_path / "rebuilt"))
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert f"rebuilt {REPO} into {tmp_path / 'rebuilt'}: identical" in rebuilt.stdout
    for name in (
        "README.md",
        "manifest.json",
        "rejects.jsonl",
        "train-00000.parquet",
        "validation-00000.parquet",
    ):
        assert (tmp_path / "rebuilt" / name).read_bytes() == files[name], name
    assert f"/datasets/{REPO}/resolve/{sha}/manifest.json" in hub.paths_asked()

    tampered_run = cli(
        hub,
        tmp_path,
        "data",
        "build",
        "--from-hub",
        REPO,
        "--revision",
        "tampered",
        "--out",
        str(tmp_path / "t"),
    )
    assert tampered_run.returncode == 1, tampered_run.stderr[-3000:]
    assert "differs: validation-00000.parquet" in tampered_run.stdout
    assert "1 file(s) differ" in tampered_run.stderr

    # On the Hub the repo is a dataset like any other: `load_dataset(REPO)` reads the splits from the card.
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf")}
    loaded = subprocess.run(
        [sys.executable, "-c", LOAD, REPO], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.split()[:2] == ["['train',", "'validation']"] and loaded.stdout.split()[-1] == "dict"


@pytest.mark.integration
def test_from_hub_input_errors_exit_2(hub: HubStandIn, tmp_path: Path) -> None:
    hub.repos["acme/not-a-mix"] = DatasetRepo()
    hub.repos["acme/not-a-mix"].commit("a" * 40, {"data.csv": b"x\n"}, "main")
    missing = cli(hub, tmp_path, "data", "build", "--from-hub", "acme/missing")
    assert missing.returncode == 2 and "dataset repo not found" in missing.stderr
    foreign = cli(
        hub, tmp_path, "data", "build", "--from-hub", "acme/not-a-mix", "--out", str(tmp_path / "o")
    )
    assert foreign.returncode == 2 and "no manifest.json: not a mix" in foreign.stderr
    neither = cli(hub, tmp_path, "data", "build")
    assert neither.returncode == 2 and "give a CONFIG, or --from-hub REPO" in neither.stderr
