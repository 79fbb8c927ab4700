"""The synthetic API pool: signature breadth, schema validity, simulated backend, task sampler."""

from __future__ import annotations

import json
import random
import re
from collections import Counter

import jsonschema
import pytest

from pipelines.envs.api_pool import ENUMS, ApiPoolEnv, build_pool, say_date, say_time, simulate
from pipelines.envs.base import ToolError
from pipelines.schema import argument_errors
from pipelines.tasks.api_pool import sample_clarification, sample_task
from pipelines.tasks.domains import DOMAINS
from pipelines.tasks.records import Task


@pytest.fixture(scope="module")
def pool():
    return build_pool()


@pytest.fixture(scope="module")
def tasks() -> list[Task]:
    rng = random.Random(11)
    return [sample_task(rng, parallel=i % 5 == 0) for i in range(300)]


def _run(task: Task) -> tuple[ApiPoolEnv, list[tuple[str, bool]]]:
    env = ApiPoolEnv()
    env.reset(task=task.to_json())
    results = [env._call_tool(step.tool, step.arguments) for turn in task.solution for step in turn]
    return env, results


def _types(schema: dict, out: Counter) -> None:
    out["enum" if "enum" in schema else schema.get("type", "?")] += 1
    for child in schema.get("properties", {}).values():
        _types(child, out)
    if "items" in schema:
        out["array-of-" + schema["items"].get("type", "?")] += 1
        _types(schema["items"], out)


@pytest.mark.integration
def test_pool_is_broad_valid_and_typed(pool):
    specs = [sig.spec() for sig in pool.signatures.values()]
    assert len(pool.signatures) >= 1000
    assert len({s["function"]["name"] for s in specs}) == len(specs)
    kinds: Counter = Counter()
    for spec in specs:
        params = spec["function"]["parameters"]
        jsonschema.Draft202012Validator.check_schema(params)
        assert set(params["required"]) <= set(params["properties"])
        assert spec["function"]["description"]
        for prop in params["properties"].values():
            _types(prop, kinds)
    for kind in (
        "string",
        "integer",
        "number",
        "boolean",
        "enum",
        "object",
        "array-of-object",
        "array-of-string",
    ):
        assert kinds[kind] > 20, (kind, kinds)
    optional_with_default = sum(
        "default" in p
        for s in specs
        for name, p in s["function"]["parameters"]["properties"].items()
        if name not in s["function"]["parameters"]["required"]
    )
    assert optional_with_default > 100


@pytest.mark.integration
def test_pool_is_deterministic_per_seed():
    build_pool.cache_clear()
    first = {n: s.spec() for n, s in build_pool(0).signatures.items()}
    build_pool.cache_clear()
    again = {n: s.spec() for n, s in build_pool(0).signatures.items()}
    other = {n: s.spec() for n, s in build_pool(1).signatures.items()}
    assert first == again
    assert sum(first[n] != other.get(n) for n in first) > len(first) // 4


def test_simulated_responses_are_deterministic_and_computed(pool):
    sig = next(s for s in pool.signatures.values() if s.family == "create" and "amount" in s.required)
    spec, api = sig.spec(), sig.behaviour()
    args = {name: _valid_value(sig, name) for name in sig.required} | {"amount": 100.0}
    first, second = simulate(spec, api, args), simulate(spec, api, json.loads(json.dumps(args)))
    assert first == second
    assert re.fullmatch(r"[A-Z]{3}-\d{6}", first[f"{sig.noun}_id"]) and first["status"]
    doubled = simulate(spec, api, {**args, "amount": 200.0})
    assert doubled["total"] == pytest.approx(2 * first["total"], abs=0.011)  # computed from the arguments
    assert doubled[f"{sig.noun}_id"] != first[f"{sig.noun}_id"]


def _valid_value(sig, name: str):
    rng = random.Random(0)
    from pipelines.envs.api_pool import sample_value

    return sample_value(sig.params[name], rng, sig.noun)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda a, s: {**a, "priority": "High"}, "is not one of"),
        (lambda a, s: {**a, "priority": 3}, "is not of type"),
        (lambda a, s: {**a, "bogus": 1}, "unknown parameter 'bogus'"),
        (lambda a, s: {k: v for k, v in a.items() if k != s.required[0]}, "missing required parameter"),
    ],
)
def test_wrong_types_enums_and_names_raise_tool_errors(pool, mutate, message):
    sig = next(
        s for s in pool.signatures.values() if "priority" in s.params and s.family in ("create", "compute")
    )
    args = {name: _valid_value(sig, name) for name in sig.required}
    simulate(sig.spec(), sig.behaviour(), args)  # the valid call goes through
    with pytest.raises(ToolError, match=message):
        simulate(sig.spec(), sig.behaviour(), mutate(args, sig))


def test_semantic_errors_dates_times_ids_and_ranges(pool):
    by_kind = {}
    for sig in pool.signatures.values():
        for name, f in sig.params.items():
            if name in sig.required:
                by_kind.setdefault(f.kind, (sig, name))
    cases = {
        "date": "March 4, 2025",
        "time": "2:30 pm",
        "entity_id": "Maria Lopez",
        "email": "maria at example",
    }
    for kind, bad in cases.items():
        sig, name = by_kind[kind]
        args = {n: _valid_value(sig, n) for n in sig.required if sig.params[n].kind != "entity_id"}
        args |= {n: "ABC-123456" for n in sig.required if sig.params[n].kind == "entity_id"}
        simulate(sig.spec(), sig.behaviour(), args)
        assert argument_errors(sig.spec(), {**args, name: bad}) == []  # schema-valid, yet the API refuses it
        with pytest.raises(ToolError, match=name):
            simulate(sig.spec(), sig.behaviour(), {**args, name: bad})
    sig, name = by_kind["date_range"]
    args = {n: _valid_value(sig, n) for n in sig.required}
    swapped = {"start": args[name]["end"], "end": args[name]["start"]}
    with pytest.raises(ToolError, match="is before start"):
        simulate(sig.spec(), sig.behaviour(), {**args, name: swapped})


@pytest.mark.integration
def test_sampled_tasks_solve_with_reward_one(tasks):
    shapes = Counter()
    for task in tasks:
        env, results = _run(task)
        assert all(not failed for _, failed in results), (task.request, results)
        assert env.get_reward() == 0.0  # no final answer yet
        env._record_final_answer(task.final_template.format(answer=task.answer))
        assert env.get_reward() == 1.0, task.request
        shapes[(len(task.solution), max(len(t) for t in task.solution))] += 1
        names = {t["function"]["name"] for t in task.setup["tools"]}
        assert {s.tool for turn in task.solution for s in turn} < names  # distractor tools are declared too
    assert shapes[(1, 1)] > 30 and any(calls >= 2 for _, calls in shapes) and any(t >= 3 for t, _ in shapes)


def test_reward_needs_every_call_and_the_right_answer(tasks):
    chain = next(t for t in tasks if len(t.solution) >= 2)
    env = ApiPoolEnv()
    env.reset(task=chain.to_json())
    first = chain.solution[0][0]
    env._call_tool(first.tool, first.arguments)
    env._record_final_answer(chain.final_template.format(answer=chain.answer))
    assert env.get_reward() == 0.0  # the answer alone is not enough: the actions were never taken
    env, _ = _run(chain)
    env._record_final_answer("I could not find it.")
    assert env.get_reward() == 0.0


def _spoken(value) -> set[str]:
    """Every way the request may say a value."""
    text = str(value)
    forms = {text, f"{value:g}" if isinstance(value, float) else text}
    if isinstance(value, str) and len(value) == 10 and value[4] == "-":
        forms |= {say_date(value, style) for style in range(3)}
    if isinstance(value, str) and len(value) == 5 and value[2] == ":":
        forms |= {say_time(value, True)}
    if isinstance(value, int) and not isinstance(value, bool) and value <= 10:
        forms.add(
            ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")[value]
        )
    forms |= {label for labels in ENUMS.values() for key, label in labels.items() if key == value}
    return forms


def _leaves(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, list):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


def test_argument_values_are_said_in_the_request(tasks):
    """The data teaches extraction: every argument value (except ids a lookup returns) is in the request."""
    checked = 0
    for task in tasks:
        looked_up = {str(v) for m in [task] for t in m.solution[1:] for s in t for v in s.arguments.values()}
        for turn in task.solution:
            for step in turn:
                for value in _leaves(step.arguments):
                    if isinstance(value, bool) or (str(value) in looked_up and len(task.solution) > 1):
                        continue
                    said = _spoken(value)
                    assert any(form in task.request for form in said), (value, task.request)
                    checked += 1
    assert checked > 500


def test_mistakes_are_schema_valid_but_rejected_by_the_api(tasks):
    seen = 0
    for task in tasks:
        specs = {t["function"]["name"]: t for t in task.setup["tools"]}
        for mistake in task.mistakes:
            assert argument_errors(specs[mistake.step.tool], mistake.step.arguments) == []
            env = ApiPoolEnv()
            env.reset(task=task.to_json())
            text, failed = env._call_tool(mistake.step.tool, mistake.step.arguments)
            assert failed and mistake.error_contains in text, (text, mistake)
            seen += 1
    assert seen > 100


def test_clarification_drops_a_required_value():
    rng = random.Random(5)
    for _ in range(40):
        case = sample_clarification(rng)
        step = case.task.solution[0][0]
        assert case.missing in step.arguments
        value = step.arguments[case.missing]
        leaves = [str(v) for v in _leaves(value) if not isinstance(v, bool) and len(str(v)) >= 4]
        assert not any(form in case.request for leaf in leaves for form in _spoken(leaf) if len(form) >= 4)
        assert case.question.endswith("?") and case.missing.replace("_", " ") in case.question


def test_env_is_registered_and_task_json_round_trips(tasks):
    assert DOMAINS["api"][0] is ApiPoolEnv
    assert ApiPoolEnv._tool_methods() == []  # tools come from the task, so TRL cannot expose them
    task = tasks[0]
    assert Task.from_json(task.to_json()) == task
    env = ApiPoolEnv()
    env.reset(task=task.to_json())
    text, failed = env._call_tool("not_a_tool", {})
    assert failed and "unknown tool" in text


def test_sampler_is_deterministic():
    first = [sample_task(random.Random(3)).to_json() for _ in range(2)]
    assert first[0] == first[1]
    assert sample_task(random.Random(3)).to_json() != sample_task(random.Random(4)).to_json()


def test_parallel_tasks_include_bfcls_shape_one_tool_per_listed_case():
    """BFCL's `parallel` category offers one function and expects one call per case the request lists; the
    generator's parallel tasks must teach that shape too, not only calls to different tools."""
    rng = random.Random(5)
    parallel = [sample_task(rng, parallel=True) for _ in range(80)]
    repeats = [t for t in parallel if len({s.tool for s in t.solution[0]}) == 1]
    assert 0.3 < len(repeats) / len(parallel) < 0.7
    for task in repeats:
        assert len(task.solution) == 1 and 2 <= len(task.solution[0]) <= 4, task.request
        calls = [s.arguments for s in task.solution[0]]
        assert len({json.dumps(c, sort_keys=True) for c in calls}) == len(calls), task.request
        varied = {k for c in calls for k in c if c[k] != calls[0][k]}
        assert 1 <= len(varied) <= 2 and all(c.keys() == calls[0].keys() for c in calls), task.request
        for c in calls:  # every case's own values are in the request, in one of the ways values are said
            assert all(any(f in task.request for f in _spoken(c[k])) for k in varied), (c, task.request)
        env, results = _run(task)
        assert not any(failed for _, failed in results), (task.request, results)
        env._record_final_answer(task.final_template.format(answer=task.answer))
        assert env.get_reward() == 1.0, task.request
    for task in repeats:  # each follow-up phrase once, "finally" only before the last case
        assert all(task.request.count(w) <= 1 for w in ("once more", "and also", "finally")), task.request
        assert "finally" not in task.request or task.request.rfind(", and") <= task.request.find("finally")
    repeat_form = [
        t for t in repeats if any(w in t.request for w in ("then repeat", "the same", "again", "; also"))
    ]
    assert 0 < len(repeat_form) < len(repeats)  # both the list form and the repeat form occur
