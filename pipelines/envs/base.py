"""The tool-environment contract shared by the trace generator, RL and eval (see DESIGN.md, Environments).

TRL's `GRPOTrainer(environment_factory=…)` exposes *every* public function of the environment class as a tool
(inherited ones included) and calls `reset(**row)` with all dataset columns. So: tools are the public methods
of each concrete class, and everything on this base is either `reset`/`get_reward` or starts with `_`.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from pipelines.errors import BadInput


class ToolError(Exception):
    """A tool's own, expected failure (bad path, unknown unit…): shown to the model as the observation."""


@dataclass
class Step:
    """One reference tool call of a task's solution."""

    tool: str
    arguments: dict[str, Any]


@dataclass
class Mistake:
    """A plausible wrong call for the error→recovery pattern, made before the solution's turn `turn`.

    Without `followed_by`, `step` must make the tool raise ToolError whose message contains `error_contains`.
    With `followed_by` (e.g. a buggy `write_solution` followed by `run_tests`), `step` may succeed: the calls in
    `followed_by` run next, one turn each, and the *last* one's observation (error or not) must contain
    `error_contains`; the reflection comes after it. Older tasks (no `followed_by`) read as before.
    """

    turn: int
    step: Step
    error_contains: str
    reflection: str
    followed_by: list[Step] = field(default_factory=list)


@dataclass
class Task:
    """A verifiable task: the request, the environment setup, a reference solution and the ground truth."""

    domain: str
    task_id: str
    request: str
    setup: dict[str, Any]
    solution: list[list[Step]]  # turns; the calls inside one turn are independent (can run in parallel)
    answer: str | None = None  # expected final answer text (compared after normalisation)
    expected_state: dict[str, Any] | None = None  # domain-specific, checked by env._check_state
    difficulty: int = 1  # number of required calls
    mistakes: list[Mistake] = field(default_factory=list)
    plan: str = ""  # one-paragraph plan the teacher writes before acting
    final_template: str = "{answer}"  # how the teacher phrases the final answer
    # User tasks (pipelines/tasks_file.py): how success is judged, and the conversation that opens the task.
    # Both stay out of the JSON when unset, so built-in tasks (and the traces that embed them) keep their bytes.
    judge: dict[str, Any] | None = None
    messages: list[dict[str, Any]] | None = None

    def to_json(self) -> str:
        data = asdict(self)
        for optional in ("judge", "messages"):
            if data[optional] is None:
                del data[optional]
        return json.dumps(data, sort_keys=True, ensure_ascii=False)

    @staticmethod
    def from_json(text: str | dict[str, Any]) -> Task:
        data = json.loads(text) if isinstance(text, str) else dict(text)
        data["solution"] = [[Step(**s) for s in turn] for turn in data["solution"]]
        data["mistakes"] = [_mistake_from_json(m) for m in data.get("mistakes", [])]
        return Task(**data)


def _mistake_from_json(data: dict[str, Any]) -> Mistake:
    followed_by = [Step(**s) for s in data.get("followed_by", [])]
    return Mistake(**{**data, "step": Step(**data["step"]), "followed_by": followed_by})


class ToolEnv:
    """Base of every environment. Subclasses add tools as public methods with type hints + Google docstrings."""

    domain: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Wrap each public tool so every call is recorded, whoever calls it (TRL calls methods directly)."""
        super().__init_subclass__(**kwargs)
        for name, fn in list(vars(cls).items()):
            if inspect.isfunction(fn) and not name.startswith("_") and name not in ("reset", "get_reward"):
                setattr(cls, name, _recorded(fn))

    def __init__(self) -> None:
        self._task: Task | None = None
        self._calls: list[tuple[str, dict[str, Any], bool]] = []  # (tool, arguments, raised_error)
        self._final_answer: str | None = None

    # -- the TRL contract ------------------------------------------------------------------------------------
    def reset(self, **row: Any) -> str | None:
        """Start a task. `row` is a dataset row; its `task` column is Task JSON. Returns extra prompt text or None."""
        task = row.get("task")
        self._task = Task.from_json(task) if task is not None else None
        self._calls = []
        self._final_answer = None
        self._setup(self._task.setup if self._task else {})
        return None

    def get_reward(self) -> float:
        """1.0 when the final state (and answer, if recorded) match the task's ground truth, else 0.0; a user
        task with a `judge` scores what its judge says (`pipelines.tasks_file.judge_score`, in [0, 1])."""
        if self._task is not None and self._task.judge is not None:
            from pipelines.tasks_file import judge_score

            return judge_score(self, self._task, self._final_answer)
        return 1.0 if self._task is not None and self._check(self._task, self._final_answer) else 0.0

    # -- for the generator, rewards and eval (private to TRL) ------------------------------------------------
    def _setup(self, setup: dict[str, Any]) -> None:
        """Build the per-task state (files, tables, events…) from `Task.setup`."""

    def _check_state(self, expected: dict[str, Any]) -> bool:
        """Does the environment's state match `expected`? Domains with state override this."""
        return True

    def _check(self, task: Task, final_answer: str | None) -> bool:
        """The expected state (if any), then every `ANSWER_SEPARATOR`-joined answer part in the final answer."""
        if task.expected_state is not None and not self._check_state(task.expected_state):
            return False
        if task.answer is None:
            return True
        return final_answer is not None and every_answer_said(task.answer, final_answer)

    def _record_final_answer(self, text: str) -> None:
        self._final_answer = text

    @classmethod
    def _tool_methods(cls) -> list[str]:
        return sorted(
            name
            for name, _ in inspect.getmembers(cls, predicate=inspect.isfunction)
            if not name.startswith("_") and name not in ("reset", "get_reward")
        )

    @classmethod
    def _tool_schemas(cls) -> list[dict[str, Any]]:
        """OpenAI-style specs built exactly as TRL/transformers build them from the methods."""
        from transformers.utils import get_json_schema

        return [get_json_schema(getattr(cls, name)) for name in cls._tool_methods()]

    def _call_tool(self, name: str, arguments: dict[str, Any]) -> tuple[str, bool]:
        """Run one tool call; returns (observation text, is_error). Never raises for tool-level problems."""
        if name not in self._tool_methods():
            self._calls.append((name, arguments, True))
            return f"Error: unknown tool {name!r}", True
        method: Callable[..., Any] = getattr(self, name)
        try:
            result = method(**arguments)
        except ToolError as exc:
            return f"Error: {exc}", True
        except TypeError as exc:  # wrong/missing argument names reach the method signature
            return f"Error: bad arguments for {name}: {exc}", True
        return _to_text(result), False


def _recorded(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(self: ToolEnv, *args: Any, **kwargs: Any) -> Any:
        try:
            result = fn(self, *args, **kwargs)
        except Exception:
            self._calls.append((fn.__name__, dict(kwargs), True))
            raise
        self._calls.append((fn.__name__, dict(kwargs), False))
        return result

    return wrapper


def _to_text(result: Any) -> str:
    if isinstance(result, str):
        return result
    return json.dumps(result, sort_keys=True, ensure_ascii=False, default=str)


def _normalise(text: str) -> str:
    return " ".join(str(text).lower().replace(",", "").split())


# A task with several answers (parallel calls, several questions) joins them with this; the final answer must
# contain every one of them, and the trace generator splits on it to phrase them.
ANSWER_SEPARATOR = " | "


def every_answer_said(answer: str, final_answer: str) -> bool:
    """Does `final_answer` contain each `ANSWER_SEPARATOR`-joined part of `answer` (after normalisation)?"""
    said = _normalise(final_answer)
    return all(_normalise(part) in said for part in answer.split(ANSWER_SEPARATOR))


# -- helpers shared by the domains' task samplers (`sample_task(rng, difficulty, parallel)` in each module) -----
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
