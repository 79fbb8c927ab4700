"""Render invariants, for every thought schema, with the embedded model's tokenizer and chat template:
the loss mask covers exactly the assistant turns, rendering is prefix-preserving (training tokens equal
inference tokens for every prefix), and parsing the rendered assistant text gives back thinking and calls."""

from __future__ import annotations

import pytest

from pipelines.chat import (
    INSTANCE_KEY,
    chat_encoding,
    chat_tools,
    parse_reply,
    render_trace,
    to_chat_messages,
)
from pipelines.schema import Trace
from pipelines.thought import ThoughtSchema
from tests.helpers import ADD, valid_row


def _traces(schema: ThoughtSchema) -> list[Trace]:
    names = list(schema.sections)
    plan, second = names[0], names[-1]
    recovery = {
        "id": "r1",
        "source": "unit",
        "kind": "tool",
        "cluster": "reflect",
        "tools": [ADD],
        "messages": [
            {"role": "system", "content": "You are a careful assistant."},
            {"role": "user", "content": "Add 2 and 40, in km."},
            {
                "role": "assistant",
                "thinking": [{"section": plan, "text": "Call add once."}],
                "tool_calls": [{"id": "c1", "name": "add", "arguments": {"a": 2, "b": 40, "unit": "km"}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "Error: unit not supported"},
            {
                "role": "assistant",
                "thinking": [{"section": second, "text": "Drop the unit and retry."}],
                "tool_calls": [{"id": "c2", "name": "add", "arguments": {"a": 2, "b": 40}}],
            },
            {"role": "tool", "tool_call_id": "c2", "content": "42"},
            {"role": "assistant", "thinking": [{"section": plan, "text": "Got it."}], "content": "42 km."},
        ],
    }
    instanced = valid_row()
    for msg in instanced["messages"]:
        for item in msg.get("thinking", []):
            item["section"] = plan
    return [Trace.model_validate(recovery), Trace.model_validate(instanced)]


def _spans(mask: list[int]) -> list[tuple[int, int]]:
    spans, start = [], None
    for i, bit in enumerate([*mask, 0]):
        if bit and start is None:
            start = i
        elif not bit and start is not None:
            spans.append((start, i))
            start = None
    return spans


def test_mask_covers_exactly_assistant_turns(tokenizer, thought_schemas) -> None:
    for schema in thought_schemas:
        for trace in _traces(schema):
            rendered = render_trace(trace, tokenizer, schema)
            spans = _spans(rendered.assistant_masks)
            assistant = [m for m in trace.messages if m.role == "assistant"]
            assert len(spans) == len(assistant)
            for (start, end), msg in zip(spans, assistant, strict=True):
                text = tokenizer.decode(rendered.input_ids[start:end])
                assert text.endswith("<|im_end|>\n")  # end-of-turn is trained, so the model learns to stop
                assert "<|im_start|>" not in text and "<tool_response>" not in text
                assert msg.content in text
            unmasked = tokenizer.decode(
                [t for t, m in zip(rendered.input_ids, rendered.assistant_masks, strict=True) if not m]
            )
            for msg in trace.messages:
                if msg.role != "assistant":
                    assert msg.content in unmasked


def test_training_render_is_prefix_preserving(tokenizer, thought_schemas) -> None:
    for schema in thought_schemas:
        for trace in _traces(schema):
            full = render_trace(trace, tokenizer, schema).input_ids
            messages = to_chat_messages(trace, schema)
            tools = chat_tools(trace)
            for k, msg in enumerate(messages):
                if msg["role"] != "assistant":
                    continue
                prompt = chat_encoding(tokenizer, messages[:k], tools=tools, add_generation_prompt=True)
                assert full[: len(prompt["input_ids"])] == prompt["input_ids"], (schema.name, k)


@pytest.mark.parametrize("drop_eos", [False, True])
def test_parsing_rendered_assistant_text_gives_back_the_trace(tokenizer, thought_schemas, drop_eos) -> None:
    for schema in thought_schemas:
        for trace in _traces(schema):
            rendered = render_trace(trace, tokenizer, schema)
            assistant = [m for m in trace.messages if m.role == "assistant"]
            for (start, end), msg in zip(_spans(rendered.assistant_masks), assistant, strict=True):
                text = tokenizer.decode(rendered.input_ids[start:end]).strip("\n")
                reply = parse_reply(text.removesuffix("<|im_end|>") if drop_eos else text, schema)
                assert reply.errors == []
                assert reply.thinking == msg.thinking
                assert reply.content == msg.content
                expected = [
                    {
                        "name": c.name,
                        "arguments": {**c.arguments, **({INSTANCE_KEY: c.instance} if c.instance else {})},
                    }
                    for c in msg.tool_calls
                ]
                assert reply.tool_calls == expected


def test_malformed_tool_calls_are_reported_not_raised(thought_schemas) -> None:
    schema = thought_schemas[0]
    reply = parse_reply(
        '<tool_call>\n{"name": "add", "arguments": {"a": 1,}\n</tool_call>'
        '<tool_call>["x"]</tool_call><tool_call>{"name": "f"',
        schema,
    )
    assert reply.tool_calls == []
    assert any("invalid JSON" in e for e in reply.errors)
    assert any("string `name`" in e for e in reply.errors)
    assert "unterminated <tool_call>" in reply.errors


def test_documents_are_all_loss(tokenizer, thought_schemas) -> None:
    doc = Trace(id="d", source="s", kind="code", cluster="code", text="def f():\n    return 1\n")
    rendered = render_trace(doc, tokenizer, thought_schemas[0])
    assert rendered.input_ids[-1] == tokenizer.eos_token_id
    assert rendered.assistant_masks == [1] * len(rendered.input_ids)
