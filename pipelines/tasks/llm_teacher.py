"""An LLM teacher: traces written by any OpenAI-compatible model over any environment, verified like ours.

The loop is the procedural teacher's (`pipelines.tasks.generate`), with a model in the teacher's seat: the task's
conversation and the environment's tools go to `POST {base_url}/chat/completions`; every call the model makes
is executed live in the environment (built-in, Python class, MCP server) and its result fed back; the turn
without calls is the final answer. The teacher is asked to think in the thought schema's sections (plan first,
observe after results, reflect after an error, verify before answering); a reply whose reasoning arrives in
`reasoning_content` instead (reasoning models, or a server that parsed the `<think>` block off) keeps the sections
it has, or has it mapped into the section its position calls for; whole sections written right after the
wrapper closed (`</think><verify>…</verify>answer`) are reasoning too. Tool
calls come as the API's `tool_calls`, or as `<tool_call>` JSON in the text for servers without a tool parser.

Then the APIGen-style verification of `pipelines.tasks.generate`, and a reject with its reason for anything else:
- format: the Trace validates (calls name offered tools, arguments match their schemas), every assistant turn's
  reasoning parses into the thought schema and round-trips, the first turn plans, the last answers;
- execution (replay): a fresh environment replays every call; observations must be identical (`replay: exact`,
  for deterministic servers) or at least run without new errors (`replay: executes`);
- outcome: the task's own judge (`pipelines.tasks.task_file`) scores the final answer and state 1.0 in that replay.

Reflexion (`teacher.reflexion_retries`): an episode that fails only the outcome check gets the judge's reason in
words (`pipelines.rl.feedback`, the RL retries' feedback: which tool was missing or wrong, never the expected
values) as a user turn and continues in the same environment; a retry that verifies is kept as a `recovery`
trace (failed attempt, feedback, fix), which is how failures the teacher recovers from reach the mix instead of
being dropped. The retries' requests are cached like any other, so rebuilds stay byte for byte.

Reproducibility: each request (model, messages, tools, sampling settings and a per-sample seed; not the URL or
key) is hashed, and the response stored under that hash in the run's cache file. A build answers from the cache
when it can and asks the endpoint otherwise; the manifest records a hash over exactly the entries the build
used, so `midtrain data verify` rebuilds byte for byte *offline* (`offline_teacher()`: a cache miss is an error,
not a request).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipelines.chat import DEFAULT_SYSTEM_PROMPT
from pipelines.codecs import make_codec
from pipelines.envs.base import ToolEnv
from pipelines.errors import BadInput
from pipelines.schema import (
    LOSS_FROM_TURN,
    Message,
    ThinkingSection,
    ToolCall,
    Trace,
    content_id,
    function_spec,
    parse_trace,
)
from pipelines.tasks.records import Task
from pipelines.tasks.teacher_settings import TeacherSettings
from pipelines.thought import ThoughtSchema

log = logging.getLogger("midtrain.teacher")
# A teacher's replies arrive as OpenAI messages; a server without a tool-call parser leaves the calls in the
# text, where an instruction-tuned teacher writes them in the Hermes `<tool_call>` form. Both are read here.
_TEXT_CALLS = make_codec("hermes")
SOURCE = "teacher"
_OFFLINE = {"depth": 0}  # process-wide, not thread-local: episodes run in a thread pool


# -- requests and the cache ------------------------------------------------------------------------------------
@contextlib.contextmanager
def offline_teacher() -> Iterator[None]:
    """Within this block a cache miss is an error: what `data verify` runs under."""
    _OFFLINE["depth"] += 1
    try:
        yield
    finally:
        _OFFLINE["depth"] -= 1


def teacher_offline() -> bool:
    """Whether this code runs inside `offline_teacher()` (a build records it for its worker processes)."""
    return _OFFLINE["depth"] > 0


class TeacherOffline(BadInput):
    """A rebuild needed a response the cache does not hold."""


def request_key(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


class TeacherCache:
    """Responses by request hash, one JSON line each, appended as they arrive (thread-safe)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}
        self.used: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        if path.is_file():
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    self.entries[entry["key"]] = entry["response"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    log.warning("%s:%d: unreadable cache line skipped", path, n)

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            response = self.entries.get(key)
            if response is not None:
                self.used[key] = response
            return response

    def put(self, key: str, response: dict[str, Any]) -> None:
        with self._lock:
            self.entries[key] = response
            self.used[key] = response
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(
                    json.dumps({"key": key, "response": response}, sort_keys=True, ensure_ascii=False) + "\n"
                )

    def used_sha256(self) -> str:
        """A hash over the entries this build used, in key order: equal for a rebuild from the same cache."""
        digest = hashlib.sha256()
        for key in sorted(self.used):
            digest.update(
                f"{key}\0{json.dumps(self.used[key], sort_keys=True, ensure_ascii=False)}\n".encode()
            )
        return digest.hexdigest()


class TeacherClient:
    """`POST /chat/completions` with retries, answered from the cache first."""

    def __init__(self, settings: TeacherSettings, cache: TeacherCache) -> None:
        import httpx

        self.settings = settings
        self.cache = cache
        self.http = httpx.Client(base_url=settings.base_url.rstrip("/"), timeout=settings.timeout_s)
        self.requests = 0

    def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], seed: int
    ) -> dict[str, Any]:
        s = self.settings
        body: dict[str, Any] = {"model": s.model, "messages": messages, "temperature": s.temperature,
                                "max_tokens": s.max_tokens, "seed": seed}  # fmt: skip
        if tools:
            body["tools"] = tools
        if s.top_p is not None:
            body["top_p"] = s.top_p
        key = request_key(body)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        if _OFFLINE["depth"]:
            raise TeacherOffline(f"teacher cache {self.cache.path} has no response for request {key[:16]}…: "
                                 "the rebuild would need the teacher endpoint")  # fmt: skip
        response = self._post(body)
        self.cache.put(key, response)
        return response

    def _headers(self) -> dict[str, str]:
        """The API key, read only when a request is really sent (an offline rebuild needs none)."""
        name = self.settings.api_key_env
        if not name:
            return {}
        key = os.environ.get(name)
        if not key:
            raise BadInput(f"teacher.api_key_env: environment variable {name} is not set")
        return {"Authorization": f"Bearer {key}"}

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        for attempt in range(self.settings.retries + 1):
            try:
                reply = self.http.post("/chat/completions", json=body, headers=self._headers())
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                error: str = f"{type(exc).__name__}: {exc}"
                if (
                    attempt == self.settings.retries
                ):  # nobody listens there: a setup problem, not one episode's
                    raise BadInput(f"teacher.base_url {self.settings.base_url}: cannot connect ({error}); start "
                                   "the server or fix base_url") from None  # fmt: skip
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            else:
                if reply.status_code < 500:
                    if reply.status_code >= 400:
                        raise TeacherError(f"HTTP {reply.status_code}: {reply.text[:300]}")
                    self.requests += 1
                    return reply.json()
                error = f"HTTP {reply.status_code}: {reply.text[:300]}"
            if attempt < self.settings.retries:
                time.sleep(min(8.0, 0.5 * 2**attempt))
        raise TeacherError(error)

    def close(self) -> None:
        self.http.close()


class TeacherError(Exception):
    """The endpoint failed for one request (the episode is rejected, the build goes on)."""


# -- one episode -----------------------------------------------------------------------------------------------
class Rejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def instructions(schema: ThoughtSchema) -> str:
    """The system prompt that asks the teacher for the thought schema's sections."""
    tags = {name: f"{t.open}…{t.close}" if t.open else "plain text" for name, t in schema.sections.items()}
    known = {"plan": "what you will do and with which tools (first turn)", "observe": "what the last tool results say",
             "reflect": "what went wrong and how you will fix it (after an error)",
             "verify": "check the result against the request (before the final answer)"}  # fmt: skip
    parts = [f"{name} {tags[schema.aliases.get(name, name)]}: {why}" for name, why in known.items()
             if schema.aliases.get(name, name) in schema.sections]  # fmt: skip
    return (
        f"{DEFAULT_SYSTEM_PROMPT} Every reply starts with your reasoning inside {schema.wrapper.open}…"
        f"{schema.wrapper.close}, written in these sections: {'; '.join(parts)}. After the reasoning, either call "
        "tools or give the final answer to the user. Answer with the facts the tools returned."
    )


def _section_for(turn: int, after_error: bool, final: bool) -> str:
    if turn == 0:
        return "plan"
    if final:
        return "verify"
    return "reflect" if after_error else "observe"


def _thinking(message: dict[str, Any], content: str, schema: ThoughtSchema, turn: int, after_error: bool,
              final: bool) -> tuple[list[ThinkingSection], str]:  # fmt: skip
    """The turn's reasoning as sections (parsed from the text, or mapped from `reasoning_content`) and its
    visible content; a turn without parseable reasoning is a `thought_schema` reject."""
    parsed = _TEXT_CALLS.parse(content, schema)
    if parsed.errors:
        raise Rejected("format", f"turn {turn}: {'; '.join(parsed.errors)}")
    thinking, visible = parsed.thinking, parsed.content.strip()
    reasoning = str(message.get("reasoning_content") or message.get("reasoning") or "").strip()
    opened = content.lstrip()
    trailing: list[ThinkingSection] = []
    if opened.startswith(schema.wrapper.open) or reasoning:  # after a reasoning block, never instead of one
        trailing, visible = _sections_after_reasoning(visible, schema)
    if not thinking and opened.startswith(schema.wrapper.open) and schema.wrapper.close in opened:
        # Reasoning in the wrapper but not in sections: it is the section this turn calls for.
        reasoning = reasoning or opened[len(schema.wrapper.open) : opened.index(schema.wrapper.close)].strip()
    if not thinking and reasoning:
        # A server that parses replies (transformers serve with the folder's response template, vLLM with a
        # reasoning parser) hands back the inside of `<think>` in `reasoning_content`: sections when the model
        # wrote them, else the whole text is the section this turn calls for.
        thinking = schema.parse_sections(reasoning) if any(t in reasoning for t in schema.all_tags()) else []
        thinking = thinking or [
            ThinkingSection(section=_section_for(turn, after_error, final), text=reasoning)
        ]
    thinking = [
        ThinkingSection(section=t.section, text=t.text.strip()) for t in thinking + trailing if t.text.strip()
    ]
    if not thinking:
        raise Rejected("thought_schema", f"turn {turn}: no reasoning in the {schema.name} format "
                                         f"({schema.wrapper.open}…{schema.wrapper.close})")  # fmt: skip
    if tag := next(filter(None, map(schema.reserved_tag_in, [*(t.text for t in thinking), visible])), None):
        raise Rejected("thought_schema", f"turn {turn}: a stray {tag!r} (the sections do not parse)")
    return thinking, visible


def _sections_after_reasoning(visible: str, schema: ThoughtSchema) -> tuple[list[ThinkingSection], str]:
    """Whole sections that open the visible text (`</think><verify>…</verify>The answer`, or the same after a
    server moved the `<think>` block to `reasoning_content`): reasoning by their own tags, written after the
    wrapper closed; the answer is what follows them. A section left open stays where it is (a stray-tag reject)."""
    openers = {tags.open: (name, tags.close) for name, tags in schema.sections.items() if tags.open}
    sections: list[ThinkingSection] = []
    while (opener := next((o for o in openers if visible.startswith(o)), None)) is not None:
        name, closer = openers[opener]
        end = visible.find(closer, len(opener))
        if end == -1:
            break
        sections.append(ThinkingSection(section=name, text=visible[len(opener) : end]))
        visible = visible[end + len(closer) :].lstrip()
    if sections:  # the answer's own tags (Reflection-70B's <output>) come off as after a reasoning block
        _, visible = schema.parse(visible)
    return sections, visible


def _calls(message: dict[str, Any], content: str, schema: ThoughtSchema, turn: int) -> list[tuple[str, dict]]:
    """(name, arguments) of each call: the API's `tool_calls`, else `<tool_call>` blocks in the text."""
    raw = message.get("tool_calls") or []
    if not raw:
        return [(c["name"], c["arguments"]) for c in _TEXT_CALLS.parse(content, schema).tool_calls]
    calls = []
    for i, call in enumerate(raw):
        function = call.get("function") or {}
        arguments = function.get("arguments") or {}
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as exc:
                raise Rejected(
                    "format", f"turn {turn} call {i}: arguments are not JSON ({exc.msg})"
                ) from None
        if not isinstance(arguments, dict) or not isinstance(function.get("name"), str):
            raise Rejected("format", f"turn {turn} call {i}: expected a name and an arguments object")
        calls.append((function["name"], arguments))
    return calls


@dataclass
class Episode:
    messages: list[Message] = field(default_factory=list)
    api_messages: list[dict[str, Any]] = field(default_factory=list)
    calls: int = 0
    errors: int = 0
    turns: int = 0  # the teacher's assistant turns so far (not the task's own opening)
    feedback: list[str] = field(default_factory=list)  # the judge's words before each reflexion retry
    failed_turns: int = 0  # assistant turns of the attempts that failed (context, not trained)


def run_episode(task: Task, env: ToolEnv, tools: list[dict[str, Any]], client: TeacherClient,
                schema: ThoughtSchema, max_turns: int, seed: int) -> Episode:  # fmt: skip
    """The teacher solves `task` in `env`, every call executed; returns the conversation (Trace messages)."""
    opening = [dict(m) for m in (task.messages or [{"role": "user", "content": task.request}])]
    system = opening[0]["content"] if opening[0]["role"] == "system" else None
    opening = opening[1:] if system is not None else opening
    episode = Episode()
    episode.messages = [Message(role="system", content=system or DEFAULT_SYSTEM_PROMPT)]
    episode.messages += [Message(role=m["role"], content=m["content"]) for m in opening]
    episode.api_messages = [{"role": "system", "content": (system + "\n\n" if system else "") + instructions(schema)},
                            *opening]  # fmt: skip
    _take_turns(episode, env, tools, client, schema, max_turns, seed, after_error=False)
    return episode


def retry_episode(episode: Episode, feedback: str, env: ToolEnv, tools: list[dict[str, Any]],
                  client: TeacherClient, schema: ThoughtSchema, max_turns: int, seed: int) -> None:  # fmt: skip
    """Reflexion: the judge's reason as a user turn after the failed attempt, then the teacher continues in the
    same environment (what the failed attempt changed stays changed: the fix has to deal with it)."""
    episode.failed_turns = sum(m.role == "assistant" for m in episode.messages)
    episode.messages.append(Message(role="user", content=feedback))
    episode.api_messages.append({"role": "user", "content": feedback})
    _take_turns(episode, env, tools, client, schema, max_turns, seed, after_error=True)


def _take_turns(episode: Episode, env: ToolEnv, tools: list[dict[str, Any]], client: TeacherClient,
                schema: ThoughtSchema, max_turns: int, seed: int, after_error: bool) -> None:  # fmt: skip
    """Up to `max_turns` assistant turns, each call executed, until a turn without calls (the final answer)."""
    first = episode.turns  # turn numbers run on across retries
    for turn in range(first, first + max_turns):
        episode.turns += 1
        try:
            response = client.complete(episode.api_messages, tools, seed)
        except TeacherError as exc:
            raise Rejected("teacher_error", f"turn {turn}: {exc}") from None
        message = ((response.get("choices") or [{}])[0].get("message")) or {}
        content = str(message.get("content") or "")
        calls = _calls(message, content, schema, turn)
        thinking, visible = _thinking(message, content, schema, turn, after_error, final=not calls)
        if not calls:
            episode.messages.append(Message(role="assistant", content=visible, thinking=thinking))
            episode.api_messages.append({"role": "assistant", "content": content})
            return
        tool_calls = [
            ToolCall(id=f"call_{episode.calls + i + 1}", name=n, arguments=a)
            for i, (n, a) in enumerate(calls)
        ]
        episode.calls += len(calls)
        episode.messages.append(
            Message(role="assistant", content=visible, thinking=thinking, tool_calls=tool_calls)
        )
        episode.api_messages.append({
            "role": "assistant", "content": content,
            "tool_calls": [{"id": c.id, "type": "function",
                            "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)}}
                           for c in tool_calls],
        })  # fmt: skip
        after_error = False
        for call in tool_calls:
            text, is_error = env._call_tool(call.name, call.arguments)
            failure = getattr(env, "_env_failure", None)
            if failure:
                raise Rejected("env_error", f"turn {turn}: {failure}")
            after_error = after_error or is_error
            episode.errors += int(is_error)
            episode.messages.append(Message(role="tool", content=text, tool_call_id=call.id, name=call.name))
            episode.api_messages.append(
                {"role": "tool", "tool_call_id": call.id, "name": call.name, "content": text}
            )
    raise Rejected("max_turns", f"still calling tools after {max_turns} turns")


def retry_can_pass(task: Task, env: ToolEnv) -> bool:
    """Whether a retry in this environment could still verify. The replay keeps every call of the failed
    attempt, so when the task is judged by its calls and the attempt already made at least as many successful
    calls as expected (any, for a request no tool fits) while the check fails, no fix can pass: asking again
    would only spend requests."""
    from pipelines.tasks.task_file import calls_score

    expected = (task.judge or {}).get("calls")
    if expected is None:
        return True
    made = sum(1 for _, _, raised in getattr(env, "_calls", []) if not raised)
    return made < len(expected) or calls_score(env, task.judge or {})[0] >= 1.0


def judge_feedback(episode: Episode, task: Task, env: ToolEnv) -> str:
    """What the environment's judge found wrong with a finished episode, in words (the same feedback RL's
    reflexion retries get, `pipelines.rl.feedback`): names the wrong call or check, never the expected values."""
    from pipelines.rl.feedback import verbal_feedback
    from pipelines.rl.rewards import Call, Rollout

    assistant = [m for m in episode.messages if m.role == "assistant"]
    rollout = Rollout(
        calls=[Call(c.name, dict(c.arguments)) for m in assistant for c in m.tool_calls],
        malformed=0,
        results=[(m.name or "", m.content) for m in episode.messages if m.role == "tool"],
        final_text=assistant[-1].content if assistant else "",
        finished=bool(assistant) and not assistant[-1].tool_calls,
    )
    return verbal_feedback(rollout, task, env)


def shape(messages: list[Message], expects_no_call: bool) -> str:
    """The pattern a teacher trace records, read off its shape (as `generate.shape_pattern` does)."""
    turns = [m for m in messages if m.role == "assistant"]
    calling = [m for m in turns if m.tool_calls]
    if not calling:
        return "irrelevance" if expects_no_call else "clarify"
    errored = any(m.role == "tool" and m.content.startswith("Error:") for m in messages)
    reflected = any("reflect" in [s.section for s in m.thinking] for m in turns)
    if errored and reflected:
        return "recovery"
    if any(len(m.tool_calls) >= 2 for m in calling) and len(calling) == 1:
        return "parallel"
    return "single" if len(calling) == 1 else "sequential"


# -- verification ----------------------------------------------------------------------------------------------
def check_format(trace: Trace, schema: ThoughtSchema) -> list[tuple[str, str]]:
    _, reasons = parse_trace(json.loads(trace.to_json()))
    problems = [("format", r) for r in reasons]
    turns = [m for m in trace.messages if m.role == "assistant"]
    for i, msg in enumerate(turns):
        try:
            rendered = schema.render(msg.thinking, msg.content)
        except BadInput as exc:
            problems.append(("thought_schema", f"assistant turn {i}: {exc}"))
            continue
        if schema.parse(rendered) != (msg.thinking, msg.content):
            problems.append(
                ("thought_schema", f"assistant turn {i}: does not round-trip through {schema.name}")
            )
    if turns and [s.section for s in turns[0].thinking][:1] != ["plan"]:
        problems.append(("structure", "the first turn does not start with a plan"))
    if not turns or turns[-1].tool_calls or not turns[-1].content.strip():
        problems.append(("structure", "the episode does not end with a final answer"))
    return problems


def check_replay(trace: Trace, env: ToolEnv, task: Task, replay: str) -> list[tuple[str, str]]:
    """Replay every call in a fresh environment, then let the task's judge score the final answer there."""
    from pipelines.tasks.task_file import judge_report

    recorded = {m.tool_call_id: m.content for m in trace.messages if m.role == "tool"}
    for call in trace.calls():
        text, is_error = env._call_tool(call.name, call.arguments)
        failure = getattr(env, "_env_failure", None)
        if failure:
            return [("env_error", f"replay {call.id}: {failure}")]
        was = recorded.get(call.id, "")
        if replay == "exact" and text != was:
            return [
                (
                    "execution",
                    f"{call.id} {call.name}: replay gave {text[:120]!r}, the trace has {was[:120]!r}",
                )
            ]
        if replay == "executes" and is_error and not was.startswith("Error:"):
            return [("execution", f"{call.id} {call.name}: failed on replay: {text[:160]}")]
    final = [m for m in trace.messages if m.role == "assistant"][-1].content
    env._record_final_answer(final)
    score, reasons = judge_report(env, task, final)
    return (
        [] if score >= 1.0 else [("outcome", f"score {score:.3f}: {'; '.join(reasons) or 'judge said no'}")]
    )


# -- a source's worth ------------------------------------------------------------------------------------------
@dataclass
class TeacherRun:
    """Verified traces and rejects of one teacher source, in task order (whatever the concurrency)."""

    results: list[Trace | dict[str, str]]
    cache_sha256: str
    requests: int
    cached: int


def seed_of(source_seed: int, task_id: str, sample: int) -> int:
    return int(hashlib.sha256(f"{source_seed}/{task_id}/{sample}".encode()).hexdigest()[:8], 16)


def teacher_traces(
    tasks: list[Task], env_class: dict[str, type[ToolEnv]], settings: TeacherSettings, cache_path: Path,
    schema: ThoughtSchema, samples_per_task: int = 1, seed: int = 0, replay: str = "exact",
    clusters: dict[str, str] | None = None, propose: int = 0, avoid: frozenset[str] = frozenset(),
) -> TeacherRun:  # fmt: skip
    """Every (task, sample) episode, verified: a Trace, or a reject `{"id", "reason", "detail"}`. With
    `propose`, the teacher first proposes that many tasks per environment (`propose_tasks`); the ones whose
    reference solution verifies join the tasks (requests in `avoid`, the held-out ones, are refused)."""
    from pipelines.tasks.generate import DEFAULT_CLUSTERS

    cache = TeacherCache(cache_path)
    client = TeacherClient(settings, cache)
    labels = {**DEFAULT_CLUSTERS, **(clusters or {})}
    proposal_rejects: list[Trace | dict[str, str]] = []
    if propose:
        for name in sorted(env_class):
            found, refused = propose_tasks(name, env_class[name], client, propose, seed, avoid)
            tasks = [*tasks, *found]
            proposal_rejects += refused
    jobs = [(task, sample) for task in tasks for sample in range(samples_per_task)]

    def one(job: tuple[Task, int]) -> Trace | dict[str, str]:
        task, sample = job
        return episode_trace(
            task, sample, env_class[task.domain], client, schema, settings, seed, replay, labels
        )

    try:
        with ThreadPoolExecutor(max_workers=settings.concurrency, thread_name_prefix="teacher") as pool:
            results = list(pool.map(one, jobs))
    finally:
        client.close()
        from pipelines.envs.external import close_environments

        close_environments()
    return TeacherRun(
        proposal_rejects + results, cache.used_sha256(), client.requests, len(cache.used) - client.requests
    )


# -- tasks the teacher proposes (APIGen-MT style) -------------------------------------------------------------
PROPOSE_PROMPT = (
    "You write test tasks for an assistant that can call the tools below. Write ONE realistic user request "
    "that needs one to three of these tools, and its reference solution. Answer with one JSON object and "
    'nothing else: {"prompt": "<the user request>", "calls": [{"name": "<tool>", "arguments": {…}}], '
    '"answer": "<a short fact the final reply must state, copied from what the calls return, or null>"}.\n'
    "Tools:\n"
)


def propose_tasks(
    env_name: str, env_class: type[ToolEnv], client: TeacherClient, n: int, seed: int, avoid: frozenset[str]
) -> tuple[list[Task], list[dict[str, str]]]:
    """`n` proposals (one request each, distinct seeds); a proposal is kept only if its reference calls all run
    without error in a fresh environment and its answer (if any) is in their results."""
    tools = env_class._tool_schemas()
    prompt = PROPOSE_PROMPT + json.dumps([function_spec(t) for t in tools], ensure_ascii=False)
    kept: list[Task] = []
    refused: list[dict[str, str]] = []
    seen = set(avoid)
    for index in range(n):
        task_id = f"proposed-{env_name}-{seed}-{index}"
        try:
            response = client.complete([{"role": "user", "content": prompt}], [], seed_of(seed, task_id, 0))
            content = str(((response.get("choices") or [{}])[0].get("message") or {}).get("content") or "")
            task = verify_proposal(task_id, _json_object(content), env_name, env_class)
        except (Rejected, TeacherError) as exc:
            reason, detail = (
                (exc.reason, exc.detail) if isinstance(exc, Rejected) else ("teacher_error", str(exc))
            )
            refused.append({"id": task_id, "reason": reason, "detail": detail[:400]})
            continue
        key = " ".join(task.request.lower().split())
        if key in seen:
            refused.append({"id": task_id, "reason": "proposal_duplicate", "detail": task.request[:200]})
            continue
        seen.add(key)
        kept.append(task)
    return kept, refused


def _json_object(text: str) -> dict[str, Any]:
    start, end = text.find("{"), text.rfind("}")
    try:
        value = json.loads(text[start : end + 1]) if start != -1 and end > start else None
    except json.JSONDecodeError as exc:
        raise Rejected("proposal_format", f"not JSON ({exc.msg}): {text[:160]!r}") from None
    if not isinstance(value, dict):
        raise Rejected("proposal_format", f"no JSON object in the reply: {text[:160]!r}")
    return value


def verify_proposal(task_id: str, proposal: dict[str, Any], env_name: str, env_class: type[ToolEnv]) -> Task:
    """A proposal as a train Task, if its reference solution verifies: every call runs cleanly in a fresh
    environment and the task's own judge passes on the reference's final state (and answer)."""
    from pydantic import ValidationError

    from pipelines.tasks.task_file import TaskRow, _RowError, row_to_task

    answer = proposal.get("answer")
    row = {
        "id": task_id,
        "prompt": proposal.get("prompt"),
        "expected_calls": proposal.get("calls"),
        "meta": {"proposed": True},
    }
    if isinstance(answer, (str, int, float)) and str(answer).strip():
        row["answer"] = str(answer)
    try:
        task = row_to_task(TaskRow.model_validate(row), env_name, env_class)
    except ValidationError as exc:
        raise Rejected("proposal_format", "; ".join(e["msg"] for e in exc.errors())[:300]) from None
    except _RowError as exc:
        raise Rejected("proposal_format", exc.detail) from None
    if not task.solution:
        raise Rejected("proposal_format", "no reference calls")
    env = env_class()
    try:
        env.reset(task=task.to_json())
        results = []
        for turn in task.solution:
            for step in turn:
                text, is_error = env._call_tool(step.tool, step.arguments)
                if is_error:
                    raise Rejected("proposal_unverified", f"reference call {step.tool}: {text[:200]}")
                results.append(text)
        final = "\n".join(results) if task.answer is None else f"{task.answer}"
        env._record_final_answer(final)
        if task.answer is not None and not any(task.answer.lower() in r.lower() for r in results):
            raise Rejected("proposal_unverified", f"answer {task.answer!r} is not in what the calls return")
        if env.get_reward() < 1.0:
            raise Rejected("proposal_unverified", "the task's judge refuses its own reference solution")
    finally:
        _close(env)
    return task


def episode_trace(task: Task, sample: int, env_class: type[ToolEnv], client: TeacherClient, schema: ThoughtSchema,
                  settings: TeacherSettings, seed: int, replay: str, labels: dict[str, str]) -> Trace | dict[str, str]:  # fmt: skip
    """One verified episode: a Trace, or a reject. An episode the judge fails is retried with the judge's reason
    up to `settings.reflexion_retries` times (the environment stays open across them); a success after a retry
    is a `recovery` trace holding the failed attempt, the feedback and the fix."""
    draw_id = f"{task.task_id}#{sample}"
    env = env_class()
    episode_seed = seed_of(seed, task.task_id, sample)
    retried = 0
    try:
        env.reset(task=task.to_json())
        offered = env._tool_schemas()
        episode = run_episode(task, env, offered, client, schema, settings.max_turns, episode_seed)
        while True:
            trace = _trace(task, sample, episode, offered, settings, labels)
            problems = verify_trace(trace, task, env_class, schema, replay)
            if not problems or problems[0][0] != "outcome" or retried >= settings.reflexion_retries:
                break
            if not retry_can_pass(task, env):
                break
            feedback = judge_feedback(episode, task, env)
            episode.feedback.append(feedback)
            retried += 1
            retry_episode(episode, feedback, env, offered, client, schema, settings.max_turns, episode_seed)
    except Rejected as exc:
        return {"id": draw_id, "reason": exc.reason, "detail": exc.detail + _after_retries(retried)}
    except BadInput:  # a cache miss offline, a missing API key: the build stops, with the reason
        raise
    except (
        Exception
    ) as exc:  # an environment that cannot start, a malformed response: one reject, not a crash
        return {"id": draw_id, "reason": "env_error" if "EnvFailure" in type(exc).__name__ else "teacher_error",
                "detail": f"{type(exc).__name__}: {exc}"[:400]}  # fmt: skip
    finally:
        _close(env)
    if problems:
        reason, detail = problems[0]
        return {"id": trace.id, "reason": reason, "detail": f"{draw_id}: {detail}{_after_retries(retried)}"}
    return trace


def _after_retries(retries: int) -> str:
    return f" (after {retries} reflexion {'retry' if retries == 1 else 'retries'})" if retries else ""


def verify_trace(trace: Trace, task: Task, env_class: type[ToolEnv], schema: ThoughtSchema,
                 replay: str) -> list[tuple[str, str]]:  # fmt: skip
    """Format first; then every call replayed in a fresh environment and the judge's verdict there."""
    problems = check_format(trace, schema)
    if problems:
        return problems
    fresh = env_class()
    try:
        fresh.reset(task=task.to_json())
        return check_replay(trace, fresh, task, replay)
    except Exception as exc:
        return [("env_error", f"replay: {type(exc).__name__}: {exc}"[:400])]
    finally:
        _close(fresh)


def _close(env: ToolEnv) -> None:
    closer = getattr(env, "_close", None)
    if callable(closer):
        closer()


def _trace(task: Task, sample: int, episode: Episode, tools: list[dict[str, Any]], settings: TeacherSettings,
           labels: dict[str, str]) -> Trace:  # fmt: skip
    # A retried episode is a recovery trace whatever its shape: a failed attempt, the judge's words, the fix.
    pattern = (
        "recovery" if episode.feedback else shape(episode.messages, (task.judge or {}).get("calls") == [])
    )
    meta = {"pattern": pattern, "difficulty": episode.calls, "domain": task.domain, "task_id": task.task_id,
            "task": task.to_json(), "teacher": {"model": settings.model, "sample": sample}}  # fmt: skip
    if episode.feedback:
        meta["reflexion"] = {"retries": len(episode.feedback), "feedback": list(episode.feedback)}
        # The failed attempts are context for the fix, not something to imitate: only the turns after the last
        # feedback are trained (as RL trains only what follows a retry's feedback).
        meta[LOSS_FROM_TURN] = episode.failed_turns
    draft = Trace(id="", source=SOURCE, kind="tool", cluster=labels.get(pattern, "tool"),
                  tools=[{"type": "function", "function": function_spec(t)} for t in tools],
                  messages=episode.messages, meta=meta)  # fmt: skip
    body = draft.to_dict()
    body.pop("id")
    return draft.model_copy(update={"id": content_id(body)})


TeacherReplay = Literal["exact", "executes"]
