"""Tool-call codecs: one per family, chosen from the template (or `model.tool_format`), writing and reading each
family's real wire format, and giving the same scores whatever the format.

Each family is exercised with the embedded tokenizer plus the family's special tokens and its real (or
canonical) template (`family_tokenizer` in conftest), and on tiny random models built on those tokenizers.
"""

from __future__ import annotations

import json
import random
import sys
from typing import Any

import pytest

from pipelines import episodes
from pipelines.chat import load_tokenizer
from pipelines.codecs import (
    FAMILIES,
    TOOL_FORMATS,
    Codec,
    choose_template,
    codec_for,
    detect_family,
    make_codec,
)
from pipelines.errors import BadInput
from pipelines.run_config import ModelSection
from pipelines.schema import ThinkingSection
from pipelines.tasks import sampling
from pipelines.tasks.domains import DOMAINS
from pipelines.thought import load_thought_schema
from tests.conftest import FAMILY_TEMPLATES
from tests.helpers import tiny_model

SCHEMA = load_thought_schema("think-plan-reflect")
TRL_FAMILIES = ["hermes", "qwen3", "llama3", "mistral", "smollm2"]
REAL = {"hermes": "qwen2_5.jinja", "qwen3": "qwen3.jinja", "llama3": "llama3_1.jinja"}
# Where each family's tool results start in a prompt (the scripted policy counts the calls answered so far).
RESULT_MARK = {
    "hermes": "<tool_response>",
    "qwen3": "<tool_response>",
    "llama3": "<|start_header_id|>ipython",
    "mistral": "[TOOL_RESULTS]",
    "smollm2": "<|im_start|>tool",
}


def fixture(name: str) -> str:
    return (FAMILY_TEMPLATES / name).read_text(encoding="utf-8")


def family_tok(family_tokenizer, family: str):
    return family_tokenizer(family, REAL.get(family))


# -- choosing the codec ---------------------------------------------------------------------------------------------
def test_the_family_is_read_off_each_real_template() -> None:
    expected = {
        "qwen2_5.jinja": "hermes",
        "qwen3_instruct_2507.jinja": "hermes",
        "qwen3.jinja": "qwen3",
        "llama3_1.jinja": "llama3",
        "llama3_2.jinja": "llama3",
        "mistral_v3_spm.jinja": "mistral",
        "smollm2.jinja": "json",
        "gemma3.jinja": "json",
    }
    assert {name: detect_family(fixture(name)) for name in expected} == expected
    assert set(ModelSection.model_fields["tool_format"].annotation.__args__) == set(TOOL_FORMATS)


def test_templates_unfit_for_training_are_swapped_and_others_kept() -> None:
    qwen3_family, qwen3_template = choose_template(fixture("qwen3.jinja"), None, "auto")
    assert qwen3_family == "qwen3" and qwen3_template == make_codec("qwen3").canonical_template()
    assert "{%- if loop.index0 > ns.last_query_index %}" not in qwen3_template  # reasoning kept in every turn
    mistral_family, mistral_template = choose_template(fixture("mistral_v3_spm.jinja"), None, "auto")
    assert mistral_family == "mistral" and "midtrain's variant" in mistral_template
    assert choose_template(fixture("llama3_2.jinja"), None, "auto") == ("llama3", fixture("llama3_2.jinja"))
    # SmolLM2's own template renders no tools: Qwen2.5's (Hermes) by default, its native list form on request;
    # so does a template of no known family that renders no tools.
    family, template = choose_template(fixture("smollm2.jinja"), None, "auto")
    assert family == "hermes" and template == make_codec("hermes").canonical_template()
    family, template = choose_template(fixture("smollm2.jinja"), None, "smollm2")
    assert family == "smollm2" and "<tool_call>[" in template
    plain = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    assert choose_template(plain, None, "auto") == ("hermes", make_codec("hermes").canonical_template())
    # A template the user names is used as is, even an unfit one: `template check` then says what breaks.
    assert choose_template(None, fixture("qwen3.jinja"), "auto") == ("qwen3", fixture("qwen3.jinja"))


def test_an_adapter_tokenizer_keeps_its_format_when_saved_and_reloaded(embedded_model_dir, tmp_path) -> None:
    """What `load_tokenizer` chose travels with every adapter's saved tokenizer: the template, and the response
    template (TRL's parser spec), which also carries an override on a template of no known family."""
    native = load_tokenizer(str(embedded_model_dir), tool_format="smollm2")
    assert (
        codec_for(native).name == "smollm2"
        and native.response_template == make_codec("smollm2").response_template
    )
    native.save_pretrained(tmp_path / "native")
    assert codec_for(load_tokenizer(str(tmp_path / "native"))).name == "smollm2"
    # The generic format forced on Qwen2.5's template (which would read as Hermes): the saved response template
    # says which one it is.
    forced = load_tokenizer(
        str(embedded_model_dir), str(FAMILY_TEMPLATES / "qwen2_5.jinja"), tool_format="json"
    )
    assert codec_for(forced).name == "json" and detect_family(forced.chat_template) == "hermes"
    forced.save_pretrained(tmp_path / "forced")
    assert codec_for(load_tokenizer(str(tmp_path / "forced"))).name == "json"
    with pytest.raises(BadInput, match="no such file"):
        load_tokenizer(str(embedded_model_dir), str(tmp_path / "missing.jinja"))


def test_an_adapter_saved_with_trls_reasoning_field_name_keeps_its_family(
    embedded_model_dir, tmp_path
) -> None:
    """Adapters saved before the reasoning field was renamed (TRL's `reasoning_content` → `thinking`, the name
    `transformers serve` returns) carry the old name: their response template must still name their family."""
    import copy

    tokenizer = load_tokenizer(str(embedded_model_dir))
    legacy = copy.deepcopy(tokenizer.response_template)
    legacy["fields"] = {
        ("reasoning_content" if k == "thinking" else k): v for k, v in legacy["fields"].items()
    }
    assert "reasoning_content" in legacy["fields"]
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    )
    tokenizer.response_template = (
        legacy  # on a template of no known family, only the carried spec says Hermes
    )
    assert codec_for(tokenizer).name == "hermes"
    reply = (
        '<think><plan>go</plan></think>\n<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call><|im_end|>'
    )
    parsed = codec_for(tokenizer).parse(reply, load_thought_schema("think-plan-reflect"))
    assert [t.text for t in parsed.thinking] == ["go"] and parsed.tool_calls[0]["name"] == "f"
    # Loaded again (RL on an old SFT adapter), it carries today's name: what it saves next is served right.
    tokenizer.save_pretrained(tmp_path / "old-adapter")
    reloaded = load_tokenizer(str(tmp_path / "old-adapter"))
    assert codec_for(reloaded).name == "hermes" and "thinking" in reloaded.response_template["fields"]
    assert "reasoning_content" not in reloaded.response_template["fields"]


def test_vllm_parser_names_are_vllms() -> None:
    """`router export --vllm` passes these to `--tool-call-parser` / `--reasoning-parser` (names from vLLM's
    docs: hermes, llama3_json, mistral, xlam; qwen3 reasoning)."""
    codecs = {name: make_codec(name) for name in FAMILIES if name != "json"}
    assert {n: c.vllm_tool_parser for n, c in codecs.items()} == {
        "hermes": "hermes",
        "qwen3": "hermes",
        "llama3": "llama3_json",
        "mistral": "mistral",
        "smollm2": "xlam",  # vLLM's hermes parser reads one object per <tool_call>, not SmolLM2's list
    }
    assert codecs["qwen3"].vllm_reasoning_parser == "qwen3"


# -- writing calls as the template writes them ----------------------------------------------------------------------
@pytest.mark.integration
def test_llama_calls_in_the_content_are_the_templates_own_bytes(family_tokenizer) -> None:
    """The llama3 codec writes calls into the content (the template drops a calling turn's content and renders
    one call); for one call without reasoning its bytes equal the template's own rendering of `tool_calls`."""
    tok = family_tok(family_tokenizer, "llama3")
    codec = codec_for(tok)
    call = {"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": "km ü"}}}
    messages = [
        {"role": "user", "content": "Add."},
        {"role": "assistant", "content": "", "tool_calls": [call]},
    ]
    own = tok.apply_chat_template(messages, tokenize=False, **codec.template_kwargs)
    assert codec.render(tok, messages) == own
    assert '{"name": "add", "parameters": {"a": 2, "b": "km ü"}}<|eot_id|>' in own
    two = [messages[0], {"role": "assistant", "content": "<think>x</think>", "tool_calls": [call, call]}]
    text = codec.render(tok, two)
    one = '{"name": "add", "parameters": {"a": 2, "b": "km ü"}}'
    assert text.endswith(f"<think>x</think>\n{one}; {one}<|eot_id|>")


# -- reading replies: complete, partial, malformed, streamed -------------------------------------------------------
def _turn(tok: Any, codec: Codec, message: dict[str, Any]) -> str:
    """One assistant turn as the family's template writes it (what the model generates)."""
    messages = [{"role": "user", "content": "go"}, message]
    prompt = codec.render(tok, messages[:1], add_generation_prompt=True)
    full = codec.render(tok, messages)
    end = full.index(codec.end_of_turn, len(prompt)) + len(codec.end_of_turn)
    return full[len(prompt) : end]


CALLS = [
    {"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 40}}},
    {"type": "function", "function": {"name": "mul", "arguments": {"x": [1, {"y": "}; ]"}]}}},
]
THINKING = [ThinkingSection(section="plan", text="Two calls.")]


@pytest.mark.integration
@pytest.mark.parametrize("family", [*TRL_FAMILIES, "json"])
def test_replies_parse_complete_partial_and_malformed(family, family_tokenizer) -> None:
    tok = family_tokenizer(family, REAL.get(family, "smollm2.jinja" if family == "json" else None))
    codec = codec_for(tok)
    text = _turn(
        tok, codec, {"role": "assistant", "content": SCHEMA.render(THINKING, ""), "tool_calls": CALLS}
    )
    reply = codec.parse(text, SCHEMA)
    assert (reply.thinking, reply.content, reply.errors, reply.ended) == (THINKING, "", [], True)
    assert reply.tool_calls == [c["function"] for c in CALLS]
    # Out of tokens before the end-of-turn token: same calls, `ended` False.
    assert codec.parse(text.removesuffix(codec.end_of_turn), SCHEMA).ended is False
    # Cut inside a call: the call is an error, nothing half-parsed is run.
    cut = codec.parse(text[: text.index('"mul"') + 8], SCHEMA)
    assert cut.errors and all(c["name"] != "mul" for c in cut.tool_calls)
    # Broken JSON: named as an error, never raised.
    broken = codec.parse(text.replace('"a": 2', '"a": 2,,'), SCHEMA)
    assert broken.errors and broken.tool_calls in ([], [CALLS[1]["function"]])
    # A plain answer.
    answer = _turn(tok, codec, {"role": "assistant", "content": SCHEMA.render(THINKING, "42 km.")})
    assert codec.parse(answer, SCHEMA).content == "42 km."


@pytest.mark.integration
@pytest.mark.parametrize("family", TRL_FAMILIES)
def test_streaming_never_shows_call_markup_and_ends_as_the_whole_parse(family, family_tokenizer) -> None:
    tok = family_tok(family_tokenizer, family)
    codec = codec_for(tok)
    text = _turn(tok, codec, {"role": "assistant", "content": "Let me add.", "tool_calls": CALLS[:1]})
    stream = codec.stream(SCHEMA)
    shown = "".join(stream.feed(ch) for ch in text)
    assert shown.strip() == "Let me add."
    assert stream.close() == codec.parse(text, SCHEMA)


# -- the same rollout scores the same in every format ---------------------------------------------------------------
class FormatPolicy:
    """A stand-in policy (a `GenerateFn`) that plays the reference solution of the task its prompt holds, writing each reply
    in the tokenizer's own format (rendered by the family's template, as a trained model would write it)."""

    def __init__(self, tokenizer: Any, items: list[sampling.DomainTask], family: str) -> None:
        self.tokenizer, self.items, self.family = tokenizer, items, family
        self.codec = codec_for(tokenizer)

    def _reply(self, prompt: str) -> str:
        item = next(i for i in self.items if i.task.request in prompt)
        turns = item.task.solution
        done = prompt.count(RESULT_MARK[self.family])
        calls_before = [sum(len(t) for t in turns[:k]) for k in range(len(turns) + 1)]
        if done in calls_before[:-1]:
            turn = turns[calls_before.index(done)]
            calls = [
                {"type": "function", "function": {"name": s.tool, "arguments": s.arguments}} for s in turn
            ]
            message = {"role": "assistant", "content": SCHEMA.render(THINKING, ""), "tool_calls": calls}
        else:
            answer = item.task.final_template.format(answer=item.task.answer)
            message = {"role": "assistant", "content": SCHEMA.render(THINKING, answer)}
        return _turn(self.tokenizer, self.codec, message)

    def __call__(self, prompts: list[list[int]], adapters: list, max_new_tokens: int) -> list[list[int]]:
        """A `GenerateFn`: each prompt's scripted reply, cut at the token budget."""
        replies = [self._reply(self.tokenizer.decode(ids)) for ids in prompts]
        return [self.tokenizer(r, add_special_tokens=False)["input_ids"][:max_new_tokens] for r in replies]


@pytest.mark.integration
def test_the_same_rollouts_score_exactly_the_same_in_every_format(family_tokenizer) -> None:
    """RL rewards and the held-out metrics on a Llama-format (or Mistral, Qwen3, SmolLM2) rollout equal those
    on the same rollout in Hermes format: one task needing one call, one needing two parallel calls, one
    needing two turns, and one where no tool fits (declined)."""
    rng = random.Random(3)
    calculator, filesystem = DOMAINS["calculator"][1], DOMAINS["filesystem"][1]
    items = [
        sampling.DomainTask("calculator", calculator(rng, 1)),
        sampling.DomainTask("calculator", calculator(rng, 2, True)),
        sampling.DomainTask("filesystem", filesystem(rng, 2)),
        sampling.DomainTask(
            "calculator", sampling.irrelevant_task("calculator", DOMAINS["docsearch"][1](rng, 1))
        ),
    ]
    classes = {name: DOMAINS[name][0] for name in ("calculator", "filesystem")}
    scores = {}
    for family in TRL_FAMILIES:
        tok = family_tok(family_tokenizer, family)
        result = episodes.evaluate_policy(
            FormatPolicy(tok, items, family), tok, items, classes, SCHEMA, 4, 4096
        )
        runs = result.pop("episodes")
        assert [len(e["completion"]) for e in runs] == [3, 4, 5, 1], family
        scores[family] = result
    assert scores["hermes"]["outcome"] == 1.0 and scores["hermes"]["failures"] == {}
    for family in TRL_FAMILIES:
        assert scores[family] == scores["hermes"], family


# -- TRL's own GRPO tool loop, once per family, on a tiny random model -------------------------------------------------
@pytest.fixture
def score_completions_only(monkeypatch):
    """As in test_envs_grpo: TRL scores only the completion tokens' log-probs, as it does on GPUs."""
    import trl.trainer.utils

    monkeypatch.setattr(trl.trainer.utils, "_use_triton", lambda device: True, raising=False)


@pytest.mark.train
@pytest.mark.parametrize("family", TRL_FAMILIES)
def test_one_grpo_step_runs_the_tool_loop_in_each_format(
    family, family_tokenizer, tmp_path, score_completions_only, monkeypatch
) -> None:
    """A tiny random model whose sampling is steered (`sequence_bias`) to call the task's tool in the family's
    format, then, once the result is in, to answer: TRL parses the call with the codec's response template, runs
    it, appends the result with the family's template (the steering only fires if TRL's tool suffix is the
    codec's), and our rewards score the rollout. A real pass through TRL's GRPO tool loop per family."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from pipelines.rl.rewards import build_reward_funcs
    from pipelines.rl.tool_views import tool_view
    from pipelines.tasks.generate import sample_prompt_rows
    from pipelines.tasks.records import Task

    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    tok = load_tokenizer(str(tiny_model(family_tok(family_tokenizer, family), tmp_path / "model")))
    codec = codec_for(tok)
    assert codec.name == family
    row = sample_prompt_rows(["calculator"], 1, seed=0, difficulty=1, fixed_tools_only=True)[0]
    task = Task.from_json(json.loads(row["task"]))
    step = task.solution[0][0]
    # Only the task's tool is offered (as `rl.offered_tools: task` does): the prompt, and the step, stay short.
    view = tool_view(DOMAINS["calculator"][0], frozenset({step.tool}))
    env = view()
    env.reset(task=row["task"])
    result = str(getattr(env, step.tool)(**step.arguments))
    call = {"type": "function", "function": {"name": step.tool, "arguments": step.arguments}}

    def token_ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    call_ids = token_ids(_turn(tok, codec, {"role": "assistant", "content": "", "tool_calls": [call]}))
    answer = task.final_template.format(answer=task.answer)
    answer_ids = token_ids(_turn(tok, codec, {"role": "assistant", "content": answer}))
    suffix_ids = token_ids(codec.tool_suffix(tok, [{"role": "tool", "name": step.tool, "content": result}]))
    # Each next token gets a bias growing with the matched prefix, so the longest match wins; the answer's keys
    # start with the tool suffix, so they fire only after TRL appended exactly the result the codec would.
    bias = {tuple(call_ids[: i + 1]): 20.0 * (i + 1) for i in range(len(call_ids))}
    bias |= {tuple(suffix_ids + answer_ids[: i + 1]): 2000.0 + 20 * i for i in range(len(answer_ids))}
    seen: list[Any] = []

    def record(completions, **kwargs):
        seen.extend(completions)
        return [0.0] * len(completions)

    funcs, _ = build_reward_funcs({"format": 1.0, "execution": 1.0, "outcome": 1.0}, codec, SCHEMA)
    args = GRPOConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=1,
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=len(call_ids) + len(suffix_ids) + len(answer_ids) + 8,
        max_tool_calling_iterations=2,
        gradient_checkpointing=False,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        seed=0,
        generation_kwargs={"sequence_bias": bias},
        chat_template_kwargs=codec.template_kwargs or None,
    )
    trainer = GRPOTrainer(
        model=str(tmp_path / "model"),
        processing_class=tok,
        args=args,
        train_dataset=Dataset.from_list([row, row]),
        reward_funcs=[*funcs, record],
        environment_factory={"calculator": view},
    )
    assert trainer.chat_template is None  # TRL found the template prefix-preserving: it kept it
    trainer.train()
    rollout = seen[0]
    assert [m["role"] for m in rollout] == ["assistant", "tool", "assistant"], rollout
    assert rollout[0]["tool_calls"] == [call] and rollout[1]["content"] == result
    assert codec.parse(rollout[2]["content"]).content == answer
    logged = trainer.state.log_history[0]
    assert [logged[f"rewards/{n}/mean"] for n in ("format", "execution", "outcome")] == [1.0, 1.0, 1.0]


def test_rl_refuses_the_generic_format_trls_tool_loop_cannot_render(family_tokenizer) -> None:
    from pipelines.rl.train import trl_codec

    assert trl_codec(family_tok(family_tokenizer, "llama3")).name == "llama3"
    with pytest.raises(BadInput, match="TRL's GRPO tool loop renders tool turns"):
        trl_codec(family_tokenizer("json", "smollm2.jinja"))


# -- `midtrain template check` and `data build`'s check of its first rows -----------------------------------------
@pytest.mark.integration
def test_data_builds_check_their_first_tool_rows(family_tokenizer) -> None:
    from pipelines.errors import MidtrainError
    from pipelines.template_check import FirstRowsCheck, sample_traces

    traces = {t.meta["pattern"]: t for t in sample_traces()}
    good = FirstRowsCheck(family_tok(family_tokenizer, "llama3"), SCHEMA)
    for trace in traces.values():
        good(trace)
    broken = FirstRowsCheck(family_tokenizer("hermes", "broken/qwen2_5_first_call_only.jinja"), SCHEMA, n=2)
    broken(traces["single"])  # one call per turn: rendered right
    with pytest.raises(MidtrainError, match=r"parallel row \S+ × round_trip"):
        broken(traces["parallel"])
    broken(traces["parallel"])  # only the first n rows are checked


# -- `midtrain template check` ------------------------------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.parametrize(
    "args",
    [
        ["configs/qwen2.5-7b-qlora.yaml"],
        ["configs/qwen3-8b-qlora.yaml"],
        ["configs/llama3.1-8b-qlora.yaml"],
        ["configs/mistral-7b-qlora.yaml"],
        ["configs/smollm2-135m-demo.yaml", "--set", "model.tool_format=smollm2"],
    ],
    ids=["qwen2.5", "qwen3", "llama3.1", "mistral", "smollm2-native"],
)
def test_template_check_passes_the_shipped_configs(args) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    done = CliRunner().invoke(app, ["template", "check", *args, "--offline"], catch_exceptions=False)
    assert done.exit_code == 0, done.output[-3000:]
    for pattern in ("single", "parallel", "sequential", "instanced", "recovery", "irrelevance", "clarify"):
        assert f"│ {pattern}" in done.output
    assert "✗" not in done.output and "«" in done.output  # the example shows its loss spans


@pytest.mark.integration
def test_template_check_fails_a_broken_template_naming_pattern_and_check(monkeypatch, capsys) -> None:
    """Through `main`, which maps errors to exit codes: a template that renders only a turn's first call."""
    from pipelines.cli import main

    broken = FAMILY_TEMPLATES / "broken" / "qwen2_5_first_call_only.jinja"
    argv = ["midtrain", "template", "check", "configs/smollm2-135m-demo.yaml", "--offline"]
    monkeypatch.setattr(sys, "argv", [*argv, "--set", f"model.chat_template={broken}"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 1
    out, err = capsys.readouterr()
    assert "template check failed: parallel × round_trip: assistant turn 0" in " ".join(err.split())
    assert "│ parallel" in out and "FAIL parallel × round_trip" in out
