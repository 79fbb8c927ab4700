"""`midtrain template check`: does this model's chat template, tool format and thought schema train correctly?

Renders one trace of every pattern the generator writes (single, parallel, sequential, instanced, recovery,
irrelevance, clarify) and checks, per pattern:
- `render`:     the template renders the conversation (with its tools);
- `tools`:      every tool is offered in the prompt;
- `mask`:       the loss mask covers exactly the assistant turns: one span per turn, no system, user or tool
                text inside one;
- `stop`:       each span ends on the end-of-turn token, so the model learns to stop;
- `prefix`:     for each assistant turn, the tokens of its prompt (the conversation so far, rendered with the
                generation prompt, as a rollout sees it) are exactly the first tokens of the training row, and
                the turn renders the same as the last message (as generated) and inside the conversation;
- `round_trip`: parsing each span gives back the turn's thinking, content and calls (parse = inverse of render);
- `trl`:        TRL's `parse_response` (what GRPO reads rollouts with) finds the same calls in the span's tokens.
Plus, once per template, TRL's own gates for its GRPO tool loop (`supports_tool_calling`,
`is_chat_template_prefix_preserving`). `data build` runs the same checks on its first tool rows.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pipelines.chat import (
    INSTANCE_KEY,
    Conversation,
    RenderError,
    _reasoning_field,
    chat_tools,
    labelled_spans,
    loss_mask,
    render_conversation,
    to_chat_messages,
)
from pipelines.codecs import Codec, codec_for
from pipelines.errors import MidtrainError
from pipelines.schema import Trace, function_spec
from pipelines.thought import ThoughtSchema

CHECK_PATTERNS = ("single", "parallel", "sequential", "instanced", "recovery", "irrelevance", "clarify")
CHECKS = ("render", "tools", "mask", "stop", "prefix", "round_trip", "trl")
SAMPLE_SEED = 7


@dataclass
class Result:
    """One pattern's checks: `passed[check]` is True, False, or None (not applicable)."""

    pattern: str
    trace_id: str
    passed: dict[str, bool | None] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)

    def fail(self, check: str, detail: str) -> None:
        if self.passed.get(check) is not False:
            self.passed[check] = False
            self.details[check] = detail

    @property
    def ok(self) -> bool:
        return all(v is not False for v in self.passed.values())


@dataclass
class Report:
    codec: Codec
    schema: ThoughtSchema
    results: list[Result]
    template_checks: dict[str, bool | None]
    example: tuple[str, Conversation | None] | None = None  # (pattern, its rendering)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results) and all(v is not False for v in self.template_checks.values())

    def failures(self) -> list[str]:
        out = [
            f"{r.pattern} × {c}: {r.details[c]}"
            for r in self.results
            for c in CHECKS
            if r.passed.get(c) is False
        ]
        out += [
            f"template × {name}: TRL refuses this template"
            for name, v in self.template_checks.items()
            if v is False
        ]
        return out


# -- sample traces -------------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def sample_traces() -> tuple[Trace, ...]:
    """One verified generated trace per pattern, the same ones on every run."""
    from pipelines.tasks.domains import DOMAINS
    from pipelines.tasks.generate import DEFAULT_CLUSTERS, THOUGHT_SCHEMA, generate_one, supported_patterns
    from pipelines.thought import load_thought_schema

    schema = load_thought_schema(THOUGHT_SCHEMA)
    out = []
    for pattern in CHECK_PATTERNS:
        domains = [d for d in sorted(DOMAINS) if pattern in supported_patterns(d)]
        for attempt in range(200):
            trace, _, _, _ = generate_one(
                attempt, SAMPLE_SEED, {pattern: 1.0}, domains, DEFAULT_CLUSTERS, schema
            )
            if trace is not None and trace.meta.get("pattern") == pattern:
                out.append(trace)
                break
        else:
            raise MidtrainError(f"template check: the generator gave no {pattern!r} trace in 200 draws")
    return tuple(out)


# -- the checks ----------------------------------------------------------------------------------------------------
def check_traces(
    tokenizer: Any,
    schema: ThoughtSchema,
    traces: list[Trace] | tuple[Trace, ...],
    patterns: list[str] | None = None,
) -> Report:
    codec = codec_for(tokenizer)
    results, rendered = [], {}
    for i, trace in enumerate(traces):
        pattern = patterns[i] if patterns else str(trace.meta.get("pattern", trace.id))
        result, rendered[pattern] = check_trace(tokenizer, codec, schema, trace, pattern)
        results.append(result)
    # The example shown: the first failing pattern, else a multi-turn one (recovery), else the first.
    shown = next((r.pattern for r in results if not r.ok), "recovery" if "recovery" in rendered else None)
    shown = shown or (results[0].pattern if results else None)
    example = (shown, rendered[shown]) if shown is not None else None
    return Report(codec, schema, results, trl_template_checks(tokenizer, codec), example)


def check_trace(
    tokenizer: Any, codec: Codec, schema: ThoughtSchema, trace: Trace, pattern: str
) -> tuple[Result, Conversation | None]:
    result = Result(pattern, trace.id, {c: None for c in CHECKS})
    messages = to_chat_messages(trace, schema, _reasoning_field(tokenizer))
    tools = chat_tools(trace)
    try:
        conversation = render_conversation(codec, tokenizer, messages, tools)
        result.passed["render"] = True
    except RenderError as exc:
        result.fail(exc.check if exc.check in CHECKS else "render", str(exc))
        if exc.check != "render":
            result.passed["render"] = True
        return result, None
    _check_tools(result, codec, tokenizer, messages, tools)
    try:
        rendered = loss_mask(tokenizer, conversation)
    except RenderError as exc:
        result.fail("mask", str(exc))
        return result, conversation
    turns = [m for m in trace.messages if m.role == "assistant"]
    spans = labelled_spans(rendered.assistant_masks)
    _check_mask(result, tokenizer, trace, rendered, spans, len(turns))
    _check_prefix(result, tokenizer, conversation, rendered.input_ids)
    for k, ((start, end), turn, prompt) in enumerate(zip(spans, turns, conversation.prompts, strict=False)):
        ids = rendered.input_ids[start:end]
        if ids[-1] not in codec.end_of_turn_ids(tokenizer):
            result.fail(
                "stop",
                f"assistant turn {k} ends on {tokenizer.decode(ids[-1:])!r}, not {codec.end_of_turn!r}",
            )
        expected = _expected_calls(turn)
        text = tokenizer.decode(ids, skip_special_tokens=False)
        reply = codec.parse(text, schema, tools)
        got = (reply.thinking, reply.content, reply.tool_calls, reply.errors)
        # What the schema itself gives back for this turn: a schema with fewer sections than the trace names
        # (reflection70b writes `observe` as plain thinking) round-trips to its own sections.
        thinking, content = schema.parse(schema.render(turn.thinking, turn.content.strip()))
        if got != (thinking, content, expected, []):
            wanted = _short((thinking, content, expected, []))
            result.fail("round_trip", f"assistant turn {k}: parsed {_short(got)}, rendered {wanted}")
        if codec.trl_tool_loop:
            _check_trl(result, tokenizer, k, ids, prompt, tools, expected)
    for check in ("tools", "mask", "stop", "prefix", "round_trip"):
        if result.passed[check] is None:
            result.passed[check] = True
    if codec.trl_tool_loop and result.passed["trl"] is None:
        result.passed["trl"] = True
    return result, conversation


def _check_tools(result: Result, codec: Codec, tokenizer: Any, messages: list, tools: list | None) -> None:
    if not tools:
        return
    prompt = codec.render(tokenizer, messages[:2], tools, add_generation_prompt=True)
    missing = [function_spec(t)["name"] for t in tools if function_spec(t)["name"] not in prompt]
    if missing:
        result.fail("tools", f"tools not offered in the prompt: {', '.join(missing)}")


def _check_mask(
    result: Result, tokenizer: Any, trace: Trace, rendered: Any, spans: list, n_turns: int
) -> None:
    if len(spans) != n_turns:
        result.fail("mask", f"{len(spans)} loss spans for {n_turns} assistant turns")
        return
    unmasked = tokenizer.decode(
        [t for t, m in zip(rendered.input_ids, rendered.assistant_masks, strict=True) if not m]
    )
    for i, message in enumerate(trace.messages):
        # A template may write a result as a JSON string (Llama's ipython turn): look for either form.
        text = message.content.strip()  # templates may trim a message (Llama's do)
        forms = (text, json.dumps(text, ensure_ascii=False)[1:-1])
        if message.role != "assistant" and message.content and not any(f in unmasked for f in forms):
            result.fail("mask", f"message {i} ({message.role}) is (partly) inside the loss mask")
            return


def _check_prefix(result: Result, tokenizer: Any, conversation: Conversation, ids: list[int]) -> None:
    for k, prompt in enumerate(conversation.prompts):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if ids[: len(prompt_ids)] != prompt_ids:
            at = next(
                (i for i, (a, b) in enumerate(zip(prompt_ids, ids, strict=False)) if a != b), len(prompt_ids)
            )
            result.fail(
                "prefix",
                f"assistant turn {k}: its prompt tokenizes differently from the training row at token {at} "
                f"({tokenizer.decode(prompt_ids[at : at + 3])!r} vs {tokenizer.decode(ids[at : at + 3])!r})",
            )
            return


def _check_trl(
    result: Result, tokenizer: Any, k: int, ids: list[int], prompt: str, tools: list | None, expected: list
) -> None:
    from trl.chat_template_utils import parse_response

    prefix = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    message = parse_response(tokenizer, list(ids), prefix=prefix, tools=tools)
    calls = [
        {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
        for c in message.get("tool_calls") or []
    ]
    if calls != expected:
        result.fail(
            "trl",
            f"assistant turn {k}: TRL's parse_response read {_short(calls)}, expected {_short(expected)}",
        )


def trl_template_checks(tokenizer: Any, codec: Codec) -> dict[str, bool | None]:
    """TRL's own gates for its GRPO tool loop (None when the format is not used with TRL's tool loop)."""
    if not codec.trl_tool_loop:
        return {"supports_tool_calling": None, "prefix_preserving": None}
    from trl.chat_template_utils import is_chat_template_prefix_preserving, supports_tool_calling

    try:
        supported = supports_tool_calling(tokenizer)
        preserving = is_chat_template_prefix_preserving(tokenizer) if supported else None
    except Exception:
        return {"supports_tool_calling": False, "prefix_preserving": None}
    return {"supports_tool_calling": supported, "prefix_preserving": preserving}


def _expected_calls(turn: Any) -> list[dict[str, Any]]:
    return [
        {"name": c.name, "arguments": {**c.arguments, **({INSTANCE_KEY: c.instance} if c.instance else {})}}
        for c in turn.tool_calls
    ]


def _short(value: Any, limit: int = 160) -> str:
    text = json.dumps(
        value, default=lambda o: o.model_dump() if hasattr(o, "model_dump") else str(o), ensure_ascii=False
    )
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- rows of a data build ------------------------------------------------------------------------------------------
class FirstRowsCheck:
    """`data build`'s template check: the first `n` tool rows it renders go through every check; a failure
    stops the build, naming the row and the check (a template that breaks one row breaks the mix)."""

    def __init__(self, tokenizer: Any, schema: ThoughtSchema, n: int = 8) -> None:
        self.tokenizer, self.schema, self.left = tokenizer, schema, n

    def __call__(self, trace: Trace) -> None:
        if self.left <= 0 or trace.kind != "tool":
            return
        self.left -= 1
        pattern = str(trace.meta.get("pattern", "row"))
        report = check_traces(self.tokenizer, self.schema, [trace], [f"{pattern} row {trace.id}"])
        if not report.ok:
            raise MidtrainError(
                f"template check on the build's first rows failed ({report.codec.name} format, "
                f"schema {self.schema.name}): {report.failures()[0]}; run `midtrain template check CONFIG` for all checks"
            )


# -- the command's output --------------------------------------------------------------------------------------------
def print_report(report: Report, console: Any, source: str) -> None:
    from rich.table import Table

    codec = report.codec
    console.print(
        f"tokenizer: {source}\nformat: {codec.name} ({codec.description}); end of turn {codec.end_of_turn!r}; "
        f"vLLM tool parser: {codec.vllm_tool_parser or 'none'}\nthought schema: {report.schema.name}",
        markup=False,
        highlight=False,
    )
    marks = {True: "[green]✓[/]", False: "[red]✗[/]", None: "[dim]–[/]"}
    table = Table(title="template check")
    table.add_column("pattern")
    for check in CHECKS:
        table.add_column(check, justify="center")
    for result in report.results:
        table.add_row(result.pattern, *(marks[result.passed.get(c)] for c in CHECKS))
    console.print(table)
    trl = ", ".join(f"{name} {marks[v]}" for name, v in report.template_checks.items())
    console.print(
        f"TRL GRPO tool loop: {trl}" if codec.trl_tool_loop else "TRL GRPO tool loop: not used by this format"
    )
    pattern, conversation = report.example or ("", None)
    if conversation is not None:
        console.print(f"\n[bold]{pattern}[/], rendered; the loss mask is [green]«marked»[/]:")
        console.print(mask_markup(conversation), markup=True, highlight=False, soft_wrap=True)
    from rich.markup import escape

    for failure in report.failures():
        console.print(f"[red]FAIL[/] {escape(failure)}", markup=True, highlight=False)


def mask_markup(conversation: Conversation, keep: int = 240) -> str:
    """The rendering with the loss spans in green «guillemets»; long stretches outside them (tool lists) are
    shortened to their two ends."""
    from rich.markup import escape

    def outside(chunk: str) -> str:
        if len(chunk) <= 3 * keep:
            return escape(chunk)
        cut = f"[dim] … {len(chunk) - 2 * keep} characters … [/]"
        return escape(chunk[:keep]) + cut + escape(chunk[-keep:])

    text, out, pos = conversation.text, [], 0
    for start, end in conversation.spans:
        out += [outside(text[pos:start]), "[green]«", escape(text[start:end]), "»[/]"]
        pos = end
    out.append(outside(text[pos:]))
    return "".join(out)


# -- loading the tokenizer the check runs with --------------------------------------------------------------------
_FAMILY_BY_NAME = (
    (re.compile(r"qwen3", re.I), "qwen3"),
    (re.compile(r"qwen", re.I), "hermes"),
    (re.compile(r"llama-?3", re.I), "llama3"),
    (re.compile(r"mistral|mixtral", re.I), "mistral"),
)


def check_tokenizer(model: Any, offline: bool = False, tokenizer_dir: str | None = None) -> tuple[Any, str]:
    """The config's tokenizer, as every stage loads it; when the model cannot be fetched (offline, gated), the
    embedded tokenizer with the family's special tokens and canonical template, saying so."""
    from pipelines.chat import load_tokenizer
    from pipelines.codecs import add_family_tokens, choose_template, install, make_codec
    from pipelines.models import DEFAULT_MODEL, ModelUnavailable, fetch_embedded

    ref = tokenizer_dir or model.name_or_path
    try:
        tokenizer = load_tokenizer(
            ref, model.chat_template, model.revision, model.tool_format, local_files_only=offline
        )
        return tokenizer, ref
    except (OSError, ValueError, ModelUnavailable) as exc:
        if tokenizer_dir is not None:
            raise
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    family = model.tool_format
    if family == "auto":
        family = next((f for pattern, f in _FAMILY_BY_NAME if pattern.search(model.name_or_path)), "hermes")
    tokenizer = load_tokenizer(DEFAULT_MODEL)
    add_family_tokens(tokenizer, family)
    requested = None
    if model.chat_template not in ("auto", "project"):
        from pathlib import Path

        requested = Path(model.chat_template).read_text(encoding="utf-8")
    _, template = choose_template(make_codec(family).canonical_template(), requested, family)
    install(tokenizer, family, template)
    embedded = fetch_embedded(DEFAULT_MODEL.split(":", 1)[1])
    source = (
        f"{model.name_or_path} is not available here ({reason}); standing in: the embedded tokenizer "
        f"({embedded.name}) with the {family} family's special tokens and template. Token-level checks hold for "
        "this stand-in vocabulary; run with the model's tokenizer (internet, or --tokenizer DIR) for its own."
    )
    return tokenizer, source
