"""The Trace record every stage shares (see docs/DESIGN.md), and its validation.

Validation is semantic, beyond field types: every tool call names a declared tool, its arguments validate
against that tool's JSON schema, tool results answer a call that was made, and `_instance` tags are
consistent. `validate_trace` returns a list of problems instead of raising on the first, so the data stage
can write every reason for a reject into `rejects.jsonl`.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from typing import Any, Literal

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

Role = Literal["system", "user", "assistant", "tool"]
Kind = Literal["tool", "code", "text"]
PATTERNS = ("single", "sequential", "parallel", "instanced", "recovery", "irrelevance", "clarify", "code")
# `meta` key of a tool trace: the index of its first assistant turn in the loss; earlier ones are context only
# (a reflexion retry's failed attempt). Absent: every assistant turn is trained.
LOSS_FROM_TURN = "loss_from_turn"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)


class ThinkingSection(_Record):
    section: str
    text: str


class ToolCall(_Record):
    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    instance: str | None = Field(default=None, alias="_instance")


class Message(_Record):
    role: Role
    content: str = ""
    thinking: list[ThinkingSection] = Field(default_factory=list)
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None
    instance: str | None = Field(default=None, alias="_instance")


class Trace(_Record):
    id: str
    source: str
    kind: Kind
    cluster: str
    tools: list[dict[str, Any]] = Field(default_factory=list)
    messages: list[Message] = Field(default_factory=list)
    text: str = ""
    meta: dict[str, Any] = Field(default_factory=dict)
    # Where the row was read (`file.jsonl:LINE`, `SPLIT[INDEX]`), not part of the record. Two rows may share an
    # id but never an origin, so rejects and duplicate reports name this.
    _origin: str | None = PrivateAttr(default=None)

    @property
    def origin(self) -> str:
        """Where this row came from, for messages: the reader's `file:line`, else the id."""
        return self._origin or self.id

    def with_origin(self, origin: str) -> Trace:
        copy = self.model_copy()
        copy._origin = origin
        return copy

    def to_json(self) -> str:
        """Canonical one-line JSON: sorted keys, defaults dropped, so equal traces give equal bytes."""
        return json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_defaults=True) | {
            "id": self.id,
            "source": self.source,
            "kind": self.kind,
            "cluster": self.cluster,
        }

    def tool_names(self) -> list[str]:
        return [function_spec(t).get("name", "") for t in self.tools]

    def calls(self) -> list[ToolCall]:
        return [c for m in self.messages if m.role == "assistant" for c in m.tool_calls]


def content_id(payload: Any) -> str:
    """Stable id from content: the same record always hashes the same, whatever the source order."""
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def function_spec(tool: dict[str, Any]) -> dict[str, Any]:
    """Accept both OpenAI's `{"type": "function", "function": {...}}` and a bare `{"name": ..., ...}`."""
    return tool.get("function", tool) if isinstance(tool, dict) else {}


def parameters_schema(tool: dict[str, Any]) -> dict[str, Any]:
    params = function_spec(tool).get("parameters") or {"type": "object", "properties": {}}
    return params


@lru_cache(maxsize=8192)
def _validator_for(schema_json: str) -> jsonschema.protocols.Validator:
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema)


def argument_errors(tool: dict[str, Any], arguments: dict[str, Any]) -> list[str]:
    """JSON-schema errors of `arguments` against `tool`'s parameters, as short readable strings."""
    schema = _normalise_schema(parameters_schema(tool))
    validator = _validator_for(json.dumps(schema, sort_keys=True))
    errors = []
    for err in sorted(validator.iter_errors(arguments), key=lambda e: list(e.path)):
        where = ".".join(str(p) for p in err.path)
        errors.append(f"{where + ': ' if where else ''}{err.message}")
    return errors


_TYPE_ALIASES = {
    "dict": "object",
    "float": "number",
    "int": "integer",
    "bool": "boolean",
    "list": "array",
    "tuple": "array",
    "str": "string",
    "any": None,
}


def _normalise_schema(schema: Any) -> Any:
    """Map Python-style type names (BFCL, Glaive and ToolACE write `dict`, `float`, `int`) to JSON-schema ones."""
    if isinstance(schema, list):
        return [_normalise_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _normalise_schema(v) for k, v in schema.items() if k != "type"}
    if "type" in schema:
        kind = schema["type"]
        if isinstance(kind, str):
            mapped = _TYPE_ALIASES.get(kind.lower(), kind)
            if mapped is not None:
                out["type"] = mapped
        else:
            out["type"] = kind
    if "properties" in schema and isinstance(schema["properties"], dict):
        out["properties"] = {k: _normalise_schema(v) for k, v in schema["properties"].items()}
    return out


def parse_trace(row: dict[str, Any]) -> tuple[Trace | None, list[str]]:
    """Build a Trace from a dict; on failure return (None, reasons) naming the bad field."""
    try:
        trace = Trace.model_validate(row)
    except ValidationError as exc:
        reasons = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return None, reasons
    problems = validate_trace(trace)
    return (trace, []) if not problems else (None, problems)


def validate_trace(trace: Trace) -> list[str]:
    """Every semantic problem with a trace; an empty list means valid."""
    if trace.kind != "tool":
        return [] if trace.text.strip() or trace.messages else ["empty: a code/text record needs `text`"]
    problems = _check_message_order(trace)
    problems += _check_calls(trace)
    problems += _check_instances(trace)
    return problems


def _check_message_order(trace: Trace) -> list[str]:
    problems = []
    if not trace.messages:
        return ["messages: a tool trace needs messages"]
    if not any(m.role == "user" for m in trace.messages):
        problems.append("messages: no user turn")
    if trace.messages[-1].role != "assistant":
        problems.append("messages: the last turn must be the assistant's (the trace must stop)")
    if any(m.role == "system" for m in trace.messages[1:]):
        problems.append("messages: a system turn may only come first")
    return problems


def _check_calls(trace: Trace) -> list[str]:
    problems: list[str] = []
    tools = {function_spec(t).get("name"): t for t in trace.tools}
    open_ids: set[str] = set()
    for i, msg in enumerate(trace.messages):
        if msg.role == "assistant":
            for call in msg.tool_calls:
                if call.name not in tools:
                    problems.append(f"messages[{i}]: call to undeclared tool {call.name!r}")
                    continue
                for err in argument_errors(tools[call.name], call.arguments):
                    problems.append(f"messages[{i}]: {call.name} arguments: {err}")
                if call.id in open_ids:
                    problems.append(f"messages[{i}]: duplicate tool call id {call.id!r}")
                open_ids.add(call.id)
        elif msg.role == "tool":
            if msg.tool_call_id is None:
                problems.append(f"messages[{i}]: tool result without tool_call_id")
            elif msg.tool_call_id not in open_ids:
                problems.append(f"messages[{i}]: tool result for unknown call {msg.tool_call_id!r}")
            else:
                open_ids.discard(msg.tool_call_id)
        elif msg.thinking or msg.tool_calls:
            problems.append(f"messages[{i}]: only assistant turns carry thinking or tool calls")
    return problems


def _check_instances(trace: Trace) -> list[str]:
    """Instanced traces: every call names a declared instance, and tool results match their call's instance."""
    declared = {m.instance for m in trace.messages if m.role != "tool" and m.instance}
    calls = trace.calls()
    if not declared and not any(c.instance for c in calls):
        return []
    problems = []
    call_instance: dict[str | None, str | None] = {c.id: c.instance for c in calls}
    for c in calls:
        if c.instance is None:
            problems.append(f"call {c.id}: instanced trace but the call names no _instance")
        elif c.instance not in declared:
            problems.append(f"call {c.id}: _instance {c.instance!r} is not declared by any input message")
    for i, m in enumerate(trace.messages):
        if m.role == "tool" and m.instance and m.instance != call_instance.get(m.tool_call_id):
            problems.append(f"messages[{i}]: tool result _instance {m.instance!r} differs from its call's")
    return problems
