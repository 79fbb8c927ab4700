"""Executed, verified agentic traces from the tool environments (the data stage's `generated` source).

Per trace: draw a pattern from a configurable mix and a domain that supports it → sample the task(s) → a teacher
policy writes the conversation while *executing* every call in a fresh environment (plan before acting, an
observation note after results, a reflection after an error, a verify before the final answer) → verification,
APIGen-style, in *another* fresh environment: format (schema + thought schema), execution (replay every call:
identical observations), outcome (the env's reward is 1.0 for the recorded final answer; right behaviour for
irrelevance/clarify). A failure at any point becomes a reject `{"id", "reason", "detail"}`, counted by reason.

Determinism: attempt `i` draws from `random.Random(f"{seed}/{i}")`, so the same arguments give byte-identical
traces, and one bad draw cannot shift every later one.
"""

from __future__ import annotations

import json
import random
import sys
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from pipelines import sandbox
from pipelines.chat import DEFAULT_SYSTEM_PROMPT
from pipelines.envs import api_pool
from pipelines.envs.base import ToolEnv
from pipelines.envs.instanced import (
    INSTANCE_IDS,
    InstancedEnv,
    answer_line,
    instanced_task_json,
    split_answers,
)
from pipelines.errors import BadInput, MidtrainError
from pipelines.schema import (
    PATTERNS,
    Message,
    ThinkingSection,
    ToolCall,
    Trace,
    content_id,
    function_spec,
    parse_trace,
)
from pipelines.tasks import api_pool as api_pool_tasks
from pipelines.tasks.domains import DOMAINS
from pipelines.tasks.records import ANSWER_SEPARATOR, Mistake, Step, Task
from pipelines.thought import ThoughtSchema, load_thought_schema

SOURCE = "generated"
THOUGHT_SCHEMA = "think-plan-reflect"
DEFAULT_PATTERNS: dict[str, float] = {
    "single": 0.16, "sequential": 0.16, "parallel": 0.13, "instanced": 0.12,
    "recovery": 0.15, "irrelevance": 0.08, "clarify": 0.08, "code": 0.12,
}  # fmt: skip
DEFAULT_CLUSTERS: dict[str, str] = {
    "single": "tool", "parallel": "tool", "instanced": "tool", "sequential": "plan", "clarify": "plan",
    "irrelevance": "plan", "recovery": "reflect", "code": "code",
}  # fmt: skip
CODE_DOMAINS = frozenset({"coderunner"})
SOLVING_PATTERNS = ("single", "sequential", "parallel", "recovery", "code")
NO_CALL_PATTERNS = ("irrelevance", "clarify")
INSTANCED_SYSTEM_PROMPT = (
    DEFAULT_SYSTEM_PROMPT
    + " Some requests bundle independent tasks tagged [instance=ID]: pass the task's ID as "
    "`_instance` in every call and answer each task on its own line, starting with its tag."
)
# Which domains' tools certainly cannot serve a request of a domain (irrelevance); `api:*` means API-pool
# signatures of another business area. The code runner is general-purpose, so it never plays the wrong toolset.
IRRELEVANT_TOOLSETS: dict[str, tuple[str, ...]] = {
    "calculator": ("filesystem", "calendar", "docsearch", "api:*"),
    "filesystem": ("calculator", "calendar", "docsearch", "api:*"),
    "sqlite": ("calculator", "calendar", "docsearch", "api:*"),
    "calendar": ("calculator", "filesystem", "docsearch"),
    "docsearch": ("calculator", "calendar", "sqlite", "api:*"),
    "coderunner": ("calendar", "sqlite", "api:*"),
    "api": ("api:*", "filesystem", "docsearch"),
}
# API-pool areas used as a wrong toolset for the fixed domains (nothing about files, dates, maths or records).
SAFE_API_AREAS = ("music", "weather", "media", "agriculture", "pets", "sports")
CLARIFIER_HOOK = (
    "sample_clarification"  # optional per domain module: rng → (task, request, missing, question)
)


class Rejected(Exception):
    """A draw that cannot become a verified trace; `reason` is the counter key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


# ---------------------------------------------------------------------------------------------------------------
# Environments and tools
# ---------------------------------------------------------------------------------------------------------------
def fresh_env(domain: str, task: Task) -> ToolEnv:
    env = DOMAINS[domain][0]()
    env.reset(task=task.to_json())
    return env


@lru_cache(maxsize=64)
def class_tools_json(env_cls: type[ToolEnv]) -> str:
    """A fixed-method environment's tool specs as JSON (cached: building them imports transformers)."""
    return json.dumps(env_cls._tool_schemas(), sort_keys=True)


def task_tools(domain: str, task: Task) -> list[dict[str, Any]]:
    """The tool specs a task's prompt declares: the API pool's come from the task, the others are fixed methods."""
    if "tools" in task.setup and domain == api_pool.DOMAIN:
        return json.loads(json.dumps(task.setup["tools"]))
    return json.loads(class_tools_json(DOMAINS[domain][0]))  # type: ignore[arg-type]  # classes are hashable: mypy#11470


def domain_tool_names(domain: str, task: Task) -> set[str]:
    return {function_spec(t).get("name", "") for t in task_tools(domain, task)}


def clarifier(domain: str) -> Callable[[random.Random], api_pool_tasks.Clarification] | None:
    """The domain module's `sample_clarification`, if it has one: only the domain knows how to leave a required
    value out of its own request templates and still read naturally (see `api_pool_tasks.Clarification`)."""
    module = sys.modules.get(DOMAINS[domain][1].__module__)
    return getattr(module, CLARIFIER_HOOK, None)


def supported_patterns(domain: str) -> set[str]:
    """Code tasks live in the code runner; clarification needs a domain that can under-specify its requests."""
    solving = {"code"} if domain in CODE_DOMAINS else set(SOLVING_PATTERNS) - {"code"}
    return solving | {"irrelevance", "instanced"} | ({"clarify"} if clarifier(domain) else set())


# ---------------------------------------------------------------------------------------------------------------
# Teacher phrasing (varied templates; every text is stripped so the thought schema round-trips)
# ---------------------------------------------------------------------------------------------------------------
PLAN_FALLBACK = (
    "I'll solve this with {n} call(s): {steps}.",
    "Plan: {steps}. Then I'll check the result before answering.",
    "Steps: {steps}.",
)
OBSERVE_OK = (
    "`{tool}` returned {summary}.",
    "Result from `{tool}`: {summary}.",
    "`{tool}` came back with {summary}.",
    "Got {summary} from `{tool}`.",
)
OBSERVE_CARRY = (
    "I'll pass {values} on to the next step.",
    "The next call needs {values} from this.",
    "That gives me {values} for the next step.",
)
OBSERVE_ERROR = (
    "`{tool}` rejected the call: {summary}.",
    "The call to `{tool}` failed with {summary}.",
    "Error from `{tool}`: {summary}.",
)
REFLECT_LEADS = ("", "My mistake. ", "Let me correct that. ", "I see the problem. ")
VERIFY_ANSWER = (
    "Checking before I answer: {n} call(s) succeeded and the result gives {answer}, which is what was asked.",
    "The request is covered: the tool output shows {answer}.",
    "Verified against the request: {answer} comes straight from the tool results.",
)
VERIFY_STATE = (
    "Checking before I answer: the {n} planned call(s) succeeded, so the requested changes are in place.",
    "The last results confirm each requested change; the task is done.",
)
DECLINE = (
    "I can't do that with the tools available here: they only {scope}, so I haven't called anything. If you can "
    "connect a suitable tool, I'll take care of it.",
    "Sorry, that's outside what my current tools can do — they {scope}. None of them fits this request, so I won't "
    "guess with an unrelated call.",
    "None of my tools can help with this one: they {scope}. You'll need a different tool or service for it.",
)
IRRELEVANT_PLAN = (
    "The user wants: {request} The available tools ({names}) {scope}. None of them fits, so I should say so "
    "instead of calling one.",
    "Checking the tool list against the request: {names} — they {scope}. Nothing matches what's asked; no call.",
)
# One offered tool (BFCL's irrelevance shape) reads in the singular.
DECLINE_ONE = (
    "I can't do that with the tool available here: it only lets me {action}, so I haven't called it. If you can "
    "connect a suitable tool, I'll take care of it.",
    "Sorry, that's outside what my current tool can do — it lets me {action}, which doesn't fit this request, so I "
    "won't guess with an unrelated call.",
    "My only tool can't help with this one: it lets me {action}. You'll need a different tool or service for it.",
)
IRRELEVANT_PLAN_ONE = (
    "The user wants: {request} The only tool, {names}, lets me {action}. It doesn't fit, so I should say so "
    "instead of calling it.",
    "Checking the tool against the request: {names} lets me {action}. That's not what's asked; no call.",
)
CLARIFY_PLAN = (
    "The request maps to `{tool}`, but its required `{param}` is missing from the message. I shouldn't guess it, "
    "so I'll ask first.",
    "To use `{tool}` I need `{param}`, which the user didn't give. Asking is better than inventing a value.",
)
INSTANCED_PLAN = (
    "There are {n} independent tasks here; each gets its own calls, tagged with its instance. {plans}",
)
INSTANCED_INTRO = (
    "I have {n} separate requests; please handle each one.",
    "Here are {n} independent tasks. Keep them apart.",
    "{n} things to do, each on its own:",
)


def _short(text: str, limit: int = 160) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def _safe(text: str, schema: ThoughtSchema) -> str:
    """Thinking may quote tool output; reserved schema tags inside it would corrupt the rendering."""
    for tag in schema.all_tags():
        text = text.replace(tag, tag.replace("<", "‹").replace(">", "›"))
    return text.strip()


def _args_text(arguments: dict[str, Any]) -> str:
    return (
        ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in arguments.items()) or "no arguments"
    )


def _plan(task: Task, rng: random.Random) -> str:
    if task.plan.strip():
        return task.plan.strip()
    steps = "; then ".join(
        " and ".join(f"`{s.tool}` with {_short(_args_text(s.arguments), 120)}" for s in turn)
        for turn in task.solution
    )
    return rng.choice(PLAN_FALLBACK).format(n=sum(len(t) for t in task.solution), steps=steps)


def _carried(observations: list[str], next_turn: list[Step], request: str) -> list[str]:
    """Values of the next calls that come from these observations (not from the request): worth noting."""
    found: list[str] = []
    for step in next_turn:
        for value in step.arguments.values():
            text = str(value)
            fresh = isinstance(value, (str, int, float)) and len(text) >= 3 and text not in request
            if fresh and text not in found and any(text in obs for obs in observations):
                found.append(text)
    return found


def summarise(text: str, limit: int = 200) -> str:
    """A tool result as a short note: JSON objects become `key=value` pairs, lists their size and first item."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return _short(text, limit).rstrip(".")  # the templates end the sentence
    if isinstance(data, list) and data:
        first = json.dumps(data[0], ensure_ascii=False, sort_keys=True)
        return _short(f"{len(data)} result{'s' if len(data) > 1 else ''}, first {first}", limit)
    if not isinstance(data, dict):
        return _short(json.dumps(data, ensure_ascii=False), limit)
    parts = []
    for key, value in data.items():
        if isinstance(value, list) and value:
            first = json.dumps(value[0], ensure_ascii=False, sort_keys=True)
            parts.append(f"{key}: {len(value)} item{'s' if len(value) > 1 else ''}, first {first}")
        else:
            parts.append(f"{key}={json.dumps(value, ensure_ascii=False)}")
    return _short(", ".join(parts), limit)


def _observe(results: list[tuple[str, str]], next_turn: list[Step], request: str, rng: random.Random) -> str:
    parts = [rng.choice(OBSERVE_OK).format(tool=name, summary=summarise(text)) for name, text in results]
    carried = _carried([t for _, t in results], next_turn, request)
    if carried:
        parts.append(rng.choice(OBSERVE_CARRY).format(values=", ".join(carried[:3])))
    return " ".join(parts)


def _verify(task: Task, rng: random.Random) -> str:
    n = sum(len(t) for t in task.solution)
    if task.answer:
        answer = " and ".join(task.answer.split(ANSWER_SEPARATOR))
        return rng.choice(VERIFY_ANSWER).format(n=n, answer=_short(answer, 160))
    return rng.choice(VERIFY_STATE).format(n=n)


def final_text(task: Task) -> str:
    try:
        return task.final_template.format(answer=task.answer or "").strip()
    except (KeyError, IndexError, ValueError) as exc:
        raise Rejected(
            "generation", f"task {task.task_id}: final_template does not format: {exc!r}"
        ) from None


# ---------------------------------------------------------------------------------------------------------------
# Transcript: messages with stable call ids
# ---------------------------------------------------------------------------------------------------------------
class Transcript:
    def __init__(self, schema: ThoughtSchema) -> None:
        self.messages: list[Message] = []
        self.schema = schema
        self._next_call = 1

    def add(self, role: str, content: str, instance: str | None = None) -> None:
        self.messages.append(Message(role=role, content=content, instance=instance))

    def assistant(
        self, thinking: list[tuple[str, str]], calls: list[tuple[Step, str | None]], content: str = ""
    ) -> list[ToolCall]:
        tool_calls = []
        for step, instance in calls:
            tool_calls.append(
                ToolCall(
                    id=f"call_{self._next_call}", name=step.tool, arguments=step.arguments, instance=instance
                )
            )
            self._next_call += 1
        sections = [ThinkingSection(section=s, text=_safe(t, self.schema)) for s, t in thinking if t.strip()]
        self.messages.append(
            Message(role="assistant", content=content, thinking=sections, tool_calls=tool_calls)
        )
        return tool_calls

    def tool(self, call: ToolCall, text: str) -> None:
        self.messages.append(
            Message(role="tool", content=text, tool_call_id=call.id, name=call.name, instance=call.instance)
        )


# ---------------------------------------------------------------------------------------------------------------
# Teacher policy
# ---------------------------------------------------------------------------------------------------------------
def _run_turn(
    tr: Transcript, env: ToolEnv, turn: list[Step], pending: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """One assistant turn of (independent) calls, executed; returns (tool, observation) per call."""
    calls = tr.assistant(pending, [(step, None) for step in turn])
    results = []
    for call in calls:
        text, is_error = env._call_tool(call.name, call.arguments)
        if is_error:
            raise Rejected(
                "solution_error", f"{call.name}({_short(_args_text(call.arguments), 200)}): {_short(text)}"
            )
        tr.tool(call, text)
        results.append((call.name, text))
    return results


def _make_mistake(
    tr: Transcript, env: ToolEnv, mistake: Mistake, pending: list[tuple[str, str]], rng: random.Random
) -> list[tuple[str, str]]:
    """The wrong call (and, for e.g. buggy code, the calls that expose it), then observe + reflect."""
    steps = [mistake.step, *mistake.followed_by]
    for step in steps[:-1]:  # e.g. writing the buggy code succeeds; the test run after it shows the bug
        [call] = tr.assistant(pending, [(step, None)])
        text, is_error = env._call_tool(call.name, call.arguments)
        tr.tool(call, text)
        if is_error:
            raise Rejected("solution_error", f"{call.name} (before the mistake shows): {_short(text)}")
        pending = [("observe", rng.choice(OBSERVE_OK).format(tool=call.name, summary=summarise(text)))]
    [call] = tr.assistant(pending, [(steps[-1], None)])
    text, is_error = env._call_tool(call.name, call.arguments)
    tr.tool(call, text)
    # Without `followed_by` the wrong call itself must fail; with it, the last observation must show the bug.
    if mistake.error_contains not in text or not (is_error or mistake.followed_by):
        raise Rejected("mistake_no_error", f"{call.name}: expected {mistake.error_contains!r} in the "
                                           f"{'error' if not mistake.followed_by else 'result'}, got {_short(text)!r}")  # fmt: skip
    template = OBSERVE_ERROR if is_error else OBSERVE_OK
    observed = rng.choice(template).format(tool=call.name, summary=summarise(text.removeprefix("Error: ")))
    return [("observe", observed), ("reflect", rng.choice(REFLECT_LEADS) + mistake.reflection.strip())]


def _solve(tr: Transcript, task: Task, env: ToolEnv, mistake: Mistake | None, rng: random.Random) -> None:
    """Plan → (mistake → error → reflect) → every solution turn, executed → verify → final answer."""
    pending = [("plan", _plan(task, rng))]
    for t, turn in enumerate(task.solution):
        if mistake is not None and mistake.turn == t:
            pending = _make_mistake(tr, env, mistake, pending, rng)
        results = _run_turn(tr, env, turn, pending)
        next_turn = task.solution[t + 1] if t + 1 < len(task.solution) else []
        pending = [("observe", _observe(results, next_turn, task.request, rng))]
    answer = final_text(task)
    tr.assistant([*pending, ("verify", _verify(task, rng))], [], content=answer)


def _solve_instanced(tr: Transcript, tasks: dict[str, Task], ienv: InstancedEnv, rng: random.Random) -> None:
    plans = " ".join(f"[{k}] {_plan(t, rng)}" for k, t in tasks.items())
    pending = [("plan", rng.choice(INSTANCED_PLAN).format(n=len(tasks), plans=plans))]
    for t in range(max(len(task.solution) for task in tasks.values())):
        steps: list[tuple[Step, str | None]] = [
            (s, k) for k, task in tasks.items() if t < len(task.solution) for s in task.solution[t]
        ]
        calls = tr.assistant(pending, steps)
        notes = []
        for call in calls:
            text, is_error = ienv._call_tool(call.name, call.arguments, call.instance)
            if is_error:
                raise Rejected("solution_error", f"[{call.instance}] {call.name}: {_short(text)}")
            tr.tool(call, text)
            note = rng.choice(OBSERVE_OK).format(tool=call.name, summary=summarise(text))
            notes.append(f"[{call.instance}] {note}")
        pending = [("observe", " ".join(notes))]
    verify = " ".join(f"[{k}] {_verify(task, rng)}" for k, task in tasks.items())
    final = "\n".join(answer_line(k, final_text(task)) for k, task in tasks.items())
    tr.assistant([*pending, ("verify", verify)], [], content=final)


# ---------------------------------------------------------------------------------------------------------------
# What a trace's prompt offers: the domain's whole toolset, or the task's tools and a few distractors
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ToolOffer:
    """Which tool specs a generated trace declares, and how its requests are worded.

    Why `task`: a fixed domain's whole toolset is 800-1,300 tokens of JSON schema in every trace, against 200-300
    loss tokens, so most of an SFT hour went to re-reading the same seven schemas. The task's own tools plus a
    few distractors (as RL's `offered_tools: task` and BFCL's `multiple` category do) make a trace 3-4x shorter
    and keep choosing the tool part of the task; distractors drawn from the API pool's ~2,000 signatures put
    many unseen names and argument lists next to the right one. Irrelevance traces offer a sample of the wrong
    toolset, so the model still sees "none of these fits" with short, varied lists.

    Why `one_tool_share`: BFCL's simple and irrelevance categories offer exactly one function, and its
    irrelevant one is usually a near miss (a geometry question beside a BMI calculator). With three tools in
    every prompt, calling and declining can be told apart by whether the list is foreign at all; one tool,
    sometimes the right one and sometimes a neighbour of it, makes the model judge that tool against the request.
    """

    mode: str = "all"  # "all" | "task"
    domain_distractors: int = 1
    pool_distractors: int = 1
    request_variation: float = 0.0  # share of user requests re-worded (see `vary_request`)
    one_tool_share: float = 0.0  # share of single-call and irrelevance traces that offer one tool

    def tools(self, ep: Episode, rng: random.Random) -> list[dict[str, Any]]:
        """The specs the prompt declares. An irrelevance trace offered a near miss records it in
        `ep.extra["tools_from"]`."""
        if self.mode == "all":
            return ep.tools
        if (
            self.one_tool_share
            and ep.pattern in ("single", "irrelevance")
            and rng.random() < self.one_tool_share
        ):
            one = _one_tool(ep, rng)
            if one is not None:
                return [one]
        by_name = {function_spec(t)["name"]: t for t in ep.tools}
        if ep.pattern == "irrelevance":
            keep = rng.sample(sorted(by_name), min(len(by_name), 1 + self.domain_distractors))
            offered = [by_name[n] for n in keep]
        else:
            needed = _needed_tools(ep)
            others = sorted(n for n in by_name if n not in needed)
            extra = rng.sample(others, min(len(others), self.domain_distractors))
            offered = [by_name[n] for n in sorted(needed) + extra if n in by_name]
        offered += self._pool_distractors(ep, {function_spec(t)["name"] for t in offered}, rng)
        rng.shuffle(offered)  # the right tool is not always first
        return offered

    def _pool_distractors(self, ep: Episode, taken: set[str], rng: random.Random) -> list[dict[str, Any]]:
        """API-pool signatures of an area that cannot serve the request (`SAFE_API_AREAS` for the fixed
        domains; for an API task, any area unrelated to its own)."""
        if self.pool_distractors <= 0:
            return []
        if ep.domain == api_pool.DOMAIN:
            area = (
                api_pool_tasks.task_area(Task.from_json(ep.task_json)) if ep.pattern != "instanced" else None
            )
            specs = api_pool_tasks.sample_tools(
                rng, self.pool_distractors + 2, avoid=api_pool_tasks.related_areas(area)
            )
        else:
            specs = api_pool_tasks.sample_tools(
                rng,
                self.pool_distractors + 2,
                only=SAFE_API_AREAS,
                families=("find", "read", "create", "notify"),
            )
        fresh = [t for t in specs if function_spec(t)["name"] not in taken]
        return fresh[: self.pool_distractors]


# Calculator tools that serve only their own kind of request: offered alone for another one, they are a near miss
# (`evaluate_expression` is not among them: it can compute almost any request of the domain).
NARROW_TOOLS: dict[str, frozenset[str]] = {
    "calculator": frozenset({"convert_units", "percent_change", "compute_statistics"}),
}


def _one_tool(ep: Episode, rng: random.Random) -> dict[str, Any] | None:
    """The one tool a BFCL-shaped prompt offers: a single-call trace's own tool; for an irrelevance trace a near
    miss (`near_miss_tools`) where the domain has one, else one tool of the wrong toolset. None: keep the list."""
    if ep.pattern == "single":
        needed = _needed_tools(ep)
        if len(needed) != 1:
            return None
        return next((t for t in ep.tools if function_spec(t)["name"] in needed), None)
    near = near_miss_tools(ep.domain, Task.from_json(ep.task_json))
    if near:
        ep.extra["tools_from"] = "near-miss"
        return rng.choice(near)
    return rng.choice(ep.tools) if ep.tools else None


def near_miss_tools(domain: str, task: Task) -> list[dict[str, Any]]:
    """Tools that look like they belong to the request but cannot serve it: for an API task, the signatures of its
    own business area about other nouns (a travel booking request beside `get_itinerary_summary`); for the
    calculator, the narrow tools its solution does not use, when it uses only narrow ones. Other domains have none
    (a filesystem or SQL tool can often do another's job)."""
    called = {step.tool for turn in task.solution for step in turn}
    if domain == api_pool.DOMAIN:
        pool = api_pool.build_pool()
        sigs = [pool.signatures[n] for n in sorted(called) if n in pool.signatures]
        areas = {s.area for s in sigs}
        if len(areas) != 1:
            return []
        declared = {function_spec(t)["name"] for t in task.setup.get("tools", [])}
        nouns = {s.noun for s in sigs}
        # Never a `compute` tool: a total or an estimate of another noun may still produce the number asked for.
        return [
            s.spec()
            for (area, noun), group in sorted(pool.by_noun.items())
            if area in areas and noun not in nouns
            for s in group
            if s.name not in declared and s.family != "compute"
        ]
    narrow = NARROW_TOOLS.get(domain, frozenset())
    if not called or not called <= narrow:
        return []
    by_name = {function_spec(t)["name"]: t for t in json.loads(class_tools_json(DOMAINS[domain][0]))}  # type: ignore[arg-type]  # classes are hashable: mypy#11470
    return [by_name[n] for n in sorted(narrow - called)]


def _needed_tools(ep: Episode) -> set[str]:
    """Every tool the trace calls (a recovery's wrong call included), or a clarify trace's intended tool."""
    called = {c.name for m in ep.messages for c in m.tool_calls}
    if ep.pattern == "clarify":
        called.add(ep.extra["clarify"]["tool"])
    return called


# People do not write like templates: a share of requests get a greeting, a politeness marker, a sign-off, a
# lower-case start or no final stop. Values (numbers, names, paths) are never touched, so every reference call
# and outcome check still holds.
REQUEST_OPENERS = ("Hi! ", "Hey, ", "Hello. ", "Quick one: ", "Could you help? ", "I need a hand. ", "ok so ",
                   "Please ", "Hi there, please ", "Question: ")  # fmt: skip
# First words that read right in lower case after an opener ("Hey, what is…"); names and "I" keep their case.
LOWER_AFTER_OPENER = frozenset(
    [
        "What",
        "How",
        "Which",
        "Who",
        "When",
        "Where",
        "Is",
        "Are",
        "Can",
        "Could",
        "Would",
        "Find",
        "Convert",
        "Add",
        "Compute",
        "Calculate",
        "Create",
        "List",
        "Show",
        "Get",
        "Search",
        "Look",
        "Make",
        "Check",
        "Tell",
        "Give",
        "Run",
        "Write",
        "Read",
        "Delete",
        "Remove",
        "Move",
        "Copy",
        "Rename",
        "Schedule",
        "Book",
        "Set",
        "Update",
        "Put",
        "Save",
        "Store",
        "Open",
        "Count",
        "Sum",
        "Work",
        "Figure",
        "Please",
    ]
)
REQUEST_CLOSERS = (" Thanks!", " Thank you.", " thx", " Much appreciated.", " Thanks in advance.", " Cheers.")


def vary_request(text: str, rng: random.Random) -> str:
    opener = rng.choice(("", *REQUEST_OPENERS)) if rng.random() < 0.6 else ""
    body = text
    continues = opener.endswith(" ") and opener.rstrip()[-1:] not in ".!?:"
    first = body.split(" ", 1)[0]
    if continues and first in LOWER_AFTER_OPENER:  # "Please convert…"; never "Hey, i…" or "Please alice's…"
        body = first.lower() + body[len(first) :]
    if rng.random() < 0.3 and body.endswith(".") and "\n" not in body:
        body = body[:-1]
    closer = rng.choice(REQUEST_CLOSERS) if rng.random() < 0.4 else ""
    return opener + body + closer


def _vary_requests(messages: list[Message], share: float, rng: random.Random) -> list[Message]:
    if share <= 0:
        return messages
    out = []
    for m in messages:
        if m.role == "user" and rng.random() < share:
            m = m.model_copy(update={"content": vary_request(m.content, rng)})
        out.append(m)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Patterns → episodes
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Episode:
    domain: str
    pattern: str
    messages: list[Message]
    tools: list[dict[str, Any]]
    task_id: str
    task_json: str
    difficulty: int
    extra: dict[str, Any] = field(default_factory=dict)


def _n_calls(task: Task) -> int:
    return sum(len(turn) for turn in task.solution)


def _fits(task: Task, pattern: str) -> bool:
    if _n_calls(task) == 0:
        return False
    if pattern == "single":
        return _n_calls(task) == 1
    if pattern == "sequential":
        return len(task.solution) >= 2
    if pattern == "parallel":
        return any(len(turn) >= 2 for turn in task.solution)
    if pattern in ("recovery", "code"):
        return bool(task.mistakes)
    return True


def _draw_kwargs(pattern: str, rng: random.Random) -> dict[str, Any]:
    if pattern == "single":
        return {"difficulty": 1}
    if pattern == "sequential":
        return {"difficulty": rng.choice((2, 2, 3, 4))}
    if pattern == "parallel":
        return {"parallel": True}
    if pattern == "recovery":
        return {"difficulty": rng.choice((1, 2, 2, 3))}
    if pattern == "instanced":
        return {"difficulty": rng.choice((1, 1, 2))}
    return {}


def sample_fitting_task(domain: str, pattern: str, rng: random.Random, tries: int = 40) -> Task:
    sampler = DOMAINS[domain][1]
    for _ in range(tries):
        task = sampler(rng, **_draw_kwargs(pattern, rng))
        if _fits(task, pattern):
            return task
    raise Rejected(
        "no_fitting_task", f"domain {domain!r} gave no task fitting pattern {pattern!r} in {tries} draws"
    )


def _system(tr: Transcript, instanced: bool = False) -> None:
    tr.add("system", INSTANCED_SYSTEM_PROMPT if instanced else DEFAULT_SYSTEM_PROMPT)


def _mistake_meta(mistake: Mistake) -> dict[str, Any]:
    return {"turn": mistake.turn, "tool": mistake.step.tool, "error_contains": mistake.error_contains,
            "followed_by": [s.tool for s in mistake.followed_by]}  # fmt: skip


def shape_pattern(drawn: str, task: Task) -> str:
    """The pattern a trace records: its shape, not its draw. A `parallel` draw whose task needs two or more
    rounds of calls (the later calls wait on earlier results) is sequential in shape.

    Why: patterns map to clusters, and a router picks a cluster from the request alone. Whether a request
    needs a second round ("add these up in kilograms", after converting each) is in its words; whether the
    draw was `parallel` is not. Labelled by draw, parallel and sequential requests shared templates and the
    default mix's tool-vs-plan routing topped out near 0.75 held-out accuracy; labelled by shape, ~0.86.
    """
    if drawn == "parallel" and len(task.solution) >= 2:
        return "sequential"
    return drawn


def _episode_solve(domain: str, pattern: str, rng: random.Random, schema: ThoughtSchema) -> Episode:
    task = sample_fitting_task(domain, pattern, rng)
    pattern = shape_pattern(pattern, task)
    mistake = rng.choice(task.mistakes) if pattern in ("recovery", "code") else None
    tr = Transcript(schema)
    _system(tr)
    tr.add("user", task.request)
    _solve(tr, task, fresh_env(domain, task), mistake, rng)
    extra = {"mistake": _mistake_meta(mistake)} if mistake else {}
    return Episode(domain, pattern, tr.messages, task_tools(domain, task), task.task_id, task.to_json(),
                   _n_calls(task), extra)  # fmt: skip


def _episode_instanced(domain: str, rng: random.Random, schema: ThoughtSchema) -> Episode:
    k = rng.choice((2, 2, 3))
    tasks = {INSTANCE_IDS[i]: sample_fitting_task(domain, "instanced", rng) for i in range(k)}
    ienv = InstancedEnv(DOMAINS[domain][0])
    task_json = instanced_task_json(tasks)
    ienv.reset(task_json)
    tr = Transcript(schema)
    _system(tr, instanced=True)
    tr.add("user", rng.choice(INSTANCED_INTRO).format(n=k))
    for instance, task in tasks.items():
        tr.add("user", task.request, instance)
    _solve_instanced(tr, tasks, ienv, rng)
    tools: dict[str, dict[str, Any]] = {}
    for task in tasks.values():
        for tool in task_tools(domain, task):
            tools.setdefault(function_spec(tool)["name"], tool)
    task_id = "+".join(t.task_id for t in tasks.values())
    n_calls = sum(_n_calls(t) for t in tasks.values())
    return Episode(domain, "instanced", tr.messages, list(tools.values()), task_id, task_json, n_calls,
                   {"instances": list(tasks)})  # fmt: skip


def _irrelevant_tools(domain: str, task: Task, rng: random.Random) -> tuple[str, list[dict[str, Any]]]:
    options = [s for s in IRRELEVANT_TOOLSETS.get(domain, ("api:*",)) if s == "api:*" or s in DOMAINS]
    source = rng.choice(options or ["api:*"])
    if source != "api:*":
        return source, json.loads(class_tools_json(DOMAINS[source][0]))  # type: ignore[arg-type]  # classes are hashable: mypy#11470
    k = rng.randint(2, 5)
    if domain == api_pool.DOMAIN:
        return source, api_pool_tasks.sample_tools(
            rng, k, avoid=api_pool_tasks.related_areas(api_pool_tasks.task_area(task))
        )
    # A business calculator could still do a sum, so the fixed domains never get compute tools as the wrong set.
    families = ("find", "read", "create", "mutate", "notify")
    return source, api_pool_tasks.sample_tools(rng, k, only=SAFE_API_AREAS, families=families)


def _scope(tools: list[dict[str, Any]]) -> str:
    names = [function_spec(t)["name"].replace("_", " ") for t in tools[:4]]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"let me {listed}"


def _episode_irrelevance(
    domain: str, rng: random.Random, schema: ThoughtSchema, offer: ToolOffer | None
) -> Episode:
    task = DOMAINS[domain][1](rng)
    source, tools = _irrelevant_tools(domain, task, rng)
    ep = Episode(domain, "irrelevance", [], tools, task.task_id, task.to_json(), 0, {"tools_from": source})
    # The offer is drawn before the reply is written: the plan and the decline name exactly the tools the
    # prompt declares (written from the whole wrong toolset, they named tools the prompt never showed).
    if offer is not None:
        ep.tools = offer.tools(ep, rng)
    names = ", ".join(f"`{function_spec(t)['name']}`" for t in ep.tools)
    scope = _scope(ep.tools)
    plans, declines = (IRRELEVANT_PLAN_ONE, DECLINE_ONE) if len(ep.tools) == 1 else (IRRELEVANT_PLAN, DECLINE)
    fill = {
        "request": _short(task.request, 200),
        "names": names,
        "scope": scope,
        "action": scope[len("let me ") :],
    }
    tr = Transcript(schema)
    _system(tr)
    tr.add("user", task.request)
    tr.assistant(
        [("plan", rng.choice(plans).format(**fill))], [], content=rng.choice(declines).format(**fill)
    )
    ep.messages = tr.messages
    return ep


def _episode_clarify(domain: str, rng: random.Random, schema: ThoughtSchema) -> Episode:
    sample = clarifier(domain)
    if sample is None:
        raise Rejected("no_fitting_task", f"domain {domain!r} has no {CLARIFIER_HOOK}()")
    case = sample(rng)
    tool = case.task.solution[0][0].tool
    tr = Transcript(schema)
    _system(tr)
    tr.add("user", case.request)
    plan = rng.choice(CLARIFY_PLAN).format(tool=tool, param=case.missing)
    tr.assistant([("plan", plan)], [], content=case.question)
    return Episode(domain, "clarify", tr.messages, task_tools(domain, case.task), case.task.task_id,
                   case.task.to_json(), 0, {"clarify": {"missing": case.missing, "tool": tool}})  # fmt: skip


def build_episode(
    domain: str, pattern: str, rng: random.Random, schema: ThoughtSchema, offer: ToolOffer | None = None
) -> Episode:
    if pattern == "instanced":
        ep = _episode_instanced(domain, rng, schema)
    elif pattern == "irrelevance":
        ep = _episode_irrelevance(domain, rng, schema, offer)
    elif pattern == "clarify":
        ep = _episode_clarify(domain, rng, schema)
    else:
        ep = _episode_solve(domain, pattern, rng, schema)
    if offer is None:
        return ep
    # Drawn after the episode, so `offered_tools: all` gives the same traces as before the option existed.
    if pattern != "irrelevance":  # its offer is drawn before its reply names the tools
        ep.tools = offer.tools(ep, rng)
    ep.messages = _vary_requests(ep.messages, offer.request_variation, rng)
    return ep


def episode_to_trace(ep: Episode, clusters: dict[str, str]) -> Trace:
    meta = {"pattern": ep.pattern, "difficulty": ep.difficulty, "domain": ep.domain, "task_id": ep.task_id,
            "task": ep.task_json, **ep.extra}  # fmt: skip
    draft = Trace(id="", source=SOURCE, kind="tool", cluster=clusters.get(ep.pattern, "tool"), tools=ep.tools,
                  messages=ep.messages, meta=meta)  # fmt: skip
    body = draft.to_dict()
    body.pop("id")
    return draft.model_copy(update={"id": content_id(body)})


# ---------------------------------------------------------------------------------------------------------------
# Verification (APIGen-style): format, execution replay, outcome
# ---------------------------------------------------------------------------------------------------------------
REQUIRED_META = ("pattern", "difficulty", "domain", "task_id", "task")


def verify_trace(trace: Trace, schema: ThoughtSchema | None = None) -> list[tuple[str, str]]:
    """Every (reason, detail) that keeps a generated trace out of the data; empty means verified."""
    schema = schema or load_thought_schema(THOUGHT_SCHEMA)
    problems = _check_format(trace, schema)
    if problems:
        return problems
    problems = _check_structure(trace)
    if problems:
        return problems
    pattern = trace.meta["pattern"]
    if pattern in NO_CALL_PATTERNS:
        return _check_no_call_outcome(trace)
    return _check_replay(trace)


def _check_format(trace: Trace, schema: ThoughtSchema) -> list[tuple[str, str]]:
    reparsed, reasons = parse_trace(json.loads(trace.to_json()))
    out = [("format", r) for r in reasons]
    missing = [k for k in REQUIRED_META if k not in trace.meta]
    out += [("format", f"meta: missing {k!r}") for k in missing]
    if not missing and trace.meta["domain"] not in DOMAINS:
        out.append(("format", f"meta.domain: unknown domain {trace.meta['domain']!r}"))
    for i, msg in enumerate(trace.messages):
        if msg.role == "assistant":
            try:
                rendered = schema.render(msg.thinking, msg.content)
            except BadInput as exc:
                out.append(("format", f"messages[{i}]: {exc}"))
                continue
            if schema.parse(rendered) != (msg.thinking, msg.content):
                out.append(
                    ("format", f"messages[{i}]: thinking/content do not round-trip through {schema.name}")
                )
    if reparsed is not None and reparsed.id != content_id(
        {k: v for k, v in trace.to_dict().items() if k != "id"}
    ):
        out.append(("format", "id is not the content id"))
    return out


def _assistant_turns(trace: Trace) -> list[Message]:
    return [m for m in trace.messages if m.role == "assistant"]


def _check_structure(trace: Trace) -> list[tuple[str, str]]:
    """Each pattern's defining shape, plus the thinking habits (plan first, verify before a solved answer)."""
    pattern, turns = trace.meta["pattern"], _assistant_turns(trace)
    calls = trace.calls()
    sections = [[s.section for s in m.thinking] for m in turns]
    checks: list[tuple[bool, str]] = [
        (bool(sections) and sections[0][:1] == ["plan"], "first turn has no plan")
    ]
    if pattern in NO_CALL_PATTERNS:
        checks.append(
            (not calls and len(turns) == 1 and bool(turns[0].content.strip()), "must answer without calls")
        )
    else:
        checks.append(
            ("verify" in sections[-1] and not turns[-1].tool_calls, "last turn must verify and stop")
        )
        checks.append((bool(turns[-1].content.strip()), "no final answer"))
        checks += _pattern_checks(trace, pattern, turns)
    return [("structure", f"{pattern}: {why}") for ok, why in checks if not ok]


def _pattern_checks(trace: Trace, pattern: str, turns: list[Message]) -> list[tuple[bool, str]]:
    calling = [m for m in turns if m.tool_calls]
    if pattern == "single":
        return [(len(trace.calls()) == 1, "single needs exactly one call")]
    if pattern == "sequential":
        return [(len(calling) >= 2, "sequential needs calls in two or more turns")]
    if pattern == "parallel":
        return [
            (any(len(m.tool_calls) >= 2 for m in calling), "parallel needs two or more calls in one turn")
        ]
    if pattern == "instanced":
        declared = {m.instance for m in trace.messages if m.role == "user" and m.instance}
        answered = set(split_answers(turns[-1].content))
        return [
            (len(declared) >= 2, "instanced needs two or more tagged inputs"),
            (all(c.instance in declared for c in trace.calls()), "every call must name a declared instance"),
            (answered == declared, f"final answer covers {sorted(answered)}, inputs {sorted(declared)}"),
        ]
    return [(_has_recovery(trace), "needs an error result, then a reflect section, then a successful call")]


def _has_recovery(trace: Trace) -> bool:
    """The mistake's observation (an error, or e.g. failing tests) → the next assistant turn reflects → a later
    successful observation."""
    expected = trace.meta.get("mistake", {}).get("error_contains", "Error:")
    msgs = trace.messages
    for i, m in enumerate(msgs):
        if m.role == "tool" and expected in m.content:
            later = msgs[i + 1 :]
            nxt = next((x for x in later if x.role == "assistant"), None)
            if nxt and "reflect" in [s.section for s in nxt.thinking]:
                return any(x.role == "tool" and not x.content.startswith("Error:") for x in later)
    return False


def _replay_env(trace: Trace) -> tuple[Callable[[ToolCall], tuple[str, bool]], Callable[[str], float]]:
    """A fresh environment for the trace's task(s): a call function and an outcome (reward) function."""
    domain, task_json = trace.meta["domain"], trace.meta["task"]
    if trace.meta["pattern"] == "instanced":
        ienv = InstancedEnv(DOMAINS[domain][0])
        ienv.reset(task_json)

        def reward_all(final: str) -> float:
            ienv._record_final_answer(final)
            return min(ienv.rewards().values())

        return (lambda c: ienv._call_tool(c.name, c.arguments, c.instance)), reward_all
    env = DOMAINS[domain][0]()
    env.reset(task=task_json)

    def reward(final: str) -> float:
        env._record_final_answer(final)
        return env.get_reward()

    return (lambda c: env._call_tool(c.name, c.arguments)), reward


def _check_replay(trace: Trace) -> list[tuple[str, str]]:
    try:
        call_fn, reward_fn = _replay_env(trace)
    except Exception as exc:  # a task the environment cannot even set up is an execution failure
        return [("execution", f"reset failed: {type(exc).__name__}: {exc}")]
    recorded = {m.tool_call_id: m.content for m in trace.messages if m.role == "tool"}
    for call in trace.calls():
        text, _ = call_fn(call)
        if recorded.get(call.id) != text:
            want = _short(recorded.get(call.id, "<missing>"), 120)
            return [
                ("execution", f"{call.id} {call.name}: replay gave {_short(text, 120)!r}, trace has {want!r}")
            ]
    final = _assistant_turns(trace)[-1].content
    reward = reward_fn(final)
    return [] if reward == 1.0 else [("outcome", f"reward {reward} for final answer {_short(final, 120)!r}")]


def _check_no_call_outcome(trace: Trace) -> list[tuple[str, str]]:
    task = Task.from_json(trace.meta["task"])
    final = _assistant_turns(trace)[-1].content
    declared = set(trace.tool_names())
    if trace.meta["pattern"] == "irrelevance":
        near_misses = {function_spec(t)["name"] for t in near_miss_tools(trace.meta["domain"], task)}
        overlap = declared & (domain_tool_names(trace.meta["domain"], task) - near_misses)
        return (
            [("outcome", f"irrelevance: declared tools fit the request: {sorted(overlap)}")]
            if overlap
            else []
        )
    missing = trace.meta.get("clarify", {}).get("missing", "")
    problems = []
    if not final.rstrip().endswith("?"):
        problems.append(("outcome", "clarify: the reply does not ask a question"))
    if missing.replace("_", " ") not in final and missing not in final:
        problems.append(("outcome", f"clarify: the reply does not name the missing {missing!r}"))
    request = next(m.content for m in trace.messages if m.role == "user")
    step = task.solution[0][0]
    value = step.arguments.get(missing)
    if (
        value is not None
        and isinstance(value, (str, int, float))
        and len(str(value)) >= 3
        and str(value) in request
    ):
        problems.append(("outcome", f"clarify: the request still contains {missing}={value!r}"))
    return problems


# ---------------------------------------------------------------------------------------------------------------
# The data-stage API
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class GenerationResult:
    traces: list[Trace]
    rejects: list[dict[str, str]]
    attempts: int
    by_domain: Counter[str]
    by_pattern: Counter[str]
    reject_reasons: Counter[str]
    distinct_signatures: int
    distinct_tool_names: int
    seconds: float
    by_domain_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def pass_rate(self) -> float:
        return len(self.traces) / self.attempts if self.attempts else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "traces": len(self.traces),
            "attempts": self.attempts,
            "pass_rate": round(self.pass_rate, 4),
            "patterns": dict(sorted(self.by_pattern.items())),
            "domains": dict(sorted(self.by_domain.items())),
            "rejects_by_reason": dict(sorted(self.reject_reasons.items())),
            "distinct_signatures": self.distinct_signatures,
            "distinct_tool_names": self.distinct_tool_names,
            "seconds": round(self.seconds, 2),
            "traces_per_second": round(len(self.traces) / self.seconds, 1) if self.seconds else None,
        }


def _check_domains(domains: list[str]) -> list[str]:
    if not domains:
        raise BadInput(f"--domains: name at least one domain (known: {', '.join(sorted(DOMAINS))})")
    unknown = [d for d in domains if d not in DOMAINS]
    if unknown:
        raise BadInput(f"--domains: unknown domain {unknown[0]!r} (known: {', '.join(sorted(DOMAINS))})")
    return list(dict.fromkeys(domains))


def resolve_patterns(domains: list[str], patterns: dict[str, float] | None) -> dict[str, float]:
    """Normalised pattern mix over the patterns some requested domain supports.

    An explicit mix is complete (unlisted patterns get 0) and must be satisfiable; the default mix quietly
    drops what the domains cannot do (e.g. `code` without the code runner)."""
    mix = dict(DEFAULT_PATTERNS if patterns is None else patterns)
    for name, weight in mix.items():
        if name not in PATTERNS:
            raise BadInput(f"--patterns: unknown pattern {name!r} (known: {', '.join(PATTERNS)})")
        if not isinstance(weight, (int, float)) or weight < 0:
            raise BadInput(f"--patterns: {name}={weight!r} must be a number ≥ 0")
    available = set().union(*(supported_patterns(d) for d in domains))
    if patterns is not None:
        impossible = [p for p, w in mix.items() if w > 0 and p not in available]
        if impossible:
            raise BadInput(f"--patterns: {impossible[0]!r} is not possible with domains {', '.join(domains)}")
    mix = {p: float(w) for p, w in mix.items() if w > 0 and p in available}
    total = sum(mix.values())
    if total <= 0:
        raise BadInput("--patterns: the mix has no positive weight for these domains")
    return {p: w / total for p, w in sorted(mix.items())}


def _draw(rng: random.Random, mix: dict[str, float], domains: list[str]) -> tuple[str, str]:
    pattern = rng.choices(list(mix), weights=list(mix.values()))[0]
    able = [d for d in domains if pattern in supported_patterns(d)]
    return pattern, rng.choice(able)


def generate_one(
    attempt: int, seed: int, mix: dict[str, float], domains: list[str], clusters: dict[str, str],
    schema: ThoughtSchema, offer: ToolOffer | None = None,
) -> tuple[Trace | None, dict[str, str] | None, str, str]:  # fmt: skip
    """One deterministic draw → (trace, None) when verified, else (None, reject). Never raises for bad draws."""
    rng = random.Random(f"{seed}/{attempt}")
    pattern, domain = _draw(rng, mix, domains)
    with sandbox.own_code():  # the teacher runs the problem bank's own code, never a model's
        return _generate_draw(
            rng, pattern, domain, f"seed{seed}-attempt{attempt}-{domain}-{pattern}", clusters, schema, offer
        )


def _generate_draw(
    rng: random.Random,
    pattern: str,
    domain: str,
    draw_id: str,
    clusters: dict[str, str],
    schema: ThoughtSchema,
    offer: ToolOffer | None = None,
) -> tuple[Trace | None, dict[str, str] | None, str, str]:
    try:
        trace = episode_to_trace(build_episode(domain, pattern, rng, schema, offer), clusters)
    except Rejected as exc:
        return None, {"id": draw_id, "reason": exc.reason, "detail": exc.detail}, domain, pattern
    except Exception as exc:  # a domain bug must not kill a 5,000-trace run; it is counted with its location
        where = traceback.extract_tb(exc.__traceback__)[-1]
        detail = f"{type(exc).__name__}: {exc} (at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})"
        return None, {"id": draw_id, "reason": "generation", "detail": detail}, domain, pattern
    problems = verify_trace(trace, schema)
    if problems:
        reason, detail = problems[0]
        return None, {"id": trace.id, "reason": reason, "detail": detail}, domain, pattern
    return trace, None, domain, pattern


def generate_traces(
    domains: list[str], n: int, seed: int, patterns: dict[str, float] | None = None,
    clusters: dict[str, str] | None = None, progress: Callable[[int, int], None] | None = None,
    max_attempts: int | None = None, offer: ToolOffer | None = None,
) -> GenerationResult:  # fmt: skip
    """`n` verified traces (fewer only if `max_attempts`, default 2n+20, runs out), plus every reject.
    `offer`: which tools each prompt declares and how requests are worded (None: the domain's whole toolset)."""
    if n < 0:
        raise BadInput(f"--n: {n} must be ≥ 0")
    domains = _check_domains(domains)
    mix = resolve_patterns(domains, patterns)
    clusters = {**DEFAULT_CLUSTERS, **(clusters or {})}
    schema = load_thought_schema(THOUGHT_SCHEMA)
    limit = max_attempts if max_attempts is not None else 2 * n + 20
    traces: list[Trace] = []
    rejects: list[dict[str, str]] = []
    by_domain: Counter[str] = Counter()
    by_pattern: Counter[str] = Counter()
    domain_seconds: defaultdict[str, float] = defaultdict(float)
    start, attempt = time.perf_counter(), 0
    while len(traces) < n and attempt < limit:
        t0 = time.perf_counter()
        trace, reject, domain, _drawn = generate_one(attempt, seed, mix, domains, clusters, schema, offer)
        domain_seconds[domain] += time.perf_counter() - t0
        attempt += 1
        if trace is not None:
            traces.append(trace)
            by_domain[domain] += 1
            by_pattern[trace.meta["pattern"]] += 1  # the shape recorded, see shape_pattern
        else:
            rejects.append(reject or {})
        if progress is not None:
            progress(len(traces), attempt)
    return GenerationResult(traces, rejects, attempt, by_domain, by_pattern, Counter(r["reason"] for r in rejects),
                            *_distinct(traces), time.perf_counter() - start, dict(domain_seconds))  # fmt: skip


def _distinct(traces: list[Trace]) -> tuple[int, int]:
    """(distinct tool specs, distinct tool names) declared across the traces."""
    specs, names = set(), set()
    for trace in traces:
        for tool in trace.tools:
            spec = function_spec(tool)
            specs.add(json.dumps(spec, sort_keys=True))
            names.add(spec.get("name", ""))
    return len(specs), len(names)


def parse_patterns(text: str | None) -> dict[str, float] | None:
    """`single=0.2,parallel=0.1` → {"single": 0.2, "parallel": 0.1}; None/empty → the default mix."""
    if not text:
        return None
    out: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise BadInput(f"--patterns: {part.strip()!r} is not NAME=NUMBER") from None
        if not sep:
            raise BadInput(f"--patterns: {part.strip()!r} is not NAME=NUMBER")
    return out


# ---------------------------------------------------------------------------------------------------------------
# RL / eval prompt rows
# ---------------------------------------------------------------------------------------------------------------
def task_to_prompt_row(task: Task, system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> dict[str, Any]:
    """A task as an RL/eval row: `prompt` (system + user), `task` (Task JSON: the env's ground truth for
    `reset(task=…)`), `environment` (the domain, for TRL's dict `environment_factory`) and `tools` (the specs
    the prompt declares, as JSON text so rows with different schemas fit one Arrow column)."""
    if task.domain not in DOMAINS:
        raise MidtrainError(f"task {task.task_id}: unknown domain {task.domain!r}")
    return {
        "prompt": [{"role": "system", "content": system_prompt}, {"role": "user", "content": task.request}],
        "task": task.to_json(),
        "environment": task.domain,
        "tools": json.dumps(task_tools(task.domain, task), sort_keys=True),
    }


def sample_prompt_rows(
    domains: list[str], n: int, seed: int, difficulty: int | None = None, fixed_tools_only: bool = False
) -> list[dict[str, Any]]:
    """`n` prompt rows, round-robin over `domains`, deterministic from `seed`. `fixed_tools_only` drops domains
    whose tools come from the task (the API pool), which TRL's `environment_factory` cannot expose."""
    domains = _check_domains(domains)
    if fixed_tools_only:
        domains = [d for d in domains if DOMAINS[d][0]._tool_methods()]
        if not domains:
            raise BadInput("--domains: none of these domains has fixed-method tools usable by TRL")
    rows = []
    for i in range(n):
        domain = domains[i % len(domains)]
        rng = random.Random(f"prompt/{seed}/{i}")
        kwargs = {"difficulty": difficulty} if difficulty is not None else {}
        rows.append(task_to_prompt_row(DOMAINS[domain][1](rng, **kwargs)))
    return rows


# ---------------------------------------------------------------------------------------------------------------
# `midtrain data generate`
# ---------------------------------------------------------------------------------------------------------------
def parse_domains(text: str) -> list[str]:
    names = [d.strip() for d in text.split(",") if d.strip()]
    return sorted(DOMAINS) if names == ["all"] else names


def generate_to_file(
    domains: str, n: int, seed: int, out: Path, patterns: str | None, rejects_path: Path | None, console: Any
) -> GenerationResult:
    """Generate with a progress bar, write `Trace.to_json()` lines (byte-identical per seed), print the mix."""
    from pipelines.progress import progress_bar

    with progress_bar("generating", total=n, unit="traces") as update:

        def tick(done: int, attempts: int) -> None:
            update(completed=done, note=f"{attempts - done} rejected")

        result = generate_traces(parse_domains(domains), n, seed, parse_patterns(patterns), progress=tick)
    _write_lines(out, [t.to_json() for t in result.traces])
    if rejects_path is not None:
        _write_lines(
            rejects_path, [json.dumps(r, sort_keys=True, ensure_ascii=False) for r in result.rejects]
        )
    _print_summary(result, out, console)
    return result


def _write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.replace(path)


def _print_summary(result: GenerationResult, out: Path, console: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    total = max(len(result.traces), 1)
    for title, counts in (("pattern", result.by_pattern), ("domain", result.by_domain)):
        table = Table(title=f"traces by {title}")
        table.add_column(title)
        table.add_column("traces", justify="right")
        table.add_column("share", justify="right")
        for name, count in sorted(counts.items()):
            table.add_row(name, str(count), f"{count / total:.1%}")
        console.print(table)
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(result.reject_reasons.items())) or "none"
    s = result.summary()
    console.print(
        f"wrote {len(result.traces)} traces to {escape(str(out))} | verified {s['pass_rate']:.2%} of {result.attempts} attempts"
        f" | rejects: {reasons} | distinct signatures {result.distinct_signatures}"
        f" ({result.distinct_tool_names} names) | {s['traces_per_second']} traces/s",
        highlight=False,
    )
