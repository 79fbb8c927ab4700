"""Convert the tool-use formats users bring into Trace records (see docs/DESIGN.md, Trace).

One function per format, all `(row, RowContext) -> Trace`, picked by the recipe source's `format`:

- `openai`   `messages` with `tool_calls` (arguments as a JSON string or an object) + `tools`;
- `sharegpt` `conversations` of `from`/`value` with `function_call`/`observation` turns, `tools` as JSON text
             (LLaMA-Factory's tool format, APIGen-MT exports);
- `xlam`     Salesforce xLAM: `query`, and `tools`/`answers` as JSON text with flat, Python-typed parameters;
- `glaive`   glaive-function-calling-v2: `system` with the functions as JSON, raw `chat` text with
             `<functioncall>` and single-quoted argument strings;
- `hermes`   NousResearch hermes-function-calling-v1: `<tools>` in the system turn (or a `tools` column),
             `<tool_call>` and `<tool_response>` blocks in the turns (JSON or Python-literal dicts);
- `toolace`  Team-ACE ToolACE: the functions as JSON inside `system`, calls as `[Func(k="v"), …]` (parsed
             with `ast`, never evaluated);
- `trace`    rows already in the Trace schema;
- `text`     a text column, as a `text` (or `code`) document.

Decisions every converter shares:
- Conversations become kind `tool`, also when tools are declared but none is called (an `irrelevance`
  example); a conversation with neither tools nor calls is refused (below).
- A system prompt that only declares the tools and the dataset's own call syntax is dropped: the chat template
  writes the tools and its own call format, and a second, contradicting format would be trained in.
  System prompts with other content are kept.
- Tool specs become OpenAI style (`{"type": "function", "function": …}`) with JSON-schema type names, so the
  model sees one spelling of types whatever the source. Null-valued keys are dropped from specs and
  arguments: Arrow (parquet, `datasets`) unifies struct fields across rows and fills absent keys with null,
  so after loading a null is indistinguishable from "not given".
- Calls without ids get `call_1`, `call_2`, … in order; a tool result answers the oldest pending call with
  its name (else the oldest pending call), which is how these datasets order parallel results.
- `meta` gets `format`, `pattern` (single/parallel/sequential, `irrelevance` when tools exist but none is
  called) and `difficulty` = the number of tool calls (the curriculum orders by it).
- Every converted trace must pass `schema.validate_trace`; when it does not, the row is rejected with the
  validator's reasons. Rejects carry a fixed `reason` code (the manifest counts by it) and a `detail` naming
  the field and what was expected.

Quirks of the real datasets (tests/fixtures/real_rows/README.md names the rows) are either repaired, and the
repair named in `meta["repairs"]`, or the row is rejected with a reason of its own; nothing is guessed silently:
- a conversation with neither tools nor tool calls (glaive's "no access to external functions" rows, Hermes
  json-mode rows, plain ShareGPT chats) is no tool-use trace: `no_tools`;
- a tool name declared twice: identical definitions are kept once (`duplicate_tool_dropped`), different ones
  make the row ambiguous (`duplicate_tool_name`);
- an assistant text turn followed by an assistant call turn is one turn (`merged_assistant_turns`); two text
  turns in a row cannot be trained as they stand (`split_assistant_turn`);
- NaN/Infinity, which Python's json reads but JSON does not have, are refused (`non_finite_number`), never
  written into the output;
- a call giving `parameters` where `arguments` belongs is read as arguments (`parameters_key_as_arguments`).
Format-specific ones are described at their converter.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal

import jsonschema
from pydantic import ValidationError

from pipelines.data.readers import Reject, Row
from pipelines.errors import BadInput
from pipelines.schema import (
    LOSS_FROM_TURN,
    Message,
    ToolCall,
    Trace,
    _normalise_schema,
    content_id,
    validate_trace,
)


class ConversionError(ValueError):
    """A row that cannot become a valid Trace: `reason` is a fixed code, `detail` the field and the problem."""

    def __init__(self, reason: str, detail: str = "", row_id: str = "") -> None:
        self.reason = reason
        self.detail = detail
        self.row_id = row_id
        super().__init__(self._message())

    def _message(self) -> str:
        where = f"{self.row_id}: " if self.row_id else ""
        return f"{where}{self.reason}" + (f": {self.detail}" if self.detail else "")

    def at(self, row_id: str) -> ConversionError:
        self.row_id = row_id
        self.args = (self._message(),)
        return self


@dataclass(frozen=True)
class RowContext:
    """What a converter needs besides the row: where it came from and how the recipe labels it."""

    source: str
    cluster: str | None = None
    text_field: str = "text"
    text_kind: Literal["text", "code"] = "text"


Converter = Callable[[dict[str, Any], RowContext], Trace]


# -- entry points --------------------------------------------------------------------------------------------
def convert_row(
    fmt: str,
    row: dict[str, Any],
    source: str,
    row_id: str,
    cluster: str | None = None,
    *,
    text_field: str = "text",
    text_kind: Literal["text", "code"] = "text",
) -> Trace:
    """One raw row → a validated Trace, or ConversionError naming the row, the field and the problem.

    `cluster` None keeps a `trace` row's own cluster and otherwise labels the row with its kind.
    """
    converter = CONVERTERS.get(fmt)
    if converter is None:
        raise BadInput(f"unknown source format {fmt!r}; known: {', '.join(CONVERTERS)}")
    ctx = RowContext(source, cluster, text_field, text_kind)
    repairs: list[str] = []
    token = _REPAIRS.set(repairs)
    try:
        if not isinstance(row, dict):
            raise ConversionError("not_an_object", f"expected a JSON object, got {type(row).__name__}")
        trace = converter(row, ctx)
    except ConversionError as exc:
        raise exc.at(row_id) from None
    except ValidationError as exc:  # a field of the wrong type reached a pydantic Trace/Message model
        raise ConversionError("schema_mismatch", _pydantic_detail(exc), row_id) from None
    finally:
        _REPAIRS.reset(token)
    if repairs:
        trace.meta = {**trace.meta, "repairs": sorted(repairs)}
    return trace


def convert_rows(
    fmt: str,
    rows: Iterable[tuple[str, Row]],
    source: str,
    cluster: str | None = None,
    *,
    text_field: str = "text",
    text_kind: Literal["text", "code"] = "text",
) -> Iterator[tuple[str, Trace | Reject]]:
    """A reader's `(row_id, row)` stream → `(row_id, Trace | Reject)`, in order; reader rejects pass through.

    The row id stays next to each trace so later steps (filters, dedup) can still name the row they drop.
    """
    for row_id, row in rows:
        if isinstance(row, Reject):
            yield row_id, row
            continue
        try:
            trace = convert_row(fmt, row, source, row_id, cluster, text_field=text_field, text_kind=text_kind)
        except ConversionError as exc:
            yield row_id, Reject(source, row_id, exc.reason, exc.detail)
        else:
            yield row_id, trace


# -- shared building blocks ----------------------------------------------------------------------------------
# The repairs applied to the row being converted (a list per convert_row call; None outside one).
_REPAIRS: ContextVar[list[str] | None] = ContextVar("converter_repairs", default=None)


def _repaired(code: str) -> None:
    """Name a fix applied to the current row: convert_row records it in `meta["repairs"]`."""
    repairs = _REPAIRS.get()
    if repairs is not None and code not in repairs:
        repairs.append(code)


def _loads(text: str, where: str) -> Any:
    """Strict JSON: NaN and Infinity, which Python's json reads, are refused, since the output must stay JSON."""

    def refuse(name: str) -> Any:
        raise ConversionError(
            "non_finite_number", f"{where}: {name} is not a JSON number (JSON has no NaN or Infinity)"
        )

    return json.loads(text, parse_constant=refuse)


def _pydantic_detail(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())


def _own_id(row: dict[str, Any]) -> str:
    """The dataset's own id when it has one (xLAM, Hermes), else a hash of the row's content."""
    value = row.get("id")
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
        return str(value)
    try:
        return content_id(row)
    except TypeError:  # datetimes, bytes… from parquet/Arrow: hash their text form
        return content_id(json.loads(json.dumps(row, default=str)))


def _field(row: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    if key not in row or row[key] is None:
        raise ConversionError("missing_field", f"{key}: missing (expected {what})")
    value = row[key]
    if not isinstance(value, kind):
        raise ConversionError("wrong_type", f"{key}: expected {what}, got {type(value).__name__}")
    return value


def _json_text(value: Any, where: str) -> Any:
    """Parse a JSON-in-a-string field; values that are already parsed pass through."""
    if not isinstance(value, str):
        return value
    try:
        return _loads(value, where)
    except json.JSONDecodeError as exc:
        raise ConversionError("invalid_json", f"{where}: {exc.msg} at char {exc.pos}") from None


def drop_nulls(value: Any) -> Any:
    """`value` without None entries at any depth: what Arrow adds for keys some rows lack."""
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value


def _jsonable(value: Any, where: str) -> Any:
    """A JSON round trip: tuples become lists (jsonschema wants lists), sets, objects and NaN/Infinity (a parquet
    double, `1e999` in a Python-syntax call) are refused."""
    try:
        return json.loads(json.dumps(value, ensure_ascii=False, allow_nan=False))
    except TypeError as exc:
        raise ConversionError("bad_tool_call", f"{where}: arguments are not JSON data ({exc})") from None
    except ValueError:
        raise ConversionError(
            "non_finite_number", f"{where}: arguments hold NaN or Infinity, which JSON cannot write"
        ) from None


def _arguments(value: Any, where: str) -> dict[str, Any]:
    """Call arguments given as an object, as JSON text, or absent."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    if isinstance(value, str):
        try:
            value = _loads(value, f"{where}: arguments")
        except json.JSONDecodeError as exc:
            raise ConversionError(
                "invalid_json", f"{where}: arguments: {exc.msg} at char {exc.pos}"
            ) from None
    if not isinstance(value, dict):
        raise ConversionError(
            "bad_tool_call", f"{where}: arguments must be an object, got {type(value).__name__}"
        )
    return _jsonable(drop_nulls(value), where)


def _tools(value: Any, where: str) -> list[dict[str, Any]]:
    """A tool list given as a list, as JSON text, or absent → OpenAI-style specs with JSON-schema types."""
    if value is None or value == "":
        return []
    value = _json_text(value, where)
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise ConversionError(
            "bad_tool_spec", f"{where}: expected a list of tools, got {type(value).__name__}"
        )
    return [_tool(spec, f"{where}[{i}]") for i, spec in enumerate(value)]


def _tool(spec: Any, where: str) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise ConversionError("bad_tool_spec", f"{where}: expected an object, got {type(spec).__name__}")
    function = spec["function"] if isinstance(spec.get("function"), dict) else spec
    function = {k: v for k, v in drop_nulls(function).items() if k != "type"}
    if not isinstance(function.get("name"), str) or not function["name"].strip():
        raise ConversionError("bad_tool_spec", f"{where}: tool without a `name`")
    params = function.get("parameters") or {"type": "object", "properties": {}}
    if not isinstance(params, dict):
        raise ConversionError("bad_tool_spec", f"{where}.parameters: expected an object")
    function["parameters"] = _lift_required(_normalise_schema(params))
    return {"type": "function", "function": function}


def _lift_required(schema: dict[str, Any]) -> dict[str, Any]:
    """Some datasets write `"required": true` on a property (OpenAPI 2 style); JSON schema wants a list on
    the object, and a boolean there would crash the validator instead of rejecting one row."""
    props = schema.get("properties")
    if not isinstance(props, dict):
        return schema
    required: list[Any] = schema["required"] if isinstance(schema.get("required"), list) else []
    lifted = dict(props)
    for name, prop in props.items():
        if isinstance(prop, dict) and isinstance(prop.get("required"), bool):
            lifted[name] = {k: v for k, v in prop.items() if k != "required"}
            if prop["required"] and name not in required:
                required = [*required, name]
    out = {**schema, "properties": lifted}
    if required or "required" in schema:
        out["required"] = required
    return out


def _text(value: Any, where: str) -> str:
    """Message content: a string, null, or OpenAI content parts (text parts only)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for i, part in enumerate(value):
            if not (
                isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
            ):
                raise ConversionError("wrong_type", f"{where}[{i}]: only text content parts are supported")
            texts.append(part["text"])
        return "".join(texts)
    raise ConversionError("wrong_type", f"{where}: expected a string, got {type(value).__name__}")


class _Calls:
    """Numbers the calls a dataset leaves unnumbered, and says which pending call a tool result answers."""

    def __init__(self) -> None:
        self.pending: list[ToolCall] = []
        self.count = 0

    def new(self, name: Any, arguments: Any, where: str, call_id: Any = None) -> ToolCall:
        if not isinstance(name, str) or not name.strip():
            raise ConversionError("bad_tool_call", f"{where}: call without a function name")
        self.count += 1
        given = call_id if isinstance(call_id, str) and call_id else None
        call = ToolCall(id=given or f"call_{self.count}", name=name, arguments=_arguments(arguments, where))
        self.pending.append(call)
        return call

    def answer(self, where: str, name: Any = None, call_id: Any = None) -> str:
        if isinstance(call_id, str) and call_id:
            self.pending = [c for c in self.pending if c.id != call_id]
            return call_id
        if not self.pending:
            raise ConversionError("no_pending_call", f"{where}: a tool result with no call waiting for it")
        match = next((c for c in self.pending if c.name == name), self.pending[0])
        self.pending.remove(match)
        return match.id


def _split_results(value: str, pending: int) -> list[tuple[str | None, str]]:
    """(tool name, content) per result. One observation turn answering several parallel calls is split when
    it is a JSON list with one entry per pending call; anything else is one result."""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = None
    if pending > 1 and isinstance(parsed, list) and len(parsed) == pending:
        return [(_result_name(item), json.dumps(item, ensure_ascii=False)) for item in parsed]
    if isinstance(parsed, list) and len(parsed) == 1:
        parsed = parsed[0]
    return [(_result_name(parsed), value)]


def _result_name(item: Any) -> str | None:
    return item.get("name") if isinstance(item, dict) and isinstance(item.get("name"), str) else None


# -- finishing: meta, validation -----------------------------------------------------------------------------
_PROBLEM_CODES = (
    ("call to undeclared tool", "undeclared_tool"),
    (" arguments: ", "arguments_mismatch"),
    ("last turn must be", "last_turn_not_assistant"),
    ("no user turn", "no_user_turn"),
    ("system turn may only", "misplaced_system_turn"),
    ("duplicate tool call id", "duplicate_call_id"),
    ("tool result", "orphan_tool_result"),
)


def _problem_code(problem: str) -> str:
    return next((code for needle, code in _PROBLEM_CODES if needle in problem), "invalid_trace")


def _meta(fmt: str, trace: Trace) -> dict[str, Any]:
    call_turns = [len(m.tool_calls) for m in trace.messages if m.role == "assistant" and m.tool_calls]
    meta: dict[str, Any] = {"format": fmt, "difficulty": sum(call_turns)}
    if len(call_turns) > 1:
        meta["pattern"] = "sequential"
    elif call_turns:
        meta["pattern"] = "parallel" if call_turns[0] > 1 else "single"
    elif trace.tools:
        meta["pattern"] = "irrelevance"
    return meta


def _conversation(
    fmt: str, row: dict[str, Any], ctx: RowContext, tools: list[dict[str, Any]], messages: list[Message]
) -> Trace:
    """The common end of every conversation converter: build, label and validate the trace."""
    for i, msg in enumerate(messages):
        if msg.role == "assistant" and not (msg.content.strip() or msg.tool_calls or msg.thinking):
            raise ConversionError("empty_assistant_turn", f"messages[{i}]: no content and no tool calls")
    messages = _join_split_turns(messages)
    tools = _unique_tools(tools)
    if not tools and not any(m.tool_calls for m in messages):
        raise ConversionError("no_tools", _no_tools_detail(messages))
    trace = Trace(
        id=_own_id(row),
        source=ctx.source,
        kind="tool",
        cluster=ctx.cluster or "tool",
        tools=tools,
        messages=messages,
    )
    trace.meta = _meta(fmt, trace)
    _validate(trace)
    return trace


def _join_split_turns(messages: list[Message]) -> list[Message]:
    """An assistant text turn followed by the assistant's call turn is one turn split in two (glaive writes
    "Sure, one moment. <|endoftext|> ASSISTANT: <functioncall> …"): joined, the text becomes the call's content.
    Two text turns in a row cannot be joined safely (glaive's "AI:" → "ASSISTANT:" rewrite cuts sentences in
    two) and a model could never produce them: refused."""
    out: list[Message] = []
    for i, msg in enumerate(messages):
        prev = out[-1] if out else None
        if prev is None or prev.role != "assistant" or msg.role != "assistant" or prev.tool_calls:
            out.append(msg)
            continue
        if not msg.tool_calls:
            raise ConversionError(
                "split_assistant_turn",
                f"messages[{i - 1}] and messages[{i}]: two assistant text turns in a row "
                f"({prev.content[-40:]!r} | {msg.content[:40]!r})",
            )
        content = "\n".join(part for part in (prev.content.strip(), msg.content.strip()) if part)
        thinking = [*prev.thinking, *msg.thinking]
        out[-1] = msg.model_copy(update={"content": content, "thinking": thinking})
        _repaired("merged_assistant_turns")
    return out


def _unique_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A name declared twice: one definition written twice is kept once; two different definitions make every
    call to that name ambiguous (which schema holds it?), so the row is refused."""
    seen: dict[str, dict[str, Any]] = {}
    for tool in tools:
        name = tool["function"]["name"]
        if name not in seen:
            seen[name] = tool
        elif seen[name] == tool:
            _repaired("duplicate_tool_dropped")
        else:
            raise ConversionError(
                "duplicate_tool_name", f"tools: {name!r} is declared twice with different definitions"
            )
    return list(seen.values())


def _no_tools_detail(messages: list[Message]) -> str:
    system = next((m.content for m in messages if m.role == "system"), "")
    if "<schema>" in system:
        return (
            "a JSON-mode row (the system prompt asks for JSON matching a <schema>): structured output with no "
            "tools and no calls, not a tool-use trace"
        )
    return "no tools declared and no tool calls: a plain chat, not a tool-use trace"


def _validate(trace: Trace) -> None:
    try:
        json.dumps(trace.to_dict(), allow_nan=False)
    except ValueError:
        raise ConversionError(
            "non_finite_number", "the row holds NaN or Infinity, which JSON cannot write"
        ) from None
    try:
        problems = validate_trace(trace)
    except (jsonschema.exceptions.SchemaError, jsonschema.exceptions.UnknownType, TypeError) as exc:
        message = str(exc).splitlines()[0]
        raise ConversionError(
            "bad_tool_spec", f"a tool's parameters are not valid JSON schema: {message}"
        ) from None
    if problems:
        raise ConversionError(_problem_code(problems[0]), "; ".join(problems))


# -- openai --------------------------------------------------------------------------------------------------
_OPENAI_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    "function": "tool",
}


def from_openai(row: dict[str, Any], ctx: RowContext) -> Trace:
    """OpenAI chat format: `messages` (+ `tools`, or the legacy `functions`)."""
    raw = _field(row, "messages", list, "a list of {role, content} messages")
    tools = _tools(row.get("tools") or row.get("functions"), "tools")
    calls = _Calls()
    messages = [_openai_message(msg, f"messages[{i}]", calls) for i, msg in enumerate(raw)]
    trace = _conversation("openai", row, ctx, tools, messages)
    return _with_loss_from_turn(trace, row.get("meta"))


def _with_loss_from_turn(trace: Trace, meta: Any) -> Trace:
    """A row's `meta.loss_from_turn` (midtrain's recovery rows: the failed attempt is context, not loss) kept on
    the trace, checked against its assistant turns."""
    if not isinstance(meta, dict) or LOSS_FROM_TURN not in meta:
        return trace
    value = meta[LOSS_FROM_TURN]
    turns = sum(m.role == "assistant" for m in trace.messages)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < turns:
        raise ConversionError(
            "bad_meta", f"meta.{LOSS_FROM_TURN}: {value!r} is not an assistant turn index (0..{turns - 1})"
        )
    trace.meta[LOSS_FROM_TURN] = value
    return trace


def _openai_message(msg: Any, where: str, calls: _Calls) -> Message:
    if not isinstance(msg, dict):
        raise ConversionError("wrong_type", f"{where}: expected an object, got {type(msg).__name__}")
    role = _OPENAI_ROLES.get(msg.get("role", ""))
    if role is None:
        raise ConversionError(
            "unknown_role", f"{where}.role: {msg.get('role')!r} (expected one of {list(_OPENAI_ROLES)})"
        )
    content = _text(msg.get("content"), f"{where}.content")
    if role == "assistant":
        raw_calls = list(msg.get("tool_calls") or [])
        if isinstance(msg.get("function_call"), dict):  # the legacy single-call field
            raw_calls.append({"function": msg["function_call"]})
        made = [_openai_call(c, f"{where}.tool_calls[{j}]", calls) for j, c in enumerate(raw_calls)]
        return Message(role="assistant", content=content, tool_calls=made)
    if role == "tool":
        call_id = calls.answer(where, msg.get("name"), msg.get("tool_call_id"))
        return Message(role="tool", content=content, tool_call_id=call_id)
    return Message(role=role, content=content)


def _openai_call(raw: Any, where: str, calls: _Calls) -> ToolCall:
    function = raw.get("function") if isinstance(raw, dict) else None
    if not isinstance(function, dict):
        raise ConversionError(
            "bad_tool_call", f"{where}: expected {{id, type, function: {{name, arguments}}}}"
        )
    return calls.new(function.get("name"), function.get("arguments"), where, raw.get("id"))


# -- sharegpt ------------------------------------------------------------------------------------------------
_SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "function_call": "call",
    "observation": "tool",
    "tool": "tool",
    "function": "tool",
}


def from_sharegpt(row: dict[str, Any], ctx: RowContext) -> Trace:
    """ShareGPT with tools (LLaMA-Factory): `conversations` of {from, value}, optional `system` and `tools`."""
    turns = _field(row, "conversations", list, "a list of {from, value} turns")
    tools = _tools(row.get("tools"), "tools")
    messages: list[Message] = []
    system = row.get("system")
    if isinstance(system, str) and system.strip():
        messages.append(Message(role="system", content=system))
    calls = _Calls()
    for i, turn in enumerate(turns):
        messages += _sharegpt_turn(turn, f"conversations[{i}]", calls)
    return _conversation("sharegpt", row, ctx, tools, messages)


def _from_value_turn(turn: Any, where: str, roles: dict[str, str]) -> tuple[str, str]:
    """A ShareGPT-style `{from, value}` turn → (our role, its text)."""
    if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
        raise ConversionError("wrong_type", f"{where}: expected {{from, value}} with a string value")
    role = roles.get(turn.get("from", ""))
    if role is None:
        raise ConversionError(
            "unknown_role", f"{where}.from: {turn.get('from')!r} (expected one of {list(roles)})"
        )
    return role, turn["value"]


def _sharegpt_turn(turn: Any, where: str, calls: _Calls) -> list[Message]:
    role, value = _from_value_turn(turn, where, _SHAREGPT_ROLES)
    if role == "call":
        payload = _json_text(value, f"{where}.value")
        items = payload if isinstance(payload, list) else [payload]
        made = [_named_call(item, f"{where}.value", calls) for item in items]
        return [Message(role="assistant", tool_calls=made)]
    if role == "tool":
        results = _split_results(value, len(calls.pending))
        return [
            Message(role="tool", content=text, tool_call_id=calls.answer(where, name))
            for name, text in results
        ]
    return [Message(role=role, content=value)]


def _named_call(item: Any, where: str, calls: _Calls) -> ToolCall:
    """`{"name": …, "arguments": …}` (arguments as an object or JSON text), the common call shape. Some rows
    (glaive-v2 row 81082) write `parameters` where `arguments` belongs: read as the arguments."""
    if not isinstance(item, dict):
        raise ConversionError(
            "bad_tool_call", f"{where}: expected {{name, arguments}}, got {type(item).__name__}"
        )
    if "arguments" not in item and "parameters" in item:
        _repaired("parameters_key_as_arguments")
        return calls.new(item.get("name"), item["parameters"], where)
    return calls.new(item.get("name"), item.get("arguments"), where)


# -- xlam ----------------------------------------------------------------------------------------------------
def from_xlam(row: dict[str, Any], ctx: RowContext) -> Trace:
    """xLAM (APIGen): one query and the calls that answer it.

    xLAM has no tool results, so the trace is [user query, assistant calls] and ends on the assistant's
    call turn: SFT learns the call itself, which is what the dataset verifies. Rows whose `answers` is empty
    (the irrelevance subset) are rejected: there is no assistant text to learn from.
    """
    query = _field(row, "query", str, "the user query as a string")
    raw_tools = _json_text(_field(row, "tools", (str, list), "a JSON list of tools"), "tools")
    answers = _json_text(_field(row, "answers", (str, list), "a JSON list of calls"), "answers")
    if not isinstance(raw_tools, list) or not isinstance(answers, list):
        raise ConversionError("wrong_type", "tools/answers: expected JSON lists")
    tools = [_tool(_xlam_tool(spec, f"tools[{i}]"), f"tools[{i}]") for i, spec in enumerate(raw_tools)]
    calls = _Calls()
    made = [_named_call(item, f"answers[{i}]", calls) for i, item in enumerate(answers)]
    messages = [Message(role="user", content=query), Message(role="assistant", tool_calls=made)]
    return _conversation("xlam", row, ctx, tools, messages)


def _xlam_tool(spec: Any, where: str) -> dict[str, Any]:
    """xLAM's flat `{"param": {"type": "str, optional", "description", "default"?}}` → a JSON-schema object.

    A parameter is required unless its type says `optional` or it has a default. xLAM's RapidAPI tools write
    `"default": ""` for "no default" (distilabel's sample row 57546: `skip`/`limit`/`category` are `int`/`str`
    with `"default": ""` and every call passes them), so an empty default is no default: dropped, and the
    parameter stays required unless its type says optional. Defaults written as strings of another declared
    type (`"type": "int", "default": "2026"`) are given that type when they read as it exactly."""
    if not isinstance(spec, dict) or not isinstance(spec.get("parameters", {}), dict):
        raise ConversionError("bad_tool_spec", f"{where}: expected {{name, description, parameters: {{…}}}}")
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, param in (spec.get("parameters") or {}).items():
        if not isinstance(param, dict):
            raise ConversionError("bad_tool_spec", f"{where}.parameters.{name}: expected an object")
        type_text = str(param.get("type", ""))
        optional = "optional" in type_text.lower()
        prop = python_type_schema(type_text)
        prop.update({k: v for k, v in param.items() if k != "type" and v is not None})
        if prop.get("default") == "":
            del prop["default"]
            _repaired("xlam_empty_default")
        elif isinstance(prop.get("default"), str):
            prop["default"] = _typed_default(prop["default"], prop.get("type"))
        properties[name] = prop
        if not optional and "default" not in prop:
            required.append(name)
    params = {"type": "object", "properties": properties, "required": required}
    return {"name": spec.get("name"), "description": spec.get("description", ""), "parameters": params}


def _typed_default(value: str, kind: Any) -> Any:
    """A default written as text, given the declared type when it reads as it exactly ("2026" for an integer →
    2026, "true" for a boolean → True); anything else stays the dataset's text."""
    text = value.strip()
    typed: Any = value
    if kind == "integer" and re.fullmatch(r"[+-]?\d+", text):
        typed = int(text)
    elif kind == "number" and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", text):
        typed = float(text)
    elif kind == "boolean" and text.lower() in ("true", "false"):
        typed = text.lower() == "true"
    if typed is not value:
        _repaired("xlam_default_typed")
    return typed


_PY_SCALARS = {
    "str": "string",
    "string": "string",
    "int": "integer",
    "integer": "integer",
    "float": "number",
    "number": "number",
    "bool": "boolean",
    "boolean": "boolean",
    "dict": "object",
    "object": "object",
    "list": "array",
    "array": "array",
    "tuple": "array",
    "set": "array",
    "none": "null",
    "nonetype": "null",
}


def python_type_schema(type_text: str) -> dict[str, Any]:
    """A Python-ish type annotation as xLAM writes it ("str", "List[int]", "Union[int, float]",
    "int, optional", "Optional[str]") → a JSON schema. Unknown names ("Callable", "Any") constrain nothing."""
    text = re.sub(r",?\s*optional\s*$", "", type_text.strip(), flags=re.IGNORECASE).strip()
    head, args = _split_generic(text)
    key = head.lower().removeprefix("typing.")
    if key == "optional" and args:
        return python_type_schema(args[0])
    if key == "union" or (" or " in text and "[" not in text):
        options = args if key == "union" else [t.strip() for t in text.split(" or ")]
        schemas = [python_type_schema(o) for o in options]
        return {"anyOf": schemas} if all(schemas) else {}
    kind = _PY_SCALARS.get(key)
    if kind is None:
        return {}
    schema: dict[str, Any] = {"type": kind}
    if kind == "array" and key in ("list", "set") and len(args) == 1:
        items = python_type_schema(args[0])
        if items:
            schema["items"] = items
    return schema


def _split_generic(text: str) -> tuple[str, list[str]]:
    """`List[Dict[str, int]]` → ("List", ["Dict[str, int]"]): split the top-level arguments only."""
    if "[" not in text or not text.endswith("]"):
        return text, []
    head, inner = text[: text.index("[")].strip(), text[text.index("[") + 1 : -1]
    args, depth, start = [], 0, 0
    for i, ch in enumerate(inner):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            args.append(inner[start:i].strip())
            start = i + 1
    args.append(inner[start:].strip())
    return head, [a for a in args if a]


# -- glaive --------------------------------------------------------------------------------------------------
# A turn marker starts the chat, or follows a blank line or an <|endoftext|>: glaive separates turns with
# "\n\n\n" (some rows "\n\n"). A marker after a single line break is text: glaive rewrote "AI:" in the text as
# "ASSISTANT:" ("The Next Big Thing in \nASSISTANT: Top Trends", row 9046), and such a turn is refused.
_GLAIVE_TURN = re.compile(r"(?:\A|\n[ \t]*\n|<\|endoftext\|>)\s*(USER|ASSISTANT|FUNCTION RESPONSE):[ \t]?")
_GLAIVE_STRAY = re.compile(r"(?:^|\n)[ \t]*(USER|ASSISTANT|FUNCTION RESPONSE):")
_GLAIVE_ROLES = {"USER": "user", "ASSISTANT": "assistant", "FUNCTION RESPONSE": "tool"}
# `{"name": "f", "arguments": '{"a": 1}'}`: the arguments are JSON inside a single-quoted (Python) string, so the
# payload as a whole is not JSON. Greedy `.*` runs to the last `'`, since the JSON itself may contain `'`. Some
# rows write `parameters` where `arguments` belongs.
_GLAIVE_CALL = re.compile(
    r"""^\{\s*"name"\s*:\s*"(?P<name>[^"]+)"\s*,\s*"(?P<key>arguments|parameters)"\s*:\s*'(?P<args>.*)'\s*\}$""",
    re.DOTALL,
)
# `\'` inside the single-quoted arguments is Python's escape for `'`, which JSON does not know (row 71039).
_PYTHON_QUOTE_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\'")
_END_OF_TEXT = "<|endoftext|>"


def from_glaive(row: dict[str, Any], ctx: RowContext) -> Trace:
    """glaive-function-calling-v2: `system` ("SYSTEM: … Use them if required -" + JSON functions) + `chat`.

    Text before `<functioncall>` in a turn (row 21816) is the call turn's content."""
    system = _field(row, "system", str, "the SYSTEM: prompt with the function definitions")
    chat = _field(row, "chat", str, "the raw USER:/ASSISTANT: chat text")
    tools, system_text = _glaive_tools(system)
    messages = [Message(role="system", content=system_text)] if system_text else []
    calls = _Calls()
    for index, (marker, body) in enumerate(_glaive_turns(chat)):
        where = f"chat turn {index} ({marker})"
        messages.append(_glaive_message(_GLAIVE_ROLES[marker], body, where, calls))
    return _conversation("glaive", row, ctx, tools, messages)


def _glaive_tools(system: str) -> tuple[list[dict[str, Any]], str]:
    """The functions after the preamble (boilerplate, dropped); a prompt without functions is kept as is."""
    body = system.strip().removeprefix("SYSTEM:").strip()
    start = body.find("{")
    if start == -1:
        return [], body
    specs = _json_objects(body[start:], "system")
    return [_tool(spec, f"system function {i}") for i, spec in enumerate(specs)], ""


def _json_objects(text: str, where: str) -> list[Any]:
    """Consecutive JSON values separated by whitespace (Glaive writes one pretty-printed object per function)."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    pos = 0
    while pos < len(text):
        if text[pos].isspace():
            pos += 1
            continue
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise ConversionError(
                "invalid_json", f"{where}: function definition {len(values)}: {exc.msg}"
            ) from None
        values.append(value)
    return values


def _glaive_turns(chat: str) -> list[tuple[str, str]]:
    parts = _GLAIVE_TURN.split(chat)
    if parts[0].strip():
        raise ConversionError(
            "wrong_type", f"chat: text before the first USER:/ASSISTANT: marker: {parts[0][:60]!r}"
        )
    turns = []
    for index, (marker, body) in enumerate(zip(parts[1::2], parts[2::2], strict=True)):
        stray = _GLAIVE_STRAY.search(body)
        if stray:
            around = body[max(0, stray.start() - 30) : stray.end() + 20]
            raise ConversionError(
                "stray_turn_marker",
                f"chat turn {index} ({marker}): {stray.group(1)}: inside the turn's text ({around!r}); the "
                "dataset rewrote text as a turn marker, so the turn cannot be told apart",
            )
        turns.append((marker, body.strip().removesuffix(_END_OF_TEXT).strip()))
    if not turns:
        raise ConversionError("missing_field", "chat: no USER:/ASSISTANT: turns")
    return turns


def _glaive_message(role: str, body: str, where: str, calls: _Calls) -> Message:
    if role == "tool":
        return Message(role="tool", content=body, tool_call_id=calls.answer(where))
    if role == "user" or "<functioncall>" not in body:
        return Message(role=role, content=body.replace(_END_OF_TEXT, "").strip())
    before, payload = body.split("<functioncall>", 1)
    payload = payload.replace(_END_OF_TEXT, "").strip()
    where = f"{where} <functioncall>"
    match = _GLAIVE_CALL.match(payload)
    if match:
        if match["key"] == "parameters":
            _repaired("parameters_key_as_arguments")
        call = calls.new(match["name"], _glaive_arguments(match["args"], where), where)
    else:
        try:
            parsed = _loads(payload, where)
        except json.JSONDecodeError:
            detail = f'{where} is neither JSON nor {{"name": …, "arguments": \'<JSON>\'}}'
            raise ConversionError("bad_tool_call", f"{detail}: {payload[:80]!r}") from None
        call = _named_call(parsed, where, calls)
    return Message(role="assistant", content=before.strip(), tool_calls=[call])


def _glaive_arguments(text: str, where: str) -> Any:
    """The JSON inside the single-quoted arguments string; `\\'` (Python's escaped quote) read as `'`."""
    try:
        return _loads(text, f"{where}: arguments")
    except json.JSONDecodeError as exc:
        unescaped = _PYTHON_QUOTE_ESCAPE.sub(r"\1'", text)
        if unescaped == text:
            raise ConversionError(
                "invalid_json", f"{where}: arguments: {exc.msg} at char {exc.pos}: {text[:80]!r}"
            ) from None
    try:
        value = _loads(unescaped, f"{where}: arguments")
    except json.JSONDecodeError as exc:
        raise ConversionError(
            "invalid_json", f"{where}: arguments: {exc.msg} at char {exc.pos}: {text[:80]!r}"
        ) from None
    _repaired("python_quote_escape")
    return value


# -- hermes --------------------------------------------------------------------------------------------------
_HERMES_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "tool": "tool"}
_TOOLS_BLOCK = re.compile(r"<tools>(.*?)</tools>", re.DOTALL)
_TOOL_CALL_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_TOOL_RESPONSE_BLOCK = re.compile(r"<tool_response>(.*?)</tool_response>", re.DOTALL)
_RESPONSE_NAME = re.compile(r"""["']name["']\s*:\s*["']([^"']+)["']""")


def from_hermes(row: dict[str, Any], ctx: RowContext) -> Trace:
    """hermes-function-calling-v1: ShareGPT turns with `<tools>`, `<tool_call>` and `<tool_response>` blocks.

    The tools come from the row's `tools` column when it lists any (the Hub files carry one), else from the
    system prompt's `<tools>` block. The card's extraction rows write a literal backslash-n around the call
    (`<tool_call>\\n{…}\\n</tool_call>`) and nest `name` inside `arguments`; both are repaired. JSON-mode rows
    (no tools, a `<schema>` to answer in) are structured output, not tool use: refused as `no_tools`."""
    turns = _field(row, "conversations", list, "a list of {from, value} turns")
    tools = _hermes_column_tools(row.get("tools"))
    column_tools = bool(tools)
    messages: list[Message] = []
    calls = _Calls()
    for i, turn in enumerate(turns):
        where = f"conversations[{i}]"
        role, value = _from_value_turn(turn, where, _HERMES_ROLES)
        block = _tools_block(value) if role == "system" else None
        if block is not None:  # the tool prompt is boilerplate: dropped
            if not column_tools:
                tools = _hermes_tools(block, f"{where} <tools>")
        elif role == "assistant":
            messages.append(_hermes_assistant(value, where, calls, tools))
        elif role == "tool":
            messages += _hermes_results(value, where, calls)
        else:
            messages.append(Message(role=role, content=value))
    return _conversation("hermes", row, ctx, tools, messages)


def _hermes_column_tools(value: Any) -> list[dict[str, Any]]:
    """The `tools` column: JSON text of a list ("[]" or "null" when the row has none)."""
    parsed = _json_text(value, "tools") if value is not None else None
    return _tools(parsed, "tools") if parsed else []


def _tools_block(system: str) -> str | None:
    """The `<tools>` block that holds definitions: the preamble itself mentions an empty `<tools> </tools>`."""
    blocks = [b.strip() for b in _TOOLS_BLOCK.findall(system)]
    return next((b for b in blocks if b.startswith(("[", "{"))), None)


def _hermes_tools(text: str, where: str) -> list[dict[str, Any]]:
    try:
        specs = _literal_text(text, where)
    except ConversionError:
        specs = _json_objects(text, where)  # one JSON object per line, without list brackets
    return _tools(specs if isinstance(specs, list) else [specs], "tools")


def _literal_text(text: str, where: str) -> Any:
    """JSON, or a Python literal (Hermes writes `{'arguments': {...}, 'name': ...}`): parsed, never evaluated."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        json_error = exc
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        detail = f"{where}: neither JSON ({json_error.msg}) nor a Python literal: {text[:80]!r}"
        raise ConversionError("bad_tool_call", detail) from None


def _hermes_assistant(value: str, where: str, calls: _Calls, tools: list[dict[str, Any]]) -> Message:
    if value.count("<tool_call>") != value.count("</tool_call>"):
        raise ConversionError("bad_tool_call", f"{where}: unterminated <tool_call> block")
    made = []
    for j, block in enumerate(_TOOL_CALL_BLOCK.findall(value)):
        payload = _literal_text(_without_literal_newlines(block), f"{where} <tool_call> {j}")
        payload = _lift_nested_name(payload, tools)
        made.append(_named_call(payload, f"{where} <tool_call> {j}", calls))
    content = _TOOL_CALL_BLOCK.sub("", value).strip()
    return Message(role="assistant", content=content, tool_calls=made)


_EDGE_SPACE = re.compile(r"\A(?:\s|\\[nrt])+|(?:\s|\\[nrt])+\Z")


def _without_literal_newlines(block: str) -> str:
    """Whitespace around the call, including a literal backslash-n written where a newline belongs."""
    stripped = _EDGE_SPACE.sub("", block)
    if stripped != block.strip():
        _repaired("literal_newline_in_tool_call")
    return stripped


def _lift_nested_name(payload: Any, tools: list[dict[str, Any]]) -> Any:
    """`{"arguments": {…, "name": "ExpertQAExtractor"}}` → `{"name": …, "arguments": {…}}`, when that name is a
    declared tool which has no parameter called `name` (then the key cannot be an argument)."""
    if not isinstance(payload, dict) or "name" in payload or not isinstance(payload.get("arguments"), dict):
        return payload
    arguments = payload["arguments"]
    name = arguments.get("name")
    declared = {t["function"]["name"]: t["function"].get("parameters", {}) for t in tools}
    if not isinstance(name, str) or name not in declared or "name" in declared[name].get("properties", {}):
        return payload
    _repaired("name_inside_arguments")
    return {**payload, "name": name, "arguments": {k: v for k, v in arguments.items() if k != "name"}}


def _hermes_results(value: str, where: str, calls: _Calls) -> list[Message]:
    """Each `<tool_response>` block is one result; its `name` says which pending call it answers."""
    blocks = [b.strip() for b in _TOOL_RESPONSE_BLOCK.findall(value)] or [value.strip()]
    out = []
    for block in blocks:
        found = _RESPONSE_NAME.search(block)
        call_id = calls.answer(where, found.group(1) if found else None)
        out.append(Message(role="tool", content=block, tool_call_id=call_id))
    return out


# -- toolace -------------------------------------------------------------------------------------------------
_TOOLACE_ROLES = {"system": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
_TOOL_LIST_START = re.compile(r"\[\s*\{")
# An assistant turn that is a call list starts like `[Name(`; names may hold spaces or dots (API titles).
_CALL_LIST = re.compile(r"^\[\s*[^\[\]()'\"]+?\s*\(")
_JSON_NAMES = {"true": True, "false": False, "null": None}


def from_toolace(row: dict[str, Any], ctx: RowContext) -> Trace:
    """ToolACE: the function list as JSON inside `system` (boilerplate, dropped) and Python-syntax calls."""
    system = _field(row, "system", str, "the system prompt holding the JSON function list")
    turns = _field(row, "conversations", list, "a list of {from, value} turns")
    tools = _toolace_tools(system)
    names = [t["function"]["name"] for t in tools]
    messages: list[Message] = []
    calls = _Calls()
    for i, turn in enumerate(turns):
        where = f"conversations[{i}]"
        role, value = _from_value_turn(turn, where, _TOOLACE_ROLES)
        if role == "assistant" and _CALL_LIST.match(value.strip()) and value.strip().endswith("]"):
            parsed = parse_python_calls(value, names, where)
            messages.append(Message(role="assistant", tool_calls=[calls.new(n, a, where) for n, a in parsed]))
        elif role == "tool":
            results = _split_results(value, len(calls.pending))
            messages += [
                Message(role="tool", content=t, tool_call_id=calls.answer(where, n)) for n, t in results
            ]
        else:
            messages.append(Message(role=role, content=value))
    return _conversation("toolace", row, ctx, tools, messages)


def _toolace_tools(system: str) -> list[dict[str, Any]]:
    start = _TOOL_LIST_START.search(system)
    if start is None:
        raise ConversionError("missing_field", "system: no JSON function list ([{…}]) found")
    try:
        specs, _ = json.JSONDecoder().raw_decode(system, start.start())
    except json.JSONDecodeError as exc:
        raise ConversionError("invalid_json", f"system: function list: {exc.msg} at char {exc.pos}") from None
    return _tools(specs, "system functions")


def parse_python_calls(
    text: str, tool_names: list[str], where: str = "calls"
) -> list[tuple[str, dict[str, Any]]]:
    """`[Func(a="x", b=[1, 2]), Other()]` → [(name, arguments)], via `ast` (values must be literals).

    Declared names that are not Python identifiers ("Get Weather", "maps.geocode") are swapped for
    placeholders before parsing and swapped back after, so API titles with spaces parse too.
    """
    code, aliases = text.strip(), {}
    odd_names = sorted((n for n in tool_names if not n.isidentifier()), key=len, reverse=True)
    for i, name in enumerate(odd_names):
        alias = f"__tool_{i}__"
        code, count = re.subn(re.escape(name) + r"\s*\(", alias + "(", code)
        if count:
            aliases[alias] = name
    try:
        tree = ast.parse(code, mode="eval")
    except SyntaxError as exc:
        raise ConversionError(
            "bad_tool_call", f"{where}: not a [Func(k=v), …] list ({exc.msg}): {text[:80]!r}"
        ) from None
    if not isinstance(tree.body, ast.List):
        raise ConversionError("bad_tool_call", f"{where}: expected a [Func(k=v), …] list")
    return [_python_call(node, aliases, where) for node in tree.body.elts]


def _python_call(node: ast.expr, aliases: dict[str, str], where: str) -> tuple[str, dict[str, Any]]:
    if not isinstance(node, ast.Call):
        raise ConversionError(
            "bad_tool_call", f"{where}: list item is not a call: {ast.unparse(node)[:60]!r}"
        )
    name = _dotted_name(node.func, where)
    name = aliases.get(name, name)
    if node.args:
        raise ConversionError(
            "bad_tool_call", f"{where}: {name}() has positional arguments; keywords are required"
        )
    arguments = {}
    for kw in node.keywords:
        if kw.arg is None:
            raise ConversionError("bad_tool_call", f"{where}: {name}() uses **kwargs")
        arguments[kw.arg] = _literal(kw.value, f"{where}: {name}({kw.arg}=…)")
    return name, arguments


def _dotted_name(node: ast.expr, where: str) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted_name(node.value, where)}.{node.attr}"
    raise ConversionError("bad_tool_call", f"{where}: call target is not a name: {ast.unparse(node)[:60]!r}")


class _JsonConstants(ast.NodeTransformer):
    """`true`/`false`/`null` (JSON spellings that show up in generated calls) → Python constants."""

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id in _JSON_NAMES:
            return ast.copy_location(ast.Constant(_JSON_NAMES[node.id]), node)
        return node


def _literal(node: ast.expr, where: str) -> Any:
    try:
        return ast.literal_eval(_JsonConstants().visit(node))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise ConversionError(
            "bad_tool_call", f"{where}: value is not a literal: {ast.unparse(node)[:60]!r}"
        ) from None


# -- trace, text ---------------------------------------------------------------------------------------------
def from_trace(row: dict[str, Any], ctx: RowContext) -> Trace:
    """Rows already in the Trace schema; `source` becomes the recipe's name, the cluster the recipe's if set."""
    fixed = {**row, "source": ctx.source}
    cluster = ctx.cluster or row.get("cluster") or row.get("kind")
    if cluster:
        fixed["cluster"] = cluster
    trace = Trace.model_validate(fixed)  # field errors surface as `schema_mismatch` in convert_row
    _validate(trace)
    return trace


def from_text(row: dict[str, Any], ctx: RowContext) -> Trace:
    """A text column → a `text` (or `code`, when the recipe's category says so) document."""
    if ctx.text_field not in row:
        columns = ", ".join(sorted(map(str, row))) or "none"
        raise ConversionError(
            "missing_field", f"{ctx.text_field}: no such column (columns: {columns}); set text_field"
        )
    value = row[ctx.text_field]
    if not isinstance(value, str):
        raise ConversionError(
            "wrong_type", f"{ctx.text_field}: expected a string, got {type(value).__name__}"
        )
    if not value.strip():
        raise ConversionError("empty_text", f"{ctx.text_field}: empty or whitespace only")
    meta: dict[str, Any] = {"format": "text"}
    if isinstance(row.get("path"), str):
        meta["path"] = row["path"]
    return Trace(
        id=_own_id(row),
        source=ctx.source,
        kind=ctx.text_kind,
        cluster=ctx.cluster or ctx.text_kind,
        text=value,
        meta=meta,
    )


CONVERTERS: dict[str, Converter] = {
    "trace": from_trace,
    "openai": from_openai,
    "sharegpt": from_sharegpt,
    "xlam": from_xlam,
    "glaive": from_glaive,
    "hermes": from_hermes,
    "toolace": from_toolace,
    "text": from_text,
}
