"""The data build's steps as datatrove pipeline steps (imported only when a datatrove executor runs)."""

from __future__ import annotations

import os
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
        self.driver_pid = os.getpid()

    def run(self, data: Any = None, rank: int = 0, world_size: int = 1) -> Any:
        if os.getpid() != self.driver_pid:  # a task process: quiet on Ctrl-C, killed by SIGTERM
            from pipelines.data.executors import init_worker

            init_worker()
        ingest.run_units(Path(self.work), rank, world_size)
        yield from ()
