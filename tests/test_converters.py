"""Converters: fixture rows shaped like the real datasets become valid traces with the exact calls, roles and
results; malformed rows become rejects with a precise reason; converted traces render through the chat
template and thought schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.data.converters import (
    ConversionError,
    convert_row,
    convert_rows,
    parse_python_calls,
    python_type_schema,
)
from pipelines.data.readers import Reject, read_local
from pipelines.errors import BadInput
from pipelines.recipe import LocalSource
from pipelines.schema import Trace, function_spec, parse_trace, validate_trace

FIXTURES = Path(__file__).parent / "fixtures" / "formats"

# Per format: fixture lines that must convert, and line → reason code for the malformed ones.
EXPECTED = {
    "xlam": ({1, 2, 3, 4}, {5: "invalid_json", 6: "arguments_mismatch"}),
    "glaive": ({1, 2, 3, 4}, {5: "invalid_json", 6: "no_pending_call"}),
    "hermes": ({1, 2, 3, 4}, {5: "bad_tool_call", 6: "undeclared_tool"}),
    "toolace": ({1, 2, 3, 4}, {5: "bad_tool_call", 6: "bad_tool_call"}),
    "sharegpt": ({1, 2, 3, 4}, {5: "invalid_json", 6: "unknown_role"}),
    "openai": ({1, 2, 3, 4}, {5: "invalid_json", 6: "arguments_mismatch"}),
    "trace": ({1, 2, 3, 4}, {5: "undeclared_tool", 6: "schema_mismatch"}),
    "text": ({1, 2, 3, 4}, {5: "empty_text", 6: "missing_field"}),
}


def convert_fixture(fmt: str, **kwargs) -> dict[int, Trace | Reject]:
    """Fixture line number → its Trace or Reject, through the real reader and converter."""
    source = LocalSource(type="local", name=f"{fmt}-src", path=str(FIXTURES / f"{fmt}.jsonl"), format=fmt)
    out = {}
    for row_id, item in convert_rows(fmt, read_local(source), source.name, **kwargs):
        out[int(row_id.rsplit(":", 1)[1])] = item
    return out


def calls_of(trace: Trace) -> list[tuple[str, dict]]:
    return [(c.name, c.arguments) for c in trace.calls()]


def roles(trace: Trace) -> list[str]:
    return [m.role for m in trace.messages]


def spec(trace: Trace, name: str) -> dict:
    return next(function_spec(t) for t in trace.tools if function_spec(t)["name"] == name)


@pytest.mark.parametrize("fmt", sorted(EXPECTED))
def test_fixture_converts_and_rejects_exactly_the_malformed_rows(fmt: str) -> None:
    good, bad = EXPECTED[fmt]
    items = convert_fixture(fmt)
    assert {n for n, i in items.items() if isinstance(i, Trace)} == good
    assert {n: i.reason for n, i in items.items() if isinstance(i, Reject)} == bad
    for n in good:
        trace = items[n]
        assert validate_trace(trace) == []
        assert trace.source == f"{fmt}-src"
        again, problems = parse_trace(json.loads(trace.to_json()))  # what the shards store reads back equal
        assert problems == [] and again == trace
    for n in bad:
        reject = items[n]
        assert reject.source == f"{fmt}-src" and reject.row_id.endswith(f"{fmt}.jsonl:{n}") and reject.detail


# -- xlam ----------------------------------------------------------------------------------------------------
def test_xlam_calls_and_flat_python_typed_parameters() -> None:
    items = convert_fixture("xlam")
    first = items[1]
    assert first.id == "0" and first.kind == "tool" and first.cluster == "tool"
    assert roles(first) == ["user", "assistant"]  # xLAM has no results: the trace ends on the call turn
    assert calls_of(first) == [
        ("live_giveaways_by_type", {"type": "beta"}),
        ("live_giveaways_by_type", {"type": "game"}),
    ]
    assert [c.id for c in first.calls()] == ["call_1", "call_2"]
    assert first.meta == {"format": "xlam", "difficulty": 2, "pattern": "parallel"}
    giveaways = spec(first, "live_giveaways_by_type")["parameters"]
    assert giveaways["properties"]["type"]["type"] == "string"
    assert giveaways["required"] == []  # it has a default

    second = items[2]
    nums = spec(second, "find_max_subarray_sum")["parameters"]
    assert nums["properties"]["nums"]["type"] == "array"
    assert nums["properties"]["nums"]["items"] == {"type": "integer"}
    assert nums["required"] == ["nums"]
    password = spec(second, "generate_password")["parameters"]
    assert password["properties"]["length"]["type"] == "integer" and password["required"] == []
    assert calls_of(second)[1] == ("is_valid_palindrome", {"s": "A man, a plan, a canal: Panama"})

    interest = spec(items[3], "compound_interest")["parameters"]
    assert interest["required"] == ["time"]  # principal/rate have defaults, n is optional
    assert interest["properties"]["rate"]["type"] == "number"
    assert calls_of(items[4]) == [
        ("merge_dictionaries", {"dict1": {"a": 1, "b": 2}, "dict2": {"b": 3, "c": 4}})
    ]


def test_xlam_rejects_name_the_field() -> None:
    items = convert_fixture("xlam")
    assert items[5].detail.startswith("answers: ")
    assert "'twelve' is not of type 'integer'" in items[6].detail


@pytest.mark.parametrize(
    ("type_text", "schema"),
    [
        ("str", {"type": "string"}),
        ("str, optional", {"type": "string"}),
        ("int, optional", {"type": "integer"}),
        ("float", {"type": "number"}),
        ("bool", {"type": "boolean"}),
        ("List[int]", {"type": "array", "items": {"type": "integer"}}),
        ("List[Dict[str, Any]]", {"type": "array", "items": {"type": "object"}}),
        ("List", {"type": "array"}),
        ("Tuple[int, int]", {"type": "array"}),
        ("Dict[str, int]", {"type": "object"}),
        ("Optional[str]", {"type": "string"}),
        ("Union[int, float]", {"anyOf": [{"type": "integer"}, {"type": "number"}]}),
        ("int or float", {"anyOf": [{"type": "integer"}, {"type": "number"}]}),
        ("Union[int, Callable]", {}),
        ("Callable", {}),
        ("Any", {}),
        ("", {}),
    ],
)
def test_python_type_annotations_map_to_json_schema(type_text: str, schema: dict) -> None:
    assert python_type_schema(type_text) == schema


# -- glaive --------------------------------------------------------------------------------------------------
def test_glaive_single_quoted_arguments_and_function_responses() -> None:
    items = convert_fixture("glaive")
    first = items[1]
    assert roles(first) == ["user", "assistant", "tool", "assistant"]  # the tool-declaring SYSTEM is dropped
    assert first.tool_names() == ["convert_currency"]
    assert calls_of(first) == [
        ("convert_currency", {"amount": 1000, "from_currency": "USD", "to_currency": "EUR"})
    ]
    assert first.messages[2].tool_call_id == first.calls()[0].id
    assert json.loads(first.messages[2].content)["converted_amount"] == 850.0
    assert first.messages[3].content == "Sure, 1000 US dollars is approximately 850 Euros."

    no_functions = items[2]
    assert no_functions.tools == [] and no_functions.messages[0].role == "system"
    assert (
        no_functions.messages[0].content
        == "You are a helpful assistant, with no access to external functions."
    )
    assert roles(no_functions) == ["system", "user", "assistant", "user", "assistant"]

    multi = items[3]
    assert multi.tool_names() == ["search_movie", "get_lyrics"]
    # An apostrophe inside the single-quoted arguments string must not cut it short.
    assert calls_of(multi) == [
        ("search_movie", {"title": "Bohemian Rhapsody", "year": 2018}),
        ("get_lyrics", {"song_title": "Don't Stop Me Now", "artist": "Queen"}),
    ]
    assert multi.meta["pattern"] == "sequential"
    assert items[4].meta == {"format": "glaive", "difficulty": 0, "pattern": "irrelevance"}
    assert "<functioncall>" in items[5].detail and "arguments" in items[5].detail
    assert "FUNCTION RESPONSE" in items[6].detail


# -- hermes --------------------------------------------------------------------------------------------------
def test_hermes_python_literal_calls_and_named_tool_responses() -> None:
    items = convert_fixture("hermes")
    cameras = items[1]
    assert cameras.id == "c2b8f6a1-5c3e-4f7b-9d6a-0e1f2a3b4c5d"
    assert cameras.tool_names() == [
        "get_camera_live_feed",
        "list_all_cameras",
    ]  # from the Python-repr <tools>
    assert roles(cameras) == ["user", "assistant"]
    assert calls_of(cameras) == [
        ("get_camera_live_feed", {"camera_id": "front_door", "stream_quality": "1080p"}),
        ("get_camera_live_feed", {"camera_id": "backyard", "stream_quality": "720p"}),
    ]
    assert cameras.messages[1].content == ""  # only the blocks: no leftover text

    stocks = items[2]
    assert roles(stocks) == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
        "assistant",
        "tool",
        "assistant",
    ]
    assert calls_of(stocks) == [
        ("get_stock_price", {"company": "Apple"}),
        ("get_stock_fundamentals", {"symbol": "TSLA"}),
    ]
    assert "'dividend_yield': None" in stocks.messages[6].content  # results keep their text as written

    json_mode = items[3]
    assert json_mode.tools == [] and "<schema>" in json_mode.messages[0].content  # a non-tool system is kept

    parallel = items[4]
    apple, microsoft = parallel.calls()
    results = [m for m in parallel.messages if m.role == "tool"]
    assert [r.tool_call_id for r in results] == [apple.id, microsoft.id]
    assert '"Microsoft"' in results[1].content
    assert items[5].detail.startswith("conversations[2] <tool_call> 0: neither JSON")
    assert "'lock_door'" in items[6].detail


# -- toolace -------------------------------------------------------------------------------------------------
def test_toolace_python_call_syntax_with_spaced_names_and_split_results() -> None:
    items = convert_fixture("toolace")
    assert calls_of(items[1]) == [("newAddress", {"password": "my_secure_password123"})]
    assert spec(items[1], "newAddress")["parameters"]["type"] == "object"  # "dict" → JSON schema
    assert "required" not in spec(items[1], "newAddress")  # the function-level `"required": null` is dropped

    parallel = items[2]
    assert calls_of(parallel) == [
        ("Get Sub Regions", {"region": "Asia", "language": "fr"}),
        ("TeamPlayersStatistics", {"teamId": 12.0, "season": "2023", "metrics": ["points", "assists"]}),
    ]
    results = [m for m in parallel.messages if m.role == "tool"]
    assert [r.tool_call_id for r in results] == [c.id for c in parallel.calls()]
    assert json.loads(results[0].content)["name"] == "Get Sub Regions"

    clarify = items[3]
    assert roles(clarify) == ["user", "assistant", "user", "assistant", "tool", "assistant"]
    assert clarify.messages[1].tool_calls == [] and "email" in clarify.messages[1].content
    assert calls_of(clarify)[0][1]["options"] == {"recurring": True}  # JSON `true` inside a Python call
    assert items[4].meta["pattern"] == "irrelevance"
    assert "positional arguments" in items[5].detail
    assert "not a literal" in items[6].detail


def test_python_calls_are_parsed_never_evaluated(tmp_path: Path) -> None:
    marker = tmp_path / "evaluated"
    payload = f'[f(x=__import__("pathlib").Path({str(marker)!r}).touch())]'
    with pytest.raises(ConversionError, match="not a literal"):
        parse_python_calls(payload, ["f"])
    assert not marker.exists()
    assert parse_python_calls('[maps.geocode(q="Paris", limit=2), f()]', ["maps.geocode", "f"]) == [
        ("maps.geocode", {"q": "Paris", "limit": 2}),
        ("f", {}),
    ]
    with pytest.raises(ConversionError, match="not a call"):
        parse_python_calls("[1, 2]", [])


# -- sharegpt, openai ----------------------------------------------------------------------------------------
def test_sharegpt_function_call_and_observation_turns() -> None:
    items = convert_fixture("sharegpt")
    assert calls_of(items[1]) == [
        ("convert_currency", {"amount": 500, "from_currency": "USD", "to_currency": "EUR"})
    ]
    multi = items[2]
    assert multi.messages[0].role == "system" and multi.messages[0].content.startswith("You are a friendly")
    # The second call's arguments are JSON text inside the JSON value.
    assert calls_of(multi)[1] == ("calculate_tip", {"bill_amount": 85, "tip_percentage": 15})
    parallel = items[3]
    results = [m for m in parallel.messages if m.role == "tool"]
    assert [json.loads(r.content)["location"] for r in results] == ["Tokyo", "Paris"]
    assert [r.tool_call_id for r in results] == [c.id for c in parallel.calls()]
    assert "'bot'" in items[6].detail


def test_openai_ids_content_parts_and_out_of_order_results() -> None:
    items = convert_fixture("openai")
    first = items[1]
    assert first.id == "oa-0001"
    assert first.calls()[0].id == "call_9pw1qnYScqvGrCH58HWCvFH6"
    assert first.messages[3].tool_call_id == "call_9pw1qnYScqvGrCH58HWCvFH6"
    assert calls_of(first) == [("get_current_weather", {"location": "Boston", "unit": "fahrenheit"})]

    parallel = items[2]
    assert calls_of(parallel) == [
        ("calculate_bmi", {"weight": 80, "height": 1.8}),
        ("calculate_tip", {"bill_amount": 120, "tip_percentage": 20}),
    ]
    assert [m.tool_call_id for m in parallel.messages if m.role == "tool"] == ["call_b", "call_a"]

    multi = items[3]
    assert roles(multi)[:2] == ["system", "user"]  # `developer` is the newer name for system
    assert multi.messages[1].content == "Weather in Lima? Use celsius."
    assert multi.messages[2].content == "Let me check." and multi.meta["pattern"] == "sequential"
    assert "messages[1].tool_calls[0]: arguments" in items[5].detail


def test_openai_rows_through_arrow_nulls_convert_like_json(tmp_path: Path) -> None:
    """Parquet/`datasets` unify struct fields across rows and fill absent keys with null."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in (FIXTURES / "openai.jsonl").read_text().splitlines()]
    # Same column types, different keys: the weather tool and the calculator tools share one struct type,
    # so each spec comes back with the other's properties set to null.
    picked = [rows[0], {**rows[3], "tools": rows[1]["tools"]}]
    path = tmp_path / "openai.parquet"
    pq.write_table(pa.Table.from_pylist(picked), path)
    source = LocalSource(type="local", name="oa", path=str(path), format="openai")
    through_arrow = [t for _, t in convert_rows("openai", read_local(source), "oa")]
    direct = [convert_row("openai", row, "oa", "x") for row in picked]
    assert through_arrow == direct
    assert set(through_arrow[1].tools[0]["function"]["parameters"]["properties"]) == {"weight", "height"}


# -- trace, text, errors -------------------------------------------------------------------------------------
def test_trace_rows_take_the_recipe_source_and_cluster() -> None:
    items = convert_fixture("trace")
    assert items[1].cluster == "plan" and items[1].messages[1].thinking[0].text == "One add call."
    relabelled = convert_fixture("trace", cluster="tool-basics")
    assert relabelled[1].cluster == "tool-basics" and relabelled[1].source == "trace-src"
    assert items[3].kind == "code"


def test_text_rows_become_documents_of_the_requested_kind() -> None:
    items = convert_fixture("text", text_kind="code")
    assert items[3].id == "doc-3" and items[3].kind == "code" and items[3].cluster == "code"
    assert items[1].text.startswith("The quick brown fox")
    assert "columns: content" in items[6].detail
    renamed = convert_row("text", {"body": "some words"}, "s", "r1", text_field="body")
    assert renamed.text == "some words" and renamed.kind == "text"


def test_bad_input_that_is_not_a_row_problem() -> None:
    with pytest.raises(BadInput, match="unknown source format 'csv'"):
        convert_row("csv", {}, "s", "r")
    with pytest.raises(ConversionError, match="r7: not_an_object"):
        convert_row("openai", ["not", "a", "dict"], "s", "r7")  # type: ignore[arg-type]


def test_broken_tool_schema_is_a_reject_not_a_crash() -> None:
    row = {
        "messages": [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": '{"x": 1}'}}],
            },
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "f",
                    "parameters": {"type": "object", "properties": {"x": {"type": "integr"}}},
                },
            }
        ],
    }
    with pytest.raises(ConversionError) as info:
        convert_row("openai", row, "s", "r1")
    assert info.value.reason == "bad_tool_spec" and "integr" in info.value.detail


def test_property_level_required_flags_are_lifted() -> None:
    row = {
        "conversations": [
            {"from": "human", "value": "hi"},
            {"from": "function_call", "value": '{"name": "f", "arguments": {}}'},
            {"from": "observation", "value": "ok"},
            {"from": "gpt", "value": "done"},
        ],
        "tools": [
            {
                "name": "f",
                "parameters": {"type": "object", "properties": {"x": {"type": "string", "required": True}}},
            }
        ],
    }
    with pytest.raises(ConversionError) as info:
        convert_row("sharegpt", row, "s", "r1")
    assert info.value.reason == "arguments_mismatch" and "'x' is a required property" in info.value.detail


# -- rendering -----------------------------------------------------------------------------------------------
RENDER_CASES = [("openai", 3), ("sharegpt", 3), ("xlam", 2), ("glaive", 3), ("hermes", 4), ("toolace", 2)]


@pytest.mark.parametrize(("fmt", "line"), RENDER_CASES)
def test_converted_traces_render_with_assistant_only_loss(fmt: str, line: int, tokenizer) -> None:
    from pipelines.chat import render_trace
    from pipelines.thought import load_thought_schema

    trace = convert_fixture(fmt)[line]
    rendered = render_trace(trace, tokenizer, load_thought_schema("think-plan-reflect"))
    assert len(rendered.input_ids) == len(rendered.assistant_masks)
    trained = tokenizer.decode(
        [t for t, m in zip(rendered.input_ids, rendered.assistant_masks, strict=True) if m]
    )
    for call in trace.calls():
        assert f'"name": "{call.name}"' in trained
    user_text = next(m.content for m in trace.messages if m.role == "user")
    assert user_text not in trained  # the loss never covers the user's words
    full = tokenizer.decode(rendered.input_ids)
    assert user_text in full
    if any(m.role == "tool" for m in trace.messages):
        assert "<tool_response>" in full and "<tool_response>" not in trained
    final = trace.messages[-1]
    if final.content:
        assert final.content in trained


# -- layout variants seen in the wild ------------------------------------------------------------------------
F_SPEC = {
    "name": "f",
    "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]},
}


def test_openai_legacy_functions_and_function_role() -> None:
    row = {
        "functions": [F_SPEC],
        "messages": [
            {"role": "user", "content": "run f"},
            {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": '{"x": 4}'}},
            {"role": "function", "name": "f", "content": "16"},
            {"role": "assistant", "content": "f gave 16"},
        ],
    }
    trace = convert_row("openai", row, "s", "r1")
    assert calls_of(trace) == [("f", {"x": 4})] and trace.messages[2].tool_call_id == "call_1"


def test_hermes_tools_written_as_one_object_per_line() -> None:
    tools = "\n".join(json.dumps({"type": "function", "function": F_SPEC | {"name": n}}) for n in ("f", "g"))
    row = {
        "conversations": [
            {"from": "system", "value": f"You are a function calling AI model.\n<tools>\n{tools}\n</tools>"},
            {"from": "human", "value": "run g"},
            {
                "from": "gpt",
                "value": 'Calling g.\n<tool_call>\n{"name": "g", "arguments": {"x": 2}}\n</tool_call>',
            },
        ]
    }
    trace = convert_row("hermes", row, "s", "r1")
    assert trace.tool_names() == ["f", "g"] and trace.messages[-1].content == "Calling g."


def test_glaive_call_with_plain_json_arguments_and_text_before_it() -> None:
    row = {
        "system": "SYSTEM: You are a helpful assistant with access to the following functions. Use them if required -\n"
        + json.dumps(F_SPEC, indent=4),
        "chat": 'USER: f of 3?\n\n\nASSISTANT: Sure. <functioncall> {"name": "f", "arguments": {"x": 3}} <|endoftext|>\n\n\n'
        "FUNCTION RESPONSE: 9\n\n\nASSISTANT: It is 9. <|endoftext|>",
    }
    trace = convert_row("glaive", row, "s", "r1")
    assert trace.messages[1].content == "Sure." and calls_of(trace) == [("f", {"x": 3})]


def test_xlam_row_without_answers_is_rejected() -> None:
    row = {
        "id": 5,
        "query": "What is the meaning of life?",
        "answers": "[]",
        "tools": json.dumps([{"name": "f"}]),
    }
    with pytest.raises(ConversionError) as info:
        convert_row("xlam", row, "s", "r1")
    assert info.value.reason == "empty_assistant_turn"
