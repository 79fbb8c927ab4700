"""Who runs the work units of a data build: this machine's processes, or datatrove's executors.

Every executor runs the same step, `ingest.run_units(work, rank, world_size)` (as datatrove's `IngestUnits`
pipeline step for datatrove's executors), over the units planned in the build's work folder; the driver
then dedups, mixes and writes (pipelines/data/build.py). Units are results on disk, read back in plan order,
so which executor ran them, with how many workers or tasks, never shows in the output bytes (tested).

- `local` (default): in this process (`workers: 1`) or a pool of `workers` processes (started from a
  forkserver, never forked from the threaded driver) taking units as they free up. Nothing to install.
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
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pipelines.data import ingest
from pipelines.data.plan import ExecutorSettings
from pipelines.errors import BadInput, MidtrainError


def run_units(settings: ExecutorSettings, work: Path, n_units: int, workers: int, logs: Path | None) -> None:
    """Run every unit of the plan in `work`; returns when all have run (done or failed). datatrove's executors
    write their logs and completion marks in `logs`, a folder the build keeps when it fails."""
    if settings.kind == "local":
        _run_local(work, n_units, workers)
        return
    if logs is None:
        raise ValueError("datatrove's executors need a folder for their logs")
    executor = datatrove_executor(settings, work, logs, n_units, workers)
    if settings.kind == "datatrove":
        _run_watched(executor)
        return
    if settings.kind != "slurm":
        executor.run()
        return
    job_ids = executor.job_id_retriever.ids
    try:
        try:
            executor.run()
        except subprocess.CalledProcessError as exc:  # sbatch refused the job: a partition, a time limit
            # datatrove captures sbatch's stdout only: its reason went to stderr, just above this message.
            said = (exc.output or b"").decode(errors="replace").strip()
            raise BadInput(
                f"sbatch refused the data build's job array (exit code {exc.returncode}"
                f"{': ' + said if said else '; its reason is printed above'}): check data.executor.slurm "
                "(partition, time, cpus_per_task, mem_per_cpu_gb, sbatch_args)"
            ) from None
        _wait_for_slurm(executor, job_ids, work, logs)
    except BaseException:
        # An interrupt or a failed unit: the array's other tasks would go on writing into a work folder the
        # build is about to remove, and hold the cluster's cores for nothing.
        _cancel_slurm_jobs(job_ids)
        raise


# -- local ---------------------------------------------------------------------------------------------------
def _run_local(work: Path, n_units: int, workers: int) -> None:
    if workers <= 1 or n_units <= 1:
        ingest.run_units(work, 0, 1)
        return
    # Each call is one unit (rank u of n_units), handed to whichever worker is free; a worker loads the
    # build's context (tokenizer, eval index) once, for its first unit.
    others = set(multiprocessing.active_children())
    pool = worker_context().Pool(min(workers, n_units), initializer=init_worker)
    pool_workers = [p for p in multiprocessing.active_children() if p not in others]
    try:
        done = pool.imap_unordered(_run_one, [(str(work), u, n_units) for u in range(n_units)])
        while True:
            try:
                done.next(timeout=1.0)
            except StopIteration:
                break
            except multiprocessing.TimeoutError:
                _check_alive(pool_workers)
    except BaseException:
        pool.terminate()  # an error or Ctrl-C: stop the other units now (SIGTERM, the default action)
        raise
    else:
        pool.close()  # every unit done: idle workers exit on the close sentinel
    finally:
        pool.join()


def _check_alive(pool_workers: list[Any]) -> None:
    """A Pool replaces a worker that dies and forgets the unit it was running, so the build would wait for it
    forever: fail instead, saying how the worker died."""
    for worker in pool_workers:
        code = worker.exitcode
        if code is None or code == 0:
            continue
        said = f"data worker process {worker.pid}"
        if code < 0:
            said += f" was killed by {_signal_name(-code)} before its unit finished"
            if -code == signal.SIGKILL:  # what the kernel's OOM killer sends
                said += (
                    ": out of memory? Lower data.num_proc (data.executor.workers with datatrove) or the unit size "
                    "(data.executor.unit_mb)"
                )
        elif code == 255:  # under forkserver also a status a racing poll lost (`_AMBIGUOUS_EXITS`)
            said += (
                " ended before its unit finished with exit status 255: its own exit code, or a status lost to a "
                "concurrent poll (a kill, e.g. by the kernel's OOM killer: see `dmesg`)"
            )
        else:
            said += (
                f" exited with code {code} before its unit finished (its error is printed above). A script that "
                'calls the data build with num_proc > 1 outside `if __name__ == "__main__":` ends this way: each '
                "worker re-imports the script"
            )
        raise MidtrainError(said)


# Exit codes that alone do not say a worker died. -SIGTERM is how a Pool stops its workers. 255 is what a
# forkserver child's `exitcode` becomes when two threads poll it at once (the Pool's worker handler and the
# watcher below): both see its status pipe ready, the second finds it drained and `popen_forkserver.Popen.poll`
# records 255. Measured with two threads polling: 55 of 100 workers that exited 0 read 255. Both are decided by
# `_ambiguous_deaths`.
_AMBIGUOUS_EXITS = frozenset({-signal.SIGTERM, 255})
# How long after a datatrove worker was seen ending ambiguously the watcher decides whether it died.
_AMBIGUOUS_EXIT_GRACE_S = 5.0


def _ambiguous_deaths(workers: list[Any], ended_at: dict[int, float], now: float, executor: Any) -> list[Any]:
    """The workers among those that ended with an `_AMBIGUOUS_EXITS` code that died (a SIGTERM from outside, an
    admin's `kill`; a kill whose status a racing poll lost), told apart from a Pool's own stop: a Pool stops all
    its workers at once and only after it stopped replacing them, so such a worker is a death when,
    `_AMBIGUOUS_EXIT_GRACE_S` after it was seen ended, its pool still has a live worker (the others, or its
    replacement) and datatrove still has incomplete ranks."""
    overdue = [w for w in workers if now - ended_at.get(w.pid, now) >= _AMBIGUOUS_EXIT_GRACE_S]
    if not overdue or not any(w.exitcode is None for w in workers):
        return []
    try:
        incomplete = executor.get_incomplete_ranks()
    except Exception:  # the completion marks cannot be read now: no verdict rather than a false one
        return []
    return overdue if incomplete else []


class _WorkerDied(BaseException):
    """Raised in the driver's wait by the watcher's signal (a BaseException, as KeyboardInterrupt is, so that
    datatrove's own cleanup lets it through and terminates its pool)."""


def _run_watched(executor: Any) -> None:
    """datatrove's local executor waits on a `multiprocess` Pool, which also replaces a dead worker and forgets
    its task: a thread watches the pool's processes and, when one dies, signals the driver's wait (SIGUSR1, whose
    handler raises in the main thread; a thread blocked on the pool's lock wakes only for a real signal), so the
    build fails saying how. SIGTERM is also how a Pool stops its workers (datatrove's own `with Pool` does, once
    every rank is done or one has raised): see `_ambiguous_deaths` for when it counts as a death."""
    import threading

    import multiprocess  # datatrove's process library: its children are not `multiprocessing`'s

    # Python runs signal handlers in the main thread only: elsewhere the wait stays as datatrove has it.
    if threading.current_thread() is not threading.main_thread():
        executor.run()
        return
    died: list[MidtrainError] = []
    user_interrupted = threading.Event()  # a real Ctrl-C stays an interrupt, never a "worker died"
    stop = threading.Event()
    waiting = threading.get_ident()

    def watch() -> None:
        seen: dict[int, Any] = {}
        ended_at: dict[int, float] = {}
        while not stop.wait(1.0) and not user_interrupted.is_set():
            for process in multiprocess.active_children():
                if "PoolWorker" in process.name:  # not the Manager datatrove starts beside them
                    seen.setdefault(process.pid, process)
            now = time.monotonic()
            for process in seen.values():
                if process.exitcode in _AMBIGUOUS_EXITS:
                    ended_at.setdefault(process.pid, now)
            try:
                _check_alive(_ambiguous_deaths(list(seen.values()), ended_at, now, executor))
                _check_alive([p for p in seen.values() if p.exitcode not in _AMBIGUOUS_EXITS])
            except MidtrainError as exc:
                died.append(exc)
                signal.pthread_kill(waiting, signal.SIGUSR1)
                return

    def on_worker_died(signum: int, frame: Any) -> None:
        if died and not stop.is_set() and not user_interrupted.is_set():
            raise _WorkerDied

    user_sigint = signal.getsignal(signal.SIGINT)

    def on_sigint(signum: int, frame: Any) -> None:
        user_interrupted.set()
        user_sigint(signum, frame)  # type: ignore[operator,misc]  # callable: checked before installing

    previous_usr1 = signal.signal(signal.SIGUSR1, on_worker_died)
    if callable(user_sigint):
        signal.signal(signal.SIGINT, on_sigint)
    watcher = threading.Thread(target=watch, name="datatrove-workers", daemon=True)
    watcher.start()
    try:
        executor.run()
    except _WorkerDied:
        raise died[0] from None
    finally:
        stop.set()
        watcher.join()
        # None: a handler installed outside Python, which cannot be put back from here.
        signal.signal(signal.SIGUSR1, signal.SIG_DFL if previous_usr1 is None else previous_usr1)
        if callable(user_sigint):
            signal.signal(signal.SIGINT, user_sigint)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def worker_context() -> Any:
    """forkserver where the OS has it, else spawn; never a plain fork of the driver.

    The driver runs with threads alive (the tokenizer's Rust pool, the build's render thread, torch's OpenMP
    pool): a fork copies their locks in whatever state they are, and a worker that starts holding one never
    runs and never dies (a CI run hung 15 min in `Pool.terminate` on such a worker). The forkserver is a fresh
    single-threaded process that imports the ingest step once, so each worker starts in milliseconds and only
    loads the tokenizer (from the local cache: the driver has already fetched it)."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([ingest.__name__])
        return context
    return multiprocessing.get_context("spawn")


def init_worker() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
    # Ctrl-C reaches the whole process group: the parent stops the pool and reports once; workers stay quiet.
    # SIGTERM (Pool.terminate) must kill a worker even when it is inside native code: the default action.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _run_one(job: tuple[str, int, int]) -> None:
    work, rank, world_size = job
    ingest.run_units(Path(work), rank, world_size)


# -- datatrove -----------------------------------------------------------------------------------------------
def ingest_step(work: Path) -> Any:
    """The build's parallel step as a datatrove pipeline step."""
    from pipelines.data.datatrove_steps import IngestUnits

    return IngestUnits(str(work))


def datatrove_executor(
    settings: ExecutorSettings, work: Path, logs_dir: Path, n_units: int, workers: int
) -> Any:
    tasks = settings.tasks or n_units
    concurrent = settings.workers or workers
    logs = str(logs_dir)
    if settings.kind == "datatrove":
        from datatrove.executor import LocalPipelineExecutor

        # forkserver (datatrove's default), for the reason in `worker_context`: never fork the threaded driver.
        return LocalPipelineExecutor(
            [ingest_step(work)], tasks=tasks, workers=concurrent, logging_dir=logs, start_method="forkserver"
        )
    if settings.kind == "slurm":
        from pipelines.data.datatrove_steps import JobIds, UnitsSlurmExecutor

        slurm = settings.slurm
        assert slurm is not None, "ExecutorSettings checks it"
        return UnitsSlurmExecutor(
            [ingest_step(work)],
            tasks=tasks,
            workers=settings.workers or -1,
            time=slurm.time,
            partition=slurm.partition,
            cpus_per_task=slurm.cpus_per_task,
            mem_per_cpu_gb=slurm.mem_per_cpu_gb,
            job_name="midtrain-data",
            env_command=slurm.env_command or driver_environment(),
            sbatch_args=slurm.sbatch_args,
            logging_dir=logs,
            slurm_logs_folder=str(logs_dir / "slurm_logs"),
            mail_type="NONE",
            job_id_retriever=JobIds(),
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


def driver_environment() -> str:
    """The job's shell line when `slurm.env_command` is unset: this interpreter's folder first on PATH.

    Each array task runs datatrove's `launch_pickled_pipeline`, a console script installed beside this
    interpreter; sbatch passes on the driver's PATH, which lacks that folder whenever midtrain was started as
    `.venv/bin/midtrain` without activating the venv (as `make` does), and every task then fails with
    "execve(): launch_pickled_pipeline: No such file or directory" (seen on a real cluster). The folder must be
    on storage the compute nodes mount, as the work folder must."""
    return f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH"


SLURM_POLL_SECONDS = 30


def _slurm_jobs_queued(job_ids: list[str]) -> bool:
    """Whether any task of the jobs is pending or running. squeue forgets a finished job after the cluster's
    MinJobAge (300 s by default) and then answers "Invalid job id" with exit 1: gone, not an error."""
    queued = subprocess.run(
        ["squeue", "--noheader", "--jobs", ",".join(job_ids)], capture_output=True, text=True, check=False
    )
    if queued.returncode == 0:
        return bool(queued.stdout.strip())
    return "invalid job id" not in queued.stderr.lower()  # squeue itself failing (a slurmctld restart): wait


def _cancel_slurm_jobs(job_ids: list[str]) -> None:
    if job_ids:
        subprocess.run(["scancel", *job_ids], capture_output=True, check=False)


def _wait_for_slurm(executor: Any, job_ids: list[str], work: Path, logs: Path) -> None:
    """Until every array task has completed, a unit has failed (the rest of the arrays are cancelled: the build
    stops at the first failure anyway), or the jobs have left the queue unfinished."""
    while True:
        if not executor.get_incomplete_ranks():
            return
        if any((work / ingest.FAILED).glob("*.json")):
            _cancel_slurm_jobs(job_ids)
            return
        if not _slurm_jobs_queued(job_ids) and executor.get_incomplete_ranks():
            raise MidtrainError(
                f"Slurm job {', '.join(job_ids)} left the queue with tasks unfinished; logs: {logs}"
            )
        time.sleep(SLURM_POLL_SECONDS)
