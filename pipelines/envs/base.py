"""The tool-environment contract shared by the trace generator, RL and eval (see docs/DESIGN.md, Environments).

TRL's `GRPOTrainer(environment_factory=…)` exposes *every* public function of the environment class as a tool
(inherited ones included) and calls `reset(**row)` with all dataset columns. So: tools are the public methods
of each concrete class, and everything on this base is either `reset`/`get_reward` or starts with `_`.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
from collections.abc import Callable
from functools import cache
from typing import Any, ClassVar

from pipelines.tasks.records import Task, every_answer_said


class ForkError(Exception):
    """An environment whose state cannot be copied was asked to fork (tree rollouts)."""


class ToolError(Exception):
    """A tool's own, expected failure (bad path, unknown unit…): shown to the model as the observation."""


class ToolEnv:
    """Base of every environment. Subclasses add tools as public methods with type hints + Google docstrings."""

    domain: ClassVar[str] = ""
    _reset_error: str | None = None  # what made a `guarded` class's reset fail (see `guarded`)
    # Tree rollouts (pipelines/rl/rollouts.py) copy an environment at a fork; a class whose state lives outside
    # this process says here why it cannot be copied (None: `_fork` gives an independent copy).
    _fork_refusal: ClassVar[str | None] = None

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
        task with a `judge` scores what its judge says (`pipelines.tasks.task_file.judge_score`, in [0, 1])."""
        if self._task is not None and self._task.judge is not None:
            from pipelines.tasks.task_file import judge_score

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

    def _fork(self) -> ToolEnv:
        """An independent copy of this environment mid-task: calls on the copy never touch the original's state,
        call record or final answer. Classes holding handles (a database connection) override it."""
        if self._fork_refusal is not None:
            raise ForkError(f"{type(self).__name__} cannot fork: {self._fork_refusal}")
        return copy.deepcopy(self)

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


@cache
def guarded(env_class: type[ToolEnv]) -> type[ToolEnv]:
    """`env_class` with a `reset` and `get_reward` that never raise, for rollouts that must not crash a run.

    TRL calls both unguarded (its tool calls it does guard). A failing reset leaves no task and `_reset_error`
    set, which the `outcome` reward counts as an `env_error` and scores 0. Same class name, so TRL's per-domain
    reward column keeps the domain's name; cached, so one class maps to one subclass.
    """

    def reset(self: ToolEnv, **row: Any) -> str | None:
        self._reset_error = None
        try:
            return env_class.reset(self, **row)
        except Exception as exc:
            self._reset_error = f"{type(exc).__name__}: {exc}"
            self._task = None
            return None

    def get_reward(self: ToolEnv) -> float:
        try:
            return float(env_class.get_reward(self))
        except Exception:
            return 0.0

    namespace = {"reset": reset, "get_reward": get_reward, "__doc__": env_class.__doc__}
    return type(env_class.__name__, (env_class,), {"__module__": env_class.__module__, **namespace})
