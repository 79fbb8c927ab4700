"""The data build's steps as datatrove pipeline steps (imported only when a datatrove executor runs)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from datatrove.executor import SlurmPipelineExecutor
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


class JobIds:
    """sbatch's job ids, every one: above `max_array_size` tasks datatrove submits several arrays and keeps only
    the last id, so cancelling or watching that one would leave the others running."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def __call__(self, sbatch_output: str) -> str:
        job_id = sbatch_output.split()[-1]  # "Submitted batch job 1234"
        self.ids.append(job_id)
        return job_id


class UnitsSlurmExecutor(SlurmPipelineExecutor):
    """datatrove's Slurm executor without its stats-merge job: midtrain reads no `stats.json`, and that job,
    queued `afterok` on the array, stayed pending forever after a failed or cancelled array and, after a good
    one, ran in a logs folder the build was removing."""

    def launch_merge_stats(self) -> None:
        return None
