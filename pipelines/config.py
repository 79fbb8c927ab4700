"""YAML → pydantic config loading shared by every stage.

Errors point at `file:line: key.path: problem (did you mean …?)` because a user editing a 200-line config
needs the line, not a pydantic traceback. Overrides (`--set a.b=c`) are applied to the raw YAML tree before
validation so they go through exactly the same checks as the file.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, ValidationError, model_serializer

from pipelines.errors import BadInput

ModelT = TypeVar("ModelT", bound=BaseModel)
KeyPath = tuple[str | int, ...]


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, not silently ignored, and values are taken as
    typed, never coerced: lax pydantic reads `r: true` as 1, `packing: 1` as true and `seed: "3"` as 3."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


class OmitsNewKeysAtDefault(StrictModel):
    """A section with keys added after runs and recipes were fingerprinted: while at their defaults those keys
    are left out of every dump (fingerprints, lockfiles, wandb config, `config show`), so upgrading midtrain
    re-runs nothing that did not change. A key set to anything else is dumped, and fingerprinted, as usual.
    A mixin rather than StrictModel itself: the wrap serializer is a Python call per dump, and task rows and
    messages are dumped once per row."""

    omitted_at_default: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        for name in cls.omitted_at_default:
            field = cls.model_fields.get(name)
            if field is None or field.is_required():
                raise TypeError(f"{cls.__name__}.omitted_at_default: {name!r} is not a field with a default")

    @model_serializer(mode="wrap")
    def _omit_new_keys_at_default(self, handler: SerializerFunctionWrapHandler) -> Any:
        dumped = handler(self)
        if isinstance(dumped, dict):
            fields = type(self).model_fields
            for name in self.omitted_at_default:
                if getattr(self, name) == fields[name].get_default(call_default_factory=True):
                    dumped.pop(name, None)
        return dumped


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, where `3e-4` (no dot) is text and only `3.0e-4` a float; YAML 1.2 and every
    user typing a learning rate read it as a number, so configs and `--set` do too."""


_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)

# A run config is a few hundred values; aliases that expand past this are an alias bomb ("billion laughs"),
# which would otherwise burn CPU and memory in validation long before any message.
MAX_EXPANDED_NODES = 100_000
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Composer:
    """Composed YAML nodes → plain data, recording the 1-based line of every key path.

    Stricter than `yaml.safe_load`: a duplicate key is an error (PyYAML keeps the last one silently), keys must
    be scalars (`? [a, b]` is valid YAML but not a config key), and alias expansion is capped."""

    def __init__(self, loader: yaml.SafeLoader, source: str) -> None:
        self.loader = loader
        self.source = source
        self.lines: dict[KeyPath, int] = {}
        self._sizes: dict[int, int] = {}

    def error(self, node: yaml.Node, message: str) -> BadInput:
        return BadInput(f"{self.source}:{node.start_mark.line + 1}: {message}")

    def expanded_size(self, node: yaml.Node) -> int:
        """Nodes in the tree once aliases are expanded; memoised per node, so linear in the file's size."""
        known = self._sizes.get(id(node))
        if known is not None:
            return known
        self._sizes[id(node)] = 1  # a recursive alias (`&a [*a]`) counts once instead of looping
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        size = 1 + sum(self.expanded_size(child) for child in children)
        if size > MAX_EXPANDED_NODES:
            raise self.error(
                node, f"YAML aliases expand to more than {MAX_EXPANDED_NODES:,} values (an alias bomb?)"
            )
        self._sizes[id(node)] = size
        return size

    def data(self, node: yaml.Node, path: KeyPath, active: frozenset[int] = frozenset()) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if id(node) in active:
            raise self.error(node, "recursive YAML alias (a value that contains itself)")
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, path, active | {id(node)})
        if isinstance(node, yaml.SequenceNode):
            inner = active | {id(node)}
            return [self.data(child, (*path, i), inner) for i, child in enumerate(node.value)]
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            raise self.error(node, f"bad YAML value: {getattr(exc, 'problem', None) or exc}") from None

    def mapping(self, node: yaml.MappingNode, path: KeyPath, active: frozenset[int]) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        merged: dict[Any, Any] = {}
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:  # `<<: *defaults`: explicit keys win over merged ones
                for source in self.merge_sources(value_node):
                    for key, value in self.mapping(source, path, active).items():
                        merged.setdefault(key, value)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise self.error(key_node, "a key must be a plain value (a name), not a list or mapping")
            key = self.data(key_node, (*path, "<key>"), active)
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise self.error(key_node, f"duplicate key {key!r} (first at line {first_line[key]})")
            first_line[key] = line
            out[key] = self.data(value_node, (*path, key), active)
            self.lines[(*path, key)] = line
        return {**{k: v for k, v in merged.items() if k not in out}, **out}

    def merge_sources(self, node: yaml.Node) -> list[yaml.MappingNode]:
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        for source in sources:
            if not isinstance(source, yaml.MappingNode):
                raise self.error(source, "`<<` merges a mapping (or a list of mappings) into this one")
        return sources


def load_yaml(path: str | Path) -> tuple[Any, dict[KeyPath, int]]:
    """Load a YAML file; return the data and a key-path → line map. Bad YAML raises BadInput with the line."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: file not found")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise BadInput(
            f"{path}:{line}: not UTF-8 (byte 0x{raw[exc.start]:02x}); save the file as UTF-8"
        ) from None
    loader = _ConfigLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return {}, {}
        composer = _Composer(loader, str(path))
        composer.expanded_size(node)
        return composer.data(node, ()), composer.lines
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise BadInput(f"{where}: malformed YAML: {problem}") from None
    finally:
        loader.dispose()


def parse_override(override: str) -> tuple[list[str], Any]:
    """`a.b.c=value` → (['a','b','c'], parsed value). Values are YAML, so `3`, `true`, `[a,b]` keep their types."""
    if "=" not in override:
        raise BadInput(f"--set {override!r}: expected KEY.PATH=VALUE")
    key, raw = override.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise BadInput(f"--set {override!r}: empty key path")
    try:
        value = yaml.load(raw, Loader=_ConfigLoader) if raw.strip() else ""  # a SafeLoader
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--set` overrides in order; intermediate mappings are created as needed, and a number indexes
    into a list (`--set sft.clusters.0=tool`)."""
    for override in overrides:
        parts, value = parse_override(override)
        cursor: Any = data
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(cursor, list):
                if not (part.isdigit() and int(part) < len(cursor)):
                    where = ".".join(parts[:depth]) or "<root>"
                    raise BadInput(
                        f"--set {'.'.join(parts)}: {where} is a list of {len(cursor)}; "
                        f"{part!r} is not an index in it"
                    )
                if last:
                    cursor[int(part)] = value
                else:
                    cursor = cursor[int(part)]
                continue
            if last:
                cursor[part] = value
                continue
            child = cursor.get(part)
            if not isinstance(child, dict | list):
                child = {}
                cursor[part] = child
            cursor = child
    return data


def merge_trees(base: Any, child: Any, lines: dict[KeyPath, int], at: KeyPath = ()) -> Any:
    """`child` laid over `base`, for a file that names a `base:` to start from. Mappings merge key by key; a list
    of mappings that all carry a `name` (a recipe's sources) merges entry by entry on that name, new names
    appended; anything else in `child` replaces what `base` had. `lines` (the child file's key-path → line map)
    is re-keyed in place where a merged list puts a child's entry at another index, so errors keep its line."""
    if isinstance(base, dict) and isinstance(child, dict):
        merged = dict(base)
        for key, value in child.items():
            merged[key] = merge_trees(base[key], value, lines, (*at, key)) if key in base else value
        return merged
    if _named_list(base) and _named_list(child):
        merged_list = list(base)
        index = {entry["name"]: i for i, entry in enumerate(base)}
        moves: dict[int, int] = {}
        for i, entry in enumerate(child):
            target = index.get(entry["name"])
            if target is None:
                target = len(merged_list)
                merged_list.append(entry)
            else:
                merged_list[target] = merge_trees(base[target], entry, lines, (*at, target))
            moves[i] = target
        _rekey_lines(lines, at, moves)
        return merged_list
    return child


def _named_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(e, dict) and "name" in e for e in value)


def _rekey_lines(lines: dict[KeyPath, int], at: KeyPath, moves: dict[int, int]) -> None:
    depth = len(at)
    moved = {
        key: line
        for key, line in lines.items()
        if len(key) > depth and key[:depth] == at and isinstance(key[depth], int) and key[depth] in moves
    }
    for key in moved:
        del lines[key]
    for key, line in moved.items():
        index = key[depth]
        assert isinstance(index, int)  # only list positions were moved
        lines[(*at, moves[index], *key[depth + 1 :])] = line


def override_paths(overrides: list[str]) -> list[tuple[str, ...]]:
    return [tuple(parse_override(o)[0]) for o in overrides]


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


def where_is(loc: KeyPath, source: str, lines: dict[KeyPath, int], overrides: list[tuple[str, ...]]) -> str:
    """`file:line` of the key, or the `--set` that put it there: an override's problem is never blamed on a
    line of the file. A problem in a section an override changed names both."""
    text = tuple(str(p) for p in loc)
    for path in reversed(overrides):  # the last override of a key wins, so it is the one to blame
        if text[: len(path)] == path or (path[: len(text)] == text and loc not in lines):
            return f"--set {'.'.join(path)}"
    line = _line_for(loc, lines)
    where = f"{source}:{line}" if line else source
    touched = [p for p in overrides if p[: len(text)] == text]
    if touched:
        where += f" (with --set {', '.join('.'.join(p) for p in touched)})"
    return where


def format_validation_error(
    exc: ValidationError,
    model: type[BaseModel],
    source: str,
    lines: dict[KeyPath, int],
    overrides: list[tuple[str, ...]] | None = None,
) -> str:
    """One line per problem: `file:line: key.path: message (did you mean 'x'?)`."""
    messages = []
    for err in exc.errors():
        # Pydantic appends union-branch and validator tags to loc; keep only real keys and indices.
        loc = tuple(
            p for p in err["loc"] if isinstance(p, int) or not str(p).startswith(("function-", "tagged"))
        )
        key = ".".join(str(p) for p in loc) or "<root>"
        where = where_is(loc, source, lines, overrides or [])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
            close = difflib.get_close_matches(str(loc[-1]), _fields_at(model, loc[:-1]), n=1)
            if close:
                msg += f" (did you mean {close[0]!r}?)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif err["type"] == "value_error" and "error" in err.get("ctx", {}):
            msg = str(err["ctx"]["error"])  # our validators' own words, without pydantic's "Value error, "
        elif err["type"].endswith("_type") and isinstance(err.get("input"), bool | int | float | str):
            msg += f", got {_yaml_scalar(err['input'])}"
        messages.append(f"{where}: {key}: {msg}")
    return "\n".join(messages)


def _yaml_scalar(value: bool | int | float | str) -> str:
    """A value as the user wrote it in YAML: true, 3, 'text'."""
    return str(value).lower() if isinstance(value, bool) else repr(value)


def validate_data(
    model: type[ModelT],
    data: Any,
    source: str,
    lines: dict[KeyPath, int] | None = None,
    overrides: list[tuple[str, ...]] | None = None,
) -> ModelT:
    """Validate plain data against `model`, turning pydantic's error into BadInput with file and line."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadInput(format_validation_error(exc, model, source, lines or {}, overrides)) from None


def load_json(path: str | Path, what: str) -> Any:
    """A JSON file midtrain wrote earlier (manifest.json, router.json, results.json): BadInput naming the file
    and line when it is missing, unreadable or not JSON, since such files are edited, truncated and copied."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: not found ({what})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BadInput(f"{path}:{exc.lineno}: malformed JSON ({exc.msg}); is this {what}?") from None
    except UnicodeDecodeError as exc:
        raise BadInput(f"{path}: not UTF-8 text ({exc.reason}); is this {what}?") from None
    except (RecursionError, ValueError) as exc:
        raise BadInput(f"{path}: unreadable JSON ({type(exc).__name__}); is this {what}?") from None


def load_json_model(model: type[ModelT], path: str | Path, what: str) -> ModelT:
    """`load_json` validated against `model`: a wrong field type is `file: key.path: problem`, exit 2."""
    return validate_data(model, load_json(path, what), str(path))


def load_model_file(model: type[ModelT], path: str | Path, overrides: list[str] | None = None) -> ModelT:
    """Load YAML at `path`, apply `--set` overrides, validate against `model`."""
    data, lines = load_yaml(path)
    if not isinstance(data, dict):
        raise BadInput(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    return validate_data(model, data, str(path), lines, override_paths(overrides or []))
