"""The stages that run model-written code (RL, evaluation) refuse a sandbox below `sandbox.isolation` before
they load or train anything (issue 16, item 12). Separate from test_sandbox.py: importing the stages loads
transformers and TRL."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.sandbox import SandboxUnavailable

OLD_KERNEL = ["landlock", "seccomp", "namespaces"]


def test_rl_and_eval_refuse_before_loading_anything(tmp_path: Path) -> None:
    from pipelines.eval import stage as eval_stage
    from pipelines.rl import train
    from pipelines.run_config import RunConfig

    config = RunConfig.model_validate(
        {
            "name": "sandboxed",
            "output_dir": str(tmp_path),
            "data": {"recipe": "data_recipes/agentic-v1.yaml"},
            "rl": {"domains": ["coderunner"], "from_base": True},
            "eval": {"targets": ["base"], "bfcl_categories": [], "heldout_domains": ["coderunner"]},
            "sandbox": {"disable": OLD_KERNEL},
        }
    )
    with pytest.raises(SandboxUnavailable, match="rl: refusing"):
        train.run(config)
    with pytest.raises(SandboxUnavailable, match="eval: refusing"):
        eval_stage.run(config)
    assert not (tmp_path / "sandboxed").exists()
