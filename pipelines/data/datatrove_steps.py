"""The data build's steps as datatrove pipeline steps (imported only when a datatrove executor runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datatrove.pipeline.base import PipelineStep

from pipelines.data import ingest


class IngestUnits(PipelineStep):
    """Task `rank` of `world_size` processes work units rank, rank + world_size, … of the plan in `work`."""

    name = "midtrain work units"
    type = "🧮 - MIDTRAIN"

    def __init__(self, work: str) -> None:
        super().__init__()
        self.work = work

    def run(self, data: Any = None, rank: int = 0, world_size: int = 1) -> Any:
        ingest.run_units(Path(self.work), rank, world_size)
        yield from ()


class FinishBuild(PipelineStep):
    """The global step after every unit: dedup, mix, write the output folder (one task)."""

    name = "midtrain dedup, mix, write"
    type = "🧮 - MIDTRAIN"

    def __init__(self, work: str, out_dir: str) -> None:
        super().__init__()
        self.work = work
        self.out_dir = out_dir

    def run(self, data: Any = None, rank: int = 0, world_size: int = 1) -> Any:
        from pipelines.data.build import finish_submitted

        finish_submitted(Path(self.work), Path(self.out_dir))
        yield from ()
