"""Code tasks: write a function that passes tests, or compute an answer by running code (the env is pipelines/envs/code_runner.py; problems come from pipelines/tasks/code_problems.py)."""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipelines.envs.code_runner import (
    DOMAIN,
    SOLUTION_MODULE,
    Case,
    call_text,
    same_value,
)
from pipelines.tasks.building import TaskKind, arrange_turns, sample_from, stable_task_id, turn_of
from pipelines.tasks.code_problems import PROBLEMS, RECIPES, ComputeRecipe, Problem
from pipelines.tasks.records import ANSWER_SEPARATOR, Mistake, Step, Task


# -- sampling: function tasks -------------------------------------------------------------------------------
@functools.cache
def _host_function(code: str, name: str) -> Callable[..., Any]:
    """Our own reference/buggy code, run in-process only to derive expected values (never model-written code)."""
    namespace: dict[str, Any] = {"__name__": "midtrain_reference"}
    exec(compile(code, f"<{name}>", "exec"), namespace)
    return namespace[name]


def _host_call(code: str, name: str, args: list[Any]) -> tuple[bool, Any]:
    """(True, JSON-normalised return value) or (False, exception name)."""
    try:
        value = _host_function(code, name)(*copy.deepcopy(args))
        return True, _as_json(value)
    except Exception as exc:
        return False, type(exc).__name__


def _expected(problem: Problem, args: list[Any]) -> Any:
    ok, value = _host_call(problem.reference, problem.name, args)
    if not ok:  # a bank bug (bad generator or reference), never a task to hand out
        raise RuntimeError(f"problem {problem.name}: the reference raised {value} for {args!r}")
    return value


def _as_json(value: Any) -> Any:
    """What the value is after a Task JSON round trip (sorted keys), so every rendering of it agrees."""
    return json.loads(json.dumps(value, sort_keys=True))


def _exposes_bug(problem: Problem, args: list[Any]) -> bool:
    assert isinstance(problem.buggy, str), "Problem.__post_init__ turns a (line, bug) pair into the draft"
    ok, got = _host_call(problem.buggy, problem.name, args)
    return not ok or not same_value(got, _expected(problem, args))


def _cases(rng: random.Random, problem: Problem) -> tuple[list[Case], list[Any]]:
    """Visible examples (one exposing the bug) and hidden tests; returns them and the exposing arguments."""
    candidates: dict[str, list[Any]] = {}
    for args in [*problem.edge_cases, *(problem.random_args(rng) for _ in range(4))]:
        if not isinstance(args, tuple):
            raise RuntimeError(f"problem {problem.name}: arguments must come as a tuple, got {args!r}")
        as_json = _as_json(list(args))
        candidates.setdefault(json.dumps(as_json, sort_keys=True), as_json)
    arguments = list(candidates.values())
    exposing = [a for a in arguments if _exposes_bug(problem, a)]
    if not exposing:
        raise RuntimeError(f"problem {problem.name}: no test case exposes the buggy draft")
    shown = rng.choice(exposing)
    rest = [a for a in arguments if a is not shown]
    rng.shuffle(rest)
    visible = [shown, *rest[:2]]
    rng.shuffle(visible)
    cases = [Case(a, _expected(problem, a), False) for a in visible]
    cases += [Case(a, _expected(problem, a), True) for a in rest[2:]]
    return cases, shown


def _test_json(case: Case) -> dict[str, Any]:
    return {"args": case.args, "expected": case.expected, "hidden": case.hidden}


_FUNCTION_REQUESTS = (
    "Write a Python function `{signature}` that {description}.\nSave it with write_solution and check it with "
    "run_tests (which also runs hidden tests).\nExamples:\n{examples}",
    "I need `{signature}`: it {description}. Please implement it, save it as the solution and make sure the "
    "tests pass.\nFor example:\n{examples}",
    "Implement `{name}` in Python; it {description}.\nSignature: `{signature}`\n{examples}\nUse the code "
    "runner's tests to confirm it works.",
)


def _wrong_name(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.capitalize() for p in rest) if rest else f"{name}_fn"


def _probe_script(function: str, args: list[Any]) -> str:
    """Run the saved solution on one example and print the result, as a developer tries it by hand."""
    return f"from {SOLUTION_MODULE} import {function}\nprint({call_text(function, args, 10**6)})\n"


def _build_function(rng: random.Random, difficulty: int, parallel: bool) -> Task:
    problem = rng.choice(PROBLEMS)
    cases, exposing = _cases(rng, problem)
    visible = [c for c in cases if not c.hidden]
    examples = "\n".join(f"  {call_text(problem.name, c.args, 10**6)} == {c.expected!r}" for c in visible)
    request = rng.choice(_FUNCTION_REQUESTS).format(
        signature=problem.signature, description=problem.description, name=problem.name, examples=examples
    )
    write = Step("write_solution", {"code": problem.reference})
    # Probes try the *saved* solution on examples. They come after write_solution, so in a recovery trace the
    # buggy draft is the first code written, and the correct function appears only after the failing run.
    probes = [
        Step("run_python", {"code": _probe_script(problem.name, c.args)}) for c in visible[: difficulty - 2]
    ]
    solution = arrange_turns([[write], probes, [Step("run_tests", {})]], parallel)
    buggy = Step("write_solution", {"code": problem.buggy})
    renamed = problem.reference.replace(f"def {problem.name}(", f"def {_wrong_name(problem.name)}(")
    mistakes = [
        Mistake(turn_of(solution, write), buggy, f"FAIL {call_text(problem.name, exposing)}", problem.bug,
                followed_by=[Step("run_tests", {})]),
        Mistake(turn_of(solution, write), Step("write_solution", {"code": renamed}), "must define a function named",
                f"The tests call `{problem.name}`, but I named the function `{_wrong_name(problem.name)}`; I'll "
                "rename it."),
    ]  # fmt: skip
    tried = f", try it on {len(probes)} example(s) with run_python," if probes else ""
    plan = f"Write `{problem.name}` so that it {problem.description}; save it with write_solution{tried} and "
    plan += f"run run_tests until all {len(cases)} tests pass."
    return Task(
        domain=DOMAIN,
        task_id=stable_task_id(DOMAIN, "function", [request, [c.args for c in cases], difficulty, parallel]),
        request=request,
        setup={"function": problem.name, "tests": [_test_json(c) for c in cases]},
        solution=solution,
        expected_state={"all_tests_pass": True},
        difficulty=sum(len(turn) for turn in solution),
        mistakes=mistakes,
        plan=plan,
        final_template=f"`{problem.name}` is saved in solution.py and passes all {len(cases)} tests, the hidden "
        "ones included.",
    )


# -- sampling: compute tasks --------------------------------------------------------------------------------
def _host_output(snippet: str) -> str:
    """What our own snippet prints, computed in-process (the sandboxed run must print the same)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        exec(compile(snippet, "<compute>", "exec"), {"__name__": "midtrain_compute"})
    return buffer.getvalue().strip()


@dataclass(frozen=True)
class _Question:
    step: Step
    question: str
    label: str
    value: str
    mistake: Step
    recipe: ComputeRecipe


def _question(rng: random.Random, recipe: ComputeRecipe) -> _Question:
    slots = recipe.slots(rng)
    snippet = recipe.snippet.format(**slots)
    crashing = "\n".join(snippet.splitlines()[1:])  # the import line forgotten
    return _Question(
        step=Step("run_python", {"code": snippet}),
        question=recipe.question.format(**slots),
        label=recipe.label.format(**slots),
        value=_host_output(snippet),
        mistake=Step("run_python", {"code": crashing}),
        recipe=recipe,
    )


_COMPUTE_REQUESTS = (
    "{question} Use Python to work it out.",
    "{question} Please compute it with the code runner rather than by hand.",
    "Could you run a quick Python script to find out: {question}",
)
_COMPUTE_MULTI = (
    "Use Python to answer these {n} questions:\n{questions}",
    "Please compute the following with the code runner:\n{questions}",
)


def _build_compute(rng: random.Random, difficulty: int, parallel: bool) -> Task:
    recipes = rng.sample(RECIPES, difficulty)
    questions = [_question(rng, recipe) for recipe in recipes]
    solution = arrange_turns([[q.step for q in questions]], parallel)
    if len(questions) == 1:
        request = rng.choice(_COMPUTE_REQUESTS).format(question=questions[0].question)
    else:
        numbered = "\n".join(f"{i}. {q.question}" for i, q in enumerate(questions, start=1))
        request = rng.choice(_COMPUTE_MULTI).format(n=len(questions), questions=numbered)
    mistakes = [
        Mistake(turn_of(solution, q.step), q.mistake, f"name '{q.recipe.missing}' is not defined",
                f"The script used `{q.recipe.missing}` without importing it; I'll add "
                f"`{q.recipe.snippet.splitlines()[0]}` at the top.")
        for q in questions
    ]  # fmt: skip
    answer = ANSWER_SEPARATOR.join(q.value for q in questions)
    final = "\n".join(f"{q.label}: {q.value}" for q in questions)
    return Task(
        domain=DOMAIN,
        task_id=stable_task_id(DOMAIN, "compute", [request, answer, parallel]),
        request=request,
        setup={},
        solution=solution,
        answer=answer,
        difficulty=len(questions),
        mistakes=mistakes,
        plan=" ".join(f"Compute {q.label} with a short run_python script." for q in questions)
        + (" The scripts are independent, so I'll run them together." if parallel else ""),
        final_template=final.replace("{", "{{").replace("}", "}}"),
    )


TASK_KINDS = [
    TaskKind("compute", _build_compute, range(1, 3), parallel_from=2),
    TaskKind("function", _build_function, range(2, 5), parallel_from=4),
]


def sample_task(rng: random.Random, difficulty: int | None = None, parallel: bool = False) -> Task:
    """A verifiable code task needing `difficulty` calls (1–4); `parallel` puts ≥2 runs in one turn."""
    return sample_from(TASK_KINDS, DOMAIN, rng, difficulty, parallel)
