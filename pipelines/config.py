"""YAML → pydantic config loading shared by every stage.

Errors point at `file:line: key.path: problem (did you mean …?)` because a user editing a 200-line config
needs the line, not a pydantic traceback. Overrides (`--set a.b=c`) are applied to the raw YAML tree before
validation so they go through exactly the same checks as the file.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from pipelines.errors import BadInput

ModelT = TypeVar("ModelT", bound=BaseModel)
KeyPath = tuple[str | int, ...]


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _compose(node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int]) -> Any:
    """Turn a composed YAML node into plain data, recording the 1-based line of every key path."""
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = yaml.safe_load(yaml.serialize(key_node))
            out[key] = _compose(value_node, (*path, key), lines)
            lines[(*path, key)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_compose(child, (*path, i), lines) for i, child in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))


def load_yaml(path: str | Path) -> tuple[Any, dict[KeyPath, int]]:
    """Load a YAML file; return the data and a key-path → line map. Bad YAML raises BadInput with the line."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: file not found")
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise BadInput(f"{where}: malformed YAML: {problem}") from None
    lines: dict[KeyPath, int] = {}
    data = _compose(node, (), lines) if node is not None else {}
    return data, lines


def parse_override(override: str) -> tuple[list[str], Any]:
    """`a.b.c=value` → (['a','b','c'], parsed value). Values are YAML, so `3`, `true`, `[a,b]` keep their types."""
    if "=" not in override:
        raise BadInput(f"--set {override!r}: expected KEY.PATH=VALUE")
    key, raw = override.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise BadInput(f"--set {override!r}: empty key path")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--set` overrides in order; intermediate mappings are created as needed."""
    for override in overrides:
        parts, value = parse_override(override)
        cursor = data
        for part in parts[:-1]:
            child = cursor.get(part)
            if not isinstance(child, dict):
                child = {}
                cursor[part] = child
            cursor = child
        cursor[parts[-1]] = value
    return data


def _fields_at(model: type[BaseModel], loc: KeyPath) -> list[str]:
    """Field names of the sub-model reached by `loc`, for did-you-mean suggestions."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(part))
        if field is None:
            return []
        current = _unwrap_model(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _unwrap_model(annotation: Any) -> Any:
    """Find the BaseModel inside Optional[...]/Union[...] annotations (first one wins)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _unwrap_model(arg)
        if found is not None:
            return found
    return None


def _line_for(loc: KeyPath, lines: dict[KeyPath, int]) -> int | None:
    for cut in range(len(loc), -1, -1):
        if loc[:cut] in lines:
            return lines[loc[:cut]]
    return None


def format_validation_error(
    exc: ValidationError, model: type[BaseModel], source: str, lines: dict[KeyPath, int]
) -> str:
    """One line per problem: `file:line: key.path: message (did you mean 'x'?)`."""
    messages = []
    for err in exc.errors():
        # Pydantic appends union-branch and validator tags to loc; keep only real keys and indices.
        loc = tuple(
            p for p in err["loc"] if isinstance(p, int) or not str(p).startswith(("function-", "tagged"))
        )
        key = ".".join(str(p) for p in loc) or "<root>"
        line = _line_for(loc, lines)
        where = f"{source}:{line}" if line else source
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
            close = difflib.get_close_matches(str(loc[-1]), _fields_at(model, loc[:-1]), n=1)
            if close:
                msg += f" (did you mean {close[0]!r}?)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        messages.append(f"{where}: {key}: {msg}")
    return "\n".join(messages)


def validate_data(
    model: type[ModelT], data: Any, source: str, lines: dict[KeyPath, int] | None = None
) -> ModelT:
    """Validate plain data against `model`, turning pydantic's error into BadInput with file and line."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadInput(format_validation_error(exc, model, source, lines or {})) from None


def load_model_file(model: type[ModelT], path: str | Path, overrides: list[str] | None = None) -> ModelT:
    """Load YAML at `path`, apply `--set` overrides, validate against `model`."""
    data, lines = load_yaml(path)
    if not isinstance(data, dict):
        raise BadInput(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    return validate_data(model, data, str(path), lines)
