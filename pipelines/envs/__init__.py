"""Tool-environment domains: name → (environment class, task sampler).

Each domain module exposes `sample_task(rng, difficulty=None, parallel=False) -> Task` and is registered below,
so the trace generator, RL and eval find every domain in one place.
"""

from __future__ import annotations

from collections.abc import Callable

from pipelines.envs.base import Task, ToolEnv

DOMAINS: dict[str, tuple[type[ToolEnv], Callable[..., Task]]] = {}

from pipelines.envs import api_pool  # noqa: E402  (registration after DOMAINS exists)

DOMAINS["api"] = (api_pool.ApiPoolEnv, api_pool.sample_task)

from pipelines.envs import calculator, calendar_todo, filesystem, sqlite_db  # noqa: E402

DOMAINS[calculator.DOMAIN] = (calculator.CalculatorEnv, calculator.sample_task)
DOMAINS[filesystem.DOMAIN] = (filesystem.FileSystemEnv, filesystem.sample_task)
DOMAINS[sqlite_db.DOMAIN] = (sqlite_db.SqliteEnv, sqlite_db.sample_task)
DOMAINS[calendar_todo.DOMAIN] = (calendar_todo.CalendarEnv, calendar_todo.sample_task)

# Light to import: the BM25 index and the sandbox's kernel probe are built on first use, not here.
from pipelines.envs import code_runner, docsearch  # noqa: E402

DOMAINS[docsearch.DOMAIN] = (docsearch.DocSearchEnv, docsearch.sample_task)
DOMAINS[code_runner.DOMAIN] = (code_runner.CodeRunnerEnv, code_runner.sample_task)


def sample_tasks(domains: list[str], n: int, seed: int) -> list[Task]:
    """`n` tasks round-robin over `domains` (`["all"]`: every registered one), deterministic from `seed`."""
    import random

    names = sorted(DOMAINS) if list(domains) == ["all"] else list(domains)
    unknown = [d for d in names if d not in DOMAINS]
    if unknown:
        from pipelines.errors import BadInput

        raise BadInput(f"unknown domain {unknown[0]!r} (known: {', '.join(sorted(DOMAINS))})")
    return [DOMAINS[names[i % len(names)]][1](random.Random(f"tasks/{seed}/{i}")) for i in range(n)]
