"""`midtrain data build` end to end on a small corpus with planted problems: byte-exact rebuilds, `verify`,
token shares, every reject counted, the loss mask, and the parquet contract that SFT reads."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.chat import load_tokenizer, render_trace
from pipelines.data.build import OUTPUT_SCHEMA, BuildSettings, build, compare_dirs, run, verify
from pipelines.data.sources import path_sha256
from pipelines.errors import BadInput
from pipelines.hashing import sha256_file
from pipelines.run_config import RunConfig, load_recipe
from pipelines.schema import Trace
from pipelines.thought import load_thought_schema
from tests.helpers import ADD, planted_docs, planted_tools

RECIPE = """\
name: unit-mix
seed: 0
total_tokens: 24000
eval_fraction: 0.1
max_seq_len: 2048
shard_rows: 25
decontamination: {{sets: [bfcl]}}
categories:
  tool:
    share: 0.5
    sources:
      - {{name: tools, type: local, path: {dir}/tools.jsonl, format: trace, cluster_by_pattern: {{sequential: plan}}}}
  code:
    share: 0.2
    sources: [{{name: py, type: python_code, max_rows: 60}}]
  text:
    share: 0.3
    sources: [{{name: docs, type: local, path: {dir}/docs.jsonl, format: text}}]
"""


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    _write_jsonl(folder / "tools.jsonl", planted_tools())
    _write_jsonl(folder / "docs.jsonl", planted_docs())
    (folder / "recipe.yaml").write_text(RECIPE.format(dir=folder))
    return folder


@pytest.fixture(scope="module")
def settings(embedded_model_dir: Path) -> BuildSettings:
    return BuildSettings(tokenizer=str(embedded_model_dir))


@pytest.fixture(scope="module")
def built(corpus: Path, settings: BuildSettings) -> tuple[Path, dict]:
    """Small render batches (8 rows, many in flight) and shard buckets (2 per spill pass) here, defaults
    elsewhere: the byte-exact comparisons below then also show that batching, reject buffering and the
    shuffle's passes do not change the output."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("pipelines.data.build.RENDER_BATCH_ROWS", 8)
        patch.setattr("pipelines.data.build.MAX_OPEN_BUCKETS", 2)
        result = build(load_recipe(corpus / "recipe.yaml"), corpus / "out", settings)
    return result.out_dir, result.manifest


def _rows(folder: Path, prefix: str = "") -> list[dict]:
    files = sorted(folder.glob(f"{prefix}*.parquet"))
    return [row for f in files for row in pq.read_table(f).to_pylist()]


# -- reproducibility -----------------------------------------------------------------------------------------
@pytest.mark.integration
def test_build_twice_gives_identical_bytes(
    corpus: Path, settings: BuildSettings, built: tuple[Path, dict]
) -> None:
    out, _ = built
    again = build(load_recipe(corpus / "recipe.yaml"), corpus / "again", settings).out_dir
    result = compare_dirs(out, again)
    assert result.identical, result
    assert {
        "manifest.json",
        "README.md",
        "rejects.jsonl",
        "train-00000.parquet",
        "validation-00000.parquet",
    } <= set(result.compared)
    assert (out / "mix.png").stat().st_size > 10_000
    assert "timestamp" not in (out / "manifest.json").read_text()


@pytest.mark.integration
def test_verify_reports_identical_then_names_a_tampered_shard(corpus: Path, built: tuple[Path, dict]) -> None:
    out, _ = built
    assert verify(out).identical
    tampered = corpus / "tampered"
    shutil.copytree(out, tampered)
    shard = tampered / "train-00001.parquet"
    table = pq.read_table(shard)
    pq.write_table(table.slice(0, table.num_rows - 1), shard)
    result = verify(tampered)
    assert not result.identical
    assert result.differing == ["train-00001.parquet"] and not result.missing and not result.extra


# -- the mix -------------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_token_shares_within_one_percent(built: tuple[Path, dict]) -> None:
    out, manifest = built
    rows = _rows(out)
    total = sum(r["n_tokens"] for r in rows)
    assert manifest["mix"]["total_tokens"] == total
    assert abs(total - 24_000) <= 0.01 * 24_000
    for category, share in {"tool": 0.5, "code": 0.2, "text": 0.3}.items():
        achieved = sum(r["n_tokens"] for r in rows if r["category"] == category) / total
        assert abs(achieved - share) <= 0.01, (category, achieved)
        assert manifest["mix"]["categories"][category]["share"] == pytest.approx(achieved, abs=1e-6)


@pytest.mark.integration
def test_train_and_eval_never_share_an_id_and_repeats_are_tagged(built: tuple[Path, dict]) -> None:
    out, manifest = built
    train, evals = _rows(out, "train"), _rows(out, "validation")
    assert evals and not {r["id"] for r in train} & {r["id"] for r in evals}
    assert all(r["epoch"] == 0 for r in evals)
    pairs = [(r["id"], r["epoch"]) for r in train]
    assert len(pairs) == len(set(pairs))
    assert manifest["splits"]["train"]["rows"] == len(train)
    assert manifest["splits"]["validation"]["rows"] == len(evals)


@pytest.mark.integration
def test_clusters_follow_the_recipe(built: tuple[Path, dict]) -> None:
    out, _ = built
    for row in _rows(out):
        if row["kind"] == "tool":
            assert row["cluster"] == ("plan" if row["pattern"] == "sequential" else "tool")
            assert row["difficulty"] == 1
        else:
            assert (row["cluster"], row["pattern"], row["difficulty"]) == (row["kind"], "", 0)


# -- rejects -------------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_every_planted_problem_is_rejected_and_counted(built: tuple[Path, dict]) -> None:
    out, manifest = built
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    by_id = {r.get("trace_id") or r["row_id"]: f"{r['stage']}/{r['reason']}" for r in rejects}
    expected = {
        f"{out.parent}/tools.jsonl:81": "schema/undeclared_tool",  # no id yet: the reader's file:line
        "dup-of-t0": "exact_dedup/exact_duplicate",
        "near-t1": "near_dedup/near_duplicate",
        "bfcl-planted": "decontam/contaminated:bfcl",
        "too-long": "render/too_long_tokens",
        "short-doc": "quality/too_short",
        "repeat-doc": "quality/repeated_lines",
        "symbol-doc": "quality/symbol_ratio",
        "digit-doc": "quality/alpha_ratio",
        "dup-doc": "exact_dedup/exact_duplicate",
        "near-doc": "near_dedup/near_duplicate",
    }
    assert {row_id: by_id.get(row_id) for row_id in expected} == expected
    assert all(r["source"] and r["row_id"] and r["stage"] and r["reason"] for r in rejects)
    # Every reject of a local file says where its row is, whatever stage dropped it (ids need not be unique).
    local = {"tools": "tools.jsonl", "docs": "docs.jsonl"}
    for r in rejects:
        if r["source"] in local:
            path, line = r["row_id"].rsplit(":", 1)
            assert path == f"{out.parent}/{local[r['source']]}" and line.isdigit(), r
    counted = Counter(f"{r['stage']}/{r['reason']}" for r in rejects)
    assert manifest["rejects"]["by_reason"] == dict(counted)
    assert manifest["rejects"]["total"] == len(rejects)
    per_source = {s["name"]: s for s in manifest["sources"]}
    for entry in per_source.values():  # nothing is lost: every row read is kept or rejected with a reason
        assert entry["rows_in"] == entry["rows_clean"] + entry["rejects_total"]
        assert entry["rejects_total"] == sum(1 for r in rejects if r["source"] == entry["name"])
    assert per_source["py"]["rejects"].get("render/too_long_tokens", 0) > 0
    assert per_source["tools"]["rejects_total"] == 5 and per_source["docs"]["rejects_total"] == 6
    assert per_source["tools"]["rows_in"] == 85 and per_source["tools"]["rows_clean"] == 80
    kept = {r["id"] for r in _rows(out)}
    assert not kept & set(expected) and "bad-call" not in kept


def test_manifest_pins_sources_tokenizer_and_files(
    built: tuple[Path, dict], embedded_model_dir: Path
) -> None:
    out, manifest = built
    per_source = {s["name"]: s for s in manifest["sources"]}
    assert len(per_source["tools"]["revision"]["sha256"]) == 64
    assert per_source["py"]["revision"]["python"].count(".") == 2
    for entry in per_source.values():
        assert entry["tokens_out"] <= entry["tokens_in"] * entry["max_epochs"] + entry["tokens_in"]
        assert entry["epochs_used"] == pytest.approx(entry["tokens_out"] / entry["tokens_in"], abs=1e-4)
    tok = manifest["tokenizer"]
    assert tok["id"] == str(embedded_model_dir) and len(tok["tokenizer_json_sha256"]) == 64
    assert (
        len(tok["chat_template_sha256"]) == 64 and manifest["thought_schema"]["name"] == "think-plan-reflect"
    )
    assert set(manifest["libraries"]) >= {
        "python",
        "transformers",
        "tokenizers",
        "datasets",
        "pyarrow",
        "datasketch",
    }
    shards = sorted(p.name for p in out.glob("*.parquet"))
    assert sorted(n for n in manifest["files"] if n.endswith(".parquet")) == shards
    for name in shards:
        assert manifest["files"][name]["rows"] == pq.read_metadata(out / name).num_rows
        assert manifest["files"][name]["rows"] <= 25


def test_file_hashes_read_past_one_block_and_a_folder_pin_covers_names(tmp_path: Path) -> None:
    """Hashing streams 1 MiB blocks: a 2 MiB + 7 file hashes like its whole bytes; a folder's pin (local
    sources) covers each file's relative name too, so a rename changes it."""
    blob = random.Random(0).randbytes(2 * (1 << 20) + 7)
    (tmp_path / "a.bin").write_bytes(blob)
    assert sha256_file(tmp_path / "a.bin") == hashlib.sha256(blob).hexdigest()
    assert path_sha256(tmp_path) == hashlib.sha256(b"a.bin\0" + blob).hexdigest()
    (tmp_path / "a.bin").rename(tmp_path / "b.bin")
    assert path_sha256(tmp_path) == hashlib.sha256(b"b.bin\0" + blob).hexdigest()


@pytest.mark.integration
def test_inspect_prints_the_tables_and_writes_the_png(built: tuple[Path, dict], tmp_path: Path) -> None:
    from rich.console import Console

    from pipelines.data.inspect import inspect_dir

    out, _ = built
    copy = tmp_path / "data"
    shutil.copytree(out, copy)
    (copy / "mix.png").unlink()
    console = Console(record=True, width=160)
    png = inspect_dir(copy, console)
    text = console.export_text()
    assert png == copy / "mix.png" and png.stat().st_size > 10_000
    for needle in (
        "token shares by category",
        "token shares by cluster",
        "near_dedup/near_duplicate",
        "tools",
    ):
        assert needle in text


# -- the parquet contract ------------------------------------------------------------------------------------
@pytest.mark.integration
def test_the_folder_loads_as_train_and_validation_with_conversation_columns(built: tuple[Path, dict]) -> None:
    """`load_dataset("parquet", data_dir=...)` infers the splits from the shard names, `load_dataset(folder)`
    reads them from the card's `configs:`; `messages`/`tools` come back as plain dicts, each with its own keys."""
    import datasets

    out, manifest = built
    by_files = datasets.load_dataset("parquet", data_dir=str(out))
    by_card = datasets.load_dataset(str(out))
    for loaded in (by_files, by_card):
        assert sorted(loaded) == ["train", "validation"]
        assert loaded["train"].num_rows == manifest["splits"]["train"]["rows"]
        assert loaded["validation"].num_rows == manifest["splits"]["validation"]["rows"]
        assert loaded["train"].column_names == OUTPUT_SCHEMA.names
    features = by_files["train"].features
    assert (
        features["input_ids"].feature.dtype == "int32" and features["assistant_masks"].feature.dtype == "int8"
    )
    assert features["difficulty"].dtype == "int32" and features["epoch"].dtype == "int32"
    assert type(features["messages"].feature).__name__ == "Json"
    rows = by_files["train"].to_list()
    tool = next(r for r in rows if r["kind"] == "tool" and r["difficulty"])
    roles = [m["role"] for m in tool["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant"] and tool["text"] is None
    assert "tool_calls" not in tool["messages"][1]  # no union of keys: a user turn is role + content
    call = tool["messages"][2]["tool_calls"][0]
    assert call["function"]["name"] == "add" and set(call["function"]["arguments"]) == {"a", "b"}
    assert tool["tools"] == [ADD]
    doc = next(r for r in rows if r["kind"] == "text")
    assert doc["messages"] is None and doc["tools"] is None and len(doc["text"]) > 100
    assert doc["input_ids"][: len(doc["input_ids"]) - 1]  # the text, rendered, plus EOS


def test_messages_and_tools_render_to_the_rows_input_ids(
    built: tuple[Path, dict], embedded_model_dir: Path
) -> None:
    """The conversation columns are what the ids were rendered from: through the mix's tokenizer and codec
    they give the stored `input_ids` again, so another tokenizer can re-render them."""
    from pipelines.chat import codec_for

    out, _ = built
    tokenizer = load_tokenizer(str(embedded_model_dir))
    codec = codec_for(tokenizer)
    tools = [r for r in _rows(out) if r["kind"] == "tool"][:6]
    for row in tools:
        messages = [json.loads(m) for m in row["messages"]]
        offered = [json.loads(t) for t in row["tools"]] if row["tools"] else None
        text = codec.render(tokenizer, messages, offered)
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == row["input_ids"]


@pytest.mark.integration
def test_the_card_describes_the_mix_and_is_pinned_by_the_manifest(built: tuple[Path, dict]) -> None:
    import yaml
    from huggingface_hub import DatasetCard

    out, manifest = built
    card = DatasetCard.load(out / "README.md")
    assert card.data.configs == [
        {
            "config_name": "default",
            "data_files": [
                {"split": "train", "path": "train-*.parquet"},
                {"split": "validation", "path": "validation-*.parquet"},
            ],
        }
    ]
    assert manifest["files"]["README.md"]["sha256"] == sha256_file(out / "README.md")
    text = card.text
    for needle in (
        "| tool | 0.500 |",
        "| tools | local | tool |",
        "midtrain data verify",
        "--from-hub",
        "## Recipe",
    ):
        assert needle in text, needle
    recipe = yaml.safe_load(text.split("```yaml\n", 1)[1].split("```", 1)[0])
    assert recipe == manifest["recipe"]


def test_loss_mask_is_assistant_only_for_tools_and_everything_for_documents(
    built: tuple[Path, dict], embedded_model_dir: Path
) -> None:
    out, _ = built
    tokenizer = load_tokenizer(str(embedded_model_dir))
    schema = load_thought_schema("think-plan-reflect")
    rows = _rows(out)
    tools = [r for r in rows if r["kind"] == "tool"][:5]
    docs = [r for r in rows if r["kind"] != "tool"][:5]
    assert tools and docs
    for row in tools:
        rendered = render_trace(Trace.model_validate_json(row["trace"]), tokenizer, schema)
        assert row["input_ids"] == rendered.input_ids and row["assistant_masks"] == rendered.assistant_masks
        assert 0 < row["n_loss_tokens"] == sum(row["assistant_masks"]) < row["n_tokens"]
        trained = tokenizer.decode(
            [t for t, m in zip(row["input_ids"], row["assistant_masks"], strict=True) if m]
        )
        assert "<tool_call>" in trained and "Please add" not in trained and "You are" not in trained
    for row in docs:
        assert set(row["assistant_masks"]) == {1} and row["n_loss_tokens"] == row["n_tokens"]
        assert row["input_ids"][-1] == tokenizer.eos_token_id


# -- shortfall, rebalancing, processes, run configs ----------------------------------------------------------
SHORT_RECIPE = """\
name: short-mix
total_tokens: 60000
eval_fraction: 0
decontamination: {{sets: []}}
categories:
  tool: {{share: 0.6, sources: [{{name: tools, type: local, path: {dir}/tools.jsonl, format: trace, max_epochs: 1}}]}}
  text: {{share: 0.4, sources: [{{name: docs, type: local, path: {dir}/docs.jsonl, format: text}}]}}
"""


@pytest.mark.integration
def test_shortfall_exits_2_with_the_numbers(
    corpus: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines.cli import main

    recipe = corpus / "short.yaml"
    recipe.write_text(SHORT_RECIPE.format(dir=corpus))
    argv = ["midtrain", "data", "build", str(recipe), "--out", str(corpus / "short-out"), "--set", "seed=1"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "category 'tool' (share 0.6) needs 36,000 tokens" in err
    assert "source 'tools': needs 36,000, available" in err and "max_epochs 1" in err
    assert not (corpus / "short-out").exists()


@pytest.mark.integration
def test_allow_shortfall_rebalances_and_processes_do_not_change_bytes(
    corpus: Path, settings: BuildSettings
) -> None:
    (corpus / "short.yaml").write_text(SHORT_RECIPE.format(dir=corpus))
    recipe = load_recipe(corpus / "short.yaml", ["allow_shortfall=true"])
    one = build(recipe, corpus / "rebalanced", settings)
    mix = one.manifest["mix"]
    tools = next(s for s in one.manifest["sources"] if s["name"] == "tools")
    assert mix["rebalanced"] and any("'tool': target 36,000" in n for n in mix["notes"])
    assert tools["tokens_out"] == pytest.approx(tools["tokens_in"], rel=0.02)  # all of it, once
    assert mix["total_tokens"] == pytest.approx(60_000, rel=0.01)  # text filled the gap
    two = build(recipe, corpus / "rebalanced-2proc", settings, num_proc=2)
    assert compare_dirs(one.out_dir, two.out_dir).identical


@pytest.mark.integration
@pytest.mark.parametrize("executor", ["local", "datatrove"])
def test_a_script_without_the_main_guard_fails_instead_of_waiting_forever(
    corpus: Path, settings: BuildSettings, tmp_path: Path, executor: str
) -> None:
    """Each worker re-imports the calling script: unguarded, its build call kills the worker while it starts,
    and a Pool (ours, or datatrove's) would replace it forever (the build never returned)."""
    out = tmp_path / "out"
    script = tmp_path / "unguarded.py"
    script.write_text(
        textwrap.dedent(f"""\
            from pipelines.data.build import BuildSettings, build
            from pipelines.data.plan import ExecutorSettings
            from pipelines.run_config import load_recipe

            settings = BuildSettings(tokenizer={settings.tokenizer!r})
            build(load_recipe({str(corpus / "recipe.yaml")!r}), {str(out)!r}, settings, num_proc=2,
                  executor=ExecutorSettings(kind={executor!r}))
            """)
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=Path(__file__).parents[1],
    )
    assert done.returncode != 0
    assert "before its unit finished" in done.stderr and 'if __name__ == "__main__":' in done.stderr
    assert not out.exists()


def test_run_config_needs_the_recipe_thought_schema(corpus: Path) -> None:
    config = RunConfig.model_validate(
        {
            "name": "r",
            "model": {"thought_schema": "reflection70b"},
            "data": {"recipe": load_recipe(corpus / "recipe.yaml")},
        }
    )
    with pytest.raises(BadInput, match="model.thought_schema 'reflection70b' differs"):
        run(config)
