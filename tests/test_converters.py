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
    "glaive": ({1, 3, 4}, {2: "no_tools", 5: "invalid_json", 6: "no_pending_call"}),
    "hermes": ({1, 2, 4}, {3: "no_tools", 5: "bad_tool_call", 6: "undeclared_tool"}),
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

    # "with no access to external functions": a plain chat, no tool-use trace
    assert items[2].reason == "no_tools" and "plain chat" in items[2].detail

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

    assert items[3].reason == "no_tools" and "JSON-mode" in items[3].detail  # structured output, no tools

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


# -- real rows of the public datasets (tests/fixtures/real_rows/README.md names each row's source) ------------
REAL_ROWS = Path(__file__).parent / "fixtures" / "real_rows"

# Per format: lines that must convert, and line → reason code for the rows that must be refused.
REAL_EXPECTED = {
    "xlam": ({1, 2, 3, 4}, {}),
    "glaive": (
        {1, 3, 8},
        {
            2: "no_tools",
            4: "split_assistant_turn",
            5: "stray_turn_marker",
            6: "stray_turn_marker",
            7: "duplicate_tool_name",
            9: "no_pending_call",
            10: "undeclared_tool",
        },
    ),
    "hermes": ({1}, {2: "arguments_mismatch", 3: "no_tools", 4: "no_tools"}),
    "toolace": ({1}, {}),
    "sharegpt": ({1, 3, 4}, {2: "no_tools", 5: "arguments_mismatch"}),
    "openai": ({1, 3, 5, 6}, {2: "undeclared_tool", 4: "undeclared_tool"}),
}


def convert_real(fmt: str) -> dict[int, Trace | Reject]:
    source = LocalSource(type="local", name=f"{fmt}-real", path=str(REAL_ROWS / f"{fmt}.jsonl"), format=fmt)
    return {
        int(row_id.rsplit(":", 1)[1]): item
        for row_id, item in convert_rows(fmt, read_local(source), source.name)
    }


def real_row(fmt: str, line: int) -> dict:
    return json.loads((REAL_ROWS / f"{fmt}.jsonl").read_text(encoding="utf-8").splitlines()[line - 1])


@pytest.mark.parametrize("fmt", sorted(REAL_EXPECTED))
def test_real_rows_convert_or_are_refused_with_their_reason(fmt: str) -> None:
    good, bad = REAL_EXPECTED[fmt]
    items = convert_real(fmt)
    assert {n for n, i in items.items() if isinstance(i, Trace)} == good
    assert {n: i.reason for n, i in items.items() if isinstance(i, Reject)} == bad
    for n in good:
        trace = items[n]
        assert validate_trace(trace) == [] and trace.kind == "tool" and trace.tools
        json.loads(trace.to_json(), parse_constant=pytest.fail)  # standard JSON: no NaN/Infinity
        again, problems = parse_trace(json.loads(trace.to_json()))
        assert problems == [] and again == trace
    for n in bad:
        assert items[n].detail


REAL_RENDER_CASES = [
    ("xlam", 2),
    ("glaive", 1),
    ("hermes", 1),
    ("toolace", 1),
    ("sharegpt", 3),
    ("openai", 3),
]


@pytest.mark.parametrize(("fmt", "line"), REAL_RENDER_CASES)
def test_real_rows_render_with_assistant_only_loss(fmt: str, line: int, tokenizer) -> None:
    from pipelines.chat import render_trace
    from pipelines.thought import load_thought_schema

    trace = convert_real(fmt)[line]
    rendered = render_trace(trace, tokenizer, load_thought_schema("think-plan-reflect"))
    trained = tokenizer.decode(
        [t for t, m in zip(rendered.input_ids, rendered.assistant_masks, strict=True) if m]
    )
    for call in trace.calls():
        assert f'"name": "{call.name}"' in trained
    user_text = next(m.content for m in trace.messages if m.role == "user")
    assert user_text not in trained and user_text in tokenizer.decode(rendered.input_ids)


# -- xLAM: "default": "" means no default -------------------------------------------------------------------
def test_xlam_empty_default_leaves_a_parameter_required() -> None:
    items = convert_real("xlam")
    products = spec(items[2], "get_products_in_category")["parameters"]
    assert products["required"] == ["skip", "limit", "category"]  # "int"/"str" with "default": ""
    assert all("default" not in prop for prop in products["properties"].values())
    assert spec(items[2], "mailcheck")["parameters"]["required"] == []  # a real default: optional
    cities = spec(items[1], "country_region_cities")["parameters"]
    assert cities["required"] == []  # "int, optional" with "default": "" stays optional, with no default
    assert (
        "default" not in cities["properties"]["limit"]
        and cities["properties"]["countryid"]["default"] == "US"
    )
    assert items[2].meta["repairs"] == ["xlam_default_typed", "xlam_empty_default"]

    # Before, a call leaving out `skip` passed; a required parameter must be given.
    row = real_row("xlam", 2)
    answers = json.loads(row["answers"])
    del answers[2]["arguments"]["skip"]
    with pytest.raises(ConversionError) as info:
        convert_row("xlam", {**row, "answers": json.dumps(answers)}, "s", "r")
    assert info.value.reason == "arguments_mismatch" and "'skip' is a required property" in info.value.detail


def test_xlam_string_defaults_take_the_declared_type_and_property_required_flags_lift() -> None:
    items = convert_real("xlam")
    node = spec(items[3], "navigations_get_node_content")["parameters"]["properties"]
    assert node["is_id"] == {
        "type": "integer",
        "description": "The 'id' field value returned from the /navigations/get-root endpoint.",
        "default": 26066300130,
    }
    assert node["language"]["default"] == "en"  # a string for a string stays
    assert spec(items[2], "product_by_id")["parameters"]["properties"]["product_id"]["default"] == 32841070485
    card = items[4]  # the card's example: `"required": true` on each property, `list` for array
    primes = spec(card, "math_toolkit.sum_of_multiples")["parameters"]
    assert primes["required"] == ["lower_limit", "upper_limit", "multiples"]
    assert primes["properties"]["multiples"] == {
        "type": "array",
        "description": "The numbers to find multiples of.",
    }


# -- glaive ---------------------------------------------------------------------------------------------------
def test_glaive_real_rows_turns_and_text_before_the_call() -> None:
    items = convert_real("glaive")
    row_25475 = items[1]
    assert roles(row_25475) == ["user", "assistant", "user", "assistant", "tool", "assistant"]
    assert calls_of(row_25475) == [("detect_language", {"text": "Je suis un étudiant"})]
    assert row_25475.messages[4].content == '{"language": "French"}'
    # Row 21816, "… Let's start the search.\n<functioncall> {…}": the words are the call turn's content.
    row_21816 = items[3]
    assert row_21816.messages[1].content == "Of course, I can help you with that. Let's start the search."
    assert calls_of(row_21816) == [("search_products", {"keyword": "laptop"})]
    assert items[2].reason == "no_tools"  # row 107105, "no access to external functions"


def test_glaive_stray_assistant_markers_are_refused_not_split() -> None:
    items = convert_real("glaive")
    in_response, in_user_text = items[5], items[6]  # rows 9046 and 44369
    assert "FUNCTION RESPONSE" in in_response.detail and "Top Trends" in in_response.detail
    assert "chat turn 0 (USER)" in in_user_text.detail and "A Modern" in in_user_text.detail
    assert "messages[1] and messages[2]" in items[4].detail  # row 2289: two text turns where one was cut


def test_glaive_text_turn_then_call_turn_become_one_turn() -> None:
    row = {
        "system": GLAIVE_LEAD_IN + "\n" + json.dumps(F_SPEC, indent=4) + "\n",
        "chat": "USER: f of 2?\n\n\nASSISTANT: Sure, one moment. <|endoftext|>\n\n\n"
        'ASSISTANT: <functioncall> {"name": "f", "arguments": \'{"x": 2}\'} <|endoftext|>\n\n\n'
        "FUNCTION RESPONSE: 4\n\n\nASSISTANT: It is 4. <|endoftext|>",
    }
    trace = convert_row("glaive", row, "s", "r")
    assert roles(trace) == ["user", "assistant", "tool", "assistant"]
    assert trace.messages[1].content == "Sure, one moment." and calls_of(trace) == [("f", {"x": 2})]
    assert trace.meta["repairs"] == ["merged_assistant_turns"]


def test_glaive_duplicate_function_names() -> None:
    items = convert_real("glaive")
    assert "'convert_currency' is declared twice with different definitions" in items[7].detail  # row 168
    same = items[8]  # one definition written twice: kept once
    assert same.tool_names() == ["get_random_joke"] and same.meta["repairs"] == ["duplicate_tool_dropped"]


GLAIVE_LEAD_IN = (
    "SYSTEM: You are a helpful assistant with access to the following functions. Use them if required -"
)


def glaive_call_row(call: str, spec_: dict | None = None) -> dict:
    """A glaive row around one <functioncall> text as bellwether quotes it (tests/fixtures/real_rows/README.md)."""
    function = spec_ or {"name": "f", "description": "Does it.", "parameters": {}}
    return {
        "system": GLAIVE_LEAD_IN + "\n" + json.dumps(function, indent=4) + "\n",
        "chat": f"USER: Do it.\n\n\nASSISTANT: <functioncall>{call}<|endoftext|>\n\n\n"
        'FUNCTION RESPONSE: {"ok": true}\n\n\nASSISTANT: Done. <|endoftext|>\n\n\n',
    }


def test_glaive_parameters_key_is_read_as_arguments() -> None:
    quote = {"name": "get_random_quote", "description": "Get a random quote", "parameters": {}}
    trace = convert_row(
        "glaive", glaive_call_row(' {"name": "get_random_quote", "parameters": {}} ', quote), "s", "r"
    )
    assert calls_of(trace) == [("get_random_quote", {})]  # row 81082
    assert trace.meta["repairs"] == ["parameters_key_as_arguments"]
    quoted = glaive_call_row(""" {"name": "f", "parameters": '{"x": 3}'} """, F_SPEC)
    assert calls_of(convert_row("glaive", quoted, "s", "r")) == [("f", {"x": 3})]


@pytest.mark.parametrize(
    "call",
    [
        """ {"name": "f", "arguments": '{"range": [70001, Infinity]}'} """,  # row 26684, shortened
        ' {"name": "f", "arguments": {"range": [70001, Infinity]}} ',
        """ {"name": "f", "arguments": '{"x": NaN}'} """,
    ],
)
def test_glaive_infinity_is_refused_never_written(call: str) -> None:
    with pytest.raises(ConversionError) as info:
        convert_row("glaive", glaive_call_row(call), "s", "r")
    assert info.value.reason == "non_finite_number" and "JSON has no NaN or Infinity" in info.value.detail


def test_glaive_python_escaped_quote_in_arguments() -> None:
    sentiment = {
        "name": "analyze_sentiment",
        "parameters": {"type": "object", "properties": {"text": {"type": "string"}}},
    }
    call = """ {"name": "analyze_sentiment", "arguments": '{"text": "life\\'s full"}'} """  # row 71039
    trace = convert_row("glaive", glaive_call_row(call, sentiment), "s", "r")
    assert calls_of(trace) == [("analyze_sentiment", {"text": "life's full"})]
    assert trace.meta["repairs"] == ["python_quote_escape"]


@pytest.mark.parametrize(
    ("call", "reason", "needle"),
    [
        (
            """ {"name": "f", "arguments": '{"data": [User provided data]}'} """,
            "invalid_json",
            "arguments",
        ),  # 65421
        (
            """ {"name": "f", "arguments": '[5, 10, 15, 20, 25]'} """,
            "bad_tool_call",
            "must be an object",
        ),  # 81297
        (
            """ {"name": "f", "arguments": '{"artist": "Ed Sheeran", "title": " """,
            "bad_tool_call",
            "neither JSON",
        ),
        (
            """ {"name": "f", "arguments": '{"subject": "Agenda"}'}} """,
            "bad_tool_call",
            "neither JSON",
        ),  # 57572
    ],
)
def test_glaive_unreadable_calls_are_refused_with_their_reason(call: str, reason: str, needle: str) -> None:
    with pytest.raises(ConversionError) as info:
        convert_row("glaive", glaive_call_row(call), "s", "r")
    assert info.value.reason == reason and needle in info.value.detail


def test_glaive_null_arguments_are_no_arguments() -> None:
    clock = {"name": "get_current_time", "description": "Get the current time", "parameters": {}}
    trace = convert_row(
        "glaive", glaive_call_row(' {"name": "get_current_time", "arguments": null} ', clock), "s", "r"
    )
    assert calls_of(trace) == [("get_current_time", {})]


# -- Hermes ---------------------------------------------------------------------------------------------------
EXTRACTOR = {
    "type": "function",
    "function": {
        "name": "ExpertQAExtractor",
        "description": "Extracts a list of questions.",
        "parameters": {
            "type": "object",
            "properties": {"queries": {"type": "array", "items": {"type": "string"}}},
            "required": ["queries"],
        },
    },
}


def test_hermes_card_extraction_row_parses_and_names_the_real_mismatch() -> None:
    """The card's row puts a literal backslash-n inside <tool_call> and `name` inside `arguments` (today: refused
    as bad_tool_call); once read, its arguments name `queries` where the tool declares `application_questions`."""
    refused = convert_real("hermes")[2]
    assert "ExpertQAExtractor arguments: 'application_questions' is a required property" in refused.detail

    row = real_row("hermes", 2)
    system = row["conversations"][0]["value"]
    start, end = system.index("<tools>") + len("<tools>"), system.index("</tools>")
    row["conversations"][0]["value"] = system[:start] + "\n" + json.dumps([EXTRACTOR]) + "\n" + system[end:]
    trace = convert_row("hermes", row, "s", "r")
    ((name, arguments),) = calls_of(trace)
    assert name == "ExpertQAExtractor" and list(arguments) == ["queries"] and len(arguments["queries"]) == 3
    assert trace.meta["repairs"] == ["literal_newline_in_tool_call", "name_inside_arguments"]


def hermes_row(gpt: str, tools: list | str | None = None, system_tools: str = "") -> dict:
    system = (
        "You are a function calling AI model. You are provided with function signatures within <tools> </tools> "
        f"XML tags.\n<tools>\n{system_tools}\n</tools>\n"
    )
    row = {
        "id": "r1",
        "conversations": [
            {"from": "system", "value": system},
            {"from": "human", "value": "Extract the questions."},
            {"from": "gpt", "value": gpt},
        ],
    }
    if tools is not None:
        row["tools"] = tools
    return row


def test_hermes_literal_newline_around_python_quoted_calls() -> None:
    # The shape of the 793 extraction rows (bellwether tests/test_import_hermes.py): backslash-n, Python quotes.
    gpt = """<tool_call>\\n{"arguments": {"queries": ['How?']}, "name": "ExpertQAExtractor"}\\n</tool_call>"""
    trace = convert_row("hermes", hermes_row(gpt, system_tools=json.dumps([EXTRACTOR])), "s", "r")
    assert calls_of(trace) == [("ExpertQAExtractor", {"queries": ["How?"]})]


def test_hermes_name_is_lifted_only_for_a_declared_tool_without_a_name_parameter() -> None:
    gpt = '<tool_call>\n{"arguments": {"queries": ["How?"], "name": "ExpertQAExtractor"}}\n</tool_call>'
    trace = convert_row("hermes", hermes_row(gpt, system_tools=json.dumps([EXTRACTOR])), "s", "r")
    assert calls_of(trace) == [("ExpertQAExtractor", {"queries": ["How?"]})]
    named = json.loads(json.dumps(EXTRACTOR))
    named["function"]["parameters"]["properties"]["name"] = {"type": "string"}  # `name` is an argument here
    with pytest.raises(ConversionError) as info:
        convert_row("hermes", hermes_row(gpt, system_tools=json.dumps([named])), "s", "r")
    assert info.value.reason == "bad_tool_call" and "without a function name" in info.value.detail


def test_hermes_tools_column_wins_over_the_system_block() -> None:
    """The Hub files carry a `tools` column next to the prompt; "[]" or "null" there means: read the prompt."""
    gpt = '<tool_call>\n{"name": "ExpertQAExtractor", "arguments": {"queries": ["How?"]}}\n</tool_call>'
    broken_prompt = '[{"type": "object", "properties": {}}}]'  # func_calling row 1109's shape: a broken list
    trace = convert_row("hermes", hermes_row(gpt, json.dumps([EXTRACTOR]), broken_prompt), "s", "r")
    assert trace.tool_names() == ["ExpertQAExtractor"] and trace.messages[0].role == "user"
    for empty in ("[]", "null"):
        with pytest.raises(ConversionError) as info:
            convert_row("hermes", hermes_row(gpt, empty, broken_prompt), "s", "r")
        assert info.value.reason in ("invalid_json", "bad_tool_call")


def test_hermes_json_mode_rows_are_not_tool_traces() -> None:
    items = convert_real("hermes")
    for line in (3, 4):
        assert items[line].reason == "no_tools" and "JSON-mode" in items[line].detail


# -- ToolACE, ShareGPT, OpenAI ------------------------------------------------------------------------------------
def test_toolace_real_row() -> None:
    trace = convert_real("toolace")[1]
    assert calls_of(trace) == [
        ("GetCompetitions", {}),
        ("Get Manager Placeholder Image", {"sport": "football"}),
    ]
    results = [m for m in trace.messages if m.role == "tool"]
    assert [r.tool_call_id for r in results] == [c.id for c in trace.calls()]
    assert spec(trace, "Get Category Image")["parameters"]["type"] == "object"  # "dict"
    assert "required" not in spec(trace, "GetCompetitions")  # the function-level `"required": null`
    assert trace.meta["pattern"] == "sequential"
    assert trace.messages[0].role == "user"  # the boilerplate system prompt is dropped


def test_sharegpt_and_openai_real_rows() -> None:
    sharegpt = convert_real("sharegpt")
    assert [c[1]["shape"] for c in calls_of(sharegpt[3])] == ["rectangle", "circle", "square"]
    assert "calories_per_item: [150, 350, 800] is not of type 'number'" in sharegpt[5].detail
    assert sharegpt[4].meta["pattern"] == "irrelevance"
    openai = convert_real("openai")
    assert calls_of(openai[3]) == [
        ("get_current_weather", {"location": "San Francisco, USA", "format": "celsius"})
    ]
    assert openai[1].calls()[0].id == "call_id"
    # The docs' `"tools": []` ("same as before") declares nothing: the call cannot be held to a schema.
    assert "call to undeclared tool 'get_current_weather'" in openai[2].detail


# -- shared rules on constructed rows ----------------------------------------------------------------------------
def openai_row(*messages: dict, tools: list | None = None) -> dict:
    return {
        "messages": [{"role": "user", "content": "run f"}, *messages],
        "tools": [F_SPEC] if tools is None else tools,
    }


def test_nan_and_infinity_never_reach_the_output() -> None:
    call = {
        "role": "assistant",
        "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": '{"x": NaN}'}}],
    }
    with pytest.raises(ConversionError) as info:
        convert_row("openai", openai_row(call), "s", "r")
    assert info.value.reason == "non_finite_number"
    huge = {**F_SPEC, "parameters": {"type": "object", "properties": {"x": {"type": "number"}}}}
    toolace = {
        "system": "Here is a list of functions in JSON format that you can invoke:\n" + json.dumps([huge]),
        "conversations": [{"from": "user", "value": "big"}, {"from": "assistant", "value": "[f(x=1e999)]"}],
    }
    with pytest.raises(ConversionError) as info:
        convert_row("toolace", toolace, "s", "r")
    assert info.value.reason == "non_finite_number"
    trace_row = {
        "id": "t",
        "source": "s",
        "kind": "text",
        "cluster": "text",
        "text": "x",
        "meta": {"w": float("nan")},
    }
    with pytest.raises(ConversionError) as info:
        convert_row("trace", trace_row, "s", "r")
    assert info.value.reason == "non_finite_number"


def test_split_turns_are_joined_or_refused_in_every_format() -> None:
    text = {"role": "assistant", "content": "Let me run f."}
    call = {
        "role": "assistant",
        "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": '{"x": 1}'}}],
    }
    result = {"role": "tool", "tool_call_id": "a", "content": "1"}
    done = {"role": "assistant", "content": "f gave 1."}
    trace = convert_row("openai", openai_row(text, call, result, done), "s", "r")
    assert roles(trace) == ["user", "assistant", "tool", "assistant"]
    assert trace.messages[1].content == "Let me run f." and trace.meta["repairs"] == [
        "merged_assistant_turns"
    ]
    with pytest.raises(ConversionError) as info:
        convert_row("openai", openai_row(text, done), "s", "r")
    assert info.value.reason == "split_assistant_turn"


def test_no_tools_and_no_calls_is_not_a_tool_trace() -> None:
    with pytest.raises(ConversionError) as info:
        convert_row("openai", openai_row({"role": "assistant", "content": "hi"}, tools=[]), "s", "r")
    assert info.value.reason == "no_tools" and "plain chat" in info.value.detail
    irrelevance = convert_row("openai", openai_row({"role": "assistant", "content": "I can't."}), "s", "r")
    assert irrelevance.meta["pattern"] == "irrelevance" and "repairs" not in irrelevance.meta
