"""Instancing: several independent tasks of one domain in one request, one environment per `_instance`.

The trace generator, its replay verification and eval drive this through `_call_tool(name, arguments, instance)`.
It is not a TRL environment: TRL builds tool schemas from fixed method signatures, and these calls carry an
extra `_instance` argument that selects the environment, so RL trains on single-task prompts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from pipelines.envs.base import ToolEnv
from pipelines.tasks.records import Task

INSTANCE_IDS = ("t1", "t2", "t3", "t4")
_ANSWER_LINE = re.compile(r"^\[instance=([^\]]+)\]\s?(.*)$")


def instanced_task_json(tasks: dict[str, Task]) -> str:
    """The `task` column/meta of an instanced trace: `{"instances": {id: task}}`."""
    return json.dumps({"instances": {k: json.loads(t.to_json()) for k, t in tasks.items()}}, sort_keys=True)


def tasks_of(task_json: str | dict[str, Any]) -> dict[str, Task]:
    data = json.loads(task_json) if isinstance(task_json, str) else task_json
    return {k: Task.from_json(v) for k, v in data["instances"].items()}


def answer_line(instance: str, text: str) -> str:
    return f"[instance={instance}] {text}"


def split_answers(text: str) -> dict[str, str]:
    """Final text → per-instance answers; a line without a tag continues the previous instance's answer."""
    out: dict[str, list[str]] = {}
    current: str | None = None
    for line in text.splitlines():
        match = _ANSWER_LINE.match(line)
        if match:
            current = match.group(1)
            out.setdefault(current, []).append(match.group(2))
        elif current is not None:
            out[current].append(line)
    return {k: "\n".join(v).strip() for k, v in out.items()}


class InstancedEnv:
    """One fresh environment per instance; calls are routed by their `_instance` tag."""

    def __init__(self, env_factory: Callable[[], ToolEnv]) -> None:
        self._factory = env_factory
        self.envs: dict[str, ToolEnv] = {}

    def reset(self, task: str | dict[str, Any]) -> None:
        self.envs = {}
        for instance, sub in tasks_of(task).items():
            env = self._factory()
            env.reset(task=sub.to_json())
            self.envs[instance] = env

    def _call_tool(self, name: str, arguments: dict[str, Any], instance: str | None) -> tuple[str, bool]:
        if instance not in self.envs:
            known = ", ".join(sorted(self.envs))
            return f"Error: unknown _instance {instance!r} (this request has: {known})", True
        return self.envs[instance]._call_tool(name, arguments)

    def _record_final_answer(self, text: str) -> None:
        answers = split_answers(text)
        for instance, env in self.envs.items():
            env._record_final_answer(answers.get(instance, ""))

    def rewards(self) -> dict[str, float]:
        return {instance: env.get_reward() for instance, env in self.envs.items()}

    def get_reward(self) -> float:
        """Share of instances solved: 1.0 only when every task is."""
        rewards = self.rewards()
        return sum(rewards.values()) / len(rewards) if rewards else 0.0
