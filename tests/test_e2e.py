"""End to end: `midtrain run` through every stage on the tiny model (data → sft → rl → router → eval → publish →
report), each artifact checked with its typed reader, then a second run that skips everything."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.artifacts import (
    EvalResults,
    ReportIndex,
    RLSummary,
    RouterAccuracy,
    RouterBundle,
    SFTSummary,
    StageMarker,
)
from pipelines.cli import app
from pipelines.run_config import load_run_config
from pipelines.stages import STAGES
from tests.helpers import e2e_recipe, write_e2e_run

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(900)
def test_midtrain_run_through_every_stage(tmp_path: Path, tiny_model_dir: Path) -> None:
    path = write_e2e_run(
        tmp_path,
        tiny_model_dir,
        "e2e",
        e2e_recipe("e2e-mix", total_tokens=30000, generated=80, text_share=0.3),
        sft={"train": {"max_steps": 2}},
        rl={"max_completion_length": 24},
        router={"generated_requests": 60},
        eval={"bfcl_categories": ["simple_python", "irrelevance"], "rollout_tokens": 24},
        publish={"enabled": True, "dry_run": True, "allow_no_eval": False},
    )
    config = load_run_config(path)

    first = CliRunner().invoke(app, ["run", str(path)])
    assert first.exit_code == 0, first.output
    for stage in STAGES:
        assert StageMarker.read(stage.out_dir(config)).stage == stage.name

    run_dir = config.run_dir
    for cluster in ("tool", "plan"):
        summary = SFTSummary.read(run_dir / "sft" / cluster)
        assert summary.steps == 2 and summary.tokens_seen > 0
    rl = RLSummary.read(run_dir / "rl" / "tool")
    assert rl.steps == 1 and rl.start == "sft/tool" and rl.heldout is not None
    bundle = RouterBundle.read(run_dir / "router")
    assert bundle.labels == ["plan", "tool"] and bundle.adapters["tool"] == "../rl/tool"
    assert RouterAccuracy.read(run_dir / "router").n > 0
    results = EvalResults.read(run_dir / "eval")
    assert list(results.targets) == ["base", "sft/plan", "sft/tool", "rl/tool", "routed"]
    # 24 tokens an episode is far below the traces the adapters were trained on: eval says so, per adapter
    # (the RL adapter by the SFT adapter it started from), and the report carries it.
    trained = SFTSummary.read(run_dir / "sft" / "tool").data["generation_lengths"]
    assert trained["replies"]["n"] > 0 and min(e["p90"] for e in trained["episodes"].values()) > 24
    short = [w for w in results.warnings if w.startswith("eval.rollout_tokens=24")]
    assert {w.split("`")[1] for w in short} >= {"sft/tool", "rl/tool"}
    assert all(set(suites) == {"bfcl", "heldout"} for suites in results.targets.values())
    assert (run_dir / "publish" / "midtrain-e2e-rl-tool" / "README.md").is_file()
    report = ReportIndex.read(run_dir)
    markdown = Path(report.report).read_text()
    for heading in ("## Stages", "## Data mix", "## SFT", "## RL", "## Router", "## Evaluation"):
        assert heading in markdown
    assert "Warning: eval.rollout_tokens=24 cuts off" in markdown

    again = CliRunner().invoke(app, ["run", str(path)])
    assert again.exit_code == 0, again.output
    assert again.output.count("up to date, skipped") == len(STAGES)
