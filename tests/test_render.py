"""Render invariants for every real template × thought schema × trace pattern, with the embedded tokenizer plus
the family's special tokens: the loss mask covers exactly the assistant turns and ends on the end-of-turn
token, rendering is prefix-preserving token for token (training tokens equal a rollout's), and parsing each
rendered turn gives back its thinking, content and calls, with our parser and with TRL's.

`test_every_template_passes_every_check` runs `pipelines.template_check` (the checks `midtrain template check`
and `data build` run); the tests after it assert the same properties directly, without that module, so a bug in
the checker cannot hide a bug in rendering.
"""

from __future__ import annotations

import pytest

from pipelines.chat import (
    INSTANCE_KEY,
    RenderError,
    chat_tools,
    labelled_spans,
    prompt_ids,
    render_conversation,
    render_trace,
    to_chat_messages,
)
from pipelines.codecs import codec_for, hermes
from pipelines.schema import Trace
from pipelines.template_check import CHECK_PATTERNS, check_traces, sample_traces
from pipelines.thought import ThoughtSchema
from tests.helpers import ADD, valid_row

# (family, vendored real template; None: the codec's own template for the family)
TEMPLATES = [
    ("hermes", "qwen2_5.jinja"),
    ("hermes", "qwen3_instruct_2507.jinja"),
    ("qwen3", "qwen3.jinja"),  # replaced by TRL's prefix-preserving variant, as load_tokenizer does
    ("llama3", "llama3_1.jinja"),
    ("llama3", "llama3_2.jinja"),
    ("mistral", None),  # midtrain's variant of mistral_v3_spm.jinja (see the fixture README)
    ("smollm2", None),  # SmolLM2's native tool form on its ChatML
    ("json", "smollm2.jinja"),  # SmolLM2-Instruct's own template, which renders no tools
    ("json", "gemma3.jinja"),
]
END_OF_TURN = {"hermes": "<|im_end|>", "qwen3": "<|im_end|>", "llama3": "<|eot_id|>", "mistral": "</s>"}


def _label(case: tuple[str, str | None]) -> str:
    return f"{case[0]}-{case[1] or 'own'}"


@pytest.mark.integration
@pytest.mark.parametrize("case", TEMPLATES, ids=_label)
def test_every_template_passes_every_check(case, family_tokenizer, thought_schemas) -> None:
    tok = family_tokenizer(*case)
    assert codec_for(tok).name == case[0]
    for schema in thought_schemas:
        report = check_traces(tok, schema, sample_traces())
        assert [r.pattern for r in report.results] == list(CHECK_PATTERNS)
        assert report.ok, (schema.name, report.failures())


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


@pytest.mark.parametrize("case", [c for c in TEMPLATES if c[0] in END_OF_TURN], ids=_label)
def test_mask_covers_exactly_assistant_turns_and_their_end(case, family_tokenizer, thought_schemas) -> None:
    tok = family_tokenizer(*case)
    end = END_OF_TURN[case[0]]
    for schema in thought_schemas:
        for trace in _traces(schema):
            rendered = render_trace(trace, tok, schema)
            spans = labelled_spans(rendered.assistant_masks)
            assistant = [m for m in trace.messages if m.role == "assistant"]
            assert len(spans) == len(assistant)
            for (start, stop), msg in zip(spans, assistant, strict=True):
                text = tok.decode(rendered.input_ids[start:stop])
                assert text.endswith(end)  # end-of-turn is trained, so the model learns to stop
                assert msg.content in text
                for other in (
                    "<|im_start|>",
                    "<tool_response>",
                    "<|start_header_id|>",
                    "[TOOL_RESULTS]",
                    "[INST]",
                ):
                    assert other not in text
            unmasked = tok.decode(
                [t for t, m in zip(rendered.input_ids, rendered.assistant_masks, strict=True) if not m]
            )
            for msg in trace.messages:
                if msg.role != "assistant":
                    assert msg.content in unmasked or msg.content.replace("\n", "\\n") in unmasked


@pytest.mark.parametrize("case", TEMPLATES, ids=_label)
def test_each_turns_prompt_tokens_start_the_training_row(case, family_tokenizer, thought_schemas) -> None:
    """What a rollout sees before each assistant turn (the conversation so far + the generation prompt,
    tokenized on its own) is exactly the start of the training row."""
    tok = family_tokenizer(*case)
    for schema in thought_schemas:
        for trace in _traces(schema):
            full = render_trace(trace, tok, schema).input_ids
            messages = to_chat_messages(trace, schema, "reasoning_content" in tok.chat_template)
            tools = chat_tools(trace)
            for k, msg in enumerate(messages):
                if msg["role"] == "assistant":
                    prompt = prompt_ids(tok, messages[:k], tools)
                    assert full[: len(prompt)] == prompt, (schema.name, k)


@pytest.mark.parametrize("drop_end", [False, True])
@pytest.mark.parametrize("case", TEMPLATES, ids=_label)
def test_parsing_rendered_assistant_text_gives_back_the_trace(
    case, drop_end, family_tokenizer, thought_schemas
):
    tok = family_tokenizer(*case)
    codec = codec_for(tok)
    for schema in thought_schemas:
        for trace in _traces(schema):
            messages = to_chat_messages(trace, schema, "reasoning_content" in tok.chat_template)
            conversation = render_conversation(codec, tok, messages, chat_tools(trace))
            assistant = [m for m in trace.messages if m.role == "assistant"]
            for (start, stop), msg in zip(conversation.spans, assistant, strict=True):
                text = conversation.text[start:stop]
                reply = codec.parse(text.removesuffix(codec.end_of_turn) if drop_end else text, schema)
                assert reply.errors == [] and reply.ended != drop_end
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


def test_a_template_that_rewrites_earlier_turns_is_refused(family_tokenizer, thought_schemas) -> None:
    """Qwen3's own template drops an earlier turn's reasoning once a new user turn follows: a row rendered with it
    would train the first turn without its reasoning, which the model writes when it generates that turn (and
    which a rollout's history then holds). render_trace refuses it (`prefix`); the codec's template keeps it."""
    import copy

    from pipelines.codecs import install
    from tests.conftest import FAMILY_TEMPLATES

    schema = next(s for s in thought_schemas if s.name == "think-plan-reflect")
    plan = {"section": "plan", "text": "Ask which unit."}
    trace = Trace.model_validate(
        {
            "id": "t",
            "source": "unit",
            "kind": "tool",
            "cluster": "plan",
            "tools": [ADD],
            "messages": [
                {"role": "user", "content": "Add 2 and 40."},
                {"role": "assistant", "thinking": [plan], "content": "In which unit?"},
                {"role": "user", "content": "km"},
                {"role": "assistant", "thinking": [plan], "content": "42 km."},
            ],
        }
    )
    ours = family_tokenizer("qwen3", "qwen3.jinja")
    assert render_trace(trace, ours, schema).n_loss_tokens > 0
    real = copy.deepcopy(ours)
    install(real, "qwen3", (FAMILY_TEMPLATES / "qwen3.jinja").read_text(encoding="utf-8"))
    with pytest.raises(RenderError, match="renders this turn differently once later turns follow") as caught:
        render_trace(trace, real, schema)
    assert caught.value.check == "prefix"


def test_malformed_tool_calls_are_reported_not_raised(thought_schemas) -> None:
    schema = thought_schemas[0]
    reply = hermes().parse(
        '<tool_call>\n{"name": "add", "arguments": {"a": 1,}\n</tool_call>'
        '<tool_call>["x"]</tool_call><tool_call>{"name": "f"',
        schema,
    )
    assert reply.tool_calls == []
    assert reply.errors[:2] == [
        "tool_call[0]: invalid JSON",
        "tool_call[1]: expected an object with a string `name`",
    ]
    assert "unterminated <tool_call>" in reply.errors


def test_documents_are_all_loss(tokenizer, thought_schemas) -> None:
    doc = Trace(id="d", source="s", kind="code", cluster="code", text="def f():\n    return 1\n")
    rendered = render_trace(doc, tokenizer, thought_schemas[0])
    assert rendered.input_ids[-1] == tokenizer.eos_token_id
    assert rendered.assistant_masks == [1] * len(rendered.input_ids)
