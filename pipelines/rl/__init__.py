"""RL stage: GRPO on tool-use rewards in live environments (`midtrain rl CONFIG`).

- `rewards`: the reward components (format, tool_call, execution, outcome, instance, irrelevance, efficiency);
- `train`: the stage, `run(config)` → `runs/<name>/rl/<cluster>/`;
- `evaluate`: held-out greedy rollouts in live environments, before and after RL (reusable by the eval stage).

Importing this package stays light: torch, transformers and TRL load inside the functions that need them.
"""

from __future__ import annotations

from typing import Any


def run(config: Any, *, clusters: Any = None, callbacks: Any = (), restart: bool = False) -> Any:
    """`pipelines.rl.train.run`: GRPO for every cluster of `rl.clusters` (see pipelines/units.py for what a
    repeated run keeps)."""
    from pipelines.rl.train import run as run_stage

    return run_stage(config, clusters=clusters, callbacks=callbacks, restart=restart)


__all__ = ["run"]
