"""Helpers shared by the domains' task samplers (`sample_task(rng, difficulty, parallel)` in each module)."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipelines.errors import BadInput
from pipelines.tasks.records import Mistake, Step, Task


@dataclass(frozen=True)
class TaskKind:
    """One family of tasks a domain can sample, and the call counts (difficulties) it can be built with."""

    name: str
    build: Callable[[random.Random, int, bool], Task]  # (rng, difficulty, parallel) -> Task
    difficulties: range
    parallel_from: int | None = None  # smallest difficulty with ≥2 independent calls in one turn; None: never


def _kind_fits(kind: TaskKind, difficulty: int, parallel: bool) -> bool:
    if difficulty not in kind.difficulties:
        return False
    return not parallel or (kind.parallel_from is not None and difficulty >= kind.parallel_from)


def pick_task_kind(
    kinds: list[TaskKind], rng: random.Random, difficulty: int | None, parallel: bool, domain: str
) -> tuple[TaskKind, int]:
    """Choose a kind that can be built with `difficulty` calls (drawn uniformly when None), parallel if asked."""
    if difficulty is None:
        possible = sorted({d for k in kinds for d in k.difficulties if _kind_fits(k, d, parallel)})
        difficulty = rng.choice(possible)
    candidates = [k for k in kinds if _kind_fits(k, difficulty, parallel)]
    if not candidates:
        supported = sorted({d for k in kinds for d in k.difficulties if _kind_fits(k, d, parallel)})
        form = "parallel " if parallel else ""
        raise BadInput(
            f"domain {domain!r}: no {form}task with difficulty {difficulty}; supported: {supported}"
        )
    return rng.choice(candidates), difficulty


def arrange_turns(groups: list[list[Step]], parallel: bool) -> list[list[Step]]:
    """`groups` are batches of mutually independent calls; in sequential form every call gets its own turn."""
    if parallel:
        return [list(group) for group in groups if group]
    return [[step] for group in groups for step in group]


def turn_of(solution: list[list[Step]], step: Step) -> int:
    """Index of the turn holding `step` (by identity): where a Mistake on that call belongs."""
    for index, turn in enumerate(solution):
        if any(s is step for s in turn):
            return index
    raise ValueError(f"step {step} is not part of the solution")


def sample_from(
    kinds: list[TaskKind], domain: str, rng: random.Random, difficulty: int | None, parallel: bool
) -> Task:
    """A task of a kind that fits `difficulty` (drawn when None): the body of every domain's `sample_task`."""
    kind, difficulty = pick_task_kind(kinds, rng, difficulty, parallel, domain)
    return kind.build(rng, difficulty, parallel)


def build_task(domain: str, kind: str, groups: list[list[Step]], parallel: bool, **fields: Any) -> Task:
    """A Task from batches of independent calls, with its id, difficulty and mistakes derived from them.

    `fields` are the other Task fields; `mistakes` come as (solution step, wrong step, error_contains, reflection)
    tuples, and each becomes a Mistake placed before the turn that holds its solution step.
    """
    solution = arrange_turns(groups, parallel)
    mistakes = fields.pop("mistakes", [])
    setup = fields.pop("setup", {})
    payload = {"request": fields["request"], "setup": setup, "solution": repr(solution)}
    return Task(
        domain=domain,
        task_id=stable_task_id(domain, kind, payload),
        setup=setup,
        solution=solution,
        difficulty=sum(len(turn) for turn in solution),
        mistakes=[
            Mistake(turn_of(solution, step), wrong, error, why) for step, wrong, error, why in mistakes
        ],
        **fields,
    )


def spoken_list(items: list[str], last: str = "and") -> str:
    """`a, b and c`: how a request or an answer names several things."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" {last} " + items[-1]


def stable_task_id(domain: str, kind: str, payload: Any) -> str:
    """`domain-kind-hash`: equal tasks get equal ids, and the kind stays readable for mix statistics."""
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
    return f"{domain}-{kind}-{hashlib.sha256(blob.encode('utf-8')).hexdigest()[:12]}"
