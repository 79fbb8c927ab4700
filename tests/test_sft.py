"""SFT stage: label masking, LoRA-only updates, resume, grad-accumulation equivalence, outputs, tracking.

Every training test uses the 2-layer tiny model; one slow test trains two NF4 adapters on the embedded 135M.
Mixes are written here in the data-stage layout (parquet shards + manifest.json) from hand-written traces.
"""

from __future__ import annotations

import json
import logging
import math
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from pipelines.artifacts import SFTSummary
from pipelines.errors import BadInput
from pipelines.run_config import REPO_ROOT, RunConfig
from pipelines.sft import check_vllm_compatible, run
from pipelines.sft import data as mixdata
from tests.helpers import (
    CrashAt,
    _chat_trace,
    _doc_trace,
    _tool_trace,
    mix_traces,
    note_traces,
    write_mix,
)
from tests.helpers import sft_config as make_config


@pytest.fixture(scope="module")
def mix_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    """Shared, read-only mix: 3 tool clusters × 4 traces, 4 `text` docs, 8 `notes` docs, a small eval split."""
    root = tmp_path_factory.mktemp("mix")
    held_out = [_tool_trace(9, "plan"), _tool_trace(9, "tool"), _doc_trace(9, 14, cluster="notes")]
    return write_mix(root / "data", tokenizer, mix_traces(4) + note_traces(), held_out)


def config_on_mix(tmp_path: Path, model_dir: Path, mix: Path, **sft: Any) -> RunConfig:
    config = make_config(tmp_path, model_dir, **sft)
    data_dir = config.run_dir / "data"
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    data_dir.symlink_to(mix, target_is_directory=True)
    return config


class ParamSnapshots(TrainerCallback):
    """Copies of the model's parameters at train begin and train end, by name."""

    def __init__(self) -> None:
        self.begin: dict[str, torch.Tensor] = {}
        self.end: dict[str, torch.Tensor] = {}

    def _copy(self, model: Any) -> dict[str, torch.Tensor]:
        return {n: p.detach().float().clone() for n, p in model.named_parameters()}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.begin = self._copy(model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.end = self._copy(model)


def _logged_losses(out_dir: Path, key: str = "loss") -> dict[int, float]:
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row[key] for row in rows if key in row}


# --- selection (no training) -----------------------------------------------------------------------------


def _screened(clusters: list[str], n_tokens: list[int], usable: list[bool] | None = None) -> mixdata.Screened:
    return mixdata.Screened(
        split="train",
        ids=[f"r{i}" for i in range(len(clusters))],
        clusters=np.asarray(clusters, dtype=object),
        n_tokens=np.asarray(n_tokens),
        usable=np.asarray(usable if usable is not None else [True] * len(clusters)),
    )


def test_replay_share_is_by_tokens_and_seeded() -> None:
    clusters = ["a"] * 10 + ["b"] * 50 + ["c"] * 50
    screened = _screened(clusters, [90] * 10 + [10] * 100)
    picked = mixdata.select(screened, "a", replay_fraction=0.25, seed=0)
    assert picked.indices[:10] == list(range(10))
    # 900 cluster tokens at a 25% replay share → 300 replay tokens = 30 rows of 10 tokens from b and c.
    assert (picked.cluster_tokens, picked.replay_tokens, picked.replay_rows) == (900, 300, 30)
    assert {clusters[i] for i in picked.indices[10:]} == {"b", "c"}
    assert mixdata.select(screened, "a", 0.25, seed=0).indices == picked.indices
    assert mixdata.select(screened, "a", 0.25, seed=1).indices != picked.indices
    assert mixdata.select(screened, "a", 0.0, seed=0).indices == list(range(10))
    assert len(mixdata.select(screened, mixdata.GENERALIST, 0.25, seed=0).indices) == 110
    # Rejected rows are never replayed, and a cluster's rejected rows are counted.
    usable = [i not in (0, *range(10, 60)) for i in range(110)]
    picked = mixdata.select(_screened(clusters, [90] * 10 + [10] * 100, usable), "a", 0.25, seed=0)
    assert {clusters[i] for i in picked.indices[9:]} == {"c"} and picked.rejected_rows == 1
    assert (picked.cluster_tokens, picked.replay_tokens) == (810, 270)


def test_generation_lengths_count_each_turn_and_each_episode_by_its_calls() -> None:
    rows = [
        ([0, 0, 1, 1, 1, 0, 0, 1, 1, 0], 1),  # one call: replies of 3 and 2, an episode of 8 tokens
        ([0, 1, 1, 0, 1, 0, 1, 1, 1, 0, 0, 0], 2),  # two calls: replies of 2, 1, 3, an episode of 11
        ([0, 0, 1, 1], 0),  # an answer without a call: a reply, no episode
        ([0, 1, 0, 1], None),  # calls unknown (no `difficulty` column): replies only
        ([0, 0, 0], 3),  # nothing labelled
    ]
    lengths = mixdata.generation_lengths(rows)
    assert lengths["replies"] == {"n": 8, "p50": 2, "p90": 3, "max": 3}
    # Episodes are cumulative by calls: "2" holds the one- and the two-call rows.
    assert lengths["episodes"] == {
        "1": {"n": 1, "p50": 8, "p90": 8, "max": 8},
        "2": {"n": 2, "p50": 11, "p90": 11, "max": 11},
    }
    assert mixdata.generation_lengths([([0, 0], 1)]) == {}


def test_an_adapters_lengths_are_its_own_clusters_turns_on_rendered_traces(
    tmp_path: Path, tiny_model_dir: Path, mix_dir: Path, tokenizer
) -> None:
    from pipelines.sft import stage as sft_stage

    config = config_on_mix(tmp_path, tiny_model_dir, mix_dir)
    mix = sft_stage.load_screened_mix(config, len(tokenizer))
    selection = mixdata.select(mix.train_screen, "tool", replay_fraction=0.5, seed=0)
    assert selection.replay_rows > 0
    lengths = sft_stage._generation_lengths(mix, selection)
    # Each weather trace makes one call: a plan-and-call turn, then the answer; replay rows are not counted.
    rows = mix.train.select(selection.indices[: selection.cluster_rows])
    assert lengths["replies"]["n"] == 2 * len(rows) and set(lengths["episodes"]) == {"1"}
    episodes = sorted(len(r["input_ids"]) - r["assistant_masks"].index(1) for r in rows)
    assert lengths["episodes"]["1"] == {
        "n": len(rows),
        "p50": episodes[2],
        "p90": episodes[3],
        "max": episodes[3],
    }
    for row in rows:  # the last labelled run is the answer the trace wrote
        last = max(i for i, bit in enumerate(row["assistant_masks"]) if bit)
        first = last
        while row["assistant_masks"][first - 1]:
            first -= 1
        assert "degrees C" in tokenizer.decode(row["input_ids"][first : last + 1])
    selection.generation_lengths = lengths
    assert selection.summary()["generation_lengths"] == lengths


def test_screen_rejects_rows_and_missing_cluster_names_the_mix(mix_dir: Path, tmp_path: Path) -> None:
    mix = mixdata.load_mix(mix_dir, "train", tmp_path / "cache")
    longest = max(mix["n_tokens"])
    screened = mixdata.screen(mix, "train", max_length=longest - 1, vocab_size=49152)
    too_long = [row_id for row_id, n in zip(mix["id"], mix["n_tokens"], strict=True) if n == longest]
    assert [r["id"] for r in screened.rejects] == too_long
    assert {r["reason"] for r in screened.rejects} == {f"longer than sft.train.max_length={longest - 1}"}
    assert screened.usable.sum() == len(mix) - len(too_long)
    with pytest.raises(
        BadInput,
        match=r"cluster 'nope' has no rows in the train mix; clusters in the mix: "
        r"notes, plan, reflect, text, tool",
    ):
        mixdata.check_clusters(screened, ["plan", "nope"])
    with pytest.raises(BadInput, match="token id .* >= the model's vocabulary size 100"):
        mixdata.screen(mix, "train", max_length=4096, vocab_size=100)


def test_stage_input_errors(tmp_path: Path, tiny_model_dir: Path, mix_dir: Path) -> None:
    with pytest.raises(BadInput, match="manifest.json: missing; build the mix first"):
        run(make_config(tmp_path, tiny_model_dir))
    config = config_on_mix(tmp_path, tiny_model_dir, mix_dir, clusters=["plan", "nope"])
    with pytest.raises(BadInput, match="cluster 'nope' has no rows"):
        run(config)
    with pytest.raises(BadInput, match=r"--clusters: \['code'\] not in sft.clusters"):
        run(config, clusters=["code"])
    # A mix rendered in another tool format than the model's (a run folder from before a format switch).
    native = config.model_copy(update={"model": config.model.model_copy(update={"tool_format": "smollm2"})})
    with pytest.raises(
        BadInput, match="rendered in the 'hermes' tool-call format, but this config's model writes"
    ):
        run(native)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU defaults")
def test_qlora_lora_and_precision_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.run_config import LoraSection, ModelSection, QuantSection, TrainSection
    from pipelines.sft.model import lora_config, model_dtype, precision_flags, quantization_config

    nf4 = quantization_config(QuantSection())
    assert (nf4.load_in_4bit, nf4.bnb_4bit_quant_type, nf4.bnb_4bit_use_double_quant) == (True, "nf4", True)
    assert (nf4.bnb_4bit_compute_dtype, nf4.bnb_4bit_quant_storage) == (torch.float32, torch.uint8)
    assert quantization_config(QuantSection(mode="none")) is None
    # Under FSDP the 4-bit weights must be stored in the (float) dtype the rest of the model uses.
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    bf16 = QuantSection(compute_dtype="bfloat16")
    assert quantization_config(bf16).bnb_4bit_quant_storage == torch.bfloat16
    assert model_dtype(ModelSection(), bf16) == torch.bfloat16
    lora = lora_config(LoraSection(r=8))
    assert (lora.r, lora.lora_alpha, lora.bias, lora.use_dora, lora.modules_to_save) == (
        8,
        32,
        "none",
        False,
        None,
    )
    assert lora.target_modules == "all-linear" and lora.task_type == "CAUSAL_LM"
    assert precision_flags(TrainSection()) == (False, False)  # auto: float32 on CPU
    # bf16 on CPU is autocast (accelerate's CPU bf16): an explicit choice, allowed; fp16 needs CUDA.
    assert precision_flags(TrainSection(mixed_precision="bf16")) == (True, False)
    with pytest.raises(BadInput, match="mixed_precision=fp16 needs a CUDA GPU"):
        precision_flags(TrainSection(mixed_precision="fp16"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU choice")
def test_if_native_precision_follows_the_cpus_bf16_instructions(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The CPU configs' `bf16-if-native`: bf16 autocast and bf16 NF4 compute where the CPU has AMX-BF16 or
    AVX512-BF16, float32 where it would emulate bf16 (88x slower per matmul on an AVX2 EPYC); an unreadable
    /proc/cpuinfo counts as without."""
    from pipelines.run_config import QuantSection, TrainSection
    from pipelines.sft import model

    train, quant = (
        TrainSection(mixed_precision="bf16-if-native"),
        QuantSection(compute_dtype="bfloat16-if-native"),
    )
    # This machine's own answer first: whatever its flags say, both keys follow them together.
    native = model.cpu_has_native_bf16() is True
    assert model.precision_flags(train) == (native, False)
    assert model.compute_dtype(quant) == (torch.bfloat16 if native else torch.float32)
    for flags, expected in ((True, torch.bfloat16), (False, torch.float32), (None, torch.float32)):
        monkeypatch.setattr(model, "cpu_has_native_bf16", lambda flags=flags: flags)
        assert model.precision_flags(train) == (expected == torch.bfloat16, False)
        assert model.compute_dtype(quant) == expected
        assert model.quantization_config(quant).bnb_4bit_compute_dtype == expected
        # `auto` keeps its meaning (bf16 on CUDA only), whatever the CPU has.
        assert model.precision_flags(TrainSection()) == (False, False)
    # An explicit bf16 is kept where the CPU would emulate it, and the log says what it costs.
    monkeypatch.setattr(model, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="midtrain.sft"):
        assert model.precision_flags(TrainSection(mixed_precision="bf16")) == (True, False)
        bf16 = model.quantization_config(QuantSection(compute_dtype="bfloat16"))
    assert bf16.bnb_4bit_compute_dtype == torch.bfloat16
    warnings = [r.getMessage() for r in caplog.records if r.name == "midtrain.sft"]
    assert len(warnings) == 2 and all("~90x slower than float32" in w for w in warnings), warnings


def test_cpu_bf16_flags_are_read_from_proc_cpuinfo(tmp_path: Path) -> None:
    from pipelines.sft.model import cpu_has_native_bf16

    # Excerpts of the flags line of an AVX2-only AMD EPYC (Zen 1, this project's box in session 24) and of a
    # Sapphire Rapids Xeon with AMX.
    epyc = "flags\t\t: fpu vme de pse sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 sha_ni\n"
    xeon = "flags\t\t: fpu avx avx2 avx512f avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8\n"
    for text, expected in ((epyc, False), (xeon, True)):
        (tmp_path / "cpuinfo").write_text(text)
        assert cpu_has_native_bf16(tmp_path / "cpuinfo") is expected
    assert cpu_has_native_bf16(tmp_path / "absent") is None  # not Linux: cannot tell


# --- training on the tiny model --------------------------------------------------------------------------


def test_labels_are_masked_exactly_where_assistant_masks_is_zero(
    tmp_path: Path, tiny_model_dir: Path, mix_dir: Path, tokenizer
) -> None:
    from pipelines.sft.stage import build_trainer, load_screened_mix

    config = config_on_mix(tmp_path, tiny_model_dir, mix_dir)
    mix = load_screened_mix(config, len(tokenizer))
    source = {tuple(r["input_ids"]): r["assistant_masks"] for r in mix.train}
    trainer = build_trainer(config, "plan", tmp_path / "out", mix.train, None, tokenizer, [])
    checked = 0
    for packed in trainer.train_dataset:
        start = 0
        for length in packed["seq_lengths"]:
            ids = packed["input_ids"][start : start + length]
            mask = source[tuple(ids)]
            expected = [t if m else -100 for t, m in zip(ids, mask, strict=True)]
            assert packed["labels"][start : start + length] == expected
            start += length
            checked += 1
    assert checked == len(mix.train)
    batch = next(iter(trainer.get_train_dataloader()))
    # Padding-free: one flat row, no attention mask; a sequence's first token has nothing to predict it.
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1
    assert (batch["labels"][batch["position_ids"] == 0] == -100).all()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU defaults")
def test_qlora_base_is_nf4_and_adapters_stay_float32(
    tmp_path: Path, tiny_model_dir: Path, mix_dir: Path, tokenizer
) -> None:
    import bitsandbytes as bnb

    from pipelines.sft.stage import build_trainer, load_screened_mix

    config = config_on_mix(tmp_path, tiny_model_dir, mix_dir, quantization={"mode": "nf4"})
    mix = load_screened_mix(config, len(tokenizer))
    trainer = build_trainer(config, "plan", tmp_path / "out", mix.train, None, tokenizer, [])
    assert trainer.model.is_loaded_in_4bit
    linear4 = [m for m in trainer.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linear4) == 14 and all(m.weight.quant_type == "nf4" for m in linear4)  # 7 per layer
    trainable = {n: p.dtype for n, p in trainer.model.named_parameters() if p.requires_grad}
    # TRL casts them to bf16; on a float32-compute CPU run they must come back to float32.
    assert trainable and all("lora_" in n for n in trainable)
    assert set(trainable.values()) == {torch.float32}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU bf16 path")
def test_cpu_bf16_trains_nf4_under_autocast_with_float32_adapters(
    tmp_path: Path, tiny_model_dir: Path, mix_dir: Path, tokenizer
) -> None:
    """The CPU configs' fast path: NF4 with bf16 compute under bf16 autocast; LoRA weights stay float32
    (master weights), the base and LoRA matmuls run in bf16."""
    import bitsandbytes as bnb

    from pipelines.sft.stage import build_trainer, load_screened_mix

    config = config_on_mix(
        tmp_path,
        tiny_model_dir,
        mix_dir,
        quantization={"mode": "nf4", "compute_dtype": "bfloat16"},
        train={"mixed_precision": "bf16", "max_steps": 1},
    )
    mix = load_screened_mix(config, len(tokenizer))
    trainer = build_trainer(config, "plan", tmp_path / "out", mix.train, None, tokenizer, [])
    assert trainer.args.bf16 and not trainer.args.fp16
    trainable = {p.dtype for p in trainer.model.parameters() if p.requires_grad}
    assert trainable == {torch.float32}
    layer = next(m for m in trainer.model.modules() if isinstance(m, bnb.nn.Linear4bit))
    dtypes: list[torch.dtype] = []
    layer.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    # PEFT's NF4 LoRA layer would copy each bf16 input to float32 (the adapter's dtype) under CPU autocast;
    # the stage leaves it to autocast (`leave_input_dtype_to_autocast`).
    lora_inputs: set[torch.dtype] = set()
    for name, module in trainer.model.named_modules():
        if name.endswith("lora_A.default"):
            module.register_forward_pre_hook(lambda module, args: lora_inputs.add(args[0].dtype))
    trainer.train()
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert lora_inputs == {torch.bfloat16}
    assert {p.dtype for p in trainer.model.parameters() if p.requires_grad} == {torch.float32}


@pytest.mark.parametrize("model_dir", ["tiny_model_dir", "embedded_model_dir"])
def test_the_cpu_lm_head_projects_only_labelled_positions_with_the_same_loss_and_gradients(
    model_dir: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`project_only_labelled_positions`: TRL's fused head scores only positions with a label on CPU too (~30%
    of a tool trace's), with the loss, metrics and gradients of scoring every position (float32 here; under bf16
    autocast the two differ by rounding only). It replaces a name in the pinned TRL's `trainer.utils`: this fails
    if that name moves."""
    from transformers import AutoModelForCausalLM
    from trl.kernels import chunked_logprob
    from trl.trainer import utils as trl_utils

    from pipelines.sft.model import project_only_labelled_positions

    # From TRL's own choice (an earlier `build_trainer` in this process has already wrapped it), restored after.
    monkeypatch.setattr(trl_utils, "_use_triton", chunked_logprob._use_triton)
    model = AutoModelForCausalLM.from_pretrained(request.getfixturevalue(model_dir), dtype=torch.float32)
    trl_utils.add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, model.config.vocab_size, (2, 96), generator=generator)
    labels = input_ids.clone()
    labels[torch.rand(labels.shape, generator=generator) < 0.7] = -100  # a prompt-heavy trace's share
    rows: list[int] = []
    apply = trl_utils._ChunkedLogProbFunction.apply
    monkeypatch.setattr(
        trl_utils._ChunkedLogProbFunction,
        "apply",
        lambda hidden, *a: rows.append(len(hidden)) or apply(hidden, *a),
    )

    def scored() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        model.zero_grad()
        out = model(input_ids=input_ids, labels=labels, fused_lm_head=True)
        out.loss.backward()
        fields = {k: getattr(out, k).detach() for k in ("loss", "log_probs", "entropy", "is_top1")}
        return fields, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    every_position, every_grad = scored()
    project_only_labelled_positions()
    wrapped = trl_utils._use_triton
    project_only_labelled_positions()  # every trainer build calls it: wraps once
    assert trl_utils._use_triton is wrapped
    labelled_only, labelled_grad = scored()
    labelled = int((labels[:, 1:] != -100).sum())
    assert rows == [2 * 95, labelled] and labelled < 0.4 * 2 * 95
    for name, value in every_position.items():
        torch.testing.assert_close(labelled_only[name], value, rtol=1e-5, atol=1e-5, msg=name)
    assert every_grad.keys() == labelled_grad.keys() and len(every_grad) == len(list(model.parameters()))
    for name, grad in every_grad.items():
        torch.testing.assert_close(labelled_grad[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_train_updates_lora_only_loss_falls_and_outputs_load(
    tmp_path: Path, tiny_model_dir: Path, tokenizer
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    # Two short documents repeated for 20 steps (docs keep the steps cheap; traces are covered elsewhere).
    config = make_config(
        tmp_path,
        tiny_model_dir,
        clusters=["text"],
        replay_fraction=0.0,
        train={"max_steps": 20, "learning_rate": 2e-2, "save_steps": 10, "warmup_ratio": 0.0},
    )
    write_mix(config.run_dir / "data", tokenizer, mix_traces(2), [_doc_trace(5)])
    snapshots = ParamSnapshots()
    summary = run(config, callbacks=[snapshots]).adapters["text"]

    lora = [n for n in snapshots.begin if "lora_" in n]
    assert lora and all(not torch.equal(snapshots.begin[n], snapshots.end[n]) for n in lora)
    base = [n for n in snapshots.begin if "lora_" not in n]
    assert base and all(torch.equal(snapshots.begin[n], snapshots.end[n]) for n in base)

    losses = _logged_losses(config.run_dir / "sft" / "text")
    # The random tiny model's small tied embeddings cap how far the loss can fall (a few tenths of a nat),
    # so token accuracy is the clearer signal that the docs were learned.
    assert len(losses) == 20 and np.mean([losses[s] for s in (18, 19, 20)]) < losses[1] - 0.25
    accuracy = _logged_losses(config.run_dir / "sft" / "text", key="mean_token_accuracy")
    assert accuracy[20] > max(0.25, 3 * accuracy[1])

    out = config.run_dir / "sft" / "text"
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "chat_template.jinja"):
        assert (out / name).is_file(), name
    assert (out / "loss.png").stat().st_size > 1000
    assert check_vllm_compatible(out) == []
    stored = json.loads((out / "training_summary.json").read_text())
    assert stored["steps"] == summary.steps == 20
    # Both docs fit one packed row, so every step sees exactly their real (unpadded) tokens.
    doc_tokens = sum(len(tokenizer(t.text)["input_ids"]) + 1 for t in mix_traces(2) if t.kind == "text")
    assert stored["tokens_seen"] == 20 * doc_tokens
    assert stored["peak_memory_bytes"] > 0 and stored["wall_time_s"] > 0
    assert math.isclose(stored["final_train_loss"], losses[20])
    assert stored["final_eval_loss"] is not None and stored["data"]["eval_rows"] == 1
    assert stored["data"]["cluster_rows"] == 2 and len(stored["config_fingerprint"]) == 64

    base_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    loaded = PeftModel.from_pretrained(base_model, out)
    loaded_lora = {n.replace(".default", ""): p for n, p in loaded.named_parameters() if "lora_" in n}
    trained = {n.replace(".default", ""): snapshots.end[n] for n in lora}
    assert loaded_lora.keys() == trained.keys()
    assert all(torch.allclose(loaded_lora[n], trained[n]) for n in trained)


def test_resume_after_kill_matches_uninterrupted(tmp_path: Path, tiny_model_dir: Path, mix_dir: Path) -> None:
    # 8 rows at batch 2 = 4 steps an epoch: the kill lands mid-epoch and the resumed run crosses an epoch.
    # Dropout on, so the checkpoint must restore the RNG state too.
    notes = {"clusters": ["notes"], "replay_fraction": 0.0, "lora": {"dropout": 0.1}}
    train = {"max_steps": 6, "save_steps": 3, "max_length": 64, "per_device_train_batch_size": 2,
             "save_total_limit": None}  # fmt: skip
    # The uninterrupted run keeps its checkpoints (a training curve's points); that is not fingerprinted.
    straight = config_on_mix(
        tmp_path / "a", tiny_model_dir, mix_dir, train=train, keep_checkpoints=True, **notes
    )
    run(straight)
    killed = config_on_mix(tmp_path / "b", tiny_model_dir, mix_dir, train=train, **notes)
    with pytest.raises(KeyboardInterrupt):
        run(killed, callbacks=[CrashAt(3)])
    out = killed.run_dir / "sft" / "notes"
    assert (out / "checkpoint-3").is_dir() and not (out / "training_summary.json").exists()
    summary = run(killed).adapters["notes"]  # no flag: an interrupted adapter with the same config resumes
    assert not list(out.glob("checkpoint-*"))

    assert summary.resumed_from_step == 3 and summary.steps == 6
    expected = _logged_losses(straight.run_dir / "sft" / "notes")
    resumed = _logged_losses(killed.run_dir / "sft" / "notes")
    assert sorted(resumed) == list(range(1, 7))
    for step in range(1, 7):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step
    a = SFTSummary.read(straight.run_dir / "sft" / "notes")
    assert summary.tokens_seen == a.tokens_seen
    assert summary.final_train_loss == pytest.approx(a.final_train_loss, rel=1e-6)
    weights_a = load_file(straight.run_dir / "sft" / "notes" / "adapter_model.safetensors")
    weights_b = load_file(killed.run_dir / "sft" / "notes" / "adapter_model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.allclose(weights_a[k], weights_b[k], atol=1e-6) for k in weights_a)
    kept = sorted(p.name for p in (straight.run_dir / "sft" / "notes").glob("checkpoint-*"))
    assert kept == ["checkpoint-3", "checkpoint-6"] and a.config_fingerprint == summary.config_fingerprint
    last = load_file(straight.run_dir / "sft" / "notes" / "checkpoint-6" / "adapter_model.safetensors")
    assert all(torch.equal(last[k], weights_a[k]) for k in weights_a)
    # A finished adapter is kept by the next run; --restart trains it again.
    assert run(killed).adapters["notes"].wall_time_s == summary.wall_time_s
    assert run(killed, restart=True).adapters["notes"].wall_time_s != summary.wall_time_s


def test_an_edited_interrupted_run_starts_the_changed_adapter_over(
    tmp_path: Path, tiny_model_dir: Path, mix_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Kill mid-training, edit `sft`, run again: the stale checkpoint is not resumed (other weights would
    continue under a new config) and nothing asks for a flag: the adapter starts over, with a warning."""
    notes = {"clusters": ["notes"], "replay_fraction": 0.0}
    train = {"max_steps": 4, "save_steps": 2, "max_length": 64, "per_device_train_batch_size": 2}
    killed = config_on_mix(tmp_path, tiny_model_dir, mix_dir, train=train, **notes)
    with pytest.raises(KeyboardInterrupt):
        run(killed, callbacks=[CrashAt(2)])
    edited = killed.model_copy(deep=True)
    edited.sft.train.learning_rate = 2e-3
    with caplog.at_level("WARNING", logger="midtrain"):
        summary = run(edited).adapters["notes"]
    assert summary.resumed_from_step == 0 and summary.steps == 4
    assert "config or its inputs changed" in caplog.text and "starting it over" in caplog.text


def test_adding_a_cluster_to_a_finished_run_trains_only_the_new_adapter(
    tmp_path: Path, tiny_model_dir: Path, mix_dir: Path
) -> None:
    """Through `midtrain run`'s own stage runner: the sft stage's fingerprint changes with `sft.clusters`, so
    the stage runs again, and its units keep the finished adapter whose own fingerprint did not change."""
    from pipelines import run as pipeline

    train = {"max_steps": 2, "max_length": 1024, "save_steps": 100}
    first = config_on_mix(
        tmp_path, tiny_model_dir, mix_dir, clusters=["notes"], replay_fraction=0.0, train=train
    )
    pipeline.run_stage(first, "sft", pipeline.fingerprints(first)["sft"])
    kept = SFTSummary.read(first.run_dir / "sft" / "notes")
    second = first.model_copy(deep=True)
    second.sft.clusters = ["notes", "plan"]
    assert pipeline.fingerprints(second)["sft"] != pipeline.fingerprints(first)["sft"]
    assert [stage.name for stage, must in pipeline.plan(second, only="sft") if must] == ["sft"]
    result = pipeline.run_stage(second, "sft", pipeline.fingerprints(second)["sft"])
    assert result.summary["adapters"]["notes"] == kept.model_dump(mode="json")
    assert SFTSummary.read(second.run_dir / "sft" / "plan").steps == 2


def test_cluster_train_gives_each_adapter_its_own_steps_and_fingerprint(
    tmp_path: Path, tiny_model_dir: Path, mix_dir: Path
) -> None:
    """`sft.cluster_train.plan.max_steps` trains `plan` that long and `notes` as `sft.train` says; changing
    `plan`'s keys leaves `notes` finished (its fingerprint is its own)."""
    from pipelines import run as pipeline

    train = {"max_steps": 1, "max_length": 1024, "save_steps": 100}
    first = config_on_mix(
        tmp_path, tiny_model_dir, mix_dir, clusters=["notes", "plan"], replay_fraction=0.0, train=train,
        cluster_train={"plan": {"max_steps": 2, "learning_rate": 5e-4}},
    )  # fmt: skip
    pipeline.run_stage(first, "sft", pipeline.fingerprints(first)["sft"])
    notes, plan = (SFTSummary.read(first.run_dir / "sft" / name) for name in ("notes", "plan"))
    assert (notes.steps, plan.steps) == (1, 2)
    second = first.model_copy(deep=True)
    assert second.sft is not None
    second.sft.cluster_train = {"plan": {"max_steps": 3}}
    result = pipeline.run_stage(second, "sft", pipeline.fingerprints(second)["sft"])
    assert result.summary["adapters"]["notes"] == notes.model_dump(mode="json")
    assert SFTSummary.read(second.run_dir / "sft" / "plan").steps == 3


def test_grad_accumulation_matches_larger_batch(tmp_path: Path, tiny_model_dir: Path, mix_dir: Path) -> None:
    """bs1×ga4 and bs4×ga1 see the same packed rows per step; TRL divides each micro-batch's summed token
    loss by the tokens of the whole accumulated batch, so rows of different lengths weigh the same in both."""
    common = {"max_steps": 2, "max_length": 64, "save_steps": 100}  # 8 notes = 8 packed rows = 2 steps of 4
    notes = {"clusters": ["notes"], "replay_fraction": 0.0}
    one = config_on_mix(
        tmp_path / "ga",
        tiny_model_dir,
        mix_dir,
        **notes,
        train={**common, "per_device_train_batch_size": 1, "gradient_accumulation_steps": 4},
    )
    four = config_on_mix(
        tmp_path / "bs",
        tiny_model_dir,
        mix_dir,
        **notes,
        train={**common, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1},
    )
    run(one)
    run(four)
    a = _logged_losses(one.run_dir / "sft" / "notes")
    b = _logged_losses(four.run_dir / "sft" / "notes")
    assert sorted(a) == sorted(b) == [1, 2]
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-4), step


def _wandb_records(path: Path) -> list[Any]:
    """Records of an offline `.wandb` file: a LevelDB-style log (32 KiB blocks of checksum/length/type
    chunks, after a 7-byte W&B header) of protobuf `Record`s."""
    from wandb.proto import wandb_internal_pb2

    raw, pos, block, payload, records = path.read_bytes(), 7, 32768, b"", []
    while pos + 7 <= len(raw):
        left = block - pos % block
        _crc, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        if left < 7 or (length == 0 and kind == 0):
            pos += left
            continue
        payload += raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk: a record is complete
            record = wandb_internal_pb2.Record()
            record.ParseFromString(payload)
            records.append(record)
            payload = b""
    return records


def test_wandb_offline_logs_config_manifest_hash_and_losses(
    tmp_path: Path, tiny_model_dir: Path, mix_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = config_on_mix(tmp_path, tiny_model_dir, mix_dir, clusters=["plan"], train={"max_steps": 2})
    config.tracking.report_to = ["wandb"]
    caplog.set_level(logging.INFO, logger="midtrain")
    summary = run(config).adapters["plan"]
    runs = list((config.run_dir / "wandb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert f"upload it with: wandb sync {runs[0]}" in caplog.text  # the offline run's way to the server
    records = _wandb_records(next(runs[0].glob("run-*.wandb")))
    kinds = [r.WhichOneof("record_type") for r in records]
    config_items = {
        item.key: item.value_json
        for r in records
        for item in (r.run.config.update if r.WhichOneof("record_type") == "run" else r.config.update)
    }
    assert json.loads(config_items["data_manifest_sha256"]) == summary.data_manifest_sha256
    assert json.loads(config_items["midtrain"])["sft"]["lora"]["r"] == 4
    history = [
        {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.history.item
    ]
    assert len([row["train/loss"] for row in history if "train/loss" in row]) == 2
    assert [row["eval/loss"] for row in history if "eval/loss" in row] == [summary.final_eval_loss]
    assert kinds.count("exit") == 1


# --- vLLM compatibility ------------------------------------------------------------------------------------


Q_PROJ = "base_model.model.model.layers.0.self_attn.q_proj"
PLAIN_LORA = {f"{Q_PROJ}.lora_A.weight": (16, 8), f"{Q_PROJ}.lora_B.weight": (8, 16)}


def write_adapter(path: Path, change: dict | None = None, tensors: dict | None = None) -> Path:
    """adapter_config.json + a real safetensors file whose tensor names and shapes are `tensors`."""
    from safetensors.numpy import save_file

    config = {"peft_type": "LORA", "r": 16, "lora_alpha": 32, "bias": "none", "use_dora": False}
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps(config | (change or {})))
    shapes = PLAIN_LORA if tensors is None else tensors
    save_file(
        {k: np.zeros(s, np.float32) for k, s in shapes.items()}, str(path / "adapter_model.safetensors")
    )
    return path


@pytest.mark.parametrize(
    ("change", "tensors", "problem"),
    [
        ({"r": 1024}, None, "rank 1024 > 512"),
        ({"rank_pattern": {"q_proj": 1024}}, None, "rank 1024 > 512"),
        ({"use_dora": True}, None, "use_dora is set"),
        ({"lora_bias": True}, None, "lora_bias is set"),
        ({"init_lora_weights": "pissa"}, None, "init_lora_weights is 'pissa'"),
        ({"modules_to_save": ["lm_head"]}, None, "modules_to_save ['lm_head'] is set"),
        ({"bias": "lora_only"}, None, "bias is 'lora_only'"),
        # What PEFT writes for DoRA magnitudes and LoRA biases: vLLM raises "... is unsupported LoRA weight".
        ({}, PLAIN_LORA | {f"{Q_PROJ}.lora_magnitude_vector": (16,)}, "tensors vLLM cannot parse"),
        ({}, PLAIN_LORA | {f"{Q_PROJ}.lora_B.bias": (16,)}, f"{Q_PROJ}.lora_B.bias"),
    ],
)
def test_vllm_check_catches_unservable_adapters(
    tmp_path: Path, change: dict, tensors: dict | None, problem: str
) -> None:
    assert check_vllm_compatible(write_adapter(tmp_path / "ok")) == []
    problems = check_vllm_compatible(write_adapter(tmp_path / "bad", change, tensors))
    assert len(problems) == 1 and problem in problems[0]


def test_vllm_check_reads_embedding_widths_and_skips_base_embeddings(tmp_path: Path) -> None:
    embed = "base_model.model.model.embed_tokens"
    tensors = PLAIN_LORA | {
        f"{embed}.lora_embedding_A": (16, 100),
        f"{embed}.lora_embedding_B": (64, 16),
        f"{embed}.base_layer.weight": (100, 64),  # vLLM skips these on purpose
    }
    adapter = write_adapter(tmp_path, tensors=tensors)
    assert check_vllm_compatible(adapter) == [] and check_vllm_compatible(adapter, base_vocab_size=100) == []
    (problem,) = check_vllm_compatible(adapter, base_vocab_size=120)
    assert "embedding LoRA width 100 != the base vocabulary 120" in problem


def test_vllm_check_reports_missing_and_unreadable_files(tmp_path: Path) -> None:
    assert "missing" in check_vllm_compatible(tmp_path)[0]
    (tmp_path / "adapter_config.json").write_text('{"r": 8}')
    assert "no adapter weights" in check_vllm_compatible(tmp_path)[0]
    (tmp_path / "adapter_model.safetensors").write_bytes(b"truncated")
    assert "cannot read the adapter weights" in check_vllm_compatible(tmp_path)[0]


def test_cli_bad_cluster_exits_2(tmp_path: Path, tiny_model_dir: Path, mix_dir: Path) -> None:
    config = config_on_mix(tmp_path, tiny_model_dir, mix_dir)
    path = tmp_path / "run.yaml"
    payload = config.model_dump(mode="json")
    path.write_text(json.dumps(payload))
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "sft", str(path), "--clusters", "plan,bogus"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=False,
    )
    assert result.returncode == 2
    assert "--clusters: ['bogus'] not in sft.clusters" in result.stderr


# --- the embedded model ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_nf4_cluster_adapters_on_the_embedded_model(
    tmp_path: Path, embedded_model_dir: Path, tokenizer
) -> None:
    """Kept small (CPU time): a chat-trace cluster and a doc cluster, 2 steps of one short packed row each."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = make_config(
        tmp_path,
        embedded_model_dir,
        clusters=["plan", "notes"],
        replay_fraction=0.0,
        quantization={"mode": "nf4"},
        train={"max_steps": 2, "save_steps": 2},
    )
    write_mix(config.run_dir / "data", tokenizer, [_chat_trace(i, "plan") for i in range(2)] + note_traces(2))
    summaries = run(config).adapters
    assert sorted(summaries) == ["notes", "plan"]
    base = AutoModelForCausalLM.from_pretrained(embedded_model_dir)
    for name, summary in summaries.items():
        out = config.run_dir / "sft" / name
        assert summary.quantized and summary.steps == 2 and math.isfinite(summary.final_train_loss)
        assert check_vllm_compatible(out) == []
        model = PeftModel.from_pretrained(base, out, adapter_name=name)
        lora_b = [p for n, p in model.named_parameters() if "lora_B" in n and name in n]
        assert lora_b and all(p.abs().sum() > 0 for p in lora_b)
        base = model.unload()


def test_float32_adapters_under_bf16_autocast_make_no_float32_copies_of_their_inputs(
    tiny_model_dir: Path,
) -> None:
    """Float32 LoRA weights over a bf16 base: under autocast the LoRA inputs stay bf16 (autocast casts them for
    the matmul anyway) where PEFT would copy each to float32; outside autocast PEFT still casts, so a plain
    forward works; the logits under autocast are those PEFT's own cast gives."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from pipelines.sft.model import leave_input_dtype_to_autocast

    def lora_model() -> Any:
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
        model = get_peft_model(base, LoraConfig(r=8, target_modules="all-linear", lora_dropout=0.0))
        for param in model.parameters():
            if param.requires_grad:
                param.data = param.data.float()
                torch.nn.init.normal_(param, std=0.02)  # lora_B starts at zero: make the adapter count
        return model

    def lora_input_dtypes_and_logits(model: Any, ids: torch.Tensor) -> tuple[set[torch.dtype], torch.Tensor]:
        seen: set[torch.dtype] = set()
        hooks = [
            m.register_forward_pre_hook(lambda _, args: seen.add(args[0].dtype))
            for name, m in model.named_modules()
            if name.endswith("lora_A.default")
        ]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=ids).logits
        for hook in hooks:
            hook.remove()
        return seen, logits.detach().float()

    plain, ours = lora_model(), lora_model()
    leave_input_dtype_to_autocast(ours)
    ids = torch.randint(0, 100, (2, 64))
    plain_dtypes, plain_logits = lora_input_dtypes_and_logits(plain, ids)
    our_dtypes, our_logits = lora_input_dtypes_and_logits(ours, ids)
    assert plain_dtypes == {torch.float32} and our_dtypes == {torch.bfloat16}
    assert torch.allclose(our_logits, plain_logits)
    with torch.no_grad():  # no autocast: PEFT casts the bf16 input to the float32 weights, as before
        assert ours(input_ids=ids).logits.isfinite().all()
