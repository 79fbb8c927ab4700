"""BFCL-format evaluation data: load the files shipped in `bfcl-eval`, prompt with them, score replies.

The flow for one example: `load_category` → `example_to_trace` → `pipelines.chat.render_prompt` → model →
`Codec.parse(...).tool_calls` (the tokenizer's codec, `pipelines.codecs`) → `decode_tool_calls` →
`score_example` (our AST checker, `pipelines.eval.ast_checker`, which follows BFCL's rules).

Decisions, each mirroring what BFCL does for a function-calling (FC) model, so scores stay comparable:
- Function docs get BFCL's language hint (" Note that the provided function is in Python 3 syntax."), as
  `bfcl_eval.utils.load_dataset_entry` adds it for every model.
- Tools are converted the way BFCL converts them for OpenAI-style FC models (`convert_to_tool` with
  `GORILLA_TO_OPENAPI`): "dict"→"object", "float"→"number" (+ `format: float` and a description note),
  "tuple"→"array", "any"→"string", unknown → "string".
- Dots in function names become underscores in the tool list (OpenAI-style names must match
  `^[a-zA-Z0-9_-]{1,64}$`, and BFCL renames them so for OpenAI, Mistral, Google, Anthropic and its own
  OSS-model style). `decode_tool_calls` maps them back to the original names, which is what BFCL's checker
  does with `underscore_to_dot`; a model that writes the original dotted name is accepted too.
- A malformed call is dropped by `Codec.parse` (into its `errors`), as BFCL's Qwen FC handler drops calls
  whose JSON does not load.
- A broken data file is an error (BadInput naming file and line), never a silently smaller benchmark: a
  score over a different set of examples would not be comparable.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.errors import BadInput
from pipelines.eval.ast_checker import Answer, Call, check_calls, has_no_call
from pipelines.schema import Message, Trace

BFCL_PIN = "bfcl-eval==2026.3.23"
VERSION_PREFIX = "BFCL_v4"
# Scored against a possible-answer file with the AST checker.
AST_CATEGORIES = (
    "simple_python",
    "multiple",
    "parallel",
    "parallel_multiple",
    "live_simple",
    "live_multiple",
    "live_parallel",
    "live_parallel_multiple",
)
# Correct means no call at all.
IRRELEVANCE_CATEGORIES = ("irrelevance", "live_irrelevance")
CATEGORIES = AST_CATEGORIES + IRRELEVANCE_CATEGORIES
# The non-live set the eval stage reports by default.
DEFAULT_CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance")
PYTHON_HINT = " Note that the provided function is in Python 3 syntax."
OPENAI_TYPES = {
    "integer": "integer",
    "number": "number",
    "float": "number",
    "string": "string",
    "boolean": "boolean",
    "bool": "boolean",
    "array": "array",
    "list": "array",
    "dict": "object",
    "object": "object",
    "tuple": "array",
    "any": "string",
}


@dataclass(frozen=True)
class BfclExample:
    id: str
    category: str
    messages: list[dict[str, str]]
    functions: list[dict[str, Any]]
    # BFCL's possible answer: one `{func_name: {param: [allowed values]}}` per expected call; [] for irrelevance.
    ground_truth: list[Answer] = field(default_factory=list)

    @property
    def expects_no_call(self) -> bool:
        return self.category in IRRELEVANCE_CATEGORIES


def bfcl_data_dir() -> Path:
    """`bfcl_eval/data` of the installed package, found without importing it (its imports are heavy)."""
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        raise BadInput(
            f"BFCL data needs the `bfcl-eval` package: pip install --no-deps {BFCL_PIN} "
            "(`make setup` does this; --no-deps because its own dependencies are API clients we do not use)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def load_category(category: str, limit: int | None = None, data_dir: Path | None = None) -> list[BfclExample]:
    """The examples of one BFCL category in file order (the first `limit` if given), with possible answers."""
    if category not in CATEGORIES:
        raise BadInput(f"unknown BFCL category {category!r} (supported: {', '.join(CATEGORIES)})")
    if limit is not None and limit < 0:
        raise BadInput(f"BFCL limit must be >= 0, got {limit}")
    data_dir = data_dir or bfcl_data_dir()
    rows = _read_jsonl(data_dir / f"{VERSION_PREFIX}_{category}.json", limit)
    answers: dict[str, list[Answer]] = {}
    if category in AST_CATEGORIES:
        answers = _read_answers(data_dir / "possible_answer" / f"{VERSION_PREFIX}_{category}.json")
    return [_example(category, path_line, row, answers) for path_line, row in rows]


def _read_jsonl(path: Path, limit: int | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(`file:line`, row) pairs; a line that is not a JSON object is a BadInput naming it."""
    if not path.is_file():
        raise BadInput(f"{path}: BFCL data file not found (is {BFCL_PIN} installed?)")
    rows: list[tuple[str, dict[str, Any]]] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if limit is not None and len(rows) >= limit:
                break
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BadInput(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict) or not isinstance(row.get("id"), str):
                raise BadInput(f"{path}:{number}: expected a JSON object with a string `id`")
            rows.append((f"{path}:{number}", row))
    return rows


def _read_answers(path: Path) -> dict[str, list[Answer]]:
    answers: dict[str, list[Answer]] = {}
    for where, row in _read_jsonl(path):
        truth = row.get("ground_truth")
        if not isinstance(truth, list) or not all(_is_answer(a) for a in truth):
            raise BadInput(
                f"{where}: row {row['id']!r}: `ground_truth` must be a list of {{func_name: {{param: [values]}}}}"
            )
        answers[row["id"]] = truth
    return answers


def _is_answer(answer: Any) -> bool:
    if not isinstance(answer, dict) or len(answer) != 1:
        return False
    params = next(iter(answer.values()))
    return isinstance(params, dict) and all(isinstance(v, list) for v in params.values())


def _example(category: str, where: str, row: dict[str, Any], answers: dict[str, list[Answer]]) -> BfclExample:
    example_id = row["id"]
    question, functions = row.get("question"), row.get("function")
    if not isinstance(question, list) or not all(isinstance(turn, list) for turn in question):
        raise BadInput(f"{where}: row {example_id!r}: `question` must be a list of turns (lists of messages)")
    if not isinstance(functions, list) or not all(_is_function_doc(f) for f in functions):
        raise BadInput(
            f"{where}: row {example_id!r}: `function` must be a list of docs with `name` and `parameters.properties`"
        )
    messages = [_message(where, example_id, m) for turn in question for m in turn]
    if category in AST_CATEGORIES and example_id not in answers:
        raise BadInput(f"{where}: row {example_id!r} has no entry in the possible-answer file")
    return BfclExample(
        id=example_id,
        category=category,
        messages=messages,
        functions=[_with_python_hint(f) for f in functions],
        ground_truth=answers.get(example_id, []),
    )


def _is_function_doc(doc: Any) -> bool:
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
        return False
    params = doc.get("parameters")
    return isinstance(params, dict) and isinstance(params.get("properties"), dict)


def _message(where: str, example_id: str, message: Any) -> dict[str, str]:
    roles = ("system", "user", "assistant")
    if (
        not isinstance(message, dict)
        or message.get("role") not in roles
        or not isinstance(message.get("content"), str)
    ):
        raise BadInput(
            f"{where}: row {example_id!r}: each message needs `role` in {roles} and string `content`"
        )
    return {"role": message["role"], "content": message["content"]}


def _with_python_hint(function: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(function)
    doc["description"] = doc.get("description", "") + PYTHON_HINT
    return doc


def tool_name(function_name: str) -> str:
    """The name a model sees: dots → underscores (OpenAI-style names cannot contain dots)."""
    return function_name.replace(".", "_")


def tool_name_map(functions: list[dict[str, Any]]) -> dict[str, str]:
    """Model-facing tool name → original BFCL function name (original names map to themselves)."""
    names = [f["name"] for f in functions]
    mapping = {tool_name(n): n for n in names}
    # An original name wins over a sanitized one it collides with ("a_b" declared next to "a.b"): a call to
    # "a_b" then means the declared "a_b". No shipped file has such a pair; the rule just makes it defined.
    mapping.update({n: n for n in names})
    return mapping


def functions_to_tools(functions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """BFCL function docs → OpenAI-style tool specs, as BFCL's `convert_to_tool` does for OpenAI FC models."""
    tools = []
    for function in copy.deepcopy(functions):
        function["name"] = tool_name(function["name"])
        params = function.setdefault("parameters", {})
        params["type"] = "object"
        params["properties"] = _openai_properties(params.get("properties", {}))
        tools.append({"type": "function", "function": function})
    return tools


def _openai_properties(properties: dict[str, Any]) -> dict[str, Any]:
    """BFCL's `_cast_to_openai_type`: map types one level into items and recurse into object properties."""
    for spec in properties.values():
        spec["type"] = (
            _openai_float(spec)
            if spec.get("type") == "float"
            else OPENAI_TYPES.get(spec.get("type"), "string")
        )
        if spec["type"] not in ("array", "object"):
            continue
        if "properties" in spec:
            spec["properties"] = _openai_properties(spec["properties"])
        elif "items" in spec:
            _openai_items(spec["items"])
    return properties


def _openai_float(spec: dict[str, Any]) -> str:
    spec["format"] = "float"
    spec["description"] = spec.get("description", "") + " This is a float type value."
    return "number"


def _openai_items(items: dict[str, Any]) -> None:
    items["type"] = OPENAI_TYPES.get(items.get("type", ""), "string")
    if items["type"] == "array" and "items" in items:
        items["items"]["type"] = OPENAI_TYPES.get(items["items"].get("type"), "string")
    elif items["type"] == "object" and "properties" in items:
        items["properties"] = _openai_properties(items["properties"])


def example_to_trace(example: BfclExample) -> Trace:
    """A tool Trace holding the question and converted tools, for `pipelines.chat.render_prompt`.

    It ends with the user's turn (the model answers next), so it is a prompt, not a finished training trace.
    """
    pattern = "irrelevance" if example.expects_no_call else "single"
    if "parallel" in example.category:
        pattern = "parallel"
    return Trace(
        id=example.id,
        source=f"bfcl:{example.category}",
        kind="tool",
        cluster="tool",
        tools=functions_to_tools(example.functions),
        messages=[Message(role=m["role"], content=m["content"]) for m in example.messages],
        meta={"pattern": pattern, "bfcl_category": example.category, "bfcl_id": example.id},
    )


def decode_tool_calls(parsed_calls: list[dict[str, Any]], functions: list[dict[str, Any]]) -> list[Call]:
    """`Codec.parse(...).tool_calls` → BFCL's decoded form `[{original_name: {arg: value}}]`.

    `functions` are the example's BFCL docs: they say which original name a sanitized tool name stands for.
    Names the model made up pass through unchanged (the checker then reports a wrong function name).
    """
    names = tool_name_map(functions)
    return [
        {names.get(call["name"], call["name"]): dict(call.get("arguments") or {})} for call in parsed_calls
    ]


def score_example(example: BfclExample, decoded: list[Call]) -> tuple[bool, str]:
    """(correct, "error_type: message" or ""): irrelevance is correct iff there is no call."""
    if example.expects_no_call:
        if has_no_call(decoded):
            return True, ""
        return (
            False,
            "irrelevance_error:decoder_success: Valid syntax. Successfully decode AST when it should not.",
        )
    result = check_calls(example.functions, decoded, example.ground_truth, example.category)
    return result.valid, result.summary


def reference_calls(example: BfclExample) -> list[Call]:
    """A decoded prediction built from the possible answer, correct by construction where one exists.

    Per parameter: a required one gets its first non-optional allowed value, an optional one its first
    allowed value (omitted when that is ""), one the doc does not declare is omitted when it may be.
    Used to test the checker and the tool conversion, and as an oracle run of the scorer.
    """
    docs = {f["name"]: f for f in example.functions}
    calls = []
    for answer in example.ground_truth:
        name, allowed = next(iter(answer.items()))
        params = docs.get(name, {}).get("parameters", {})
        properties, required = params.get("properties", {}), set(params.get("required", []))
        arguments = {}
        for param, values in allowed.items():
            chosen = _pick_allowed(values, required=param in required, declared=param in properties)
            if chosen is not _OMIT:
                arguments[param] = _reference_value(chosen, properties.get(param, {}))
        calls.append({name: arguments})
    return calls


_OMIT = object()


def _pick_allowed(values: list[Any], required: bool = False, declared: bool = True) -> Any:
    if not values or (not declared and "" in values):
        return _OMIT
    if required:
        return next((v for v in values if v != ""), _OMIT)
    return values[0] if values[0] != "" else _OMIT


def _reference_value(chosen: Any, spec: dict[str, Any]) -> Any:
    """Dict answers list allowed values per key; pick the first of each there too (one level, as BFCL)."""
    if spec.get("type") == "dict" and isinstance(chosen, dict):
        return _reference_dict(chosen)
    items = spec.get("items", {})
    if spec.get("type") == "array" and items.get("type") == "dict" and isinstance(chosen, list):
        return [_reference_dict(d) if isinstance(d, dict) else d for d in chosen]
    return chosen


def _reference_dict(allowed: dict[str, list[Any]]) -> dict[str, Any]:
    picked = {key: _pick_allowed(values) for key, values in allowed.items()}
    return {key: value for key, value in picked.items() if value is not _OMIT}
