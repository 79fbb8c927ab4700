"""End to end once per tool-call family: `midtrain run` (data → sft → rl → router → eval → report) on a tiny random
model whose tokenizer carries the family's special tokens and real (or canonical) chat template. The Hermes
family runs the full e2e (tests/test_e2e.py); here each other family must come through every stage with its own
codec: the mix rendered in its format, its adapters saving its template, TRL's tool loop and the eval parsing
its calls."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.artifacts import EvalResults, RLSummary, StageMarker
from pipelines.chat import load_tokenizer
from pipelines.cli import app
from pipelines.codecs import codec_for
from pipelines.data import manifest as mf
from pipelines.run_config import load_run_config
from pipelines.stages import STAGES
from tests.helpers import tiny_model

pytestmark = pytest.mark.e2e

# The real template where TRL ships one; the codec's canonical template otherwise (conftest's family_tokenizer).
REAL = {"qwen3": "qwen3.jinja", "llama3": "llama3_1.jinja"}

RECIPE = """\
name: e2e-family
seed: 0
total_tokens: 12000
eval_fraction: 0.1
max_seq_len: 2048
categories:
  tool:
    share: 1.0
    sources:
      - name: gen
        type: generated
        domains: [calculator]
        n: 40
        seed: 0
        cluster_by_pattern: {single: tool, parallel: tool, instanced: tool, sequential: plan, clarify: plan,
                             irrelevance: plan, recovery: tool, code: tool}
decontamination: {sets: []}
"""

CONFIG = """\
name: {family}
output_dir: {runs}
model: {{name_or_path: {model}}}
data: {{recipe: {recipe}}}
sft:
  clusters: [tool, plan]
  replay_fraction: 0.0
  quantization: {{mode: none}}
  lora: {{r: 4, alpha: 8}}
  train: {{max_steps: 1, per_device_train_batch_size: 1, max_length: 2048, save_steps: 100,
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
  max_completion_length: 16
  quantization: {{mode: none}}
  train: {{max_steps: 1, per_device_train_batch_size: 2, gradient_checkpointing: false}}
router: {{method: tfidf, threshold: 0.3, generated_requests: 20}}
eval:
  limit: 1
  bfcl_categories: [simple_python]
  heldout_domains: [calculator]
  heldout_irrelevance_fraction: 0.0
  max_new_tokens: 8
  rollout_tokens: 16
  max_tool_rounds: 1
publish: {{enabled: false}}
tracking: {{report_to: [none]}}
"""


@pytest.mark.timeout(900)
@pytest.mark.parametrize("family", ["qwen3", "llama3", "mistral", "smollm2"])
def test_midtrain_run_in_each_family(family: str, family_tokenizer, tmp_path: Path) -> None:
    model_dir = tiny_model(family_tokenizer(family, REAL.get(family)), tmp_path / "model")
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    path = tmp_path / "run.yaml"
    path.write_text(
        CONFIG.format(family=family, runs=tmp_path / "runs", model=model_dir, recipe=tmp_path / "recipe.yaml")
    )
    config = load_run_config(path)

    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    for stage in STAGES:
        if stage.name != "publish":
            assert StageMarker.read(stage.out_dir(config)).stage == stage.name
    run_dir = config.run_dir
    assert mf.read_manifest(run_dir / "data")["tokenizer"]["tool_format"] == family
    for adapter in ("sft/tool", "sft/plan", "rl/tool"):
        assert codec_for(load_tokenizer(str(run_dir / adapter))).name == family, adapter
    assert RLSummary.read(run_dir / "rl" / "tool").steps == 1
    results = EvalResults.read(run_dir / "eval")
    assert list(results.targets) == ["base", "sft/plan", "sft/tool", "rl/tool", "routed"]
    assert all(suites["heldout"]["n"] == 1 for suites in results.targets.values())
