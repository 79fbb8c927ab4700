"""The one inference engine: batched greedy decoding with per-row adapters and prefix KV reuse gives each row
exactly what plain `generate` gives it alone."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
import torch

from pipelines import inference
from pipelines.inference import Engine
from tests.helpers import make_adapter


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, str]:
    root = tmp_path_factory.mktemp("adapters")
    for cluster, seed in (("tool", 1), ("plan", 2)):
        make_adapter(tiny_model_dir, root / "sft" / cluster, seed)
    return {c: str((root / "sft" / c).resolve()) for c in ("tool", "plan")}


def _engine(tiny_model_dir: Path, tokenizer: Any) -> Engine:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    eos = tokenizer.eos_token_id
    return Engine(model, tokenizer.pad_token_id, {eos}, eos)


def test_prefix_cache_gives_the_plain_generation(
    adapters: dict[str, str], tiny_model_dir: Path, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reusing first turns' KV (per adapter and prefix, left-padded, across calls) changes no greedy output."""
    engine = _engine(tiny_model_dir, tokenizer)
    eos = tokenizer.eos_token_id

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    turn_a = [*ids("You can convert units and evaluate expressions. " * 6), eos]
    turn_b = [*ids("You manage files: list, read, write and move them in a sandbox. " * 5), eos]
    tool, plan = adapters["tool"], adapters["plan"]
    calls = [
        [(turn_a + ids("Convert 3 km"), tool), (turn_a + ids("What is 2+2?"), tool), (turn_b + ids("ls"), plan),
         (turn_b + ids("Read notes.txt and count the lines"), plan), (turn_a + ids("Convert 5 kg"), None)],
        [(turn_a + ids("Convert 3 km to miles, then add 4."), tool), (turn_a + ids("Convert 5 kg"), None)],
    ]  # fmt: skip
    cached = [engine([p for p, _ in rows], [a for _, a in rows], 6) for rows in calls]
    assert sorted(len(p) for _, p in engine._prefix_cache) == sorted(
        [len(turn_a), len(turn_b)]
    )  # base: alone
    monkeypatch.setattr(inference, "PREFIX_CACHE_MIN_TOKENS", 10**9)
    plain = [engine([p for p, _ in rows], [a for _, a in rows], 6) for rows in calls]
    assert plain == cached


def test_greedy_decode_matches_generate_row_by_row(
    adapters: dict[str, str], tiny_model_dir: Path, tokenizer: Any
) -> None:
    """A mixed-adapter, left-padded batch whose rows finish at different steps gives each row exactly what
    `generate` gives it alone, with its adapter."""
    engine = _engine(tiny_model_dir, tokenizer)
    texts = ["Convert 3 km to miles.", "List every file in /docs and read the largest one.", "Hi"]
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    rows = [None, adapters["tool"], adapters["plan"]]
    # A random model rarely ends a turn: make a token row 0 emits third the end-of-turn token, so rows finish
    # at different steps and the batch has to shrink.
    stop = engine(prompts, rows, 12)[0][2]
    engine.stop_ids = {stop}
    batched = engine(prompts, rows, 12)
    assert len(batched[0]) <= 3 and max(len(ids) for ids in batched) == 12
    for prompt, adapter, got in zip(prompts, rows, batched, strict=True):
        if adapter is None:
            context = engine.model.disable_adapter()
        else:
            engine.model.set_adapter(engine.names[adapter])
            context = contextlib.nullcontext()
        with context, torch.no_grad():
            alone = engine.model.generate(
                input_ids=torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=stop,
                pad_token_id=tokenizer.pad_token_id,
            )  # fmt: skip
        assert got == alone[0, len(prompt) :].tolist()


def test_a_model_without_named_adapters_runs_as_it_is(tiny_model_dir: Path, tokenizer: Any, adapters) -> None:
    """The RL policy is a PeftModel whose trainable adapter is active: the engine must not switch it off."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapters["tool"])
    prompt = tokenizer("Convert 3 km to miles.", add_special_tokens=False)["input_ids"]
    got = Engine.for_tokenizer(policy.eval(), tokenizer)([prompt], [None], 8)[0]
    with torch.no_grad():
        alone = policy.generate(input_ids=torch.tensor([prompt]), max_new_tokens=8, do_sample=False)
    assert got == alone[0, len(prompt) :].tolist()[: len(got)]


def test_a_sampling_engine_repeats_its_draws_for_a_seed(
    adapters: dict[str, str], tiny_model_dir: Path, tokenizer: Any
) -> None:
    """`Engine.sampling(temperature, seed)` (a held-out evaluation's k samples): the same calls draw the same
    tokens for the same seed, other tokens for another seed, and not greedy's."""
    engine = _engine(tiny_model_dir, tokenizer)
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("Convert 3 km.", "List /docs")]
    rows = [adapters["tool"], None]

    def draw(seed: int) -> list[list[int]]:
        sample = engine.sampling(1.0, seed)
        return sample(prompts, rows, 16) + sample(prompts, rows, 16)  # one generator across calls

    first = draw(7)
    assert draw(7) == first
    assert draw(8) != first
    assert engine(prompts, rows, 16) != first[:2]
    assert first[:2] != first[2:]  # the second call draws on from where the first left the generator
