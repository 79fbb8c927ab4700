"""`midtrain run`: fingerprints skip finished stages and re-run what a config edit touches; the report renders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines import report
from pipelines import run as pipeline
from pipelines.artifacts import ClusterMetrics, EvalResults, RouterAccuracy, StageMarker
from pipelines.errors import BadInput
from pipelines.run_config import load_run_config
from pipelines.stages import BY_NAME, STAGES
from tests import helpers

DEMO = "configs/smollm2-135m-demo.yaml"
NAMES = [stage.name for stage in STAGES]


def _config(tmp_path: Path, *overrides: str):
    return load_run_config(DEMO, [f"output_dir={tmp_path}", *overrides])


def test_editing_rl_invalidates_rl_and_downstream_only(tmp_path: Path) -> None:
    before = pipeline.fingerprints(_config(tmp_path))
    after = pipeline.fingerprints(_config(tmp_path, "rl.train.max_steps=7"))
    changed = {s for s in NAMES if before[s] != after[s]}
    assert changed == {"rl", "router", "eval", "publish", "report"}
    data_edit = pipeline.fingerprints(_config(tmp_path, "data.num_proc=2"))
    assert {s for s in NAMES if before[s] != data_edit[s]} == set(NAMES)  # all consume data


def _mark_done(config, names) -> None:
    prints = pipeline.fingerprints(config)
    for name in names:
        StageMarker(stage=name, fingerprint=prints[name], wall_s=1.0, peak_rss_mb=10.0).write(
            BY_NAME[name].out_dir(config)
        )


def _plan(config, **kwargs) -> dict[str, bool]:
    return {stage.name: must for stage, must in pipeline.plan(config, **kwargs)}


def test_plan_skips_finished_and_honours_from_and_only(tmp_path: Path) -> None:
    config = _config(tmp_path)
    _mark_done(config, ["data", "sft"])
    plan = _plan(config)
    assert plan["data"] is False and plan["sft"] is False and plan["rl"] is True
    assert _plan(config, start="sft")["sft"] is True
    assert _plan(config, start="sft")["data"] is False
    assert _plan(config, only="data") == {"data": True}
    edited = _config(tmp_path, "sft.train.max_steps=3")
    assert _plan(edited)["sft"] is True and _plan(edited)["data"] is False
    with pytest.raises(BadInput, match="--from 'bogus': not an enabled stage"):
        pipeline.plan(config, start="bogus")


def test_disabled_sections_are_not_planned(tmp_path: Path) -> None:
    config = _config(tmp_path, "publish.enabled=false")
    assert "publish" not in [stage.name for stage in pipeline.enabled_stages(config)]


def test_every_stage_module_has_the_same_face() -> None:
    """Each registered stage's module exposes `run(config)` (extras keyword-only) and returns a typed artifact."""
    import inspect

    for stage in STAGES:
        run = stage.entry()
        params = list(inspect.signature(run).parameters.values())
        assert params[0].name == "config", stage.name
        assert all(p.default is not inspect.Parameter.empty for p in params[1:]), stage.name
        assert inspect.signature(run).return_annotation not in (inspect.Signature.empty, "None"), stage.name


def test_a_malformed_marker_means_not_done_and_says_so(tmp_path: Path, caplog) -> None:
    config = _config(tmp_path)
    _mark_done(config, ["data"])
    folder = BY_NAME["data"].out_dir(config)
    (folder / StageMarker.FILE).write_text(json.dumps({"fingerprint": 3, "wall_s": 1.0, "peak_rss_mb": 2.0}))
    with caplog.at_level("WARNING", logger="midtrain"):
        assert _plan(config)["data"] is True
    assert ".midtrain-stage.json: fingerprint: Input should be a valid string" in caplog.text
    assert "the data stage will run again" in caplog.text


def test_report_renders_every_section_present(tmp_path: Path) -> None:
    config = _config(tmp_path)
    run_dir = config.run_dir
    (run_dir / "data").mkdir(parents=True)
    (run_dir / "data" / "manifest.json").write_text(
        json.dumps(
            helpers.manifest(
                [helpers.source("gen", "generated", {"seed": 0}, 450, rejects_total=1)],
                {"tool": helpers.share(450, 0.45, 0.45)},
                1000,
                by_reason={"near_duplicate": 1},
            )
        )
    )
    RouterAccuracy(
        accuracy=0.95,
        n=20,
        labels=["tool", "plan"],
        label_map={},
        confusion=[[9, 1], [0, 10]],
        per_cluster={"tool": ClusterMetrics(precision=1.0, recall=0.9, f1=0.95, support=10)},
        by_source={},
    ).write(run_dir / "router")
    EvalResults(
        model="m",
        limit=5,
        targets={
            "base": {"bfcl": {"simple_python": 0.1, "n": 5}},
            "sft/tool": {"bfcl": {"simple_python": 0.4}},
        },
        skipped={"rl": "no rl adapters"},
        seconds={},
    ).write(run_dir / "eval")
    _mark_done(config, ["data"])
    out = report.run(config)
    markdown = (run_dir / "report.md").read_text()
    assert "| tool | 450 | 0.450 | 0.450 |" in markdown
    assert "| near_duplicate | 1 |" in markdown
    assert "Held-out routing accuracy 0.950 on 20 requests." in markdown
    assert "| sft/tool | 0.400 |" in markdown and "Skipped rl: no rl adapters" in markdown
    assert f"midtrain run {DEMO}" in markdown
    page = (run_dir / "report.html").read_text()
    tables = sum(line.startswith("| --- |") for line in markdown.splitlines())
    assert page.count("<table>") == tables == 6 and page.endswith("</html>\n")
    assert out.images == []  # no PNGs were written by this fake run


def test_report_shows_example_replies_and_before_after_tables_and_links_raw_json(tmp_path: Path) -> None:
    """Tables and a few truncated example replies per target; RL's before/after as a table; JSON linked, never
    inlined (the old report dumped hundreds of lines of rollouts between the tables)."""
    from pipelines.artifacts import RLSummary

    config = _config(tmp_path)
    run_dir = config.run_dir
    rollout = "<tool_call>\n" + '{"name": "convert", "arguments": {"value": 5}}\n</tool_call>' + "x" * 5000
    before = {
        "outcome": 0.25,
        "format_rate": 0.5,
        "rewards": {"format": 0.4},
        "episodes": [{"completion": rollout}],
    }
    after = {
        "outcome": 0.75,
        "format_rate": 1.0,
        "rewards": {"format": 0.9},
        "episodes": [{"completion": rollout}],
        "sampling": {"samples": 4, "temperature": 0.8, "seed": 1000},
    }
    folder = run_dir / "rl" / "tool"
    RLSummary(
        cluster="tool", start="sft", base_model="m", config_fingerprint="f", steps=2, resumed_from_step=0,
        wall_time_s=1.0, seconds_per_step=0.5, mean_train_loss_this_session=None, final_reward=0.5,
        final_rewards={}, tool_call_frequency=None, tool_failure_frequency=None, failures={}, reward_weights={},
        tasks={}, peak_memory_bytes=0, peak_memory_kind="rss", device="cpu", quantized=False, versions={},
    ).write(folder)  # fmt: skip
    payload = {"heldout": {"task_ids": ["a", "b", "c", "d"]}, "before": before, "after": after, "delta": {}}
    (folder / "eval_before_after.json").write_text(json.dumps(payload))
    EvalResults(
        model="m",
        limit=2,
        targets={"sft/tool": {"heldout": {"outcome": 0.5, "n": 2}}},
        skipped={},
        seconds={},
        changes={"rl/tool": {"from": "sft/tool", "change": 0.05, "ci95": [0.003, 0.089, 60]}},
    ).write(run_dir / "eval")
    episode = [  # a held-out prediction's `raw`: the episode's messages, tool results included
        {"role": "assistant", "content": rollout[:80]},
        {"role": "tool", "name": "convert", "content": "5 km = 3.1069 mi"},
        {"role": "assistant", "content": "That is 3.1069 miles." + "x" * 5000},
    ]
    rows = [
        {"target": "sft/tool", "suite": "heldout", "domain": "units", "id": "u-1", "raw": episode, "ok": True,
         "calls": [{"name": "convert", "arguments": {"value": 5, "unit": "km"}}], "error": ""},
        {"target": "sft/tool", "suite": "heldout", "domain": "sql", "id": "s-1", "raw": "I cannot.", "ok": False,
         "calls": [], "error": "made no tool call"},
        {"target": "sft/tool", "suite": "bfcl", "category": "simple_python", "id": "simple_0", "raw": "[f(x=1)]",
         "ok": True, "calls": [{"name": "f", "arguments": {"x": 1}}], "error": ""},
        {"target": "sft/tool", "suite": "bfcl", "category": "simple_python", "id": "simple_1", "raw": "[g()]",
         "ok": False, "calls": [], "error": "wrong"},
    ]  # fmt: skip
    (run_dir / "eval" / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report.run(config)
    markdown = (run_dir / "report.md").read_text()
    assert (
        "| outcome | 0.250 | 0.750 | +0.500 |" in markdown
        and "| reward/format | 0.400 | 0.900 | +0.500 |" in markdown
    )
    assert "(n = 4 tasks, 4 samples a task at temperature 0.8: a task's outcome is their mean)" in markdown
    assert (
        "rl/tool against sft/tool, the adapter GRPO started from: held-out outcome change +0.050, 95% interval "
        "paired per task [+0.003, +0.089] (n = 60 tasks) — excludes 0." in markdown
    )
    assert "Raw: [every rollout, before and after (JSON)](rl/tool/eval_before_after.json)" in markdown
    assert "Raw: [every prediction (JSON lines)](eval/predictions.jsonl)" in markdown
    assert 'Calls: convert(value=5, unit="km")' in markdown and "failed: made no tool call" in markdown
    assert "`simple_0`" in markdown and "`simple_1`" not in markdown  # three examples per target
    assert markdown.count("xxxx") and "more characters]" in markdown
    # The episode reads as turns: the call, the tool's result under its name, the answer (each truncated).
    assert "[assistant]\n<tool_call>" in markdown and "[tool result (convert)]\n5 km = 3.1069 mi" in markdown
    assert "[assistant]\nThat is 3.1069 miles." in markdown and "'role'" not in markdown
    assert len(markdown) < 6000 and '"episodes"' not in markdown  # no rollout JSON inlined
    page = (run_dir / "report.html").read_text()
    assert "<a href='eval/predictions.jsonl'>" in page and "<h4>sft/tool</h4>" in page
    assert "<code>u-1</code>" in page and "`u-1`" not in page  # Markdown code spans, not literal backticks
    assert "<h1>midtrain run <code>smollm2-135m-demo</code></h1>" in page and "overflow-wrap:anywhere" in page
