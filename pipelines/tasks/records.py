"""The task record: a verifiable request with its environment setup, reference solution and ground truth.

Environments reset to a Task, samplers and task files build them, the trace generator solves them, and RL and
eval score against them. Kept free of environment code so both sides can import it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


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
    # User tasks (pipelines/tasks/task_file.py): how success is judged, and the conversation that opens the task.
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


def _normalise(text: str) -> str:
    return " ".join(str(text).lower().replace(",", "").split())


# A task with several answers (parallel calls, several questions) joins them with this; the final answer must
# contain every one of them, and the trace generator splits on it to phrase them.
ANSWER_SEPARATOR = " | "


def every_answer_said(answer: str, final_answer: str) -> bool:
    """Does `final_answer` contain each `ANSWER_SEPARATOR`-joined part of `answer` (after normalisation)?"""
    said = _normalise(final_answer)
    return all(_normalise(part) in said for part in answer.split(ANSWER_SEPARATOR))
