"""`midtrain env show` and `midtrain env call`: look at an environment's tools, run one call."""

from __future__ import annotations

import json
from typing import Any

from pipelines.envs.base import ToolEnv
from pipelines.errors import BadInput, MidtrainError


def _open(ref: str) -> tuple[str, type[ToolEnv]]:
    from pipelines.envs.spec import load_env

    return load_env(ref)


def tool_listing(env_class: type[ToolEnv]) -> list[dict[str, Any]]:
    """Per tool: name, description, the provider's JSON schema, and the schema the model is shown when that
    differs (what a Python signature cannot carry is worded into descriptions, see pipelines.envs.external)."""
    from pipelines.envs.external import ExternalEnv

    shown = {s["function"]["name"]: s["function"] for s in env_class._tool_schemas()}
    out = []
    for name, spec in shown.items():
        entry = {
            "name": name,
            "description": spec.get("description") or "",
            "input_schema": spec["parameters"],
        }
        if issubclass(env_class, ExternalEnv):
            provided = env_class._tool_defs[name]
            entry["description"] = provided.description
            entry["input_schema"] = provided.input_schema
            entry["shown_to_model"] = spec
        out.append(entry)
    return out


def show_tools(ref: str, as_json: bool, console: Any) -> None:
    from rich.table import Table

    name, env_class = _open(ref)
    tools = tool_listing(env_class)
    if as_json:
        print(json.dumps({"env": name, "tools": tools}, indent=2, ensure_ascii=False))
        return
    table = Table(title=f"env {name}: {len(tools)} tool(s)")
    for column in ("tool", "description", "input schema"):
        table.add_column(column, overflow="fold")
    for tool in tools:
        table.add_row(tool["name"], tool["description"], json.dumps(tool["input_schema"], ensure_ascii=False))
    console.print(table)


def call_tool(ref: str, tool: str, arguments_json: str) -> str:
    """One call in a fresh environment; BadInput (exit 2) for an unknown tool, arguments the schema refuses or
    a tool error, MidtrainError (exit 1) when the environment itself fails."""
    from pipelines.envs.external import EnvFailure, ExternalEnv
    from pipelines.schema import argument_errors

    try:
        arguments = json.loads(arguments_json)
    except json.JSONDecodeError as exc:
        raise BadInput(f"arguments: not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(arguments, dict):
        raise BadInput(f"arguments: expected a JSON object, got {type(arguments).__name__}")
    name, env_class = _open(ref)
    tools = {s["function"]["name"]: s for s in env_class._tool_schemas()}
    if tool not in tools:
        raise BadInput(f"env {name!r} has no tool {tool!r} (tools: {', '.join(sorted(tools))})")
    schema = (
        {"parameters": env_class._tool_defs[tool].input_schema}
        if issubclass(env_class, ExternalEnv)
        else tools[tool]
    )
    problems = argument_errors(schema, arguments)
    if problems:
        raise BadInput(f"{tool}: arguments do not match its schema: {'; '.join(problems)}")
    env = env_class()
    try:
        env.reset()
        text, is_error = env._call_tool(tool, arguments)
    except EnvFailure as exc:
        raise MidtrainError(f"env {name!r}: {exc}") from None
    finally:
        if isinstance(env, ExternalEnv):
            env._close()
    if isinstance(env, ExternalEnv) and env._env_failure:
        raise MidtrainError(f"env {name!r}: {env._env_failure}")
    if (
        is_error
    ):  # the tool refused these arguments (unknown id, out of range…): bad input, like a schema error
        raise BadInput(f"{tool} returned an error: {text.removeprefix('Error: ')}")
    return text
