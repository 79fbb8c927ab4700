"""The environment's judge in words: why a rollout failed verification, for a reflexion retry.

The reason names what went wrong (a missing or unknown call, which arguments differ, a tool error, the state or
the answer check) but never the expected values: the retry has to find the fix, not copy it.
"""

from __future__ import annotations

from typing import Any

from pipelines.rl.rewards import (
    Call,
    Rollout,
    is_error_result,
    is_irrelevant,
    normalise_value,
    reference_calls,
)
from pipelines.tasks.records import Task

MAX_OBSERVATION_CHARS = 160
RETRY_PROMPT = "Please try again: fix what went wrong, then give the final answer."


def verbal_feedback(rollout: Rollout, task: Task, environment: Any) -> str:
    """One short paragraph: each thing the judge found wrong, then the retry request."""
    reasons = _reasons(rollout, task, environment)
    return "Your previous attempt failed the check. " + " ".join(reasons) + " " + RETRY_PROMPT


def _reasons(rollout: Rollout, task: Task, environment: Any) -> list[str]:
    if rollout.truncated:
        return ["The reply ran out of tokens before it finished: be brief."]
    if not rollout.finished:
        return ["It kept calling tools and never gave a final answer."]
    if is_irrelevant(task):
        return ["None of the offered tools fits this request: answer it without calling a tool."]
    reasons: list[str] = []
    if rollout.answer_still_reasoning:
        reasons.append(
            "After its reasoning closed, the reply went on reasoning instead of giving the answer."
        )
    if rollout.malformed:
        reasons.append(f"{rollout.malformed} tool call(s) could not be parsed, so they never ran.")
    errors = [(name, text) for name, text in rollout.results if is_error_result(text)]
    if errors:
        name, text = errors[-1]
        reasons.append(f"The call to `{name}` returned an error: {_short(text)}")
    if task.judge is None:
        reasons += _call_reasons(rollout.calls, reference_calls(task))
    elif task.judge.get("calls"):
        # A task file's expected calls may allow several values per argument (BFCL's rules): name the tools only.
        reasons += _call_name_reasons(rollout.calls, reference_calls(task), task.judge, environment)
    state = task.expected_state
    checkable = state is not None and hasattr(environment, "_check_state")
    if not reasons and checkable and not environment._check_state(state):
        reasons.append("The environment's final state is not what the request asked for.")
    if not reasons and task.answer is not None:
        reasons.append("The final answer does not state the result the request asked for.")
    return reasons or ["The task's check did not pass."]


def _call_reasons(made: list[Call], expected: list[Call]) -> list[str]:
    """Per reference call with no exact match: missing, or which argument names differ (values stay hidden)."""
    if expected and not made:
        return [_none_called(expected)]
    reasons = []
    unmatched = list(made)
    for ref in expected:
        exact = next((c for c in unmatched if _same(c, ref)), None)
        if exact is not None:
            unmatched.remove(exact)
            continue
        named = [c for c in unmatched if c.name == ref.name]
        if not named:
            reasons.append(_never_called(ref.name))
            continue
        wrong = _differing_arguments(named[0], ref)
        unmatched.remove(named[0])
        reasons.append(f"The call to `{ref.name}` had wrong or missing arguments: {', '.join(wrong)}.")
    known = {ref.name for ref in expected}
    extra = sorted({c.name for c in unmatched if c.name not in known})
    if extra:
        reasons.append(_not_needed(extra))
    return reasons


def _call_name_reasons(
    made: list[Call], expected: list[Call], judge: dict[str, Any], environment: Any
) -> list[str]:
    """Which needed tools were never called and which called ones were not needed, by name alone; when the
    names are right but the task's calls check fails, that the arguments are wrong. Nothing when the calls pass
    (then the state or answer check is what failed)."""
    if expected and not made:
        return [_none_called(expected)]
    needed = {c.name for c in expected}
    missing = sorted(needed - {c.name for c in made})
    extra = sorted({c.name for c in made} - needed)
    reasons = [_never_called(name) for name in missing]
    if extra:
        reasons.append(_not_needed(extra))
    if not reasons and hasattr(environment, "_calls"):
        from pipelines.tasks.task_file import calls_score

        if calls_score(environment, judge)[0] < 1.0:
            reasons.append("The calls' arguments do not all match what the request asks for.")
    return reasons


# The sentences both judges' reasons are made of (by calls and by call names alone).
def _none_called(expected: list[Call]) -> str:
    names = ", ".join(sorted({f"`{c.name}`" for c in expected}))
    return f"No tool was called; this request needs {names}."


def _never_called(name: str) -> str:
    return f"`{name}` was never called, and the request needs it."


def _not_needed(names: list[str]) -> str:
    return f"Calls to {', '.join(f'`{n}`' for n in names)} were not needed."


def _same(made: Call, ref: Call) -> bool:
    return made.name == ref.name and normalise_value(made.arguments) == normalise_value(ref.arguments)


def _differing_arguments(made: Call, ref: Call) -> list[str]:
    names = sorted(set(made.arguments) | set(ref.arguments))
    differ = [
        f"`{n}`"
        for n in names
        if normalise_value(made.arguments.get(n)) != normalise_value(ref.arguments.get(n))
    ]
    return differ or ["their types"]


def _short(text: str) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= MAX_OBSERVATION_CHARS else one_line[: MAX_OBSERVATION_CHARS - 1] + "…"
