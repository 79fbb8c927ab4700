"""The stage registry: every stage has the same face.

A stage is a module with `run(config: RunConfig) -> <typed artifact>` (keyword-only extras are for its own CLI
command and tests), registered here with the config sections it reads, the stages whose outputs it consumes, and
the folder it writes. `midtrain run` is a loop over this list; fingerprints, skipping and the report's stage
table all read it, so a new stage is one entry here and one module.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.run_config import RunConfig


@dataclass(frozen=True)
class Stage:
    name: str
    module: str  # imported when the stage runs, so `midtrain run --help` stays fast and torch-free
    sections: tuple[str, ...]  # config sections it reads: part of its fingerprint
    consumes: tuple[str, ...]  # stages whose outputs it reads: their fingerprints are part of its own
    enabled: Callable[[RunConfig], bool]
    folder: str  # under the run dir ("" = the run dir itself)
    summary: str

    def out_dir(self, config: RunConfig) -> Path:
        return config.run_dir / self.folder if self.folder else config.run_dir

    def entry(self) -> Callable[[RunConfig], Any]:
        return importlib.import_module(self.module).run


STAGES: tuple[Stage, ...] = (
    Stage("data", "pipelines.data.build", ("model", "data"), (), lambda c: True, "data",
          "token-share mix: sharded parquet + manifest.json (the lockfile)"),
    Stage("sft", "pipelines.sft.stage", ("model", "sft", "tracking"), ("data",),
          lambda c: c.sft is not None, "sft", "one LoRA adapter per thought cluster"),
    Stage("rl", "pipelines.rl.train", ("model", "rl", "sandbox", "tracking"), ("sft",),
          lambda c: c.rl is not None, "rl", "GRPO in live tool environments"),
    Stage("router", "pipelines.router", ("router",), ("data", "sft", "rl"),
          lambda c: c.router is not None and c.sft is not None, "router", "request → adapter router bundle"),
    Stage("eval", "pipelines.eval.stage", ("eval", "sandbox"), ("data", "sft", "rl", "router"),
          lambda c: c.eval is not None, "eval", "BFCL + held-out tasks: base vs adapters vs routed"),
    Stage("publish", "pipelines.publish", ("publish",), ("eval", "router"),
          lambda c: bool(c.publish and c.publish.enabled), "publish", "Hub repos with model cards"),
    Stage("report", "pipelines.report", (), ("data", "sft", "rl", "router", "eval", "publish"),
          lambda c: True, "", "report.md + report.html"),
)  # fmt: skip
BY_NAME = {stage.name: stage for stage in STAGES}


def enabled_stages(config: RunConfig) -> list[Stage]:
    return [stage for stage in STAGES if stage.enabled(config)]
