"""Trace ⇄ model text: render through the chat template + thought schema, and parse replies back.

Every stage goes through here so SFT data, RL rollouts and eval prompts agree on one format:
- tool calls use the chat template's own format (Qwen2.5/Hermes `<tool_call>` JSON for the embedded model);
- reasoning is written by the thought schema, prepended to the content (or `reasoning_content` when the
  template renders that field itself);
- instanced traces tag inputs with `[instance=ID]` and put `_instance` into each call's arguments, so the
  model has to say which task each call belongs to.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipelines.models import project_chat_template, resolve_model
from pipelines.schema import Message, ThinkingSection, Trace, function_spec
from pipelines.thought import ThoughtSchema

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant that can call tools. Think before you act."
INSTANCE_KEY = "_instance"
_TOOL_CALL_RE = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


def load_tokenizer(model_ref: str, chat_template: str = "auto", revision: str | None = None) -> Any:
    """Tokenizer with the chat template this project trains with (see ModelSection.chat_template)."""
    from pathlib import Path

    from transformers import AutoTokenizer

    # Adapter folders carry the tokenizer they were trained with but no model config.
    tokenizer_only = (Path(model_ref) / "tokenizer_config.json").is_file()
    source = model_ref if tokenizer_only else resolve_model(model_ref, revision)
    tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
    if chat_template == "auto":
        current = tokenizer.chat_template or ""
        if "tools" not in current:
            tokenizer.chat_template = project_chat_template()
    elif chat_template == "project":
        tokenizer.chat_template = project_chat_template()
    else:
        tokenizer.chat_template = Path(chat_template).read_text(encoding="utf-8")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def training_chat_template(tokenizer: Any) -> str:
    """The template with `{% generation %}` markers that TRL uses for assistant-only loss."""
    from trl.chat_template_utils import get_training_chat_template

    patched = get_training_chat_template(tokenizer)
    return patched if patched is not None else tokenizer.chat_template


def chat_encoding(tokenizer: Any, messages: list[dict[str, Any]], **kwargs: Any) -> dict[str, list[int]]:
    """`apply_chat_template(..., tokenize=True)` as plain lists of ints, keyed like the tokenizer's output.

    The only place that tokenizes a conversation: transformers has returned a list of ids, a dict and, since
    5.2x, a `BatchEncoding` (a `UserDict`, so `isinstance(out, dict)` is False) for the same call; callers
    and TRL's `parse_response` want lists.
    """
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)
    if not isinstance(out, Mapping):  # a tokenizer that ignores return_dict gives the ids themselves
        return {"input_ids": [int(i) for i in out]}
    return {key: [int(i) for i in value] for key, value in out.items() if key in _ENCODING_KEYS}


_ENCODING_KEYS = ("input_ids", "assistant_masks", "attention_mask")


def _tag(content: str, instance: str | None) -> str:
    return f"[instance={instance}] {content}" if instance else content


def _assistant_message(msg: Message, schema: ThoughtSchema, reasoning_field: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"role": "assistant"}
    if reasoning_field and schema.placement == "reasoning_field":
        out["reasoning_content"] = schema.render_reasoning(msg.thinking)
        out["content"] = msg.content
    else:
        out["content"] = schema.render(msg.thinking, msg.content)
    if msg.tool_calls:
        out["tool_calls"] = [
            {"type": "function", "id": c.id, "function": {"name": c.name, "arguments": _call_arguments(c)}}
            for c in msg.tool_calls
        ]
    return out


def _call_arguments(call: Any) -> dict[str, Any]:
    return {**call.arguments, INSTANCE_KEY: call.instance} if call.instance else dict(call.arguments)


def to_chat_messages(
    trace: Trace, schema: ThoughtSchema, reasoning_field: bool = False
) -> list[dict[str, Any]]:
    """Trace messages → the dicts `apply_chat_template` takes (a system turn is always present)."""
    messages: list[dict[str, Any]] = []
    if not trace.messages or trace.messages[0].role != "system":
        messages.append({"role": "system", "content": DEFAULT_SYSTEM_PROMPT})
    for msg in trace.messages:
        if msg.role == "assistant":
            messages.append(_assistant_message(msg, schema, reasoning_field))
        elif msg.role == "tool":
            messages.append(
                {"role": "tool", "content": _tag(msg.content, msg.instance), "tool_call_id": msg.tool_call_id}
            )
        else:
            messages.append({"role": msg.role, "content": _tag(msg.content, msg.instance)})
    return messages


def chat_tools(trace: Trace) -> list[dict[str, Any]] | None:
    """OpenAI-style tool list; instanced traces get a required `_instance` argument on every tool."""
    if not trace.tools:
        return None
    instances = sorted({m.instance for m in trace.messages if m.instance and m.role != "tool"})
    tools = []
    for tool in trace.tools:
        spec = json.loads(json.dumps(function_spec(tool)))
        if instances:
            params = spec.setdefault("parameters", {"type": "object", "properties": {}})
            params.setdefault("properties", {})[INSTANCE_KEY] = {
                "type": "string",
                "enum": instances,
                "description": "Which task instance this call acts on.",
            }
            params["required"] = [*params.get("required", []), INSTANCE_KEY]
        tools.append({"type": "function", "function": spec})
    return tools


@dataclass
class Rendered:
    input_ids: list[int]
    assistant_masks: list[int]

    @property
    def n_loss_tokens(self) -> int:
        return sum(self.assistant_masks)


def render_trace(
    trace: Trace, tokenizer: Any, schema: ThoughtSchema, template: str | None = None
) -> Rendered:
    """Token ids + loss mask: assistant tokens only for tool traces, every token for code/text documents."""
    if trace.kind != "tool":
        return render_documents([trace.text], tokenizer)[0]
    reasoning_field = "reasoning_content" in (tokenizer.chat_template or "")
    out = chat_encoding(
        tokenizer,
        to_chat_messages(trace, schema, reasoning_field),
        tools=chat_tools(trace),
        chat_template=template or training_chat_template(tokenizer),
        return_assistant_tokens_mask=True,
    )
    return Rendered(out["input_ids"], out["assistant_masks"])


def render_documents(texts: list[str], tokenizer: Any) -> list[Rendered]:
    """Code/text documents as plain LM rows (text + EOS, every token in the loss), tokenized as one batch.

    The data stage renders millions of documents, and tokenization is its bottleneck: a batch goes to the
    Rust tokenizer in one call (parallel across cores) instead of one Python call per document.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        batches = [enc.ids for enc in backend.encode_batch(texts, add_special_tokens=False)]
    else:
        batches = tokenizer(texts, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return [Rendered([*ids, eos], [1] * (len(ids) + 1)) for ids in batches]


def render_batch(traces: list[Trace], tokenizer: Any, schema: ThoughtSchema) -> list[Rendered]:
    """`render_trace` over many traces, with documents batched; same tokens as rendering one by one."""
    out: list[Rendered | None] = [None] * len(traces)
    docs = [i for i, t in enumerate(traces) if t.kind != "tool"]
    for i, rendered in zip(docs, render_documents([traces[i].text for i in docs], tokenizer), strict=True):
        out[i] = rendered
    template = training_chat_template(tokenizer) if len(docs) < len(traces) else None
    for i, trace in enumerate(traces):
        if trace.kind == "tool":
            out[i] = render_trace(trace, tokenizer, schema, template)
    return [r for r in out if r is not None]


def render_prompt(trace: Trace, tokenizer: Any, schema: ThoughtSchema) -> str:
    """Inference prompt text for a trace's messages (ending with a generation prompt)."""
    reasoning_field = "reasoning_content" in (tokenizer.chat_template or "")
    return tokenizer.apply_chat_template(
        to_chat_messages(trace, schema, reasoning_field),
        tools=chat_tools(trace),
        tokenize=False,
        add_generation_prompt=True,
    )


@dataclass
class ParsedReply:
    thinking: list[ThinkingSection] = field(default_factory=list)
    content: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def parse_reply(
    text: str, schema: ThoughtSchema, eos_tokens: tuple[str, ...] = ("<|im_end|>",)
) -> ParsedReply:
    """Model reply text → thinking, visible content and tool calls; malformed calls land in `errors`."""
    for eos in eos_tokens:
        text = text.split(eos, 1)[0]
    reply = ParsedReply()
    for i, raw in enumerate(_TOOL_CALL_RE.findall(text)):
        try:
            payload = json.loads(raw)
        except json.JSONDecodeError as exc:
            reply.errors.append(f"tool_call[{i}]: invalid JSON ({exc.msg})")
            continue
        if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
            reply.errors.append(f"tool_call[{i}]: expected an object with a string `name`")
            continue
        args = payload.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                reply.errors.append(f"tool_call[{i}]: `arguments` is neither an object nor JSON text")
                continue
        if not isinstance(args, dict):
            reply.errors.append(f"tool_call[{i}]: `arguments` must be an object")
            continue
        reply.tool_calls.append({"name": payload["name"], "arguments": args})
    if "<tool_call>" in text and text.count("<tool_call>") != text.count("</tool_call>"):
        reply.errors.append("unterminated <tool_call>")
    visible = _TOOL_CALL_RE.sub("", text).split("<tool_call>", 1)[0].strip()
    reply.thinking, reply.content = schema.parse(visible)
    return reply


def generate_reply(model_ref: str, prompt: str, max_new_tokens: int = 64) -> str:
    """Greedy reply of a base model to one user message (install smoke test, `midtrain model chat`)."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(model_ref)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(model_ref), dtype=torch.float32)
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": prompt},
    ]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
