"""Trace validation: valid records pass, and every kind of broken record is rejected with a precise reason."""

from __future__ import annotations

import copy
import json

import pytest

from pipelines.schema import argument_errors, parse_trace
from tests.helpers import valid_row


def test_valid_trace_passes_and_serialises_canonically() -> None:
    trace, problems = parse_trace(valid_row())
    assert problems == []
    assert trace is not None
    again, _ = parse_trace(json.loads(trace.to_json()))
    assert again == trace
    assert '"_instance":"i1"' in trace.to_json()


def _mutate(path: str, value) -> dict:
    row = valid_row()
    target = row
    parts = path.split(".")
    for part in parts[:-1]:
        target = target[int(part)] if part.isdigit() else target[part]
    last = parts[-1]
    if value is KeyError:
        del target[int(last) if last.isdigit() else last]
    else:
        target[int(last) if last.isdigit() else last] = value
    return row


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        ("messages.3.tool_calls.0.name", "mul", "call to undeclared tool 'mul'"),
        ("messages.3.tool_calls.0.arguments", {"a": "1", "b": 2}, "a: '1' is not of type 'integer'"),
        ("messages.3.tool_calls.0.arguments", {"a": 1}, "'b' is a required property"),
        ("messages.3.tool_calls.0.arguments", {"a": 1, "b": 2, "unit": "mi"}, "unit: 'mi' is not one of"),
        ("messages.3.tool_calls.0._instance", "i9", "_instance 'i9' is not declared"),
        ("messages.3.tool_calls.0._instance", KeyError, "the call names no _instance"),
        ("messages.4._instance", "i2", "differs from its call's"),
        ("messages.4.tool_call_id", "nope", "tool result for unknown call 'nope'"),
        ("messages.3.tool_calls.1.id", "c1", "duplicate tool call id 'c1'"),
        ("messages.6", KeyError, "the last turn must be the assistant's"),
        ("kind", "video", "kind: Input should be"),
        ("messages.1.role", "robot", "role: Input should be"),
        ("messages.0.surprise", 1, "Extra inputs are not permitted"),
    ],
)
def test_invalid_traces_are_rejected_with_reason(path: str, value, reason: str) -> None:
    row = _mutate(path, value) if path != "messages.6" else _drop_last(valid_row())
    trace, problems = parse_trace(row)
    assert trace is None
    assert any(reason in p for p in problems), problems


def _drop_last(row: dict) -> dict:
    row["messages"] = row["messages"][:-1]
    return row


def test_user_turn_with_tool_calls_is_rejected() -> None:
    row = valid_row()
    row["messages"][1]["tool_calls"] = copy.deepcopy(row["messages"][3]["tool_calls"][:1])
    _, problems = parse_trace(row)
    assert any("only assistant turns carry" in p for p in problems)


def test_text_records_need_text() -> None:
    assert (
        parse_trace({"id": "d", "source": "s", "kind": "text", "cluster": "text", "text": "hello"})[1] == []
    )
    assert parse_trace({"id": "d", "source": "s", "kind": "code", "cluster": "code"})[1] == [
        "empty: a code/text record needs `text`"
    ]


def test_python_style_types_in_tool_schemas_are_understood() -> None:
    bfcl_style = {
        "name": "f",
        "parameters": {"type": "dict", "properties": {"x": {"type": "float"}}, "required": ["x"]},
    }
    assert argument_errors(bfcl_style, {"x": 1.5}) == []
    assert argument_errors(bfcl_style, {"x": "a"}) == ["x: 'a' is not of type 'number'"]
