"""The verified trace generator: every pattern's shape, verification that catches tampering, determinism,
rendering through the chat template, the RL/eval prompt rows and the CLI."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from collections import Counter

import pytest

from pipelines.chat import render_trace
from pipelines.codecs import codec_for
from pipelines.envs.calculator import CalculatorEnv
from pipelines.envs.instanced import split_answers, tasks_of
from pipelines.errors import BadInput
from pipelines.schema import PATTERNS, Trace, content_id, function_spec
from pipelines.tasks.domains import DOMAINS
from pipelines.tasks.generate import (
    DEFAULT_CLUSTERS,
    ToolOffer,
    class_tools_json,
    generate_traces,
    resolve_patterns,
    sample_prompt_rows,
    supported_patterns,
    task_to_prompt_row,
    vary_request,
    verify_trace,
)
from pipelines.tasks.records import Task
from pipelines.thought import load_thought_schema

ALL = sorted(DOMAINS)
EXPECTED_PATTERNS = set().union(*(supported_patterns(d) for d in ALL))


@pytest.fixture(scope="module")
def result():
    return generate_traces(ALL, 180, seed=7)


@pytest.fixture(scope="module")
def by_pattern(result) -> dict[str, list[Trace]]:
    out: dict[str, list[Trace]] = {}
    for trace in result.traces:
        out.setdefault(trace.meta["pattern"], []).append(trace)
    return out


def _retrace(trace: Trace, **changes) -> Trace:
    """A modified copy with its content id recomputed (so only the intended check can fail)."""
    body = {**trace.to_dict(), **changes}
    body.pop("id")
    return Trace.model_validate({**body, "id": content_id(body)})


@pytest.mark.integration
def test_every_trace_verifies_and_every_pattern_appears(result):
    assert result.rejects == [], Counter(r["reason"] for r in result.rejects)
    assert len(result.traces) == 180 and result.pass_rate == 1.0
    assert set(result.by_pattern) == EXPECTED_PATTERNS
    assert set(result.by_domain) == set(ALL)
    mix = resolve_patterns(ALL, None)
    for pattern, share in mix.items():  # each pattern a meaningful share, near its configured probability
        assert result.by_pattern[pattern] >= 0.4 * share * 180, (pattern, result.by_pattern)
    for trace in result.traces[
        ::10
    ]:  # generate_traces verified them all; re-verifying a sample is independent
        assert verify_trace(trace) == []


@pytest.mark.integration
def test_meta_ids_and_clusters(result):
    for trace in result.traces:
        meta = trace.meta
        assert {"pattern", "difficulty", "domain", "task_id", "task"} <= set(meta)
        assert meta["pattern"] in PATTERNS and trace.cluster == DEFAULT_CLUSTERS[meta["pattern"]]
        body = trace.to_dict()
        body.pop("id")
        assert trace.id == content_id(body)
        if meta["pattern"] == "instanced":
            tasks = tasks_of(meta["task"])
            assert meta["task_id"] == "+".join(t.task_id for t in tasks.values())
        else:
            task = Task.from_json(meta["task"])
            assert task.task_id == meta["task_id"] and task.domain == meta["domain"]
        calls = len(trace.calls())
        if meta["pattern"] in ("irrelevance", "clarify"):
            assert meta["difficulty"] == 0
        elif meta["pattern"] in ("recovery", "code"):
            assert calls > meta["difficulty"] >= 1  # the mistake's calls come on top of the solution's
        else:
            assert calls == meta["difficulty"] >= 1


def _sections(msg) -> list[str]:
    return [s.section for s in msg.thinking]


@pytest.mark.integration
def test_thinking_habits(result):
    for trace in result.traces:
        turns = [m for m in trace.messages if m.role == "assistant"]
        assert _sections(turns[0])[0] == "plan"
        if trace.meta["pattern"] not in ("irrelevance", "clarify"):
            assert "verify" in _sections(turns[-1]) and not turns[-1].tool_calls and turns[-1].content
            for i, msg in enumerate(trace.messages):  # after tool results comes an observation note
                if msg.role == "assistant" and i > 0 and trace.messages[i - 1].role == "tool":
                    assert "observe" in _sections(msg)


@pytest.mark.integration
def test_single_sequential_parallel_shapes(by_pattern):
    for trace in by_pattern["single"]:
        assert len(trace.calls()) == 1
    for trace in by_pattern["sequential"]:
        assert sum(bool(m.tool_calls) for m in trace.messages) >= 2
    for trace in by_pattern["parallel"]:  # one round of calls, two or more in it
        assert next(len(m.tool_calls) for m in trace.messages if m.tool_calls) >= 2
        assert len(json.loads(trace.meta["task"])["solution"]) == 1


def test_a_parallel_draw_needing_two_rounds_is_recorded_sequential() -> None:
    from pipelines.tasks.generate import shape_pattern
    from pipelines.tasks.records import Step, Task

    call = Step("f", {})
    two_rounds = Task("calculator", "t", "r", {}, solution=[[call, call], [call]])
    one_round = Task("calculator", "t", "r", {}, solution=[[call, call]])
    assert shape_pattern("parallel", two_rounds) == "sequential"
    assert shape_pattern("parallel", one_round) == "parallel"
    assert shape_pattern("recovery", two_rounds) == "recovery"


@pytest.mark.integration
def test_instanced_tags_are_consistent(by_pattern):
    assert by_pattern["instanced"]
    for trace in by_pattern["instanced"]:
        declared = [m.instance for m in trace.messages if m.role == "user" and m.instance]
        assert len(declared) >= 2 and len(set(declared)) == len(declared)
        assert any(m.role == "user" and not m.instance for m in trace.messages)  # the shared intro
        call_instance = {c.id: c.instance for c in trace.calls()}
        assert set(call_instance.values()) == set(declared)
        for msg in trace.messages:
            if msg.role == "tool":
                assert msg.instance == call_instance[msg.tool_call_id]
        assert set(split_answers(trace.messages[-1].content)) == set(declared)
        assert set(tasks_of(trace.meta["task"])) == set(declared)


@pytest.mark.integration
def test_recovery_shows_error_then_reflection_then_success(by_pattern):
    for pattern in ("recovery", "code"):
        for trace in by_pattern.get(pattern, []):
            msgs = trace.messages
            expected = trace.meta["mistake"]["error_contains"]
            bad = next(i for i, m in enumerate(msgs) if m.role == "tool" and expected in m.content)
            reflect = next(i for i in range(bad, len(msgs)) if msgs[i].role == "assistant")
            assert "reflect" in _sections(msgs[reflect]) and msgs[reflect].tool_calls
            assert any(m.role == "tool" and not m.content.startswith("Error:") for m in msgs[reflect:])
    assert any(
        m.content.startswith("Error:") for t in by_pattern["recovery"] for m in t.messages if m.role == "tool"
    )


@pytest.mark.integration
def test_irrelevance_and_clarify_make_no_calls(by_pattern):
    for trace in by_pattern["irrelevance"]:
        task = Task.from_json(trace.meta["task"])
        own = {t["function"]["name"] for t in task_to_prompt_row_tools(task)}
        assert not trace.calls() and not own & set(trace.tool_names())
    for trace in by_pattern["clarify"]:
        assert not trace.calls() and trace.messages[-1].content.endswith("?")
        assert trace.meta["clarify"]["missing"].replace("_", " ") in trace.messages[-1].content


def task_to_prompt_row_tools(task: Task) -> list[dict]:
    return json.loads(task_to_prompt_row(task)["tools"])


@pytest.mark.integration
@pytest.mark.parametrize("tamper", ["observation", "answer", "verify", "undeclared", "irrelevant", "clarify"])
def test_verification_catches_tampering(by_pattern, tamper):
    def first(pattern, cond=lambda t: True):
        return next(t for t in by_pattern[pattern] if cond(t))

    if tamper == "observation":
        trace = first("sequential")
        data = trace.to_dict()
        i = next(i for i, m in enumerate(data["messages"]) if m["role"] == "tool")
        data["messages"][i]["content"] += " (edited)"
        assert verify_trace(_retrace(trace, messages=data["messages"]))[0][0] == "execution"
    elif tamper == "answer":
        trace = first("single", lambda t: Task.from_json(t.meta["task"]).answer)
        data = trace.to_dict()
        data["messages"][-1]["content"] = "I am not sure."
        assert verify_trace(_retrace(trace, messages=data["messages"]))[0][0] == "outcome"
    elif tamper == "verify":
        trace = first("single")
        data = trace.to_dict()
        data["messages"][-1]["thinking"] = [
            s for s in data["messages"][-1]["thinking"] if s["section"] != "verify"
        ]
        assert verify_trace(_retrace(trace, messages=data["messages"]))[0][0] == "structure"
    elif tamper == "undeclared":
        trace = first("single")
        assert verify_trace(_retrace(trace, tools=[]))[0][0] == "format"
    elif tamper == "irrelevant":
        trace = first("irrelevance")
        own = task_to_prompt_row_tools(Task.from_json(trace.meta["task"]))
        assert verify_trace(_retrace(trace, tools=own))[0][0] == "outcome"
    else:
        trace = first("clarify")
        data = trace.to_dict()
        data["messages"][-1]["content"] = "Sure, done."
        assert verify_trace(_retrace(trace, messages=data["messages"]))[0][0] == "outcome"


@pytest.mark.integration
def test_generation_is_deterministic():
    first = [t.to_json() for t in generate_traces(ALL, 30, seed=3).traces]
    again = [t.to_json() for t in generate_traces(ALL, 30, seed=3).traces]
    other = [t.to_json() for t in generate_traces(ALL, 30, seed=4).traces]
    assert first == again
    assert first != other


def test_pattern_and_cluster_overrides():
    res = generate_traces(["api"], 12, seed=1, patterns={"parallel": 1.0}, clusters={"parallel": "fanout"})
    assert {t.meta["pattern"] for t in res.traces} == {"parallel"}
    assert {t.cluster for t in res.traces} == {"fanout"}
    with pytest.raises(BadInput, match="code"):
        generate_traces(["api"], 1, seed=1, patterns={"code": 1.0})
    with pytest.raises(BadInput, match="unknown domain"):
        generate_traces(["nope"], 1, seed=1)
    with pytest.raises(BadInput, match="unknown pattern"):
        generate_traces(["api"], 1, seed=1, patterns={"singel": 1.0})


@pytest.mark.integration
def test_each_pattern_renders_with_assistant_only_loss(by_pattern, tokenizer):
    schema = load_thought_schema("think-plan-reflect")
    for pattern, traces in sorted(by_pattern.items()):
        trace = traces[0]
        rendered = render_trace(trace, tokenizer, schema)
        ids, mask = rendered.input_ids, rendered.assistant_masks
        runs, start = [], None
        for i, bit in enumerate([*mask, 0]):
            if bit and start is None:
                start = i
            elif not bit and start is not None:
                runs.append(tokenizer.decode(ids[start:i]))
                start = None
        assistant = [m for m in trace.messages if m.role == "assistant"]
        assert len(runs) == len(assistant), pattern
        outside = tokenizer.decode([t for t, b in zip(ids, mask, strict=True) if not b])
        for msg in trace.messages:
            if msg.role in ("user", "tool") and len(msg.content) > 12:
                assert msg.content.strip()[:12] in outside, (pattern, msg.role)
        for run, msg in zip(runs, assistant, strict=True):
            assert "<tool_response>" not in run and "<|im_start|>user" not in run
            assert run.endswith(
                "<|im_end|>"
            )  # the turn ends on its end-of-turn token: the model learns to stop
            reply = codec_for(tokenizer).parse(run, schema)
            assert reply.thinking == msg.thinking, pattern
            wanted = [{"name": c.name, "arguments": {**c.arguments, **({"_instance": c.instance} if c.instance else {})}}
                      for c in msg.tool_calls]  # fmt: skip
            assert reply.tool_calls == wanted, pattern


def test_prompt_rows_reset_the_environment():
    rows = sample_prompt_rows(ALL, len(ALL), seed=2)
    assert [r["environment"] for r in rows] == ALL
    for row in rows:
        assert [m["role"] for m in row["prompt"]] == ["system", "user"]
        task = Task.from_json(row["task"])
        assert row["prompt"][1]["content"] == task.request and task.domain == row["environment"]
        tools = json.loads(row["tools"])
        names = {t["function"]["name"] for t in tools}
        assert {s.tool for turn in task.solution for s in turn} <= names
        env = DOMAINS[row["environment"]][0]()
        assert env.reset(**row) is None and env._task == task
    fixed = sample_prompt_rows(ALL, 6, seed=2, fixed_tools_only=True)
    assert "api" not in {r["environment"] for r in fixed}


def _cli(*args: str, cwd, hash_seed: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipelines.cli", "data", "generate", *args]
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}  # byte-identical must not hinge on set/str hash order
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=300, check=False)


@pytest.mark.integration
def test_cli_writes_byte_identical_files(tmp_path):
    domains = ",".join(d for d in ALL if d != "coderunner")  # keep the subprocesses quick
    for name, hash_seed in (("a", "1"), ("b", "2")):
        args = ("--domains", domains, "--n", "12", "--seed", "5", "--out", str(tmp_path / f"{name}.jsonl"))
        done = _cli(
            *args, "--rejects", str(tmp_path / f"{name}-rejects.jsonl"), cwd=tmp_path, hash_seed=hash_seed
        )
        assert done.returncode == 0, done.stderr
    first = (tmp_path / "a.jsonl").read_bytes()
    assert first == (tmp_path / "b.jsonl").read_bytes()
    lines = first.decode().splitlines()
    assert len(lines) == 12 and all(
        Trace.model_validate(json.loads(line)).to_json() == line for line in lines
    )
    assert "distinct signatures" in done.stderr and "traces by pattern" in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--domains", "nope", "--n", "1"], "unknown domain 'nope'"),
        (["--domains", "api", "--n", "1", "--patterns", "single"], "NAME=NUMBER"),
        (["--domains", "api", "--n", "1", "--patterns", "code=1"], "'code' is not possible"),
    ],
)
def test_cli_bad_input_exits_2(tmp_path, monkeypatch, capsys, args, message):
    from pipelines import cli

    monkeypatch.setattr(
        sys, "argv", ["midtrain", "data", "generate", *args, "--out", str(tmp_path / "x.jsonl")]
    )
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


# -- `offered_tools: task` ---------------------------------------------------------------------------------------
TASK_OFFER = ToolOffer("task", domain_distractors=1, pool_distractors=1, request_variation=1.0)


@pytest.fixture(scope="module")
def offered():
    return generate_traces(ALL, 120, seed=7, offer=TASK_OFFER)


def _names(trace: Trace) -> set[str]:
    return set(trace.tool_names())


@pytest.mark.integration
def test_task_offer_declares_the_called_tools_and_few_others(result, offered):
    """Every trace still verifies; a solving trace declares every tool it calls plus at most the distractors
    asked for; the prompts are shorter than with the domain's whole toolset."""
    assert len(offered.traces) == 120 and offered.reject_reasons["format"] == 0
    extra = TASK_OFFER.domain_distractors + TASK_OFFER.pool_distractors
    for trace in offered.traces:
        called = {c.name for c in trace.calls()}
        assert called <= _names(trace), trace.id
        if trace.meta["pattern"] not in ("irrelevance", "clarify"):
            assert len(_names(trace)) <= len(called) + extra, (trace.meta["pattern"], _names(trace), called)
    mean_tools = {
        label: sum(len(t.tools) for t in r.traces) / len(r.traces)
        for label, r in (("all", result), ("task", offered))
    }
    assert mean_tools["task"] < 0.7 * mean_tools["all"], mean_tools


@pytest.mark.integration
def test_task_offer_keeps_no_call_patterns_right():
    """Irrelevance traces still offer only tools that cannot serve the request; clarify traces offer the tool
    whose argument is missing."""
    found = generate_traces(ALL, 40, seed=3, patterns={"irrelevance": 1, "clarify": 1}, offer=TASK_OFFER)
    assert {t.meta["pattern"] for t in found.traces} == {"irrelevance", "clarify"}
    for trace in found.traces:
        assert verify_trace(trace) == []
        if trace.meta["pattern"] == "clarify":
            assert trace.meta["clarify"]["tool"] in _names(trace)


def _backticked(text: str) -> set[str]:
    return set(re.findall(r"`([A-Za-z_][\w.]*)`", text))


@pytest.mark.integration
def test_irrelevance_reply_names_only_the_offered_tools():
    """The plan names exactly the tools the prompt declares, and the decline describes no other (both used to be
    written from the whole wrong toolset, naming tools the prompt never showed)."""
    found = generate_traces(ALL, 30, seed=5, patterns={"irrelevance": 1}, offer=TASK_OFFER)
    assert len(found.traces) == 30
    for trace in found.traces:
        reply = [m for m in trace.messages if m.role == "assistant"][-1]
        plan = " ".join(s.text for s in reply.thinking)
        request = next(m.content for m in trace.messages if m.role == "user")
        assert _backticked(plan) - _backticked(request) == _names(trace), (plan, _names(trace))
        words = [function_spec(t)["name"].replace("_", " ") for t in trace.tools]  # in the order declared
        listed = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
        assert f"let me {listed}" in reply.content, (reply.content, words)


ONE_TOOL_OFFER = ToolOffer("task", 1, 1, 0.0, one_tool_share=1.0)


@pytest.mark.integration
def test_one_tool_offer_gives_bfcl_shaped_prompts_that_verify():
    """`one_tool_share: 1`: a single-call trace declares its own tool alone; an irrelevance trace one tool, a near
    miss where the domain has one (same API area, another noun; a calculator tool of another kind), and every
    trace still verifies."""
    from pipelines.envs.api_pool import build_pool

    pool = build_pool()
    found = generate_traces(ALL, 160, seed=11, patterns={"single": 1, "irrelevance": 1}, offer=ONE_TOOL_OFFER)
    assert found.rejects == []
    near = Counter()
    for trace in found.traces:
        assert verify_trace(trace) == []
        assert len(trace.tools) == 1, (trace.meta["pattern"], _names(trace))
        if trace.meta["pattern"] == "single":
            assert _names(trace) == {c.name for c in trace.calls()}
            continue
        if trace.meta["tools_from"] != "near-miss":
            continue
        (offered,) = _names(trace)
        called = {s.tool for turn in Task.from_json(trace.meta["task"]).solution for s in turn}
        near[trace.meta["domain"]] += 1
        if trace.meta["domain"] == "api":
            own = {pool.signatures[n].noun for n in called}
            assert pool.signatures[offered].area == pool.signatures[next(iter(called))].area
            assert pool.signatures[offered].noun not in own
        else:
            assert trace.meta["domain"] == "calculator" and offered not in called
            assert offered in {"convert_units", "percent_change", "compute_statistics"}
    assert near["api"] >= 3 and near["calculator"] >= 1, near


def test_near_miss_that_serves_the_request_fails_verification():
    """The verifier still rejects an irrelevance trace whose one tool is the one its task calls, or
    `evaluate_expression`, which can compute any of the calculator's requests; an ordinary irrelevance trace
    (share 0) still verifies."""
    found = generate_traces(["calculator"], 20, seed=2, patterns={"irrelevance": 1}, offer=ONE_TOOL_OFFER)
    trace = next(t for t in found.traces if t.meta["tools_from"] == "near-miss")
    called = next(s.tool for turn in Task.from_json(trace.meta["task"]).solution for s in turn)
    specs = {function_spec(t)["name"]: t for t in json.loads(class_tools_json(CalculatorEnv))}
    for serving in (called, "evaluate_expression"):
        wrong = _retrace(trace, tools=[specs[serving]])
        assert verify_trace(wrong) == [
            ("outcome", f"irrelevance: declared tools fit the request: ['{serving}']")
        ]
    plain = generate_traces(["calculator"], 5, seed=2, patterns={"irrelevance": 1}, offer=TASK_OFFER)
    assert all(verify_trace(t) == [] and t.meta["tools_from"] != "near-miss" for t in plain.traces)


@pytest.mark.integration
def test_api_near_misses_share_the_area_and_never_compute():
    """An API task's near misses: its own business area, other nouns, never a `compute` tool (a total of another
    noun may still produce the number asked for), none of the task's own declared tools."""
    from pipelines.envs.api_pool import build_pool
    from pipelines.tasks.generate import near_miss_tools

    pool = build_pool()
    rng = random.Random(4)
    checked = 0
    for _ in range(40):
        task = DOMAINS["api"][1](rng)
        called = {s.tool for turn in task.solution for s in turn}
        declared = {function_spec(t)["name"] for t in task.setup["tools"]}
        for spec in near_miss_tools("api", task):
            sig = pool.signatures[function_spec(spec)["name"]]
            assert sig.family != "compute" and sig.name not in declared
            assert {sig.area} == {pool.signatures[n].area for n in called}
            assert sig.noun not in {pool.signatures[n].noun for n in called}
            checked += 1
    assert checked > 100


@pytest.mark.integration
def test_task_offer_is_deterministic_and_leaves_all_unchanged(result):
    again = generate_traces(ALL, 30, seed=7, offer=TASK_OFFER)
    assert [t.to_json() for t in again.traces] == [
        t.to_json() for t in generate_traces(ALL, 30, seed=7, offer=TASK_OFFER).traces
    ]
    # `all` draws nothing after the episode: the same traces as without an offer.
    plain = generate_traces(ALL, 30, seed=7, offer=ToolOffer("all"))
    assert [t.to_json() for t in plain.traces] == [t.to_json() for t in result.traces[:30]]


def test_varied_requests_keep_every_value():
    rng = random.Random(0)
    request = "Convert 12.5 kilograms to pounds, then add 3 lb."
    variants = {vary_request(request, rng) for _ in range(60)}
    assert len(variants) > 10
    for text in variants:
        for value in ("12.5", "kilograms", "pounds", "3 lb"):
            assert value in text, text
