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

pytestmark = pytest.mark.e2e

RECIPE = """\
name: e2e-mix
seed: 0
total_tokens: 30000
eval_fraction: 0.1
max_seq_len: 2048
categories:
  tool:
    share: 0.7
    sources:
      - name: gen
        type: generated
        domains: [calculator]
        n: 80
        seed: 0
        cluster_by_pattern: {single: tool, parallel: tool, instanced: tool, sequential: plan, clarify: plan,
                             irrelevance: plan, recovery: tool, code: tool}
  text:
    share: 0.3
    sources:
      - {name: pydoc, type: pydoc_text, cluster: text, max_chunk_chars: 3000}
decontamination: {sets: []}
"""

CONFIG = """\
name: e2e
output_dir: {runs}
model: {{name_or_path: {model}}}
data: {{recipe: {recipe}}}
sft:
  clusters: [tool, plan]
  replay_fraction: 0.0
  quantization: {{mode: none}}
  lora: {{r: 4, alpha: 8}}
  train: {{max_steps: 2, per_device_train_batch_size: 1, max_length: 2048, save_steps: 100,
           gradient_checkpointing: false}}
rl:
  clusters: [tool]
  domains: [calculator]
  offered_tools: task
  distractor_tools: 1
  n_tasks: 2
  max_difficulty: 1
  max_tool_calling_iterations: 1
  eval_tasks_per_domain: 1
  num_generations: 2
  max_completion_length: 24
  quantization: {{mode: none}}
  train: {{max_steps: 1, per_device_train_batch_size: 2, gradient_checkpointing: false}}
router: {{method: tfidf, threshold: 0.3, generated_requests: 60}}
eval:
  limit: 1
  bfcl_categories: [simple_python, irrelevance]
  heldout_domains: [calculator]
  max_new_tokens: 8
  rollout_tokens: 24
  max_tool_rounds: 1
publish: {{enabled: true, dry_run: true, allow_no_eval: false}}
tracking: {{report_to: [none]}}
"""


@pytest.mark.timeout(900)
def test_midtrain_run_through_every_stage(tmp_path: Path, tiny_model_dir: Path) -> None:
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    path = tmp_path / "run.yaml"
    path.write_text(
        CONFIG.format(runs=tmp_path / "runs", model=tiny_model_dir, recipe=tmp_path / "recipe.yaml")
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
    assert all(set(suites) == {"bfcl", "heldout"} for suites in results.targets.values())
    assert (run_dir / "publish" / "midtrain-e2e-rl-tool" / "README.md").is_file()
    report = ReportIndex.read(run_dir)
    markdown = Path(report.report).read_text()
    for heading in ("## Stages", "## Data mix", "## SFT", "## RL", "## Router", "## Evaluation"):
        assert heading in markdown

    again = CliRunner().invoke(app, ["run", str(path)])
    assert again.exit_code == 0, again.output
    assert again.output.count("up to date, skipped") == len(STAGES)
