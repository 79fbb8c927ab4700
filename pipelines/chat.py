"""Trace ⇄ model text: render through the chat template + thought schema, and parse replies back.

Every stage goes through here so SFT data, RL rollouts and eval prompts agree on one format:
- tool calls use the family's own wire format, written and read by the tokenizer's codec (`pipelines.codecs`);
- reasoning is written by the thought schema, prepended to the content (or `reasoning_content` when the
  template renders that field itself);
- instanced traces tag inputs with `[instance=ID]` and put `_instance` into each call's arguments, so the
  model has to say which task each call belongs to.

The loss mask is read off the rendering itself, not off `{% generation %}` markers: an assistant turn's loss
tokens are exactly the text between the prompt for that turn (the conversation before it, rendered with the
generation prompt) and its end-of-turn token, i.e. what the model generates at inference. That works for every
template as shipped (TRL patches markers into only some, and a patched copy drifts from the original), and it
checks on every row what training needs anyway: each turn's prompt is a prefix of the whole rendering, so the
tokens trained on are the tokens a rollout sees.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pipelines.codecs import (
    Codec,
    ParsedReply,
    carried_family,
    choose_template,
    codec_for,
    current_response_template,
    install,
)
from pipelines.errors import BadInput
from pipelines.models import project_chat_template, resolve_model
from pipelines.schema import LOSS_FROM_TURN, Message, Trace, function_spec
from pipelines.thought import ThoughtSchema

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant that can call tools. Think before you act."
INSTANCE_KEY = "_instance"
__all__ = ["DEFAULT_SYSTEM_PROMPT", "INSTANCE_KEY", "Codec", "ParsedReply", "codec_for"]


def load_tokenizer(
    model_ref: str,
    chat_template: str = "auto",
    revision: str | None = None,
    tool_format: str = "auto",
    local_files_only: bool = False,
    tokenizer_class: str | None = None,
) -> Any:
    """Tokenizer with the chat template this project trains with (see ModelSection.chat_template) and the
    response template its codec parses replies with (`tokenizer.response_template`, which TRL reads too).

    `tokenizer_class` ("module:Name", see `tokenizer_class_of`): load with that class, the one AutoTokenizer
    chose when the folder was saved, instead of AutoTokenizer, whose import pulls in transformers' config and
    generation modules and through them torch: +400 MB of RSS in a process that only tokenizes (measured: 120 vs
    520 MB for the embedded model's tokenizer; the data build's workers)."""
    from pathlib import Path

    # Adapter folders carry the tokenizer they were trained with but no model config.
    requested = _requested(chat_template)
    tokenizer_only = (Path(model_ref) / "tokenizer_config.json").is_file()
    source = model_ref if tokenizer_only else resolve_model(model_ref, revision)
    if tokenizer_class is not None:
        tokenizer = _import_class(tokenizer_class).from_pretrained(
            source, revision=revision, local_files_only=local_files_only
        )
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(
            source, revision=revision, local_files_only=local_files_only
        )
    if not (chat_template == "auto" and tool_format == "auto" and carried_family(tokenizer)):
        # (A tokenizer midtrain saved, an adapter's, already carries its template and parser, as trained.)
        install(tokenizer, *choose_template(_own_template(tokenizer), requested, tool_format))
    else:  # as carried, with today's field names: what it trains, rolls out and saves again is served right
        tokenizer.response_template = current_response_template(tokenizer.response_template)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tokenizer_class_of(tokenizer: Any) -> str:
    """ "module:Name" of a loaded tokenizer's class, for `load_tokenizer(..., tokenizer_class=...)`."""
    return f"{type(tokenizer).__module__}:{type(tokenizer).__qualname__}"


def _import_class(reference: str) -> Any:
    import importlib

    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


def _own_template(tokenizer: Any) -> str | None:
    template = tokenizer.chat_template
    return template.get("default") if isinstance(template, dict) else template


def _requested(chat_template: str) -> str | None:
    """The text of the template `model.chat_template` names (None for `auto`)."""
    from pathlib import Path

    if chat_template == "auto":
        return None
    if chat_template == "project":
        return project_chat_template()
    path = Path(chat_template)
    if not path.is_file():
        raise BadInput(f"model.chat_template: {path}: no such file (use auto, project or a .jinja path)")
    return path.read_text(encoding="utf-8")


def training_chat_template(tokenizer: Any) -> str:
    """The template rows are rendered with: the tokenizer's own (as installed by `load_tokenizer`). There is no
    separate training variant: loss masks come from the rendering itself (see the module docstring)."""
    template = tokenizer.chat_template
    return template.get("default", "") if isinstance(template, dict) else (template or "")


def chat_encoding(tokenizer: Any, messages: list[dict[str, Any]], **kwargs: Any) -> dict[str, list[int]]:
    """`apply_chat_template(..., tokenize=True)` as plain lists of ints, keyed like the tokenizer's output.

    The one place that tokenizes a conversation through `apply_chat_template` (`loss_mask` tokenizes a rendered
    text itself, for the character offsets): transformers has returned a list of ids, a dict and, since 5.2x, a
    `BatchEncoding` (a `UserDict`, so `isinstance(out, dict)` is False) for the same call; callers and TRL's
    `parse_response` want lists.
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
        # The template frames the reasoning itself (Qwen3: <think>…</think>): pass the sections alone.
        out["reasoning_content"] = schema.render_sections(msg.thinking)
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


def labelled_spans(mask: Sequence[int]) -> list[tuple[int, int]]:
    """The [start, end) runs of 1s in an assistant mask: one per assistant turn the row trains on."""
    spans, start = [], None
    for i, bit in enumerate([*mask, 0]):
        if bit and start is None:
            start = i
        elif not bit and start is not None:
            spans.append((start, i))
            start = None
    return spans


class RenderError(BadInput):
    """A conversation the template cannot render for training; `check` names the invariant that failed."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(message)
        self.check = check


@dataclass
class Conversation:
    """A rendered conversation: its text, and per assistant turn the prompt text and the span it generates."""

    text: str
    prompts: list[str]
    spans: list[
        tuple[int, int]
    ]  # character offsets [start, end) of each assistant turn, end-of-turn included


def render_conversation(
    codec: Codec, tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> Conversation:
    """Render `messages` and find each assistant turn: from the end of its prompt to its end-of-turn token."""
    try:
        text = codec.render(tokenizer, messages, tools)
    except BadInput:
        raise
    except Exception as exc:
        raise RenderError("render", f"chat template failed: {type(exc).__name__}: {exc}") from None
    prompts: list[str] = []
    spans: list[tuple[int, int]] = []
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = codec.render(tokenizer, messages[:k], tools, add_generation_prompt=True)
        if not text.startswith(prompt):
            raise RenderError(
                "prefix",
                f"message {k} (assistant): the prompt for this turn is not a prefix of the whole conversation "
                f"(the template renders earlier turns differently once later ones follow); it diverges at "
                f"{_divergence(prompt, text)}",
            )
        if spans and len(prompt) < spans[-1][1]:
            raise RenderError("stop", f"message {k - 1} (assistant): its turn runs into the next prompt")
        end = text.find(codec.end_of_turn, len(prompt))
        if end < 0:
            raise RenderError(
                "stop", f"message {k} (assistant): no end-of-turn {codec.end_of_turn!r} after it"
            )
        end += len(codec.end_of_turn)
        # The turn as it is generated (the last message) must be the turn as it is trained (followed by more):
        # Qwen3's own template, say, drops a turn's reasoning once a later user turn follows.
        generated = codec.render(tokenizer, messages[: k + 1], tools)
        if not generated.startswith(text[:end]):
            raise RenderError(
                "prefix",
                f"message {k} (assistant): the template renders this turn differently once later turns follow "
                f"(a rollout generates it one way, the training row holds another); it diverges at "
                f"{_divergence(generated, text[:end])}",
            )
        prompts.append(prompt)
        spans.append((len(prompt), end))
    return Conversation(text, prompts, spans)


def _divergence(prompt: str, text: str) -> str:
    at = next(
        (i for i, (a, b) in enumerate(zip(prompt, text, strict=False)) if a != b), min(len(prompt), len(text))
    )
    return f"character {at}: prompt has {prompt[at : at + 40]!r}, conversation has {text[at : at + 40]!r}"


def loss_mask(tokenizer: Any, conversation: Conversation) -> Rendered:
    """Token ids of the conversation and its mask: 1 on the tokens inside an assistant span. A token that
    straddles a span edge would make the trained tokens differ from a rollout's, so it is an error."""
    if not getattr(tokenizer, "is_fast", False):
        raise BadInput("loss masks need a fast (Rust) tokenizer: it gives each token's character offsets")
    encoding = tokenizer(conversation.text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
    starts = [a for a, _ in offsets]
    mask = [0] * len(ids)
    for start, end in conversation.spans:
        first = bisect.bisect_left(starts, start)
        if (first < len(ids) and starts[first] != start) or (first > 0 and offsets[first - 1][1] > start):
            raise RenderError(
                "boundary", f"a token straddles the start of the assistant turn at character {start}"
            )
        last = first
        while last < len(ids) and offsets[last][1] <= end and starts[last] < end:
            mask[last] = 1
            last += 1
        if last < len(ids) and starts[last] < end:
            raise RenderError(
                "boundary", f"a token straddles the end of the assistant turn at character {end}"
            )
    return Rendered([int(i) for i in ids], mask)


def render_trace(trace: Trace, tokenizer: Any, schema: ThoughtSchema) -> Rendered:
    """Token ids + loss mask: assistant tokens only for tool traces, every token for code/text documents."""
    if trace.kind != "tool":
        return render_documents([trace.text], tokenizer)[0]
    messages, tools = conversation(trace, tokenizer, schema)
    rendered = render_conversation(codec_for(tokenizer), tokenizer, messages, tools)
    context_turns = int(trace.meta.get(LOSS_FROM_TURN, 0) or 0)
    if context_turns:  # a retried trace's failed attempts: in the prompt, out of the loss
        rendered = replace(rendered, spans=rendered.spans[context_turns:])
    return loss_mask(tokenizer, rendered)


def conversation(
    trace: Trace, tokenizer: Any, schema: ThoughtSchema
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """A tool trace as the OpenAI/TRL conversational form (`messages`, `tools`) that `render_trace` renders
    with this tokenizer: reasoning written by the thought schema, in `reasoning_content` when the template
    frames it itself."""
    return to_chat_messages(trace, schema, _reasoning_field(tokenizer)), chat_tools(trace)


def _reasoning_field(tokenizer: Any) -> bool:
    return "reasoning_content" in training_chat_template(tokenizer)


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
    for i, trace in enumerate(traces):
        if trace.kind == "tool":
            out[i] = render_trace(trace, tokenizer, schema)
    return [r for r in out if r is not None]


def prompt_ids(
    tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> list[int]:
    """Token ids of a conversation so far plus the generation prompt, written by the tokenizer's codec."""
    codec = codec_for(tokenizer)
    prepared, tools = codec.prepare(messages, tools)
    encoding = chat_encoding(
        tokenizer, prepared, tools=tools or None, add_generation_prompt=True, **codec.template_kwargs
    )
    return encoding["input_ids"]


def render_prompt(trace: Trace, tokenizer: Any, schema: ThoughtSchema) -> str:
    """Inference prompt text for a trace's messages (ending with a generation prompt)."""
    messages = to_chat_messages(trace, schema, _reasoning_field(tokenizer))
    return codec_for(tokenizer).render(tokenizer, messages, chat_tools(trace), add_generation_prompt=True)


def generate_reply(model_ref: str, prompt: str, max_new_tokens: int = 64) -> str:
    """Greedy reply of a base model to one user message (install smoke test, `midtrain model chat`)."""
    import torch
    from transformers import AutoModelForCausalLM

    from pipelines.inference import Engine

    tokenizer = load_tokenizer(model_ref)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(model_ref), dtype=torch.float32).eval()
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": prompt},
    ]
    ids = prompt_ids(tokenizer, messages, None)
    [reply] = Engine.for_tokenizer(model, tokenizer)([ids], [None], max_new_tokens)
    return tokenizer.decode(reply, skip_special_tokens=True).strip()
