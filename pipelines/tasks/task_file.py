"""Task files: a user's own tasks (JSONL) for RL, eval and the LLM teacher, and how each one's success is judged.

One task per line:

    {"id": "cart-001",
     "messages": [{"role": "user", "content": "Put two apples in my cart. What is the total?"}],  # or "prompt": "…"
     "env": "envs/shop.yaml",            # optional: this row's environment (default: the config's `env`)
     "tools": ["search_products", "add_to_cart"],   # optional: offer only these tools
     "setup": {...},                     # optional: passed to the environment's reset
     "answer": "1.0",                    # or {"value": "…", "match": "exact" | "normalised" | "regex"}
     "expected_calls": [{"name": "add_to_cart", "arguments": {"product_id": "apple", "quantity": 2}}],
     "calls_ordered": false,
     "state": {"tool": "get_cart", "arguments": {}, "contains": ["\\"total\\": 1.0"]},
     "verifier": "my_pkg.checks:cart_ok",  # (task, transcript) -> float in [0, 1]
     "split": "train" | "heldout",
     "meta": {...}}

At least one of `answer`, `expected_calls`, `state`, `verifier` says how success is judged; a task passes with
the *lowest* score of the checks it names (each in [0, 1]):
- `answer`: on the visible final reply. `normalised` (default): the value appears in the reply once both are
  lower-cased, whitespace-collapsed and stripped of thousands commas (the built-in domains' rule); `exact`: the
  stripped reply equals the value; `regex`: `re.search(value, reply)`.
- `expected_calls`: the rollout's *successful* calls against the expected ones with BFCL's AST rules
  (`pipelines.eval.ast_checker`: types, string normalisation, order-free unless `calls_ordered`). An item is
  `{"name", "arguments"}` (each value must match; a parameter the item leaves out may be omitted, or passed
  with the schema's default) or BFCL's possible-answer form `{"tool": {"param": [allowed values…]}}` (`""`
  among them: may be omitted). The expected calls are also the reference solution that the `tool_call` and
  `efficiency` rewards compare against.
- `state`: after the episode, call a tool (not recorded as the model's) and compare its result: `equals` (a
  JSON value) and/or `contains` (strings that must appear in the result text).
- `verifier`: `module:function(task, transcript)`, `task` the row (id, messages, setup, meta, checks) and
  `transcript` `{"messages", "calls": [{"name", "arguments", "result", "error"}], "final_answer"}`.

`split: heldout` rows are never trained on (RL, the teacher) and are what eval scores; the data stage drops
traces that contain their requests or share their ids (decontamination set `tasks:PATH`). A train row whose
request equals a held-out one is rejected. Bad rows are rejected with `file:line`, the key and the reason,
and the rest load.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from pipelines.config import StrictModel
from pipelines.envs.base import ToolEnv
from pipelines.errors import BadInput
from pipelines.tasks.records import Step, Task, every_answer_said

log = logging.getLogger("midtrain.tasks")
SPLITS = ("train", "heldout")
TASKS_SET_PREFIX = "tasks:"  # decontamination set naming a task file's held-out rows


class AnswerCheck(StrictModel):
    value: str
    match: Literal["exact", "normalised", "regex"] = "normalised"

    @model_validator(mode="after")
    def _regex_compiles(self) -> AnswerCheck:
        if self.match == "regex":
            try:
                re.compile(self.value)
            except re.error as exc:
                raise ValueError(f"answer.value is not a valid regex: {exc}") from None
        return self


class StateCheck(StrictModel):
    tool: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    equals: Any = None
    contains: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _contains_list(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("contains"), str):
            return {**data, "contains": [data["contains"]]}
        return data

    @model_validator(mode="after")
    def _has_expectation(self) -> StateCheck:
        if self.equals is None and not self.contains:
            raise ValueError("a state check needs `equals` or `contains`")
        return self


class Message(StrictModel):
    role: Literal["system", "user", "assistant"]
    content: str


class TaskRow(StrictModel):
    """One line of a task file (see the module docstring)."""

    id: str = Field(min_length=1)
    messages: list[Message] | None = None
    prompt: str | None = None
    env: str | dict[str, Any] | None = None
    tools: list[str] | None = None
    setup: dict[str, Any] = Field(default_factory=dict)
    answer: str | AnswerCheck | None = None
    expected_calls: list[dict[str, Any]] | None = None
    calls_ordered: bool = False
    state: StateCheck | list[StateCheck] | None = None
    verifier: str | None = Field(None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
    split: Literal["train", "heldout"] = "train"
    meta: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _complete(self) -> TaskRow:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of `messages` or `prompt`")
        if self.messages is not None and not any(m.role == "user" for m in self.messages):
            raise ValueError("messages: no user message")
        if self.messages is not None and self.messages[-1].role != "user":
            raise ValueError("messages: the last message must be the user's (the model answers it)")
        if all(x is None for x in (self.answer, self.expected_calls, self.state, self.verifier)):
            raise ValueError(
                "no way to judge success: give `answer`, `expected_calls`, `state` or `verifier`"
            )
        return self

    def conversation(self) -> list[dict[str, str]]:
        if self.prompt is not None:
            return [{"role": "user", "content": self.prompt}]
        return [m.model_dump() for m in self.messages or []]


@dataclass
class TaskSet:
    """The valid tasks of a task file by split, the environment each runs in, and the rejected rows."""

    path: Path
    tasks: dict[str, list[Task]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    envs: dict[str, type[ToolEnv]] = field(default_factory=dict)  # env name → class
    rejects: list[dict[str, Any]] = field(default_factory=list)

    @property
    def train(self) -> list[Task]:
        return self.tasks["train"]

    @property
    def heldout(self) -> list[Task]:
        return self.tasks["heldout"]

    def write_rejects(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in self.rejects)
        )


def request_text(task: Task) -> str:
    """The user turns of a task: what decontamination matches and the router reads."""
    if task.messages:
        return "\n".join(m["content"] for m in task.messages if m.get("role") == "user")
    return task.request


def load_task_file(path: str | Path, default_env: Any = None, base_dir: Path | None = None) -> TaskSet:
    """Parse and check every row; raise BadInput only when the file is missing or no row is valid."""
    from pipelines.envs.spec import load_env

    path = _find(Path(path), base_dir)
    result = TaskSet(path)
    seen: dict[str, int] = {}
    heldout_requests: dict[str, str] = {}
    pending_train: list[tuple[int, Task]] = []
    env_names: dict[str, str] = {}  # env ref (as text) → name
    for line_no, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not raw.strip():
            continue
        row_id = ""
        try:
            data = json.loads(raw)
            row_id = str(data.get("id", "")) if isinstance(data, dict) else ""
            row = TaskRow.model_validate(data)
            if row.id in seen:
                raise _RowError("duplicate_id", f"id {row.id!r} already used on line {seen[row.id]}")
            ref = row.env if row.env is not None else default_env
            if ref is None:
                raise _RowError("env", "no `env` on the row and none configured")
            ref_key = json.dumps(
                ref.model_dump(mode="json") if hasattr(ref, "model_dump") else ref, sort_keys=True
            )
            if ref_key not in env_names:
                name, cls = load_env(ref, path.parent)
                if name in result.envs and result.envs[name] is not cls:
                    raise _RowError("env", f"two different environments are both named {name!r}")
                result.envs[name], env_names[ref_key] = cls, name
            name = env_names[ref_key]
            task = row_to_task(row, name, result.envs[name])
        except json.JSONDecodeError as exc:
            result.rejects.append(_reject(path, line_no, row_id, "json", f"not JSON: {exc.msg}"))
            continue
        except ValidationError as exc:
            result.rejects.append(_reject(path, line_no, row_id, "schema", _validation_detail(exc)))
            continue
        except _RowError as exc:
            result.rejects.append(_reject(path, line_no, row_id, exc.reason, exc.detail))
            continue
        except BadInput as exc:
            result.rejects.append(_reject(path, line_no, row_id, "env", str(exc)))
            continue
        seen[row.id] = line_no
        if row.split == "heldout":
            heldout_requests[_normalised_request(task)] = row.id
            result.tasks["heldout"].append(task)
        else:
            pending_train.append((line_no, task))
    for line_no, task in pending_train:
        twin = heldout_requests.get(_normalised_request(task))
        if twin is not None:
            detail = f"the same request as held-out task {twin!r}: it would train on the test"
            result.rejects.append(_reject(path, line_no, task.task_id, "leaks_heldout", detail))
        else:
            result.tasks["train"].append(task)
    if not any(result.tasks.values()):
        first = "; ".join(f"line {r['line']}: {r['reason']}: {r['detail']}" for r in result.rejects[:3])
        raise BadInput(
            f"{path}: no valid task ({len(result.rejects)} rejected{': ' + first if first else ''})"
        )
    if result.rejects:
        log.warning("%s: %d row(s) rejected (first: line %d, %s)", path, len(result.rejects),
                    result.rejects[0]["line"], result.rejects[0]["detail"])  # fmt: skip
    return result


def task_file_heldout_rows(path: str | Path) -> list[tuple[str, str]]:
    """(id, user text) of each valid held-out row, without starting any environment: what decontamination
    indexes (a row that does not validate is rejected wherever the file is used, and is no test)."""
    path = _find(Path(path), None)
    out = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        try:
            row = TaskRow.model_validate_json(raw)
        except ValidationError:
            continue
        if row.split == "heldout":
            out.append((row.id, "\n".join(m["content"] for m in row.conversation() if m["role"] == "user")))
    return out


class _RowError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _find(path: Path, base_dir: Path | None) -> Path:
    from pipelines.run_config import REPO_ROOT

    candidates = (
        [path] if path.is_absolute() else [*([base_dir / path] if base_dir else []), path, REPO_ROOT / path]
    )
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise BadInput(f"task file {str(path)!r} not found")
    return found.resolve()


def _reject(path: Path, line: int, row_id: str, reason: str, detail: str) -> dict[str, Any]:
    return {"file": str(path), "line": line, "id": row_id, "reason": reason, "detail": detail}


def _validation_detail(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("function-", "tagged")))
        message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{key or '<row>'}: {message}")
    return "; ".join(parts)


def _normalised_request(task: Task) -> str:
    return " ".join(request_text(task).lower().split())


# -- rows → tasks ----------------------------------------------------------------------------------------------
def row_to_task(row: TaskRow, env_name: str, env_class: type[ToolEnv]) -> Task:
    """A checked row as a `Task` (the form every stage runs): domain = environment name, the expected calls
    as the reference solution, the checks in `judge`."""
    specs = {s["function"]["name"]: s["function"] for s in env_class._tool_schemas()}
    offered = list(specs) if row.tools is None else row.tools
    unknown = [t for t in offered if t not in specs]
    if unknown:
        raise _RowError(
            "tools", f"tools {unknown} are not tools of env {env_name!r} (it has {sorted(specs)})"
        )
    possible = [_possible_answer(call, specs, i) for i, call in enumerate(row.expected_calls or [])]
    for name, _ in (next(iter(p.items())) for p in possible):
        if name not in offered:
            raise _RowError("expected_calls", f"expected call to {name!r}, which the task does not offer")
    for check in _state_checks(row):
        if check.tool not in specs:
            raise _RowError("state", f"state check calls {check.tool!r}, not a tool of env {env_name!r}")
    answer = AnswerCheck(value=row.answer) if isinstance(row.answer, str) else row.answer
    conversation = row.conversation()
    judge = {
        "answer": answer.model_dump() if answer else None,
        "calls": possible if row.expected_calls is not None else None,  # []: the right move is no call
        "calls_ordered": row.calls_ordered,
        "state": [c.model_dump() for c in _state_checks(row)],
        "verifier": row.verifier,
        "tools": row.tools,
        "meta": row.meta,
        "split": row.split,
    }
    solution = [[Step(*_reference_call(p, specs))] for p in possible]
    return Task(
        domain=env_name,
        task_id=row.id,
        request=next(m["content"] for m in reversed(conversation) if m["role"] == "user"),
        setup=row.setup,
        solution=solution,
        answer=answer.value if answer and answer.match == "normalised" else None,
        difficulty=max(1, len(solution)),
        judge=judge,
        messages=conversation,
    )


def _state_checks(row: TaskRow) -> list[StateCheck]:
    if row.state is None:
        return []
    return row.state if isinstance(row.state, list) else [row.state]


def _possible_answer(call: dict[str, Any], specs: dict[str, dict[str, Any]], index: int) -> dict[str, Any]:
    """An expected call in BFCL's possible-answer form `{name: {param: [allowed…]}}`."""
    if set(call) <= {"name", "arguments"} and isinstance(call.get("name"), str):
        name, arguments = call["name"], call.get("arguments") or {}
        if not isinstance(arguments, dict):
            raise _RowError("expected_calls", f"expected_calls[{index}].arguments must be an object")
        properties = specs.get(name, {}).get("parameters", {}).get("properties", {})
        allowed: dict[str, list[Any]] = {k: [v] for k, v in arguments.items()}
        for param, schema in properties.items():
            if param not in allowed:
                allowed[param] = ["", schema["default"]] if "default" in schema else [""]
        return {name: allowed}
    if len(call) == 1:
        name, allowed = next(iter(call.items()))
        if isinstance(allowed, dict) and all(isinstance(v, list) for v in allowed.values()):
            return {name: allowed}
    raise _RowError(
        "expected_calls",
        f'expected_calls[{index}]: use {{"name": …, "arguments": {{…}}}} or BFCL\'s '
        f'{{"tool": {{"param": [allowed values]}}}}, got {json.dumps(call)[:120]}',
    )


def _reference_call(possible: dict[str, Any], specs: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """A concrete call satisfying the possible answer: the first allowed value of each parameter that must or
    can be given (what the `tool_call` reward compares with)."""
    name, allowed = next(iter(possible.items()))
    arguments = {}
    for param, values in allowed.items():
        chosen = next((v for v in values if v != ""), None)
        if chosen is not None and (values[0] != "" or param in specs[name]["parameters"].get("required", [])):
            arguments[param] = chosen
    return name, arguments


# -- judging ---------------------------------------------------------------------------------------------------
_BFCL_TYPES = {"string": "string", "integer": "integer", "number": "float", "boolean": "boolean",
               "array": "array", "object": "dict"}  # fmt: skip


def bfcl_function(spec: dict[str, Any]) -> dict[str, Any]:
    """A tool's JSON schema in the type names BFCL's checker uses (number → float, object → dict); a parameter
    without one plain type is typed by its allowed values at check time (`any`)."""
    params = spec.get("parameters") or {}
    properties = {}
    for name, schema in (params.get("properties") or {}).items():
        kind = schema.get("type") if isinstance(schema.get("type"), str) else None
        out: dict[str, Any] = {"type": _BFCL_TYPES.get(kind or "", "any")}
        items = schema.get("items")
        if out["type"] == "array" and isinstance(items, dict) and isinstance(items.get("type"), str):
            out["items"] = {"type": _BFCL_TYPES.get(items["type"], "any")}
        elif out["type"] == "array":
            out["type"] = "any"
        properties[name] = out
    return {
        "name": spec["name"],
        "parameters": {"properties": properties, "required": params.get("required", [])},
    }


def calls_score(env: ToolEnv, judge: dict[str, Any]) -> tuple[float, str]:
    """1.0 when the episode's successful calls match the expected ones (BFCL AST rules), with the reason."""
    from pipelines.eval import ast_checker

    made = [{name: dict(arguments)} for name, arguments, raised in env._calls if not raised]
    expected = judge["calls"]
    functions = [bfcl_function(s["function"]) for s in type(env)._tool_schemas()]
    functions = [_typed_any(f, expected) for f in functions]
    try:
        if not judge.get("calls_ordered"):
            result = ast_checker.check_parallel(functions, made, expected)
        elif len(made) != len(expected):
            return 0.0, f"expected {len(expected)} call(s) in order, made {len(made)}"
        else:
            result = next(
                (r for r in (ast_checker.check_function(ast_checker.find_function(functions, next(iter(e))), m, e)
                             for m, e in zip(made, expected, strict=True)) if not r.valid),
                ast_checker.VALID,
            )  # fmt: skip
    except BadInput as exc:
        return 0.0, str(exc)
    return (1.0, "") if result.valid else (0.0, result.summary)


def _typed_any(function: dict[str, Any], expected: list[dict[str, Any]]) -> dict[str, Any]:
    """Give `any`-typed parameters the type of their first allowed value (BFCL's checker needs one type)."""
    names = {
        "str": "string",
        "int": "integer",
        "float": "float",
        "bool": "boolean",
        "list": "array",
        "dict": "dict",
    }
    for answer in expected:
        name, allowed = next(iter(answer.items()))
        if name != function["name"]:
            continue
        for param, spec in function["parameters"]["properties"].items():
            if spec["type"] == "any":
                value = next((v for v in allowed.get(param, []) if v != ""), "")
                spec["type"] = names.get(type(value).__name__, "string")
    return function


def answer_score(check: dict[str, Any], final_answer: str | None) -> float:
    if final_answer is None:
        return 0.0
    value, match = check["value"], check["match"]
    if match == "exact":
        return float(final_answer.strip() == value.strip())
    if match == "regex":
        return float(re.search(value, final_answer) is not None)
    return float(every_answer_said(value, final_answer))


def state_score(env: ToolEnv, checks: list[dict[str, Any]]) -> tuple[float, str]:
    for check in checks:
        text = read_state(env, check["tool"], check.get("arguments") or {})
        if check.get("equals") is not None:
            try:
                got = json.loads(text)
            except json.JSONDecodeError:
                got = text
            if got != check["equals"]:
                return 0.0, f"state {check['tool']}: {text[:120]!r} != {json.dumps(check['equals'])[:120]}"
        missing = [s for s in check.get("contains") or [] if s not in text]
        if missing:
            return 0.0, f"state {check['tool']}: {missing[0]!r} not in {text[:120]!r}"
    return 1.0, ""


def read_state(env: ToolEnv, tool: str, arguments: dict[str, Any]) -> str:
    """Call a tool for the judge, not as the model: the call is not recorded in the episode."""
    from pipelines.envs.base import _to_text
    from pipelines.envs.external import ExternalEnv

    if isinstance(env, ExternalEnv):
        if env._backend is None:
            return ""
        text, _ = env._backend.call(tool, arguments)
        return text
    method = getattr(type(env), tool)
    return _to_text(getattr(method, "__wrapped__", method)(env, **arguments))


def transcript(env: ToolEnv, task: Task, final_answer: str | None) -> dict[str, Any]:
    """What a verifier function is given besides the task: the conversation, every call, the final answer."""
    results = getattr(env, "_results", None)
    calls = results if results is not None else [
        {"name": name, "arguments": arguments, "result": None, "error": raised}
        for name, arguments, raised in env._calls
    ]  # fmt: skip
    return {"messages": task.messages or [], "calls": list(calls), "final_answer": final_answer or ""}


def verifier_score(env: ToolEnv, task: Task, final_answer: str | None) -> float:
    from pipelines.envs.python_env import import_object

    judge = task.judge or {}
    function = import_object(judge["verifier"], what="verifier")
    row = {"id": task.task_id, "messages": task.messages, "setup": task.setup, **judge}
    value = float(function(row, transcript(env, task, final_answer)))
    return min(1.0, max(0.0, value)) if value == value else 0.0


def judge_score(env: ToolEnv, task: Task, final_answer: str | None) -> float:
    """The task's score in [0, 1]: the lowest of the checks it names (see the module docstring)."""
    return judge_report(env, task, final_answer)[0]


def judge_report(env: ToolEnv, task: Task, final_answer: str | None) -> tuple[float, list[str]]:
    """(score, why each failing check failed): what the teacher's rejects and eval's predictions say."""
    judge = task.judge or {}
    scores: list[float] = []
    reasons: list[str] = []
    if judge.get("answer"):
        scores.append(answer_score(judge["answer"], final_answer))
        if scores[-1] < 1:
            reasons.append(
                f"answer: {judge['answer']['value']!r} ({judge['answer']['match']}) not in the reply"
            )
    if judge.get("calls") is not None:
        value, why = calls_score(env, judge)
        scores.append(value)
        reasons += [f"calls: {why}"] if why else []
    if judge.get("state"):
        value, why = state_score(env, judge["state"])
        scores.append(value)
        reasons += [why] if why else []
    if judge.get("verifier"):
        scores.append(verifier_score(env, task, final_answer))
        if scores[-1] < 1:
            reasons.append(f"verifier {judge['verifier']}: {scores[-1]:.3f}")
    return (min(scores) if scores else 0.0), reasons
