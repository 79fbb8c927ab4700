"""Who runs the work units of a data build: this machine's processes, or datatrove's executors.

Every executor runs the same step, `ingest.run_units(work, rank, world_size)` (as datatrove's `IngestUnits`
pipeline step for datatrove's executors), over the units planned in the build's work folder; the driver
then dedups, mixes and writes (pipelines/data/build.py). Units are results on disk, read back in plan order,
so which executor ran them, with how many workers or tasks, never shows in the output bytes (tested).

- `local` (default): in this process (`workers: 1`) or a pool of `workers` forked processes taking units as
  they free up. Nothing to install or configure.
- `datatrove`: datatrove's `LocalPipelineExecutor` (`tasks` tasks, `workers` at a time; completions and logs
  under the work folder). The same executor family as the cluster ones, on one machine.
- `ray`: datatrove's `RayPipelineExecutor` on the Ray cluster `ray.init()` finds (`RAY_ADDRESS`; a local one
  when unset). Needs `pip install 'datatrove[ray]'`; the work folder (next to `--out`) must be on storage
  every node mounts.
- `slurm`: datatrove's `SlurmPipelineExecutor`: the units as a Slurm job array (`tasks` array tasks,
  `workers` at a time), submitted with sbatch; this process waits for the array, then dedups, mixes and writes
  as always. Run it where sbatch works (a login node, or a small job of its own); the work folder (next to
  `--out`) must be on storage the compute nodes mount.

Why datatrove and not Ray Data (docs/data-at-scale.md has the numbers): a datatrove task is "rank r of
world_size", a static and reproducible split that maps onto our work units, and one pipeline step runs
unchanged on its local, Slurm and Ray executors; Ray Data schedules blocks dynamically and needs a running
Ray cluster even on one machine.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from pipelines.data import ingest
from pipelines.data.plan import ExecutorSettings
from pipelines.errors import BadInput, MidtrainError


def run_units(settings: ExecutorSettings, work: Path, n_units: int, workers: int) -> None:
    """Run every unit of the plan in `work`; returns when all have run (done or failed)."""
    if settings.kind == "local":
        _run_local(work, n_units, workers)
        return
    executor = datatrove_executor(settings, work, n_units, workers)
    executor.run()
    if settings.kind == "slurm":
        _wait_for_slurm(executor, work)


# -- local ---------------------------------------------------------------------------------------------------
def _run_local(work: Path, n_units: int, workers: int) -> None:
    if workers <= 1 or n_units <= 1:
        ingest.run_units(work, 0, 1)
        return
    # Forked workers inherit the loaded tokenizer and modules: they start in milliseconds. Each call is one
    # unit (rank u of n_units), handed to whichever worker is free.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    pool = context.Pool(min(workers, n_units), initializer=_quiet_worker)
    try:
        for _ in pool.imap_unordered(_run_one, [(str(work), u, n_units) for u in range(n_units)]):
            pass
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def _quiet_worker() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
    # Ctrl-C reaches the whole process group: the parent stops the pool and reports once; workers stay quiet.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_one(job: tuple[str, int, int]) -> None:
    work, rank, world_size = job
    ingest.run_units(Path(work), rank, world_size)


# -- datatrove -----------------------------------------------------------------------------------------------
def ingest_step(work: Path) -> Any:
    """The build's parallel step as a datatrove pipeline step."""
    from pipelines.data.datatrove_steps import IngestUnits

    return IngestUnits(str(work))


def datatrove_executor(settings: ExecutorSettings, work: Path, n_units: int, workers: int) -> Any:
    tasks = settings.tasks or n_units
    concurrent = settings.workers or workers
    logs = str(work / "datatrove")
    if settings.kind == "datatrove":
        from datatrove.executor import LocalPipelineExecutor

        # fork: tasks inherit the driver's loaded tokenizer instead of importing transformers again.
        return LocalPipelineExecutor(
            [ingest_step(work)], tasks=tasks, workers=concurrent, logging_dir=logs, start_method="fork"
        )
    if settings.kind == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        if settings.slurm is None:
            raise BadInput("executor 'slurm' needs data.executor.slurm.partition (or --slurm-partition)")
        slurm = settings.slurm
        return SlurmPipelineExecutor(
            [ingest_step(work)],
            tasks=tasks,
            workers=settings.workers or -1,
            time=slurm.time,
            partition=slurm.partition,
            cpus_per_task=slurm.cpus_per_task,
            mem_per_cpu_gb=slurm.mem_per_cpu_gb,
            job_name="midtrain-data",
            env_command=slurm.env_command,
            sbatch_args=slurm.sbatch_args,
            logging_dir=logs,
            slurm_logs_folder=str(work / "datatrove" / "slurm_logs"),
            mail_type="NONE",
        )
    if settings.kind == "ray":
        try:
            import ray  # noqa: F401
            from datatrove.executor.ray import RayPipelineExecutor
        except ImportError:
            raise BadInput(
                "executor 'ray' needs Ray: pip install 'datatrove[ray]' (and RAY_ADDRESS=auto to use a running "
                "cluster; without it Ray starts a local one)"
            ) from None
        return RayPipelineExecutor(
            [ingest_step(work)], tasks=tasks, workers=settings.workers or -1, logging_dir=logs
        )
    raise ValueError(settings.kind)


SLURM_POLL_SECONDS = 30


def _wait_for_slurm(executor: Any, work: Path) -> None:
    """Until every array task has completed, a unit has failed, or the job has left the queue unfinished."""
    while True:
        if not executor.get_incomplete_ranks() or any((work / ingest.FAILED).glob("*.json")):
            return
        queued = subprocess.run(
            ["squeue", "--noheader", "--jobs", str(executor.job_id)],
            capture_output=True,
            text=True,
            check=False,
        )
        if queued.returncode == 0 and not queued.stdout.strip() and executor.get_incomplete_ranks():
            raise MidtrainError(
                f"Slurm job {executor.job_id} left the queue with tasks unfinished; logs: {work / 'datatrove'}"
            )
        time.sleep(SLURM_POLL_SECONDS)
