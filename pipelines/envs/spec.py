"""Environments from anywhere: the `env:` block of a config, and the environment class it stands for.

Three types, one contract (`pipelines.envs.base.ToolEnv`: `reset`, tools as public methods, `get_reward`), so
the trace generator, the LLM teacher, RL (`GRPOTrainer(environment_factory=…)`), eval and `midtrain chat` use
them alike:

- `{type: builtin, domain: calculator}`: a built-in domain, unchanged (the bare string `calculator` too);
- `{type: python, class: "my_pkg.envs:ShopEnv"}`: a user class, either a `ToolEnv` subclass or any class with
  TRL's environment contract (public methods with type hints and Google docstrings are the tools);
- `{type: mcp, command: [...], env: {...}}` (stdio) or `{type: mcp, url: ...}` (streamable HTTP): an MCP
  server through the official SDK (`pipelines.envs.mcp_env`).

An env block can live in its own YAML file and be referenced by path (`env: envs/shop.yaml`) from any config
or task file; a relative `cwd` in such a file is relative to the file.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from pipelines.config import StrictModel, load_yaml, validate_data

if TYPE_CHECKING:
    from pipelines.envs.base import ToolEnv
from pipelines.errors import BadInput

PYTHON_PLACEHOLDER = "{python}"  # in an MCP `command`: the interpreter running midtrain


class BuiltinEnvSpec(StrictModel):
    type: Literal["builtin"]
    domain: str = Field(description="A built-in domain: calculator, filesystem, sqlite, calendar, docsearch…")
    name: str | None = Field(
        None, description="The environment's name in traces and reports; default: domain."
    )


class PythonEnvSpec(StrictModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    type: Literal["python"]
    class_: str = Field(
        alias="class", pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$", description="`module.path:ClassName`."
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Passed to the class's constructor.")
    path: list[str] = Field(
        default_factory=list, description="Folders put on sys.path first (relative to the env file)."
    )
    tools: list[str] | None = Field(None, description="Offer only these tools; None: every public method.")
    name: str | None = Field(None, description="Default: the class name.")


class McpResetTool(StrictModel):
    tool: str = Field(description="A tool of the server that restores its starting state.")
    arguments: dict[str, Any] = Field(default_factory=dict)


class McpEnvSpec(StrictModel):
    type: Literal["mcp"]
    command: list[str] | None = Field(
        None, min_length=1, description="stdio: the server's command line; `{python}` is midtrain's Python."
    )
    env: dict[str, str] = Field(default_factory=dict, description="stdio: extra environment variables.")
    cwd: str | None = Field(None, description="stdio: working directory (relative to the env file).")
    url: str | None = Field(None, description="Streamable HTTP endpoint, e.g. http://127.0.0.1:8000/mcp.")
    headers: dict[str, str] = Field(default_factory=dict, description="HTTP headers (e.g. authorization).")
    tools: list[str] | None = Field(None, description="Offer only these tools; None: every listed tool.")
    timeout_s: float = Field(30.0, gt=0, description="Per tool call; a call past it fails the rollout.")
    startup_timeout_s: float = Field(60.0, gt=0, description="Connecting and listing the tools.")
    reset: Literal["restart"] | McpResetTool = Field(
        "restart",
        description="`restart`: a new server session (stdio: a new process) for every rollout, so rollouts "
        "never share state; or `{tool: NAME}`: keep one session per environment instance and call this tool "
        "at every reset (faster; the server must really restore its state).",
    )
    name: str | None = Field(None, description="Default: the env file's name, else `mcp`.")

    @model_validator(mode="after")
    def _one_transport(self) -> McpEnvSpec:
        if (self.command is None) == (self.url is None):
            raise ValueError("an mcp env needs exactly one of `command` (stdio) or `url` (streamable HTTP)")
        return self


EnvSpec = Annotated[BuiltinEnvSpec | PythonEnvSpec | McpEnvSpec, Field(discriminator="type")]
EnvRef = str | EnvSpec  # a built-in domain name, a path to an env YAML file, or the block inline
SPEC_TYPES: dict[str, type[BuiltinEnvSpec | PythonEnvSpec | McpEnvSpec]] = {
    "builtin": BuiltinEnvSpec,
    "python": PythonEnvSpec,
    "mcp": McpEnvSpec,
}


def is_env_file(ref: str) -> bool:
    return ref.endswith((".yaml", ".yml"))


def resolve_env(ref: Any, base_dir: Path | None = None) -> BuiltinEnvSpec | PythonEnvSpec | McpEnvSpec:
    """An env reference (domain name, env file path, or an inline block) → its validated spec, with the
    relative paths of a file made absolute and `name` filled in."""
    if isinstance(ref, (BuiltinEnvSpec, PythonEnvSpec, McpEnvSpec)):
        return _named(ref, None)
    if isinstance(ref, dict):
        return _named(_validate(ref, "env", {}), None)
    if not isinstance(ref, str) or not ref.strip():
        raise BadInput(f"env: expected a domain name, an env YAML path or an env block, got {ref!r}")
    if not is_env_file(ref):
        return _named(BuiltinEnvSpec(type="builtin", domain=ref), None)
    path = _find_file(ref, base_dir)
    data, lines = load_yaml(path)
    if not isinstance(data, dict):
        raise BadInput(f"{path}: an env file holds one mapping (the env block), got {type(data).__name__}")
    spec = _validate(data, str(path), lines)
    return _named(_absolute_paths(spec, path.parent), path)


def _find_file(ref: str, base_dir: Path | None) -> Path:
    from pipelines.run_config import REPO_ROOT

    path = Path(ref).expanduser()
    candidates = [path] if path.is_absolute() else [base_dir / path] if base_dir else []
    candidates += [] if path.is_absolute() else [path, REPO_ROOT / path]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise BadInput(f"env file {ref!r} not found (looked in: {', '.join(str(c) for c in candidates)})")
    return found.resolve()


def _validate(data: dict[str, Any], source: str, lines: dict) -> Any:
    kind = data.get("type")
    if kind not in SPEC_TYPES:
        line = lines.get(("type",))
        where = f"{source}:{line}" if line else source
        raise BadInput(f"{where}: type: expected one of {', '.join(SPEC_TYPES)}, got {kind!r}")
    return validate_data(SPEC_TYPES[kind], data, source, lines)


def _absolute_paths(spec: Any, folder: Path) -> Any:
    if isinstance(spec, McpEnvSpec) and spec.command is not None:
        cwd = (folder / spec.cwd).resolve() if spec.cwd is not None else None
        return spec.model_copy(update={"cwd": str(cwd) if cwd else None})
    if isinstance(spec, PythonEnvSpec):
        return spec.model_copy(update={"path": [str((folder / p).resolve()) for p in spec.path]})
    return spec


def _named(spec: Any, path: Path | None) -> Any:
    if spec.name:
        return spec
    if isinstance(spec, BuiltinEnvSpec):
        name = spec.domain
    elif isinstance(spec, PythonEnvSpec):
        name = spec.class_.rsplit(":", 1)[1].rsplit(".", 1)[-1]
    else:
        name = path.stem if path is not None else "mcp"
    return spec.model_copy(update={"name": name})


def spec_key(spec: Any) -> str:
    return json.dumps(spec.model_dump(mode="json"), sort_keys=True)


def env_class(spec: Any) -> type[ToolEnv]:
    """The `ToolEnv` class a spec stands for (built once per process and spec: an MCP server is started once
    to list its tools)."""
    return _env_class(spec_key(spec))


@cache
def _env_class(key: str) -> type[ToolEnv]:
    data = json.loads(key)
    spec = SPEC_TYPES[data["type"]].model_validate(data)
    if isinstance(spec, BuiltinEnvSpec):
        from pipelines.tasks.domains import DOMAINS

        if spec.domain not in DOMAINS:
            raise BadInput(
                f"env: unknown built-in domain {spec.domain!r} (known: {', '.join(sorted(DOMAINS))})"
            )
        return DOMAINS[spec.domain][0]
    if isinstance(spec, PythonEnvSpec):
        from pipelines.envs.python_env import python_env_class

        return python_env_class(spec)
    from pipelines.envs.mcp_env import mcp_env_class

    return mcp_env_class(spec)


def load_env(ref: Any, base_dir: Path | None = None) -> tuple[str, type[ToolEnv]]:
    """(name, class) of an env reference: what `environment_factory`, the teacher and eval are given."""
    spec = resolve_env(ref, base_dir)
    assert spec.name is not None, "resolve_env names every spec"
    return spec.name, env_class(spec)
