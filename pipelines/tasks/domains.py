"""The built-in domains: name → (environment class, task sampler), in one place for the generator, RL and eval.

Light to import: the BM25 index and the sandbox's kernel probe are built on first use, not here."""

from __future__ import annotations

from collections.abc import Callable

from pipelines.envs import api_pool as api_pool_env
from pipelines.envs import calculator as calculator_env
from pipelines.envs import calendar_todo as calendar_env
from pipelines.envs import code_runner as code_runner_env
from pipelines.envs import docsearch as docsearch_env
from pipelines.envs import filesystem as filesystem_env
from pipelines.envs import sqlite_db as sqlite_env
from pipelines.envs.base import ToolEnv
from pipelines.tasks import api_pool, calculator, calendar_todo, code_runner, docsearch, filesystem, sqlite_db
from pipelines.tasks.records import Task

DOMAINS: dict[str, tuple[type[ToolEnv], Callable[..., Task]]] = {
    api_pool_env.DOMAIN: (api_pool_env.ApiPoolEnv, api_pool.sample_task),
    calculator_env.DOMAIN: (calculator_env.CalculatorEnv, calculator.sample_task),
    filesystem_env.DOMAIN: (filesystem_env.FileSystemEnv, filesystem.sample_task),
    sqlite_env.DOMAIN: (sqlite_env.SqliteEnv, sqlite_db.sample_task),
    calendar_env.DOMAIN: (calendar_env.CalendarEnv, calendar_todo.sample_task),
    docsearch_env.DOMAIN: (docsearch_env.DocSearchEnv, docsearch.sample_task),
    code_runner_env.DOMAIN: (code_runner_env.CodeRunnerEnv, code_runner.sample_task),
}


def draw_tasks(domains: list[str], n: int, seed: int) -> list[Task]:
    """`n` tasks round-robin over `domains` (`["all"]`: every registered one), deterministic from `seed`: task i
    does not depend on n. The data stage decontaminates against `draw_tasks(["all"], heldout_n, heldout_seed)`."""
    import random

    names = sorted(DOMAINS) if list(domains) == ["all"] else list(domains)
    unknown = [d for d in names if d not in DOMAINS]
    if unknown:
        from pipelines.errors import BadInput

        raise BadInput(f"unknown domain {unknown[0]!r} (known: {', '.join(sorted(DOMAINS))})")
    return [DOMAINS[names[i % len(names)]][1](random.Random(f"tasks/{seed}/{i}")) for i in range(n)]
