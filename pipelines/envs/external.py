"""Environments whose tools are known only at run time (an MCP server's listing, a wrapped Python object).

TRL's `GRPOTrainer(environment_factory=…)` reads an environment's tools off its *class*: every public function,
rendered into the prompt by `transformers.utils.get_json_schema` from its signature, type hints and Google
docstring. So for a dynamic tool set midtrain builds a `ToolEnv` subclass with one generated method per tool:
the JSON schema becomes a signature (`Literal` for enums, `list[...]`, `dict[str, ...]`, unions, optional
parameters default to None) and a docstring, which `get_json_schema` turns back into that schema. Flat
schemas (the common case) round-trip exactly (tests/test_envs_external.py); what a Python signature cannot
say (nested object fields, numeric bounds, defaults) is appended to the parameter's description, so the model
still reads it. Every consumer (teacher, generator, eval, chat, RL) offers that one rendering, so SFT data and
RL prompts show the same schemas. Arguments are still validated against the server's *full* schema before a
call, and the server's complaint is what the model sees.

A call goes `method(**arguments)` → `_invoke` → the backend (`Backend`), whose failures are one of:
a tool error (shown to the model, the episode goes on) or an environment failure (`EnvFailure`: the server
died or timed out; recorded in `_env_failure`, the rollout scores 0, training goes on).
"""

from __future__ import annotations

import inspect
import json
import keyword
import logging
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Optional, Union

from pipelines.envs.base import ToolEnv, ToolError, _to_text
from pipelines.errors import BadInput
from pipelines.schema import argument_errors

log = logging.getLogger("midtrain.envs")
RESERVED_TOOL_NAMES = frozenset({"reset", "get_reward", "domain"})
_SECTION_HEADER = re.compile(r"^\s*(Args|Arguments|Parameters|Returns|Raises|Yields):\s*$", re.MULTILINE)
_CHOICES_TAIL = re.compile(r"\(choices:\s*(.*?)\)\s*$", re.IGNORECASE)
_PLAIN_TYPES: dict[str, Any] = {
    "string": str,
    "integer": int,
    "number": float,
    "boolean": bool,
    "null": type(None),
}
# Schema keywords a Python signature cannot carry, stated in the description instead.
_WORDED_KEYWORDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
                    "pattern", "format", "minItems", "maxItems", "default")  # fmt: skip


class EnvFailure(ToolError):
    """The environment itself failed (server exited, timed out, could not start): the rollout is lost."""


@dataclass(frozen=True)
class ToolDef:
    """One tool as its provider lists it: name, description, JSON schema of the arguments."""

    name: str
    description: str
    input_schema: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "input_schema": self.input_schema}


class Backend:
    """What an external environment drives: start/reset, call a tool, read state, close."""

    def reset(self, setup: dict[str, Any]) -> None:
        raise NotImplementedError

    def call(self, name: str, arguments: dict[str, Any]) -> tuple[str, bool]:
        """(observation text, is_error); raises `EnvFailure` when the environment itself fails."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the server/process; safe to call twice."""


class ExternalEnv(ToolEnv):
    """Base of the generated classes: subclasses set `_tool_defs` and `_new_backend`."""

    _tool_defs: ClassVar[dict[str, ToolDef]] = {}
    _label: ClassVar[str] = "external"
    _fork_refusal: ClassVar[str | None] = (
        "its state lives in another process (an MCP server, a Python interpreter) that cannot be copied; "
        "use rollouts.shape: chain"
    )

    def __init__(self) -> None:
        super().__init__()
        self._backend: Backend | None = None
        self._env_failure: str | None = None
        self._results: list[dict[str, Any]] = []  # every call with its observation, for verifiers

    def _new_backend(self) -> Backend:
        raise NotImplementedError

    def _setup(self, setup: dict[str, Any]) -> None:
        self._env_failure = None
        self._results = []
        if self._backend is None:
            self._backend = self._new_backend()
        try:
            self._backend.reset(setup)
        except EnvFailure as exc:
            self._env_failure = str(exc)
            raise

    def _invoke(self, name: str, arguments: dict[str, Any]) -> str:
        """Validate against the provider's schema, call, record; tool errors raise `ToolError` (TRL shows the
        message to the model), a failed environment raises `EnvFailure` and is remembered."""
        problems = argument_errors({"parameters": self._tool_defs[name].input_schema}, arguments)
        if problems:
            raise ToolError(f"bad arguments for {name}: {'; '.join(problems)}")
        if self._env_failure:
            raise EnvFailure(f"{self._label} environment failed earlier in this rollout: {self._env_failure}")
        if self._backend is None:  # a call without reset (e.g. `midtrain env call`)
            self._setup({})
        assert self._backend is not None
        try:
            text, is_error = self._backend.call(name, arguments)
        except EnvFailure as exc:
            self._env_failure = str(exc)
            self._results.append({"name": name, "arguments": arguments, "result": str(exc), "error": True})
            log.warning("rollout lost: %s", exc)
            raise
        self._results.append({"name": name, "arguments": arguments, "result": text, "error": is_error})
        if is_error:
            raise ToolError(text)
        return text

    def get_reward(self) -> float:
        return 0.0 if self._env_failure else super().get_reward()

    def _close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    @classmethod
    def _provider_tools(cls) -> list[ToolDef]:
        """The tools as the provider lists them (full schemas), in the class's tool order."""
        return [cls._tool_defs[name] for name in cls._tool_methods()]


def build_env_class(
    class_name: str, base: type[ExternalEnv], defs: list[ToolDef], namespace: dict[str, Any]
) -> type[ExternalEnv]:
    """A subclass of `base` with one generated method per tool (see the module docstring)."""
    methods: dict[str, Any] = {}
    for tool in defs:
        check_tool_name(tool.name)
        methods[tool.name] = tool_method(tool)
    attrs = {**namespace, **methods, "_tool_defs": {t.name: t for t in defs}, "__module__": base.__module__}
    return type(class_name, (base,), attrs)


def check_tool_name(name: str) -> None:
    if not name or name.startswith("_") or name in RESERVED_TOOL_NAMES:
        raise BadInput(
            f"tool {name!r}: names starting with '_' and {sorted(RESERVED_TOOL_NAMES)} are reserved by the "
            "environment contract (TRL exposes every other public method as a tool); offer it under another name"
        )


def tool_method(tool: ToolDef) -> Any:
    """A function whose signature, hints and docstring `get_json_schema` renders as `tool`'s schema."""

    def call(self: ExternalEnv, **arguments: Any) -> str:
        return self._invoke(tool.name, arguments)

    root = tool.input_schema or {}
    properties = root.get("properties") or {}
    required = set(root.get("required") or [])
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    annotations: dict[str, Any] = {}
    lines = []
    for name, schema in properties.items():
        if not re.fullmatch(r"\w+", name):
            raise BadInput(
                f"tool {tool.name!r}: parameter {name!r} is not a word (letters, digits, _): TRL renders tool "
                "schemas from Python signatures, which cannot name it"
            )
        hint, note = schema_hint(resolve_refs(schema, root), root)
        annotations[name] = hint
        # Python keywords (`from`, `class`) cannot be signature parameters: they are offered, as optional.
        if name.isidentifier() and not keyword.iskeyword(name):
            optional = name not in required
            default = None if optional else inspect.Parameter.empty
            params.append(
                inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=hint)
            )
        lines.append(f"    {name}: {parameter_description(name, schema, note)}")
    call.__name__ = call.__qualname__ = tool.name
    call.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    call.__annotations__ = annotations
    summary = description_summary(tool.description) or tool.name.replace("_", " ")
    call.__doc__ = summary + ("\n\nArgs:\n" + "\n".join(lines) if lines else "")
    return call


def description_summary(description: str | None) -> str:
    """The description without docstring sections (a FastMCP tool's description is its whole docstring, whose
    own `Args:` block would be read as ours)."""
    text = description or ""
    match = _SECTION_HEADER.search(text)
    return (text[: match.start()] if match else text).strip()


def parameter_description(name: str, schema: dict[str, Any], note: str) -> str:
    text = " ".join(str(schema.get("description") or schema.get("title") or name.replace("_", " ")).split())
    worded = {k: schema[k] for k in _WORDED_KEYWORDS if k in schema}
    if worded:
        note = (note + " " if note else "") + f"Constraints: {json.dumps(worded, sort_keys=True)}."
    if note:
        text = f"{text}{'' if text.endswith(('.', '!', '?', ':')) else '.'} {note}"
    # A trailing "(choices: …)" would be parsed by get_json_schema as an enum.
    return text + "." if _CHOICES_TAIL.search(text) else text


def resolve_refs(schema: Any, root: dict[str, Any], depth: int = 0) -> Any:
    """Inline local `$ref`s (`#/$defs/Name`, as pydantic writes nested models), a few levels deep."""
    if depth > 8:
        return schema
    if isinstance(schema, list):
        return [resolve_refs(s, root, depth + 1) for s in schema]
    if not isinstance(schema, dict):
        return schema
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return resolve_refs(merged, root, depth + 1)
    return {k: resolve_refs(v, root, depth + 1) for k, v in schema.items()}


def schema_hint(schema: dict[str, Any], root: dict[str, Any]) -> tuple[Any, str]:
    """(type hint, note for the description) for one JSON schema."""
    if not isinstance(schema, dict):
        return Any, ""
    enum = schema.get("enum")
    if isinstance(enum, list) and enum and all(isinstance(v, (str, int, float, bool)) for v in enum):
        return Literal[tuple(enum)], ""
    options = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(options, list) and options:
        return _union([schema_hint(o, root) for o in options])
    kind = schema.get("type")
    if isinstance(kind, list):
        return _union([schema_hint({**schema, "type": k}, root) for k in kind])
    if kind in _PLAIN_TYPES:
        return _PLAIN_TYPES[kind], ""
    if kind == "array":
        items = schema.get("items")
        if not isinstance(items, dict):
            return list, ""
        item_hint, note = schema_hint(items, root)
        return list[item_hint], (f"Items: {note}" if note else "")  # type: ignore[valid-type]
    if kind == "object" or "properties" in schema:
        fields = schema.get("properties")
        extra = schema.get("additionalProperties")
        if not fields and isinstance(extra, dict):
            value_hint, note = schema_hint(extra, root)
            return dict[str, value_hint], note  # type: ignore[valid-type]
        if fields:
            return dict, f"An object: {json.dumps(_plain(schema), ensure_ascii=False)}."
        return dict, ""
    return Any, ""


def _union(parts: list[tuple[Any, str]]) -> tuple[Any, str]:
    hints = list(dict.fromkeys(h for h, _ in parts))
    notes = " ".join(n for _, n in parts if n)
    nullable = type(None) in hints
    hints = [h for h in hints if h is not type(None)]
    if not hints:
        return type(None), notes
    hint = hints[0] if len(hints) == 1 else Union[tuple(hints)]  # noqa: UP007 (built from a list)
    return (Optional[hint] if nullable else hint), notes  # noqa: UP045 (a runtime type object)


def _plain(schema: Any) -> Any:
    """A nested schema without pydantic's `title`s: what the description states."""
    if isinstance(schema, dict):
        return {k: _plain(v) for k, v in schema.items() if k != "title"}
    if isinstance(schema, list):
        return [_plain(s) for s in schema]
    return schema


def observation_text(blocks: list[Any], structured: Any = None) -> str:
    """A tool result as the text the model reads: structured content as compact JSON, else the text blocks
    joined (a text that is JSON is re-dumped compactly: pretty-printing only costs tokens)."""
    if structured is not None:
        return _to_text(structured)
    texts = []
    for block in blocks:
        kind = getattr(block, "type", None)
        if kind == "text":
            texts.append(block.text)
        elif kind == "resource" and hasattr(getattr(block, "resource", None), "text"):
            texts.append(block.resource.text)
        else:
            texts.append(f"[{kind} content]")
    text = "\n".join(texts)
    try:
        return json.dumps(json.loads(text), ensure_ascii=False)
    except (json.JSONDecodeError, TypeError):
        return text


def close_environments() -> None:
    """End every live MCP session (server processes must not outlive the stage that started them)."""
    import sys

    module = sys.modules.get("pipelines.envs.mcp_env")
    if module is not None:
        module.close_all()
