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
from tests.helpers import e2e_recipe, tiny_model, write_e2e_run

pytestmark = pytest.mark.e2e

# The real template where TRL ships one; the codec's canonical template otherwise (conftest's family_tokenizer).
REAL = {"qwen3": "qwen3.jinja", "llama3": "llama3_1.jinja"}


@pytest.mark.timeout(900)
@pytest.mark.parametrize("family", ["qwen3", "llama3", "mistral", "smollm2"])
def test_midtrain_run_in_each_family(family: str, family_tokenizer, tmp_path: Path) -> None:
    model_dir = tiny_model(family_tokenizer(family, REAL.get(family)), tmp_path / "model")
    recipe = e2e_recipe("e2e-family", total_tokens=12000, generated=40)
    path = write_e2e_run(tmp_path, model_dir, family, recipe, eval={"heldout_irrelevance_fraction": 0.0})
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
