"""Per-task tool views: offer a task's own tools plus a few distractors instead of its domain's whole toolset.

Why: on CPU a GRPO step costs what its prompts cost. TRL forwards every prompt token of every rollout, in
generation and again in the loss, and a domain's tool schemas are most of a prompt (calculator: 960 tokens
with its 6 tools, ~300 with only the task's tool). Distractors keep the choice of tool part of the task, as
in BFCL's `multiple` category, which offers 2–4 functions.

TRL reads the tools off an environment's class (its public methods), keyed by the row's `environment`. So a
view is a subclass whose other tool methods are hidden from that listing (the environment can still call them
on itself), registered under `"<domain>:<tool>+<tool>…"`. A call to a hidden tool is an unknown tool, as it
would be for a model shown only the offered ones.
"""

from __future__ import annotations

import random
import types
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import cache
from typing import Any

from pipelines.envs.base import ToolEnv
from pipelines.tasks.records import Task
from pipelines.tasks.sampling import DomainTask


class _HiddenTool:
    """A method the listing of tools (`inspect.isfunction` on the class) skips, still callable on an instance."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        return self if instance is None else types.MethodType(self.func, instance)


@cache
def tool_view(env_class: type[ToolEnv], offered: frozenset[str]) -> type[ToolEnv]:
    """`env_class` showing only the `offered` tool methods (cached: one class per view)."""
    unknown = offered - set(env_class._tool_methods())
    if unknown:
        raise ValueError(f"{env_class.__name__} has no tool(s) {sorted(unknown)}")
    hidden = {
        name: _HiddenTool(getattr(env_class, name))
        for name in env_class._tool_methods()
        if name not in offered
    }
    name = f"{env_class.__name__}[{'+'.join(sorted(offered))}]"
    return type(name, (env_class,), {"__module__": env_class.__module__, **hidden})


def offered_tools(env_class: type[ToolEnv], task: Task, distractors: int) -> frozenset[str]:
    """The task's own tools plus `distractors` others of its domain (one more for a task no tool fits, so it
    still has tools to decline).

    The distractors are drawn from the needed tools' names, not the task, so tasks needing the same tools share
    one view: TRL builds and probes one environment per view, and a run sees a handful, not one per prompt.
    """
    methods = env_class._tool_methods()
    needed = sorted({step.tool for turn in task.solution for step in turn})
    if any(name not in methods for name in needed):
        return frozenset(methods)  # a reference call outside the fixed methods: keep the full toolset
    others = [name for name in methods if name not in needed]
    count = min(len(others), distractors + (0 if needed else 1))
    rng = random.Random(f"tool-view/{env_class.__name__}/{'+'.join(needed)}")
    return frozenset(needed + rng.sample(others, count))


def environment_key(domain: str, offered: frozenset[str]) -> str:
    return f"{domain}:{'+'.join(sorted(offered))}"


def with_tool_views(
    items: Sequence[DomainTask], env_classes: dict[str, type[ToolEnv]], distractors: int
) -> tuple[list[DomainTask], dict[str, type[ToolEnv]]]:
    """Each item bound to its view (`DomainTask.environment`), and the views by key for `environment_factory`."""
    views: dict[str, type[ToolEnv]] = {}
    bound = []
    for item in items:
        base = env_classes[item.domain]
        offered = offered_tools(base, item.task, distractors)
        key = environment_key(item.domain, offered)
        views[key] = tool_view(base, offered)  # type: ignore[arg-type]  # classes are hashable: mypy#11470
        bound.append(replace(item, environment=key))
    return bound, views


def with_task_tools(
    items: Sequence[DomainTask], env_classes: dict[str, type[ToolEnv]]
) -> tuple[list[DomainTask], dict[str, type[ToolEnv]]]:
    """Tasks from a task file that name their `tools` run in a view offering exactly those; the others (and
    every environment's full toolset) stay as they are."""
    views = dict(env_classes)
    bound = []
    for item in items:
        offered = (item.task.judge or {}).get("tools")
        if not offered:
            bound.append(item)
            continue
        key = environment_key(item.domain, frozenset(offered))
        views[key] = tool_view(env_classes[item.domain], frozenset(offered))  # type: ignore[arg-type]  # classes are hashable: mypy#11470
        bound.append(replace(item, environment=key))
    return bound, views
