"""Packed documents do not attend to each other, on every attention implementation the SFT stage can run.

A packed batch from the stage's own trainer (TRL's padding-free BFD collator) must score exactly like its
documents scored one at a time: the same logits per document, and a loss equal to the documents' losses
weighted by their loss tokens. Checked for training (`compute_loss`) and evaluation (`evaluate`), on the tiny
random model and on the embedded SmolLM2-135M, with eager, sdpa and flex_attention. The stage's isolation
probe must stop a run whose attention ignores the boundaries.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset

from pipelines.errors import BadInput
from pipelines.sft.packing import LEAK_TOLERANCE, check_isolation, measure_isolation
from pipelines.sft.stage import build_trainer
from tests.helpers import _chat_trace, sft_config, write_mix

ATTENTION = ("eager", "sdpa", "flex_attention")
DOC_LENGTHS = (150, 97, 64, 41, 23)
EMBEDDED_DOC_LENGTHS = (61, 37, 23)  # the 135M model on 2 shared cores: few tokens, same checks


def text_rows(tokenizer: Any, lengths: tuple[int, ...] = DOC_LENGTHS) -> dict[str, list]:
    """Real-text documents of different lengths; every other one masks its first 40% like a prompt."""
    text = Path(sysconfig.get_paths()["stdlib"], "argparse.py").read_text(encoding="utf-8")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    rows: dict[str, list] = {"input_ids": [], "assistant_masks": []}
    start = 0
    for i, length in enumerate(lengths):
        doc = ids[start : start + length]
        start += length + 500
        prompt = int(0.4 * length) if i % 2 else 0
        rows["input_ids"].append(doc)
        rows["assistant_masks"].append([0] * prompt + [1] * (length - prompt))
    return rows


def stage_trainer(
    tmp_path: Path, model_dir: Path, rows: dict[str, list], quantization: str = "none", **train: Any
) -> Any:
    """The SFT stage's own trainer (packing on) with every row in its one train batch and one eval batch."""
    config = sft_config(
        tmp_path,
        model_dir,
        quantization={"mode": quantization},
        train={"max_length": 256, "per_device_train_batch_size": 4, "per_device_eval_batch_size": 4, **train},
    )
    dataset = Dataset.from_dict(rows)
    return build_trainer(config, "plan", tmp_path / "out", dataset, dataset, _tokenizer(model_dir), [])


def _tokenizer(model_dir: Path) -> Any:
    from pipelines.chat import load_tokenizer

    return load_tokenizer(str(model_dir))


def alone(trainer: Any, ids: list[int], mask: list[int]) -> dict[str, Any]:
    """One document as the trainer's collator batches it when it is alone."""
    labels = [t if m else -100 for t, m in zip(ids, mask, strict=True)]
    return trainer.data_collator([{"input_ids": ids, "labels": labels}])


def logits(model: Any, batch: dict[str, Any], **kwargs: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}, **kwargs).logits[0]


def loss(trainer: Any, batch: dict[str, Any]) -> float:
    with torch.no_grad():
        return trainer.compute_loss(trainer.model, dict(batch)).item()


def loss_tokens(batch: dict[str, Any]) -> int:
    return int((batch["labels"][0, 1:] != -100).sum())


def segments(batch: dict[str, Any]) -> list[tuple[int, int]]:
    bounds = batch["cu_seq_lens_q"].tolist()
    return list(itertools.pairwise(bounds))


def check_packed_equals_alone(
    trainer: Any, rows: dict[str, list], impl: str, atol: float, loss_rtol: float = 1e-5
) -> dict[str, float]:
    """Packed batch vs each document alone: max |Δlogit| per document and the token-weighted loss."""
    trainer.model.get_base_model().set_attn_implementation(impl)
    batch = next(iter(trainer.get_train_dataloader()))
    spans = segments(batch)
    assert len(spans) == len(rows["input_ids"]), "every document must be in the one packed row"
    row_of = {tuple(ids): i for i, ids in enumerate(rows["input_ids"])}
    packed_logits = logits(trainer.model, batch, use_cache=False)
    weighted, n_tokens, max_diff = 0.0, 0, 0.0
    for start, end in spans:
        i = row_of[tuple(batch["input_ids"][0, start:end].tolist())]
        single = alone(trainer, rows["input_ids"][i], rows["assistant_masks"][i])
        assert torch.equal(single["labels"][0], batch["labels"][0, start:end])
        max_diff = max(
            max_diff, (packed_logits[start:end] - logits(trainer.model, single)).abs().max().item()
        )
        weighted += loss(trainer, single) * loss_tokens(single)
        n_tokens += loss_tokens(single)
    packed_loss, docs_loss = loss(trainer, batch), weighted / n_tokens
    assert max_diff < atol, f"{impl}: packed logits differ from the documents alone by {max_diff}"
    assert packed_loss == pytest.approx(docs_loss, rel=loss_rtol, abs=1e-5), impl
    return {"max_logit_diff": max_diff, "packed_loss": packed_loss, "docs_loss": docs_loss}


@pytest.mark.parametrize("impl", ATTENTION)
def test_packed_batch_scores_like_its_documents_alone_tiny(
    tmp_path: Path, tiny_model_dir: Path, tokenizer: Any, impl: str
) -> None:
    rows = text_rows(tokenizer)
    trainer = stage_trainer(tmp_path, tiny_model_dir, rows)
    trainer.model.train()  # as in training: dropout is 0 in this config, so train mode is deterministic
    check_packed_equals_alone(trainer, rows, impl, atol=1e-4)


@pytest.mark.parametrize("impl", ATTENTION)
def test_eval_loss_of_packed_batch_equals_documents_alone(
    tmp_path: Path, tiny_model_dir: Path, tokenizer: Any, impl: str
) -> None:
    rows = text_rows(tokenizer)
    trainer = stage_trainer(tmp_path, tiny_model_dir, rows)
    trainer.model.get_base_model().set_attn_implementation(impl)
    trainer.model.eval()
    singles = [
        alone(trainer, ids, m) for ids, m in zip(rows["input_ids"], rows["assistant_masks"], strict=True)
    ]
    expected = sum(loss(trainer, b) * loss_tokens(b) for b in singles) / sum(map(loss_tokens, singles))
    assert len(trainer.get_eval_dataloader()) == 1
    assert trainer.evaluate()["eval_loss"] == pytest.approx(expected, rel=1e-5)


def test_isolation_probe_stops_attention_that_ignores_boundaries(
    tmp_path: Path, tiny_model_dir: Path, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without transformers' packed-sequence detection (as for a model whose mask ignores position_ids),
    sdpa attends across documents: the probe measures it and the stage refuses to train."""
    import transformers.masking_utils as masking_utils

    rows = text_rows(tokenizer)
    trainer = stage_trainer(tmp_path, tiny_model_dir, rows)
    assert measure_isolation(trainer.model, trainer.data_collator).leak <= LEAK_TOLERANCE
    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", lambda position_ids: None)
    leaking = measure_isolation(trainer.model, trainer.data_collator)
    assert leaking.leak > 5 * LEAK_TOLERANCE and leaking.attn_implementation == "sdpa"
    with pytest.raises(BadInput, match=r"sft.train.packing: packed documents attend.*packing: false"):
        check_isolation(trainer)
    with pytest.raises(BadInput, match="attend to each other"):
        stage_trainer(tmp_path / "again", tiny_model_dir, rows)
    # Padded batches carry an attention_mask per row: nothing to probe, the stage builds its trainer.
    padded = stage_trainer(tmp_path / "padded", tiny_model_dir, rows, packing=False)
    assert check_isolation(padded) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="bitsandbytes' CPU inference path")
def test_nf4_training_after_eval_forwards_reaches_every_lora_weight(
    tmp_path: Path, tiny_model_dir: Path, tokenizer: Any
) -> None:
    """The probe (and a periodic `evaluate()`) forwards the NF4 model in eval mode without grad. bitsandbytes
    then repacks the weights for its CPU inference kernel on AVX512-BF16 CPUs, and that kernel has no backward:
    the stage turns the repacking off, so every LoRA weight still gets a gradient afterwards."""
    import bitsandbytes as bnb

    rows = text_rows(tokenizer)
    trainer = stage_trainer(tmp_path, tiny_model_dir, rows, quantization="nf4")  # ran the probe
    trainer.evaluate()
    linear4 = [m for m in trainer.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert linear4 and all(m.support_avx512bf16_for_cpu is False for m in linear4)
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in linear4)
    trainer.model.train()
    trainer.compute_loss(trainer.model, dict(next(iter(trainer.get_train_dataloader())))).backward()
    lora_b = {n: p.grad for n, p in trainer.model.named_parameters() if "lora_B" in n}
    assert len(lora_b) == 14
    assert [n for n, grad in lora_b.items() if grad is None or not grad.abs().sum() > 0] == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="bitsandbytes' CPU inference path")
def test_every_nf4_base_loaded_for_training_keeps_the_trainable_kernel(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """RL loads its policy with the same `load_base_model` and evaluates it (eval mode, no grad) before GRPO's
    first step: after such a forward the weights are still in the layout training backpropagates through."""
    import bitsandbytes as bnb

    from pipelines.sft.model import load_base_model

    config = sft_config(tmp_path, tiny_model_dir, quantization={"mode": "nf4"})
    base = load_base_model(config.model, config.sft.quantization).eval()
    with torch.no_grad():
        base(input_ids=torch.tensor([[5, 6, 7, 8]]))
    linear4 = [m for m in base.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linear4) == 14
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in linear4)


@pytest.mark.slow
def test_packed_batch_scores_like_its_documents_alone_embedded(
    tmp_path: Path, embedded_model_dir: Path, tokenizer: Any
) -> None:
    """The embedded SmolLM2-135M, each attention implementation; and the hazard the issue measured: the same
    batch through a plain `model(**batch)` (the config's use_cache=True) attends across documents."""
    rows = text_rows(tokenizer, EMBEDDED_DOC_LENGTHS)
    trainer = stage_trainer(tmp_path, embedded_model_dir, rows)
    trainer.model.eval()
    for impl in ATTENTION:
        check_packed_equals_alone(trainer, rows, impl, atol=2e-3)
    batch = next(iter(trainer.get_train_dataloader()))
    with_cache = logits(trainer.model, batch, use_cache=True)  # a KV cache: no packed-sequence mask
    without = logits(trainer.model, batch, use_cache=False)
    first_end = segments(batch)[0][1]
    assert (with_cache[:first_end] - without[:first_end]).abs().max() < 2e-3
    assert (with_cache[first_end:] - without[first_end:]).abs().max() > 5.0


@pytest.mark.slow
def test_packed_nf4_batch_scores_like_its_documents_alone_embedded(
    tmp_path: Path, embedded_model_dir: Path, tokenizer: Any
) -> None:
    """The stage's default, NF4 QLoRA, with sdpa: as exact as float32 now that the stage keeps bitsandbytes off
    its CPU inference kernel (which rounded rows of different lengths differently: up to ~0.6 per logit)."""
    rows = text_rows(tokenizer, EMBEDDED_DOC_LENGTHS)
    trainer = stage_trainer(tmp_path, embedded_model_dir, rows, quantization="nf4")
    trainer.model.eval()
    isolation = measure_isolation(trainer.model, trainer.data_collator)
    assert isolation.isolated and isolation.leak < LEAK_TOLERANCE, isolation
    check_packed_equals_alone(trainer, rows, "sdpa", atol=2e-3)


@pytest.mark.slow
def test_sft_stops_with_exit_2_when_packed_documents_leak_embedded(
    tmp_path: Path,
    embedded_model_dir: Path,
    tokenizer: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """`midtrain sft` on SmolLM2-135M whose attention stops taking document boundaries from position_ids (the
    packed-sequence detection off, as in modeling code that builds its mask another way): the run stops before
    training with exit 2, the measured leak and the setting that fixes it, and writes no adapter."""
    import transformers.masking_utils as masking_utils

    from pipelines import cli

    config = sft_config(tmp_path, embedded_model_dir, clusters=["plan"], replay_fraction=0.0)
    write_mix(config.run_dir / "data", tokenizer, [_chat_trace(i, "plan") for i in range(2)])
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(config.model_dump(mode="json")))
    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", lambda position_ids: None)
    monkeypatch.setattr(sys, "argv", ["midtrain", "sft", str(path)])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    err = " ".join(capsys.readouterr().err.split())
    assert exited.value.code == 2, err
    assert "packed documents attend to each other with attention implementation 'sdpa'" in err
    assert "set sft.train.packing: false" in err and "Traceback" not in err
    leak = re.search(r"change by ([0-9.]+) std", err)
    assert leak and float(leak.group(1)) > 5 * LEAK_TOLERANCE, err
    assert not list((config.run_dir / "sft").rglob("adapter_model.safetensors"))
