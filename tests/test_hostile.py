"""Hostile and careless input (issue 16): every case runs the real CLI or the real stage on a real file.

What holds throughout: bad input exits 2 with one message naming the file (and line, key or row), never a
traceback; an interrupt or failure never exits 0; one bad row is a reject, not a dead build; midtrain deletes
nothing it did not create. Hostile inputs live in tests/fixtures/hostile/ or are generated here when they are
large (a row nested 100,000 deep) or binary (a truncated .gz, a parquet file with a corrupt page).
"""

from __future__ import annotations

import gzip
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import folders
from pipelines.config import load_yaml
from pipelines.data.build import BuildSettings, build
from pipelines.errors import BadInput
from pipelines.run_config import load_recipe, load_run_config
from tests.helpers import prose, sigint_as_from_a_terminal

pytestmark = (
    pytest.mark.integration
)  # the real CLI in subprocesses, interrupted builds, a stand-in Hub server

REPO = Path(__file__).resolve().parent.parent
HOSTILE = REPO / "tests" / "fixtures" / "hostile"
DEMO = REPO / "configs" / "smollm2-135m-demo.yaml"

RECIPE = """\
name: hostile
total_tokens: {tokens}
eval_fraction: 0
allow_shortfall: true
decontamination: {{sets: []}}
near_dedup: {{enabled: false}}
categories:
  text: {{share: 1.0, sources: [{{name: docs, type: local, path: {path}, format: text{extra}}}]}}
"""


def midtrain(*args: str, env: dict[str, str] | None = None, timeout: float = 300, cwd: Path = REPO):
    """The real CLI in a subprocess, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        check=False,
    )


def assert_bad_input(result: subprocess.CompletedProcess, *expected: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout
    for text in expected:
        assert text in result.stderr, result.stderr


def write_docs(path: Path, n: int = 40, extra_lines: list[str] | None = None) -> Path:
    lines = [json.dumps({"text": prose(7000 + i, 80)}) for i in range(n)]
    path.write_text("\n".join([*lines, *(extra_lines or [])]) + "\n", encoding="utf-8")
    return path


def recipe_file(folder: Path, source: Path, tokens: int = 2000, extra: str = "") -> Path:
    path = folder / "recipe.yaml"
    path.write_text(RECIPE.format(tokens=tokens, path=source, extra=extra))
    return path


@pytest.fixture(scope="module")
def settings(embedded_model_dir: Path) -> BuildSettings:
    return BuildSettings(tokenizer=str(embedded_model_dir))


def _rejects(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]


# -- 1. an interrupt never exits 0 ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sig", "code", "line"),
    [
        (
            signal.SIGINT,
            130,
            "interrupted: midtrain data build stopped by Ctrl-C (SIGINT) before it finished",
        ),
        (signal.SIGTERM, 143, "terminated: midtrain data build stopped by SIGTERM before it finished"),
    ],
)
def test_an_interrupted_build_exits_nonzero_says_so_and_leaves_nothing(
    tmp_path: Path, sig: signal.Signals, code: int, line: str
) -> None:
    # The standard library's code: thousands of files, so the build is still ingesting when the signal comes.
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "name: slow\ntotal_tokens: 100000\nallow_shortfall: true\ndecontamination: {sets: []}\n"
        "categories:\n  code: {share: 1.0, sources: [{name: py, type: python_code}]}\n"
    )
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "data", "build", str(recipe), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        preexec_fn=sigint_as_from_a_terminal,
    )
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.build-*/units/*")):  # ingest has begun (a work unit is running)
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert stderr.strip().splitlines()[-1] == line and not stdout
    assert "Traceback" not in stderr and not out.exists()
    assert not list(tmp_path.glob(".out.*")), "the scratch folder of the interrupted build was left behind"


# -- 2. output flags never delete a folder midtrain did not write --------------------------------------------
def _users_folder(root: Path) -> Path:
    (root / "x" / "important").mkdir(parents=True)
    (root / "x" / "important" / "a.txt").write_text("x")
    return root / "x"


def test_data_build_refuses_to_replace_a_folder_it_did_not_write(tmp_path: Path) -> None:
    users = _users_folder(tmp_path)
    recipe = recipe_file(tmp_path, write_docs(tmp_path / "docs.jsonl"))
    result = midtrain("data", "build", str(recipe), "--out", str(users))
    assert_bad_input(result, f"output folder {users}: refusing to replace it", folders.OUTPUT_MARKER)
    assert (users / "important" / "a.txt").read_text() == "x"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no scratch left either


def test_publish_dry_run_refuses_to_replace_a_folder_it_did_not_write(tmp_path: Path) -> None:
    users = _users_folder(tmp_path)
    config = tmp_path / "run.yaml"
    config.write_text(
        f"name: careless\noutput_dir: {tmp_path}/runs\ndata: {{recipe: data_recipes/agentic-v1.yaml}}\n"
    )
    result = midtrain("publish", str(config), "--dry-run", str(users))
    assert_bad_input(result, f"publish folder {users}: refusing to replace it")
    assert (users / "important" / "a.txt").read_text() == "x"


def test_outputs_midtrain_wrote_are_replaced_and_marked(tmp_path: Path, settings: BuildSettings) -> None:
    recipe = load_recipe(recipe_file(tmp_path, write_docs(tmp_path / "docs.jsonl")))
    out = tmp_path / "mix"
    out.mkdir()  # an empty folder holds nothing to lose
    first = build(recipe, out, settings).manifest
    assert folders.is_ours(out) and oct(out.stat().st_mode & 0o777) != "0o700"
    (out / "stray.txt").write_text("left by the user inside midtrain's own output")
    assert build(recipe, out, settings).manifest == first  # ours: replaced, byte-identical manifest
    assert not (out / "stray.txt").exists() and folders.is_ours(out)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_an_output_from_before_markers_is_replaced_only_when_provably_ours(
    tmp_path: Path, settings: BuildSettings
) -> None:
    recipe = load_recipe(recipe_file(tmp_path, write_docs(tmp_path / "docs.jsonl")))
    out = tmp_path / "mix"
    build(recipe, out, settings)
    (out / folders.OUTPUT_MARKER).unlink()  # as a build of an earlier version left it: every file is listed
    build(recipe, out, settings)
    assert folders.is_ours(out)
    (out / folders.OUTPUT_MARKER).unlink()
    (out / "notes.md").write_text("the user's, not in the manifest")
    with pytest.raises(BadInput, match="refusing to replace it"):
        build(recipe, out, settings)
    assert (out / "notes.md").exists() and (out / "manifest.json").exists()


@pytest.mark.parametrize("kind", ["file", "symlink", "foreign"])
def test_every_stage_folder_goes_through_the_same_rule(tmp_path: Path, kind: str) -> None:
    """sft, rl and publish clear their folders with `fresh_output_dir`; it refuses what is not ours."""
    target = tmp_path / "sft" / "tool"
    target.parent.mkdir()
    if kind == "file":
        target.write_text("notes")
    elif kind == "symlink":
        target.symlink_to(_users_folder(tmp_path))
    else:
        target.mkdir()
        (target / "notes.txt").write_text("mine")
    with pytest.raises(BadInput, match="sft output folder"):
        folders.fresh_output_dir(target, "sft output folder")
    assert target.is_symlink() or target.exists()
    assert (tmp_path / "x" / "important" / "a.txt").exists() if kind == "symlink" else True


# -- 3. leftovers of killed runs are cleaned, and only those -------------------------------------------------
def test_stale_build_folders_of_killed_runs_are_removed_on_the_next_build(
    tmp_path: Path, settings: BuildSettings
) -> None:
    out = tmp_path / "mix"
    script = (
        "import os, sys; from pipelines import folders; from pathlib import Path\n"
        "s = folders.scratch_dir(Path(sys.argv[1]), 'mix.build'); (s / 'spill.parquet').write_bytes(b'x' * 4096)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    killed = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO, check=False)
    assert killed.returncode == -9
    stale = next(tmp_path.glob(".mix.build-*"))
    assert (stale / "spill.parquet").exists()
    alive = folders.scratch_dir(tmp_path, "mix.build")  # this process's: still running, so still in use
    users = tmp_path / ".mix.build-mine"  # the same name pattern, but no scratch marker: not provably ours
    users.mkdir()
    (users / "keep.txt").write_text("mine")
    recipe = load_recipe(recipe_file(tmp_path, write_docs(tmp_path / "docs.jsonl")))
    build(recipe, out, settings)
    assert not stale.exists()
    assert alive.exists() and (users / "keep.txt").exists()
    shutil.rmtree(alive)


# -- 4. one bad row is a reject, not a dead build ------------------------------------------------------------
def test_pathological_rows_are_rejects_with_reasons(tmp_path: Path, settings: BuildSettings) -> None:
    deep = '{"text": "deep", "meta": ' + "[" * 100_000 + "]" * 100_000 + "}"
    medium = '{"text": "deep enough to break a recursive consumer", "meta": ' + "[" * 500 + "]" * 500 + "}"
    hostile = (HOSTILE / "bad_rows.jsonl").read_text().splitlines()
    source = write_docs(tmp_path / "docs.jsonl", extra_lines=[deep, medium, *hostile])
    result = build(load_recipe(recipe_file(tmp_path, source)), tmp_path / "out", settings)
    by_line = {
        int(r["row_id"].rsplit(":", 1)[1]): (r["stage"], r["reason"]) for r in _rejects(result.out_dir)
    }
    assert by_line == {
        41: ("read", "too_deeply_nested"),
        42: ("read", "too_deeply_nested"),
        43: ("read", "invalid_number"),
        44: ("read", "lone_surrogate"),
        45: ("read", "invalid_number"),
    }
    assert result.manifest["sources"][0]["rows_clean"] == 40


# -- 5. truncated and corrupt files: exit 2 naming the place, or keep what was read ---------------------------
def _corrupt_parquet(path: Path, rows: list[str]) -> Path:
    pq.write_table(pa.table({"text": rows}), path, row_group_size=10, compression="none")
    meta = pq.ParquetFile(path).metadata
    data = bytearray(path.read_bytes())
    offset = meta.row_group(2).column(0).data_page_offset  # the footer stays intact
    data[offset : offset + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    return path


def test_truncated_gzip_and_corrupt_parquet_exit_2_naming_the_place(
    tmp_path: Path, settings: BuildSettings
) -> None:
    docs = write_docs(tmp_path / "docs.jsonl", n=60)
    data = gzip.compress(docs.read_bytes())
    (tmp_path / "docs.jsonl.gz").write_bytes(data[: len(data) * 2 // 3])
    # Through the CLI: gzip's EOFError used to become typer's silent "abort", exit 130 with a blank line.
    result = midtrain("data", "build", str(recipe_file(tmp_path, tmp_path / "docs.jsonl.gz")), "--out", "o")
    assert_bad_input(result, f"{tmp_path}/docs.jsonl.gz: truncated or corrupt, unreadable after line")
    assert not (REPO / "o").exists()
    texts = [json.loads(line)["text"] for line in docs.read_text().splitlines()]
    recipe = load_recipe(recipe_file(tmp_path, _corrupt_parquet(tmp_path / "docs.parquet", texts)))
    with pytest.raises(
        BadInput, match=r"docs\.parquet: truncated or corrupt, unreadable in row group 2 of 6"
    ):
        build(recipe, tmp_path / "out", settings)
    assert not (tmp_path / "out").exists()


def test_on_truncated_keep_keeps_the_readable_rows_and_records_the_loss(
    tmp_path: Path, settings: BuildSettings
) -> None:
    docs = write_docs(tmp_path / "docs.jsonl", n=60)
    texts = [json.loads(line)["text"] for line in docs.read_text().splitlines()]
    source = _corrupt_parquet(tmp_path / "docs.parquet", texts)
    recipe = load_recipe(recipe_file(tmp_path, source, extra=", on_truncated: keep"))
    result = build(recipe, tmp_path / "out", settings)
    entry = result.manifest["sources"][0]
    assert entry["rows_clean"] == 50  # row groups 0, 1, 3, 4, 5 of 10 rows each
    (lost,) = entry["revision"]["truncated"]
    assert lost["row_id"] == f"{source}[20]" and "row group 2 of 6" in lost["detail"]
    assert [(r["row_id"], r["reason"]) for r in _rejects(result.out_dir)] == [
        (f"{source}[20]", "truncated_file")
    ]
    assert result.manifest["rejects"]["by_reason"] == {"read/truncated_file": 1}


# -- 6. every reject names its row as file:line --------------------------------------------------------------
def test_dedup_and_render_rejects_name_file_and_line_even_when_ids_repeat(
    tmp_path: Path, settings: BuildSettings
) -> None:
    rows = [{"id": "same-id", "text": prose(9000 + i, 80)} for i in range(30)]
    rows.append({"id": "same-id", "text": rows[3]["text"]})  # line 31: a duplicate of line 4, same id too
    rows.append({"id": "same-id", "text": prose(9999, 3000)})  # line 32: too long once tokenized
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = build(load_recipe(recipe_file(tmp_path, source)), tmp_path / "out", settings)
    rejects = {r["row_id"]: r for r in _rejects(result.out_dir)}
    assert set(rejects) == {f"{source}:31", f"{source}:32"}
    duplicate, too_long = rejects[f"{source}:31"], rejects[f"{source}:32"]
    assert (
        duplicate["reason"] == "exact_duplicate"
        and duplicate["detail"] == f"same content as {source}:4 (docs)"
    )
    assert too_long["reason"] == "too_long_tokens" and too_long["trace_id"] == "same-id"


# -- 7. user text is never Rich markup -----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a[/oops].yaml", "[bold red]x.yaml"])
def test_paths_with_markup_are_printed_verbatim(tmp_path: Path, name: str) -> None:
    result = midtrain("config", "show", str(tmp_path / name))
    assert_bad_input(result, f"{tmp_path / name}: file not found")


def test_source_names_with_markup_print_verbatim_in_tables() -> None:
    from rich.console import Console

    from pipelines.data.inspect import _sources_table

    console = Console(record=True, width=200)
    row = {k: 0 for k in ("rows_in", "rows_clean", "rows_out", "tokens_in", "tokens_out", "rejects_total")}
    console.print(
        _sources_table([{**row, "name": "[/oops][red]docs", "category": "text", "epochs_used": 0.0}])
    )
    assert "[/oops][red]docs" in console.export_text()


# -- 8. hostile YAML: fast exit 2 with file:line -------------------------------------------------------------
@pytest.mark.parametrize(
    ("fixture", "message"),
    [
        ("not_utf8.yaml", "not_utf8.yaml:2: not UTF-8 (byte 0xe9)"),
        ("complex_key.yaml", "complex_key.yaml:2: a key must be a plain value"),
        ("duplicate_key.yaml", "duplicate_key.yaml:5: duplicate key 'name' (first at line 1)"),
        ("alias_bomb.yaml", "alias_bomb.yaml:7: YAML aliases expand to more than 100,000 values"),
    ],
)
def test_hostile_yaml_exits_2_fast_with_file_and_line(fixture: str, message: str) -> None:
    started = time.monotonic()
    result = midtrain("config", "show", str(HOSTILE / fixture), timeout=60)
    assert_bad_input(result, message)
    assert time.monotonic() - started < 20  # the alias bomb burned CPU for minutes before


def test_yaml_anchors_and_merge_keys_still_work(tmp_path: Path) -> None:
    path = tmp_path / "anchors.yaml"
    path.write_text(
        "name: anchors\ndata: {recipe: data_recipes/agentic-v1.yaml}\n"
        "sft:\n  train: &train {max_steps: 7, learning_rate: 1.0e-4}\n"
        "rl:\n  train:\n    <<: *train\n    max_steps: 3\n"
    )
    config = load_run_config(path)
    assert (config.sft.train.max_steps, config.rl.train.max_steps) == (7, 3)
    assert config.rl.train.learning_rate == 1.0e-4
    assert load_yaml(path)[1][("rl", "train", "max_steps")] == 8


# -- 9. --set problems are blamed on --set; booleans are not numbers -----------------------------------------
def test_set_problems_name_the_override_not_a_line_of_the_file() -> None:
    result = midtrain("config", "show", str(DEMO), "--set", "nosuch.key=1")
    assert_bad_input(result, "error: --set nosuch.key: nosuch: unknown key")
    assert ".yaml:" not in result.stderr
    with pytest.raises(
        BadInput, match=r"--set sft\.lora\.r: sft\.lora\.r: Input should be a valid integer, got true"
    ):
        load_run_config(DEMO, ["sft.lora.r=true"])
    with pytest.raises(BadInput, match=r"--set sft\.train\.packing: .*valid boolean, got 1"):
        load_run_config(DEMO, ["sft.train.packing=1"])
    with pytest.raises(BadInput, match=r"--set sft\.clusters\.5: sft\.clusters is a list of 2"):
        load_run_config(DEMO, ["sft.clusters.5=code"])
    assert load_run_config(DEMO, ["sft.clusters.1=code"]).sft.clusters == ["tool", "code"]
    with pytest.raises(
        BadInput, match=r"smollm2-135m-demo\.yaml:\d+ \(with --set rl\.num_generations\): rl:"
    ):
        load_run_config(DEMO, ["rl.num_generations=3"])


# -- 10. an unknown model or thought schema is caught by `config show` --------------------------------------
def _config_with(tmp_path: Path, model: str, schema: str = "think-plan-reflect") -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(
        f"name: t\noutput_dir: {tmp_path}/runs\nmodel:\n  name_or_path: {model}\n  thought_schema: {schema}\n"
        "data: {recipe: data_recipes/agentic-v1.yaml}\n"
    )
    return path


def test_unknown_thought_schema_and_embedded_model_fail_config_show(tmp_path: Path) -> None:
    result = midtrain("config", "show", str(_config_with(tmp_path, DEMO_MODEL, "think-plan-reflekt")))
    assert_bad_input(
        result, "run.yaml:5: model.thought_schema: thought schema 'think-plan-reflekt' not found"
    )
    result = midtrain("config", "show", str(_config_with(tmp_path, "embedded:smollm3")))
    assert_bad_input(result, "run.yaml:4: model.name_or_path: unknown embedded model 'smollm3'")


DEMO_MODEL = "embedded:smollm2-135m-instruct"


def test_offline_a_missing_hub_model_cannot_be_checked_and_cannot_be_built(tmp_path: Path) -> None:
    config = _config_with(tmp_path, "org/does-not-exist")
    offline = {"HF_HUB_OFFLINE": "1"}
    shown = midtrain("config", "show", str(config), env=offline)
    assert shown.returncode == 0 and "Traceback" not in shown.stderr
    assert "run.yaml:4: model.name_or_path: not checked" in shown.stderr
    assert "HF_HUB_OFFLINE is set, so it can be neither downloaded nor checked offline" in shown.stderr
    built = midtrain("data", "build", str(config), env=offline)
    assert_bad_input(built, "model 'org/does-not-exist' is not in the local Hugging Face cache")
    assert len(built.stderr.splitlines()) == 1 and not (tmp_path / "runs").exists()


class _HubSaysNotFound(http.server.BaseHTTPRequestHandler):
    """The Hub's answer for a repo that does not exist: 404 with X-Error-Code RepoNotFound."""

    def do_GET(self) -> None:
        self.send_response(404)
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error": "Repository not found"}')

    def log_message(self, *args: object) -> None:
        pass


def test_online_a_hub_model_that_does_not_exist_fails_config_show(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HubSaysNotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {"HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}", "HF_HUB_OFFLINE": "0"}
        result = midtrain("config", "show", str(_config_with(tmp_path, "org/does-not-exist")), env=env)
    finally:
        server.shutdown()
    assert_bad_input(
        result,
        "run.yaml:4: model.name_or_path: model 'org/does-not-exist' does not exist on the Hugging Face Hub",
    )


# -- 11. garbage artifacts and read-only folders: exit 2 with the file named ---------------------------------
def test_garbage_router_json_exits_2_naming_it(tmp_path: Path) -> None:
    router = tmp_path / "router"
    router.mkdir()
    shutil.copy(HOSTILE / "router_truncated.json", router / "router.json")  # a write cut short
    assert_bad_input(midtrain("route", str(router), "hello"), f"{router}/router.json:1: malformed JSON")
    (router / "router.json").write_bytes(bytes(range(256)))  # not text at all
    assert_bad_input(midtrain("route", str(router), "hello"), f"{router}/router.json: not UTF-8 text")
    (router / "router.json").write_text(json.dumps({"method": "tfidf", "labels": "tool", "threshold": 0.5}))
    result = midtrain("route", str(router), "hello")
    assert_bad_input(
        result, f"{router}/router.json: labels: Input should be a valid list", "fallback: required key"
    )


def test_manifest_with_a_wrong_field_type_exits_2_naming_file_and_key(
    tmp_path: Path, settings: BuildSettings
) -> None:
    out = build(
        load_recipe(recipe_file(tmp_path, write_docs(tmp_path / "docs.jsonl"))), tmp_path / "out", settings
    )
    manifest = json.loads((out.out_dir / "manifest.json").read_text())
    manifest["mix"]["total_tokens"] = "many"
    manifest["files"] = ["train-00000.parquet"]
    (out.out_dir / "manifest.json").write_text(json.dumps(manifest))
    for command in (["data", "inspect"], ["data", "verify"]):
        result = midtrain(*command, str(out.out_dir))
        assert_bad_input(
            result,
            f"{out.out_dir}/manifest.json: mix.total_tokens: Input should be a valid integer, got 'many'",
            f"{out.out_dir}/manifest.json: files: Input should be a valid dictionary",
        )


def _read_only(folder: Path) -> list[str] | None:
    """A command prefix under which `folder` is read-only: chmod for a normal user; a read-only bind mount in
    a user namespace for root (root writes through any mode bits). None when neither is available."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return []
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], check=False).returncode:
        return None
    return [
        "unshare",
        "-rm",
        "sh",
        "-c",
        f'mount --bind "{folder}" "{folder}" && mount -o remount,bind,ro "{folder}" "{folder}" && exec "$0" "$@"',
    ]


def test_a_read_only_output_folder_exits_2_naming_it(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    prefix = _read_only(folder)
    if prefix is None:
        pytest.skip("no way to make a read-only folder here (root without user namespaces)")
    recipe = recipe_file(tmp_path, write_docs(tmp_path / "docs.jsonl"))
    result = subprocess.run(
        [
            *prefix,
            sys.executable,
            "-m",
            "pipelines.cli",
            "data",
            "build",
            str(recipe),
            "--out",
            str(folder / "out"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        check=False,
    )
    folder.chmod(0o755)
    assert_bad_input(result, f"output folder {folder}: cannot write in {folder} (read-only or no permission)")
