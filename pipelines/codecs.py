"""Tool-call codecs: how one model family offers tools, writes calls and results, and reads a reply back.

A codec is the single place that knows a family's wire format. SFT rendering, the RL rewards (through TRL's own
`parse_response`, which reads `tokenizer.response_template`), the RL held-out loop, eval, serve and chat all use
the codec of the tokenizer in hand (`codec_for`), so training data and every parsed reply agree.

The one parser is transformers' declarative response parser (`transformers.utils.chat_parsing`) driven by the
codec's `response_template`: the same spec TRL parses GRPO rollouts with, set on the tokenizer by
`pipelines.chat.load_tokenizer` (and saved with every adapter's tokenizer). Where TRL ships a template for a
family (Qwen's, Llama 3.x's) ours is that template with one change: a call whose JSON does not parse comes back
as text (`allow_non_json`) instead of failing the whole reply, so `Codec.parse` can name the bad call while TRL,
which refuses such a message as a whole, still falls back to plain content as it always does.

Families (`model.tool_format`):
- `hermes`: Qwen2.5 / Hermes, `<tool_call>{json}</tool_call>` blocks, results in `<tool_response>`.
- `qwen3`: Hermes calls plus `<think>` reasoning. Qwen3's own template drops the reasoning of earlier turns,
  so a rollout's history differs from the conversation trained on; the codec installs TRL's prefix-preserving
  variant (`trl/chat_templates/qwen3_training.jinja`) for training, rollouts and serving alike.
- `llama3`: Llama 3.1/3.2 JSON calls `{"name": …, "parameters": {…}}`, results in the `ipython` role. The
  template renders one call and drops the content of a turn that calls, so the codec writes the calls into the
  content itself, byte for byte as the template would (parallel calls joined by `; `, as vLLM's
  `llama3_json` parser reads them).
- `mistral`: `[TOOL_CALLS] [{…}, …]` after `[/INST]`; midtrain's variant of Mistral's v3 template
  (`pipelines/templates/mistral_v3_midtrain.jinja` says what changed and why).
- `smollm2`: SmolLM2-Instruct's native form, tools as `<tools>[…]</tools>` in the system prompt and calls as
  one JSON list `<tool_call>[{"name": …, "arguments": …}]</tool_call>` (`pipelines/templates/smollm2_native.jinja`).
- `json`: any other template: tools described in the system message, calls as Hermes JSON blocks in the
  content, results as user turns. TRL's GRPO tool loop renders tool turns with the template itself, so RL
  needs one of the families above.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from pipelines.errors import BadInput
from pipelines.schema import ThinkingSection

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
FAMILIES = ("hermes", "qwen3", "llama3", "mistral", "smollm2", "json")
TOOL_FORMATS = ("auto", *FAMILIES)
# The Llama 3.2 template stamps today's date into every prompt unless told one; a fixed date keeps data builds
# byte-reproducible and the RL prompts equal to the SFT ones (rl.train passes it to TRL as well).
LLAMA_DATE = "26 Jul 2024"
_JSON_TOOLS_PROMPT = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{{"name": <function-name>, "arguments": '
    "<args-json-object>}}\n</tool_call>"
)


# -- what a reply says -------------------------------------------------------------------------------------------
@dataclass
class ParsedReply:
    thinking: list[ThinkingSection] = field(default_factory=list)
    content: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # {"name": str, "arguments": dict}
    errors: list[str] = field(default_factory=list)
    ended: bool = True  # the reply carried the end-of-turn token (False: cut off by the token budget)


@dataclass(frozen=True)
class FamilyTokens:
    """A family's special tokens and pre-tokenizer split: what a tokenizer of that family has, given to a
    stand-in tokenizer (tests, `template check` offline) so whitespace splits like the family's own."""

    bos: str | None
    eos: str
    added: tuple[str, ...]
    split_regex: str | None = None  # a byte-level BPE family's pre-tokenizer pattern (tokenizer.json)


# tokenizer.json pre-tokenizer patterns of Llama 3 and Qwen2/2.5/3 (they differ only in how digits group).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")


# -- response templates (transformers' declarative parser) -------------------------------------------------------
def _json_calls(open_literal: str, close_pattern: str) -> dict[str, Any]:
    """Each call in its own block: `OPEN {"name": …, "arguments": …} CLOSE`."""
    return {
        "open": open_literal,
        "close_pattern": close_pattern,
        "repeats": True,
        "content": "json",
        "content_args": {"allow_non_json": True},
        "transform": {"type": "function", "function": "{content}"},
    }


def _json_call_list(open_literal: str, close_pattern: str) -> dict[str, Any]:
    """All calls of a turn in one JSON list: `OPEN [{"name": …, "arguments": …}, …] CLOSE`."""
    return {
        "open": open_literal,
        "close_pattern": close_pattern,
        "content": "json",
        "transform": {"type": "function", "function": {"name": "{name}", "arguments": "{arguments}"}},
        "transform_each": True,
    }


def _reasoning() -> dict[str, Any]:
    return {"open": "<think>", "close_pattern": r"</think>\s*", "content": "text"}


def _text_until(end: str) -> dict[str, Any]:
    return {"close_pattern": re.escape(end) + r"\s*", "content": "text"}


# The reasoning field's name in a response template. TRL's templates call it `reasoning_content`; `transformers
# serve` (5.x) returns `parsed["thinking"]` as the reply's `reasoning_content` and drops any other field, so a model
# folder carrying TRL's name served there lost its whole `<think>` block: the teacher loop rejected every turn of a
# trained adapter as "no reasoning". TRL reads the key only in its completions sample log, either name.
REASONING_FIELD = "thinking"
LEGACY_REASONING_FIELD = "reasoning_content"  # what adapters saved before carry; still recognised


def hermes_response_template(start: str = "<|im_start|>assistant\n", end: str = "<|im_end|>") -> dict:
    """TRL's `qwen3_template` (which TRL uses for Qwen2.5 as well), bad call JSON kept as text and the reasoning
    field named as `transformers serve` reads it (`REASONING_FIELD`)."""
    return {
        "defaults": {"role": "assistant"},
        "start_anchor": start,
        "fields": {
            REASONING_FIELD: _reasoning(),
            "tool_calls": _json_calls("<tool_call>", r"</tool_call>\s*"),
            "content": _text_until(end),
        },
    }


def llama3_response_template() -> dict:
    """TRL's `llama3_template` extended to several calls per turn (`; `-separated) and to `"arguments"`."""
    end = r"<\|eot_id\|>\s*|<\|eom_id\|>\s*"
    return {
        "defaults": {"role": "assistant"},
        "start_anchor": "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "fields": {
            "tool_calls": {
                "open_pattern": r'(?:<\|python_tag\|>)?\{"name":\s*"(?P<name>[^"]+)",\s*"(?:parameters|arguments)":\s*',
                # A call ends at `}` before `; {"name"` (the next call) or before the end of the turn.
                "close_pattern": r'\}\s*;\s*(?=\{"name")|\}\s*(?:' + end + r"|$)",
                "repeats": True,
                "content": "json",
                "content_args": {"allow_non_json": True},
                "transform": {"type": "function", "function": {"name": "{name}", "arguments": "{content}"}},
            },
            "content": {"close_pattern": end, "content": "text"},
        },
    }


def mistral_response_template(eos: str = "</s>") -> dict:
    return {
        "defaults": {"role": "assistant"},
        # A reply starts after the user's [/INST] or after tool results.
        "start_anchor_pattern": r"\[/INST\]|\[/TOOL_RESULTS\]",
        "fields": {
            "tool_calls": _json_call_list("[TOOL_CALLS]", re.escape(eos) + r"\s*"),
            "content": _text_until(eos),
        },
    }


def smollm2_response_template() -> dict:
    return {
        "defaults": {"role": "assistant"},
        "start_anchor": "<|im_start|>assistant\n",
        "fields": {
            "tool_calls": _json_call_list("<tool_call>", r"</tool_call>\s*"),
            "content": _text_until("<|im_end|>"),
        },
    }


def json_response_template(start: str, end: str) -> dict:
    return {
        "defaults": {"role": "assistant"},
        "start_anchor": start,
        "fields": {
            "tool_calls": _json_calls("<tool_call>", r"</tool_call>\s*"),
            "content": _text_until(end),
        },
    }


# -- the codec -----------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class Codec:
    name: str
    description: str
    end_of_turn: str
    response_template: dict[str, Any]
    call_open: str  # text that opens a call block (counts blocks a parser left as raw text)
    call_close: str  # "" when a block ends with the turn
    vllm_tool_parser: str | None  # vLLM's `--tool-call-parser` for this format (None: vLLM has none)
    tokens: FamilyTokens
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    # vLLM's `--reasoning-parser` when the template frames the reasoning itself (Qwen3's <think>).
    vllm_reasoning_parser: str | None = None
    keep_call_ids: bool = True
    trl_tool_loop: bool = True  # TRL's GRPO tool loop can render this family's tool turns
    write_calls: Callable[[list[dict[str, Any]]], str] | None = None  # calls written into the content
    tools_in_system: bool = False  # tools described in the system message by the codec (json)
    results_as_user: bool = False  # tool results sent as a user turn (json)
    canonical_template: Callable[[], str | None] = lambda: None  # the template this format installs
    # A call left as raw text by TRL, whose fallback decodes without special tokens: the opener may be gone.
    bare_call_regex: str | None = None

    # -- rendering ----------------------------------------------------------------------------------------------
    def prepare(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
        """OpenAI-shaped messages (content, `tool_calls`, `tool` turns) → what this family's template renders."""
        out: list[dict[str, Any]] = []
        for message in messages:
            message = dict(message)
            calls = [_normalised_call(c, self.keep_call_ids) for c in message.get("tool_calls") or []]
            if message.get("role") == "assistant" and calls and self.write_calls is not None:
                content = message.get("content") or ""
                message["content"] = (content + "\n" if content else "") + self.write_calls(calls)
                message.pop("tool_calls", None)
            elif calls:
                message["tool_calls"] = calls
            else:
                message.pop("tool_calls", None)
            if message.get("role") == "tool" and not self.keep_call_ids:
                message.pop("tool_call_id", None)
            if message.get("role") == "tool" and self.results_as_user:
                message = {
                    "role": "user",
                    "content": f"<tool_response>\n{message.get('content', '')}\n</tool_response>",
                }
            if self.results_as_user and message["role"] == "user" and out and out[-1]["role"] == "user":
                # Templates without tool support often demand strictly alternating turns: one user turn.
                out[-1] = {"role": "user", "content": out[-1]["content"] + "\n\n" + message["content"]}
                continue
            out.append(message)
        if tools and self.tools_in_system:
            prompt = _JSON_TOOLS_PROMPT.format(tools="".join("\n" + json.dumps(t) for t in tools))
            if out and out[0]["role"] == "system":
                out[0] = {**out[0], "content": out[0]["content"] + "\n\n" + prompt}
            else:
                out.insert(0, {"role": "system", "content": prompt})
            tools = None
        return out, tools

    def render(
        self,
        tokenizer: Any,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = False,
    ) -> str:
        prepared, tools = self.prepare(messages, tools)
        return tokenizer.apply_chat_template(
            prepared,
            tools=tools or None,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **self.template_kwargs,
        )

    def tool_suffix(self, tokenizer: Any, tool_messages: list[dict[str, Any]]) -> str:
        """The text between a reply's end-of-turn token and the next reply: the results and the generation
        prompt. Derived as TRL's tool loop derives it (`GRPOTrainer._get_tool_suffix_ids`): render a dummy call
        turn with and without the results appended and keep what the results added."""
        dummy_call = {
            "type": "function",
            "function": {"name": tool_messages[0].get("name") or "f", "arguments": {}},
        }
        dummy: list[dict[str, Any]] = [
            {"role": "user", "content": "dummy"},
            {"role": "assistant", "content": "", "tool_calls": [dummy_call]},
        ]
        return self._appended(tokenizer, dummy, tool_messages, "a call turn when results follow it")

    def user_suffix(self, tokenizer: Any, text: str) -> str:
        """The text between a reply's end-of-turn token and the next reply when a user turn (`text`) follows
        (a reflexion retry's feedback): derived as `tool_suffix` is."""
        dummy = [{"role": "user", "content": "dummy"}, {"role": "assistant", "content": "dummy"}]
        return self._appended(
            tokenizer, dummy, [{"role": "user", "content": text}], "a reply when a user turn follows"
        )

    def _appended(
        self, tokenizer: Any, dummy: list[dict[str, Any]], added: list[dict[str, Any]], rewrite: str
    ) -> str:
        """What rendering `added` after `dummy` (plus the generation prompt) adds after the last end of turn."""
        before = self.render(tokenizer, dummy)
        after = self.render(tokenizer, dummy + added, add_generation_prompt=True)
        cut = before.rfind(self.end_of_turn)
        before = before[: cut + len(self.end_of_turn)] if cut >= 0 else before
        if not after.startswith(before):
            raise BadInput(f"tool format {self.name}: the chat template rewrites {rewrite}")
        return after[len(before) :]

    # -- parsing ----------------------------------------------------------------------------------------------
    def parse(
        self,
        text: str,
        schema: Any = None,
        tools: list[dict[str, Any]] | None = None,
        prefix: str = "",
    ) -> ParsedReply:
        """A reply (decoded with its special tokens) → thinking, visible content, valid calls, and one error per
        call that does not parse. `prefix` is the prompt when the template pre-writes part of the reply."""
        ended = self.end_of_turn in text
        body = text.split(self.end_of_turn, 1)[0]
        try:
            message = _parse_response(body, self.response_template, prefix, tools)
        except (ValueError, KeyError, TypeError) as exc:
            return self._unparsed(body, schema, ended, f"tool calls: {_first_line(exc)}")
        reply = ParsedReply(ended=ended)
        for i, item in enumerate(message.get("tool_calls") or []):
            call, problem = _checked_call(item)
            if call is None:
                reply.errors.append(f"tool_call[{i}]: {problem}")
            else:
                reply.tool_calls.append(call)
        if self.call_close and body.count(self.call_open) > body.count(self.call_close):
            reply.errors.append(f"unterminated {self.call_open}")
        content = message.get("content") or ""
        if self.call_open and self.call_open in content:
            # Call text the parser did not take as a call (Llama's is bare JSON: cut short, it stays content).
            stray = content[content.index(self.call_open) :]
            reply.errors.append(f"tool_call[{len(reply.tool_calls)}]: does not parse: {stray[:60]!r}")
            content = content.split(self.call_open, 1)[0]
        reasoning = message.get(REASONING_FIELD) or message.get(LEGACY_REASONING_FIELD) or ""
        reply.thinking, reply.content = _split_thinking(reasoning, content, schema)
        return reply

    def text_before_calls(self, text: str) -> str:
        """The reply's text ahead of its first call (its reasoning and answer), end-of-turn cut off."""
        return text.split(self.end_of_turn, 1)[0].split(self.call_open, 1)[0].strip()

    def _unparsed(self, body: str, schema: Any, ended: bool, error: str) -> ParsedReply:
        thinking, content = _split_thinking("", self.text_before_calls(body), schema)
        return ParsedReply(thinking=thinking, content=content, errors=[error], ended=ended)

    def count_call_blocks(self, text: str) -> int:
        """Call blocks in raw text: what TRL left as content when it could not parse a reply (none ran)."""
        n = text.count(self.call_open) if self.call_open else 0
        if n == 0 and self.bare_call_regex:
            n = len(re.findall(self.bare_call_regex, text))
        return n

    def stream(
        self, schema: Any = None, prefix: str = "", tools: list[dict[str, Any]] | None = None
    ) -> ReplyStream:
        return ReplyStream(self, schema, prefix, tools)

    def end_of_turn_ids(self, tokenizer: Any) -> list[int]:
        ids = {tokenizer.convert_tokens_to_ids(self.end_of_turn), tokenizer.eos_token_id}
        unk = getattr(tokenizer, "unk_token_id", None)
        return sorted(i for i in ids if isinstance(i, int) and i != unk)


class ReplyStream:
    """Streaming-safe reading of a reply: `feed` returns only text that is certainly visible content (a call or
    reasoning block being written, or a marker still arriving, is held back); `close` gives the same
    `ParsedReply` as `Codec.parse` on the whole text."""

    def __init__(self, codec: Codec, schema: Any, prefix: str, tools: list[dict[str, Any]] | None) -> None:
        from transformers.utils.chat_parsing import ResponseParser

        self.codec, self.schema, self.prefix, self.tools = codec, schema, prefix, tools
        self.text = ""
        # transformers types `tools` as an invariant list[dict | Callable]; a list of dicts is what it reads.
        self._parser = ResponseParser(codec.response_template, prefix=prefix, tools=tools)  # type: ignore[arg-type]

    def feed(self, chunk: str) -> str:
        if self.codec.end_of_turn in self.text:
            return ""  # the turn is over; what follows is not part of it
        self.text += chunk
        try:
            events = self._parser.feed(chunk)
        except (ValueError, KeyError, TypeError):
            return ""
        return "".join(e["text"] for e in events if e["type"] == "region_chunk" and e["field"] == "content")

    def close(self) -> ParsedReply:
        return self.codec.parse(self.text, self.schema, self.tools, self.prefix)


def _parse_response(
    text: str, template: dict, prefix: str, tools: list[dict[str, Any]] | None
) -> dict[str, Any]:
    from transformers.utils.chat_parsing import parse_response

    return parse_response(text, template, prefix=prefix, tools=tools)  # type: ignore[arg-type]  # as ResponseParser


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _checked_call(item: Any) -> tuple[dict[str, Any] | None, str]:
    function = item.get("function") if isinstance(item, dict) else None
    if isinstance(function, str):
        return None, "invalid JSON"
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        return None, "expected an object with a string `name`"
    arguments = function.get("arguments", {})
    if arguments is None:
        arguments = {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            return None, "`arguments` is neither an object nor JSON text"
    if not isinstance(arguments, dict):
        return None, "`arguments` must be an object"
    return {"name": function["name"], "arguments": arguments}, ""


def _split_thinking(reasoning: str, content: str, schema: Any) -> tuple[list[ThinkingSection], str]:
    """Thinking from the reasoning block the template framed (`<think>`), else from the schema's own tags."""
    if schema is None:
        return [], content.strip()
    thinking, visible = schema.parse(content.strip())
    if reasoning.strip():
        thinking = schema.parse_sections(reasoning.strip()) + thinking
    return thinking, visible


def _normalised_call(call: Any, keep_id: bool) -> dict[str, Any]:
    function = call.get("function", call) if isinstance(call, dict) else {}
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        with contextlib.suppress(json.JSONDecodeError):
            arguments = json.loads(arguments) if arguments.strip() else {}
    out: dict[str, Any] = {
        "type": "function",
        "function": {"name": function.get("name", ""), "arguments": arguments},
    }
    if keep_id and isinstance(call, dict) and call.get("id"):
        out["id"] = call["id"]
    return out


def _jinja_tojson(value: Any) -> str:
    """What transformers' `tojson` filter writes (no key sorting, no ASCII escaping)."""
    return json.dumps(value, ensure_ascii=False)


def write_llama3_calls(calls: list[dict[str, Any]]) -> str:
    """`{"name": "f", "parameters": {…}}` per call, byte for byte as Llama 3.1's template renders one call."""
    return "; ".join(
        '{"name": "'
        + c["function"]["name"]
        + '", "parameters": '
        + _jinja_tojson(c["function"]["arguments"])
        + "}"
        for c in calls
    )


def write_hermes_calls(calls: list[dict[str, Any]]) -> str:
    return "\n".join(
        '<tool_call>\n{"name": "'
        + c["function"]["name"]
        + '", "arguments": '
        + _jinja_tojson(c["function"]["arguments"])
        + "}\n</tool_call>"
        for c in calls
    )


# -- the families --------------------------------------------------------------------------------------------------
def _trl_template(name: str) -> str:
    # The package's folder without importing it: `import trl` costs seconds (it scans every installed
    # distribution), paid again by every data-build worker that loads a tokenizer.
    spec = importlib.util.find_spec("trl")
    assert spec is not None and spec.origin is not None, "trl is a dependency"
    return (Path(spec.origin).parent / "chat_templates" / f"{name}.jinja").read_text(encoding="utf-8")


def _own_template(name: str) -> str:
    return (TEMPLATE_DIR / name).read_text(encoding="utf-8")


_QWEN_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<tool_call>", "</tool_call>")


def hermes() -> Codec:
    return Codec(
        name="hermes",
        description="Qwen2.5 / Hermes: <tool_call>{json}</tool_call>, results in <tool_response>",
        end_of_turn="<|im_end|>",
        response_template=hermes_response_template(),
        call_open="<tool_call>",
        call_close="</tool_call>",
        vllm_tool_parser="hermes",
        tokens=FamilyTokens(None, "<|im_end|>", _QWEN_TOKENS, _QWEN_SPLIT),
        canonical_template=lambda: _trl_template("qwen2_5"),
    )


def qwen3() -> Codec:
    return Codec(
        name="qwen3",
        description="Qwen3: <think> reasoning + Hermes calls (TRL's prefix-preserving template)",
        end_of_turn="<|im_end|>",
        response_template=hermes_response_template(),
        call_open="<tool_call>",
        call_close="</tool_call>",
        vllm_tool_parser="hermes",
        vllm_reasoning_parser="qwen3",
        tokens=FamilyTokens(
            None,
            "<|im_end|>",
            (*_QWEN_TOKENS, "<think>", "</think>", "<tool_response>", "</tool_response>"),
            _QWEN_SPLIT,
        ),
        canonical_template=lambda: _trl_template("qwen3_training"),
    )


def llama3() -> Codec:
    return Codec(
        name="llama3",
        description='Llama 3.1/3.2: {"name": …, "parameters": …} calls, results in the ipython role',
        end_of_turn="<|eot_id|>",
        response_template=llama3_response_template(),
        call_open='{"name":',
        call_close="",
        vllm_tool_parser="llama3_json",
        tokens=FamilyTokens(
            "<|begin_of_text|>",
            "<|eot_id|>",
            (
                "<|begin_of_text|>",
                "<|end_of_text|>",
                "<|start_header_id|>",
                "<|end_header_id|>",
                "<|eot_id|>",
                "<|eom_id|>",
                "<|python_tag|>",
            ),
            _LLAMA3_SPLIT,
        ),
        template_kwargs={"date_string": LLAMA_DATE},
        write_calls=write_llama3_calls,
        canonical_template=lambda: _trl_template("llama3_1"),
    )


def mistral(tokenizer: Any = None) -> Codec:
    # The template ends a turn with the tokenizer's eos_token (`</s>` in Mistral's own tokenizers).
    eos = getattr(tokenizer, "eos_token", None) or "</s>"
    return Codec(
        name="mistral",
        description="Mistral v3: [TOOL_CALLS] [{…}] after [/INST], results in [TOOL_RESULTS]",
        end_of_turn=eos,
        response_template=mistral_response_template(eos),
        call_open="[TOOL_CALLS]",
        call_close="",
        vllm_tool_parser="mistral",
        tokens=FamilyTokens(
            "<s>",
            "</s>",
            (
                "<s>",
                "</s>",
                "[INST]",
                "[/INST]",
                "[TOOL_CALLS]",
                "[AVAILABLE_TOOLS]",
                "[/AVAILABLE_TOOLS]",
                "[TOOL_RESULTS]",
                "[/TOOL_RESULTS]",
            ),
        ),
        keep_call_ids=False,
        canonical_template=lambda: _own_template("mistral_v3_midtrain.jinja"),
        bare_call_regex=r'\[\s*\{\s*"name"\s*:',
    )


def smollm2() -> Codec:
    return Codec(
        name="smollm2",
        description="SmolLM2 native: <tools>[…]</tools> in the system prompt, <tool_call>[{…}, …]</tool_call>",
        end_of_turn="<|im_end|>",
        response_template=smollm2_response_template(),
        call_open="<tool_call>",
        call_close="</tool_call>",
        # vLLM's hermes parser reads one object per <tool_call> block, not a list; its xLAM parser reads a JSON list
        # of {"name", "arguments"} inside <tool_call>…</tool_call>, after a <think> block too (tests/test_vllm.py).
        vllm_tool_parser="xlam",
        tokens=FamilyTokens(None, "<|im_end|>", ("<|im_start|>", "<|im_end|>", "<|endoftext|>")),
        canonical_template=lambda: _own_template("smollm2_native.jinja"),
    )


def generic_json(tokenizer: Any) -> Codec:
    """Any template that renders system/user/assistant turns: the codec does the tool part in plain text."""
    start, end = _turn_markers(tokenizer)
    return Codec(
        name="json",
        description="generic: tools in the system message, <tool_call>{json}</tool_call> in the reply",
        end_of_turn=end,
        response_template=json_response_template(start, end),
        call_open="<tool_call>",
        call_close="</tool_call>",
        vllm_tool_parser=None,
        tokens=FamilyTokens(None, end, ()),
        trl_tool_loop=False,
        write_calls=write_hermes_calls,
        tools_in_system=True,
        results_as_user=True,
    )


_FAMILY_CODECS: dict[str, Callable[[], Codec]] = {
    "hermes": hermes,
    "qwen3": qwen3,
    "llama3": llama3,
    "mistral": mistral,
    "smollm2": smollm2,
}


def _turn_markers(tokenizer: Any) -> tuple[str, str]:
    """(text right before a reply, the token that ends it), read off the template itself."""
    user, answer = "midtrain-user-6f1c", "midtrain-answer-9b2e"
    try:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
        full = tokenizer.apply_chat_template(
            [{"role": "user", "content": user}, {"role": "assistant", "content": answer}], tokenize=False
        )
    except Exception as exc:
        raise BadInput(f"chat template cannot render a user and an assistant turn: {exc}") from None
    start = prompt.split(user, 1)[1]
    after = full.split(answer, 1)[1] if answer in full else ""
    specials = sorted(
        (s for s in (*tokenizer.all_special_tokens, *tokenizer.get_added_vocab()) if s and s in after),
        key=lambda s: (after.index(s), -len(s)),
    )
    # No special token: the marker the template writes right after a reply (`<end_of_turn>` as plain text).
    written = after.strip().split(None, 1)[0] if after.strip() else ""
    end = specials[0] if specials else written or (tokenizer.eos_token or "")
    if not start.strip() or not end:
        raise BadInput(
            "chat template: cannot tell where a reply starts and ends (no generation prompt or end token)"
        )
    return start, end


# -- choosing the codec ----------------------------------------------------------------------------------------------
def detect_family(template: str | None) -> str:
    """The family a chat template writes tool calls in, from its text ("json" when it knows no tool format)."""
    if not template:
        return "json"
    known = _known_templates()
    if template in known:
        return known[template]
    if "[TOOL_CALLS]" in template:
        return "mistral"
    if "<|start_header_id|>" in template and "ipython" in template:
        return "llama3"
    if "<tool_call>[" in template:
        return "smollm2"
    if "<tool_call>" in template and "<function=" not in template:
        return "qwen3" if "reasoning_content" in template else "hermes"
    return "json"


@lru_cache(maxsize=1)
def _known_templates() -> dict[str, str]:
    out = {
        _trl_template("qwen2_5"): "hermes",
        _trl_template("qwen3"): "qwen3",
        _trl_template("qwen3_training"): "qwen3",
        _trl_template("llama3_1"): "llama3",
        _trl_template("llama3_2"): "llama3",
        _own_template("mistral_v3_midtrain.jinja"): "mistral",
        _own_template("smollm2_native.jinja"): "smollm2",
    }
    return out


def make_codec(family: str, tokenizer: Any = None) -> Codec:
    if family == "json":
        if tokenizer is None:
            raise ValueError("the json codec reads its turn markers off a tokenizer")
        return generic_json(tokenizer)
    if family == "mistral":
        return mistral(tokenizer)
    if family not in _FAMILY_CODECS:
        raise BadInput(f"model.tool_format: unknown format {family!r}; known: {', '.join(TOOL_FORMATS)}")
    return _FAMILY_CODECS[family]()


def choose_template(own: str | None, requested: str | None, tool_format: str) -> tuple[str, str | None]:
    """(family, template to install) for a tokenizer whose own chat template is `own`.

    - `requested` (the text of a template the user named) is used as is, in `tool_format` or the family it writes;
    - an explicit `tool_format` keeps the model's template when it writes that family, else installs the
      family's canonical template (`json` always keeps the model's);
    - otherwise the model's template is kept when it renders tools, and Qwen2.5's (Hermes) replaces one that
      does not (SmolLM2-Instruct's, say: `tool_format: smollm2` picks its native list form instead; after 90
      equal training steps Hermes made the better BFCL caller, configs/README.md).
    A kept template that is its family's original but unfit for training (Qwen3's drops past reasoning,
    Mistral's moves the system prompt to the last user turn) is swapped for the family's canonical one.
    """
    if requested is not None:
        return (tool_format if tool_format != "auto" else detect_family(requested)), requested
    detected = detect_family(own)
    if tool_format != "auto" and tool_format != detected:
        canonical = make_codec(tool_format).canonical_template() if tool_format != "json" else None
        return tool_format, canonical or own
    if tool_format == "auto" and not (own and "tools" in own):
        return "hermes", hermes().canonical_template()
    return detected, _fit_for_training(own, detected)


def _fit_for_training(own: str | None, family: str) -> str | None:
    if family == "qwen3" and own == _trl_template("qwen3"):
        return qwen3().canonical_template()
    if family == "mistral" and own != _own_template("mistral_v3_midtrain.jinja"):
        return mistral().canonical_template()
    return own


def install(tokenizer: Any, family: str, template: str | None) -> Codec:
    """Set the chat template and the response template (what TRL parses rollouts with) on `tokenizer`."""
    if template is not None:
        tokenizer.chat_template = template
    codec = make_codec(family, tokenizer)
    tokenizer.response_template = copy.deepcopy(codec.response_template)
    _CODEC_CACHE.pop(id(tokenizer), None)
    return codec


def codec_for(tokenizer: Any) -> Codec:
    """The codec of a loaded tokenizer: the family its chat template writes, unless the response template it
    carries (set by `install` and saved with every adapter's tokenizer) names another one, as it does when
    `model.tool_format` was given for a template of unknown format. Cached per tokenizer and template."""
    key = (tokenizer.chat_template, json.dumps(getattr(tokenizer, "response_template", None), sort_keys=True))
    cached = _CODEC_CACHE.get(id(tokenizer))
    if cached is not None and cached[0] == key:
        return cached[1]
    codec = _detect_codec(tokenizer)
    if len(_CODEC_CACHE) > 64:
        _CODEC_CACHE.clear()
    _CODEC_CACHE[id(tokenizer)] = (key, codec)
    return codec


_CODEC_CACHE: dict[int, tuple[Any, Codec]] = {}


def _detect_codec(tokenizer: Any) -> Codec:
    template = tokenizer.chat_template
    template = template.get("default") if isinstance(template, dict) else template
    family = detect_family(template)
    return make_codec(carried_family(tokenizer, first=family) or family, tokenizer)


def carried_family(tokenizer: Any, first: str | None = None) -> str | None:
    """The family whose response template the tokenizer carries (None: none of midtrain's)."""
    carried = current_response_template(getattr(tokenizer, "response_template", None))
    if not carried:
        return None
    order = [first] if first else []
    order += [n for n in FAMILIES if n != first]
    return next((n for n in order if make_codec(n, tokenizer).response_template == carried), None)


def current_response_template(template: Any) -> Any:
    """A carried response template with the reasoning field under today's name (adapters saved before carry
    `reasoning_content`): it still names its family, and an export of such an adapter serves its reasoning."""
    fields = template.get("fields") if isinstance(template, dict) else None
    if not isinstance(fields, dict) or LEGACY_REASONING_FIELD not in fields:
        return template
    renamed = {REASONING_FIELD if k == LEGACY_REASONING_FIELD else k: v for k, v in fields.items()}
    return {**template, "fields": renamed}


def add_family_tokens(tokenizer: Any, family: str, tokens: FamilyTokens | None = None) -> Any:
    """Give a tokenizer of another model a family's special tokens (bos/eos included) and pre-tokenizer split:
    the stand-in tokenizers of the tests and of `template check` when the model's own cannot be downloaded.
    `tokens` overrides the family's (the `json` family has none of its own)."""
    if tokens is None:
        tokens = (
            make_codec(family, tokenizer).tokens
            if family != "json"
            else FamilyTokens(None, tokenizer.eos_token, ())
        )
    missing = [t for t in tokens.added if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens(
            {"additional_special_tokens": missing}, replace_extra_special_tokens=False
        )
    if tokens.bos is not None:
        tokenizer.bos_token = tokens.bos
    tokenizer.eos_token = tokens.eos
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if tokens.split_regex and backend is not None and type(backend.pre_tokenizer).__name__ == "ByteLevel":
        from tokenizers import Regex, pre_tokenizers

        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(tokens.split_regex), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    return tokenizer
