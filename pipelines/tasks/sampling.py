"""Tasks for RL and held-out evaluation, drawn from the built-in domains' samplers.

Held-out tasks come from the very sampler call the data stage decontaminates the SFT mix against
(`pipelines.tasks.domains.draw_tasks(["all"], heldout_n, heldout_seed)`), so RL's before/after numbers and the
eval stage's agree and are measured on tasks no SFT row was built from. Irrelevance tasks ask one domain's
question where only another domain's tools are offered.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.envs.base import ToolEnv, guarded
from pipelines.errors import BadInput
from pipelines.recipe import Decontamination, Recipe
from pipelines.tasks.records import Task


@dataclass(frozen=True)
class DomainTask:
    """A task and the domain whose environment runs it (an irrelevance task runs in a domain it does not fit)."""

    domain: str
    task: Task
    environment: str = ""  # the `environment_factory` key running it; "" = the domain's full toolset

    @property
    def env_key(self) -> str:
        return self.environment or self.domain


def fixed_method_domains(names: Sequence[str]) -> dict[str, tuple[type[ToolEnv], Any]]:
    """`names` (or `all`) → {domain: (guarded EnvClass, sample_task)}, the domains whose tools are methods.

    TRL's `environment_factory` can only expose methods as tools; the API pool's per-task tools cannot be.
    """
    from pipelines.tasks.domains import DOMAINS

    fixed = {name: (guarded(env), sampler) for name, (env, sampler) in DOMAINS.items() if env._tool_methods()}  # type: ignore[arg-type]  # classes are hashable: mypy#11470
    if "all" in names:
        return fixed
    for name in names:
        if name not in DOMAINS:
            raise BadInput(f"rl.domains: unknown domain {name!r}; known: {', '.join(sorted(DOMAINS))}")
        if name not in fixed:
            raise BadInput(
                f"rl.domains: {name!r} has no fixed tool methods (its tools come with each task), so TRL's "
                f"environment_factory cannot expose them; use one of {', '.join(sorted(fixed))}"
            )
    return {name: fixed[name] for name in dict.fromkeys(names)}


def sample_domain_task(domain: str, sampler: Any, rng: random.Random, max_difficulty: int) -> Task:
    """A task needing at most `max_difficulty` calls: difficulties are tried in a random order, because not
    every domain can build every difficulty."""
    difficulties = list(range(1, max_difficulty + 1))
    rng.shuffle(difficulties)
    for difficulty in difficulties:
        try:
            return sampler(rng, difficulty)
        except BadInput:
            continue
    raise BadInput(f"domain {domain!r}: cannot build a task with at most {max_difficulty} calls")


def irrelevant_task(domain: str, foreign: Task, own: Task | None = None) -> Task:
    """Another domain's request, asked where no tool fits: the right move is to say so without calling.

    With `own` (a task of `domain`), the environment starts from that task's setup: a normal, populated state.
    """
    return Task(
        domain=domain,
        task_id=f"{domain}-irrelevant-{foreign.task_id}",
        request=foreign.request,
        setup=own.setup if own is not None else {},
        solution=[],
        answer=None,
        difficulty=0,
    )


def foreign_domains(domain: str, names: Sequence[str]) -> list[str]:
    """Domains whose requests `domain`'s tools certainly cannot serve (the generator's irrelevance table)."""
    from pipelines.tasks.generate import IRRELEVANT_TOOLSETS

    return [other for other in names if other != domain and domain in IRRELEVANT_TOOLSETS.get(other, ())]


def sample_tasks(
    domains: dict[str, tuple[type[ToolEnv], Any]],
    n: int,
    seed: int,
    max_difficulty: int,
    irrelevance_fraction: float = 0.0,
    exclude_ids: set[str] | frozenset[str] = frozenset(),
) -> list[DomainTask]:
    """`n` tasks round-robin over `domains`, deterministic in `seed`; ids in `exclude_ids` are never drawn."""
    rng = random.Random(seed)
    names = sorted(domains)
    out: list[DomainTask] = []
    seen = set(exclude_ids)
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 100:
            raise BadInput(f"could only sample {len(out)} of {n} distinct tasks from {names} (seed {seed})")
        domain = names[len(out) % len(names)]
        task = sample_domain_task(domain, domains[domain][1], rng, max_difficulty)
        foreign = foreign_domains(domain, names) if irrelevance_fraction else []
        if foreign and rng.random() < irrelevance_fraction:
            other = rng.choice(foreign)
            foreign_task = sample_domain_task(other, domains[other][1], rng, max_difficulty)
            task = irrelevant_task(domain, foreign_task, own=task)
        if task.task_id in seen:
            continue
        seen.add(task.task_id)
        out.append(DomainTask(domain, task))
    return out


def heldout_spec(recipe: Recipe, seed: int | None, data_dir: Path | None = None) -> tuple[int, int]:
    """(seed, decontaminated pool size) of held-out tasks. The seed is `seed`, else the recipe's
    `decontamination.heldout_seed`. The pool is what the SFT mix was checked against: the first `heldout_n` tasks
    of that seed as the mix in `data_dir` was built (its manifest records the recipe as built; a recipe edited
    since does not change what the mix holds), else as the recipe says; 0 for another seed, or a mix that left
    the `heldout` set out, which callers report."""
    chosen = recipe.decontamination.heldout_seed if seed is None else seed
    checked = built_decontamination(data_dir) if data_dir is not None else None
    if checked is None:
        checked = recipe.decontamination
    if chosen != checked.heldout_seed or "heldout" not in checked.sets:
        return chosen, 0
    return chosen, checked.heldout_n


def built_decontamination(data_dir: Path) -> Decontamination | None:
    """The decontamination a built mix got (its manifest's recipe as built), or None where there is no manifest or
    it records none (a hand-made mix folder, which SFT accepts too)."""
    from pipelines.config import load_json, validate_data

    path = data_dir / "manifest.json"
    if not path.is_file():
        return None
    manifest = load_json(path, "a `midtrain data build` manifest")
    recipe = manifest.get("recipe") if isinstance(manifest, dict) else None
    recorded = recipe.get("decontamination") if isinstance(recipe, dict) else None
    if not isinstance(recorded, dict):
        return None
    # Only the fields this version knows: a key another version recorded does not decide a warning here.
    known = {key: value for key, value in recorded.items() if key in Decontamination.model_fields}
    return validate_data(Decontamination, known, f"{path}: recipe.decontamination")


@dataclass
class HeldOut:
    """Held-out tasks, and whether all of them lie inside the set the data stage decontaminated against."""

    items: list[DomainTask]
    seed: int
    pool_size: int  # tasks drawn from the environments' shared sampler to find enough per domain
    decontaminated: bool
    # The sampler's first `decontaminated_n` tasks are those the mix was checked against; `outside` tasks lie
    # beyond them, and `needed_n` is the `decontamination.heldout_n` that would cover every task.
    decontaminated_n: int = 0
    outside: int = 0
    needed_n: int = 0

    def contamination_warning(self) -> str | None:
        """What a person must know when some tasks were never checked against the SFT mix, and the fix."""
        if self.decontaminated:
            return None
        if self.decontaminated_n == 0:
            return (
                f"none of the {len(self.items)} held-out tasks was checked against the SFT mix: their seed {self.seed} "
                "is not the decontamination.heldout_seed the mix was built with, or its decontamination.sets left "
                "out `heldout`"
            )
        return (
            f"{self.outside} of {len(self.items)} held-out tasks lie outside the first {self.decontaminated_n} the "
            "SFT mix was decontaminated against, so the mix may hold their twins; set the recipe's "
            f"decontamination.heldout_n to at least {self.needed_n} and rebuild the data"
        )


def heldout_tasks(
    domains: dict[str, tuple[type[ToolEnv], Any]],
    per_domain: int,
    seed: int,
    max_difficulty: int,
    decontaminated_n: int,
) -> HeldOut:
    """`per_domain` tasks of each domain (at most `max_difficulty` calls) from `pipelines.tasks.domains.draw_tasks(["all"],
    n, seed)`: the very call the data stage decontaminates the SFT mix against (`heldout_seed`, `heldout_n`).

    That sampler's task i does not depend on n, so when the first `decontaminated_n` tasks hold too few of a
    domain the pool grows and the first tasks stay the same; `decontaminated` then says so.
    """
    from pipelines.tasks.domains import draw_tasks

    pool_size = max(decontaminated_n, per_domain * len(domains))
    while True:
        chosen: dict[str, list[DomainTask]] = {name: [] for name in domains}
        indices: list[int] = []
        for index, task in enumerate(draw_tasks(["all"], pool_size, seed)):
            bucket = chosen.get(task.domain)
            if bucket is not None and len(bucket) < per_domain and task.difficulty <= max_difficulty:
                bucket.append(DomainTask(task.domain, task))
                indices.append(index)
        if all(len(bucket) == per_domain for bucket in chosen.values()):
            items = [item for name in sorted(chosen) for item in chosen[name]]
            outside = sum(index >= decontaminated_n for index in indices)
            needed = max(indices, default=-1) + 1
            return HeldOut(items, seed, pool_size, outside == 0, decontaminated_n, outside, needed)
        if pool_size > 64 * max(decontaminated_n, per_domain * len(domains)):
            short = {name: len(b) for name, b in chosen.items() if len(b) < per_domain}
            raise BadInput(f"held-out seed {seed}: too few tasks with <= {max_difficulty} calls for {short}")
        pool_size *= 2


def heldout_irrelevance_tasks(
    domains: dict[str, tuple[type, Any]], per_domain: int, seed: int, max_difficulty: int
) -> list[DomainTask]:
    """Per domain, `per_domain` distinct requests of domains its tools cannot serve (the generator's table),
    asked in a normal, populated state of the domain (one of its own tasks' setup)."""
    rng = random.Random(f"eval-irrelevance/{seed}")
    names = sorted(domains)
    out: list[DomainTask] = []
    for domain in names:
        foreign = foreign_domains(domain, names)
        seen: set[str] = set()
        for _ in range(20 * per_domain if foreign else 0):
            if len(seen) == per_domain:
                break
            other = rng.choice(foreign)
            foreign_task = sample_domain_task(other, domains[other][1], rng, max_difficulty)
            own_task = sample_domain_task(domain, domains[domain][1], rng, max_difficulty)
            task = irrelevant_task(domain, foreign_task, own_task)
            if task.task_id not in seen:
                seen.add(task.task_id)
                out.append(DomainTask(domain, task))
    return out
