"""`env: {type: python, class: "my_pkg.envs:ShopEnv"}`: a user's Python class as a tool environment.

Two kinds of class are accepted:
- a `pipelines.envs.base.ToolEnv` subclass: used as it is (its `_setup` gets a task's `setup`, its
  `_check_state` judges `expected_state`);
- any class following TRL's environment contract (`reset(**kwargs)`, public methods with type hints and Google
  docstrings as tools, optionally `get_reward()`): wrapped in a generated `ToolEnv` whose tools forward to one
  instance of it. A task's `setup` is passed to its `reset` as keyword arguments; an exception raised by a tool
  is a tool error the model sees; `get_reward` is used when a task has no judge of its own.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from typing import Any

from pipelines.envs.base import ToolEnv, _to_text
from pipelines.envs.external import Backend, ExternalEnv, ToolDef, build_env_class
from pipelines.envs.spec import PythonEnvSpec
from pipelines.errors import BadInput


def import_object(ref: str, paths: list[str] = (), what: str = "env class") -> Any:  # type: ignore[assignment]
    """`module.path:Name.attr` → the object; a clear BadInput when the module or attribute is missing."""
    module_name, _, attr = ref.partition(":")
    for path in reversed(list(paths)):
        if path not in sys.path:
            sys.path.insert(0, path)
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise BadInput(f"{what} {ref!r}: cannot import {module_name!r}: {exc}") from None
    for part in attr.split("."):
        if not hasattr(target, part):
            raise BadInput(f"{what} {ref!r}: module {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    return target


def public_methods(cls: type) -> list[str]:
    """What TRL offers as tools: public functions of the class, minus the contract's own."""
    return sorted(
        name
        for name, _ in inspect.getmembers(cls, predicate=inspect.isfunction)
        if not name.startswith("_") and name not in ("reset", "get_reward")
    )


class PythonBackend(Backend):
    """One instance of a plain (TRL-contract) class for the environment's lifetime, reset through its own `reset`."""

    def __init__(self, cls: type, kwargs: dict[str, Any]) -> None:
        self.instance = cls(**kwargs)

    def reset(self, setup: dict[str, Any]) -> None:
        reset = getattr(self.instance, "reset", None)
        if callable(reset):
            reset(**setup)

    def call(self, name: str, arguments: dict[str, Any]) -> tuple[str, bool]:
        try:
            return _to_text(getattr(self.instance, name)(**arguments)), False
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}", True


class PythonEnv(ExternalEnv):
    """Base of the generated wrappers around plain classes."""

    _user_class: type
    _kwargs: dict[str, Any]
    _label = "Python"

    def _new_backend(self) -> Backend:
        return PythonBackend(self._user_class, self._kwargs)

    def get_reward(self) -> float:
        if self._task is not None and self._task.judge is None and self._backend is not None:
            own: Any = getattr(self._backend, "instance", None)
            if callable(getattr(own, "get_reward", None)):
                return 0.0 if self._env_failure else float(own.get_reward())
        return super().get_reward()


def python_env_class(spec: PythonEnvSpec) -> type[ToolEnv]:
    cls = import_object(spec.class_, spec.path)
    if not inspect.isclass(cls):
        raise BadInput(f"env class {spec.class_!r} is not a class")
    if issubclass(cls, ToolEnv):
        if spec.tools is not None or spec.kwargs:
            raise BadInput(f"env {spec.name!r}: `tools` and `kwargs` apply to plain classes; {spec.class_} is a "
                           "ToolEnv, configure it in its code")  # fmt: skip
        return cls
    from transformers.utils import get_json_schema

    names = public_methods(cls)
    if spec.tools is not None:
        unknown = sorted(set(spec.tools) - set(names))
        if unknown:
            raise BadInput(
                f"env {spec.name!r}: {spec.class_} has no public method(s) {unknown} (it has {names})"
            )
        names = [n for n in names if n in spec.tools]
    defs = []
    for name in names:
        try:
            function = get_json_schema(getattr(cls, name))["function"]
        except Exception as exc:  # transformers' docstring/type-hint parsing errors
            raise BadInput(f"env {spec.name!r}: tool {cls.__name__}.{name}: {exc}") from None
        defs.append(ToolDef(name, function.get("description") or "", function.get("parameters") or {}))
    if not defs:
        raise BadInput(f"env {spec.name!r}: {spec.class_} has no public methods to offer as tools")
    namespace = {"_user_class": cls, "_kwargs": dict(spec.kwargs), "domain": spec.name}
    return build_env_class(f"{cls.__name__}Env", PythonEnv, defs, namespace)
