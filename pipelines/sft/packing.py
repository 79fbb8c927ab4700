"""Packed documents must not attend to each other: the check that the model honours document boundaries.

TRL's padding-free packing (`sft.train.packing`) puts several documents in one row with `position_ids` restarting
at 0 per document, `cu_seq_lens_q/k` for the varlen kernels, and no `attention_mask`. Where each attention
implementation takes the boundaries from (transformers 5.13-5.25, TRL 1.16):

- flash-attention 2/3 (varlen): from `cu_seq_lens_*`;
- sdpa, eager, flex_attention: from the `position_ids`. `masking_utils.create_causal_mask` finds the restarts
  (`find_packed_sequence_indices`) and builds a block-diagonal causal mask, but only when the forward gets no
  `attention_mask` and no KV cache. TRL's `SFTTrainer.compute_loss` passes `use_cache=False`, so training and
  evaluation batches are isolated. A direct `model(**batch)` keeps the config's `use_cache=True`, builds a cache,
  skips the detection, and every document after the first attends to the ones before it (measured on the
  embedded SmolLM2-135M: logits of the second document change by up to 25.8).

A model whose modeling code builds its mask another way (remote code, an older architecture) or a custom
attention kernel would leak the same way, silently. So before training the stage runs `check_isolation`: two
documents through the trainer's own collator and model, packed and alone, forwarded as `compute_loss` forwards
them; a packed row that changes the second document's logits stops the run with the fix to apply.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pipelines.errors import BadInput

log = logging.getLogger("midtrain.sft")

# Mean |Δlogit| of a document packed vs alone, in units of the std of its logits alone. A leak measured 0.40
# (random 2-layer model) and 0.55 (SmolLM2-135M; 0.62 in NF4). An isolated row measured 0 to 1e-6 on CPU in
# float32 and NF4 (eager, sdpa, flex_attention). Kernels whose rounding depends on the row's shape (bitsandbytes'
# CPU inference kernel measured 0.003-0.005 on the first document, 0.007-0.013 on the second; GPU kernels may
# too) move the first document as well, whose context is the same packed or alone: it is the control, and the
# second may differ by LEAK_TOLERANCE, or by NOISE_FACTOR x the control.
LEAK_TOLERANCE = 0.05
NOISE_FACTOR = 4.0
PROBE_LENGTHS = (24, 16)


@dataclass(frozen=True)
class Isolation:
    attn_implementation: str
    leak: float  # the second document's change when packed after the first
    noise: float  # the first document's change (same context either way: numerics only)

    @property
    def isolated(self) -> bool:
        return self.leak <= max(LEAK_TOLERANCE, NOISE_FACTOR * self.noise)


def probe_documents(vocab_size: int, lengths: tuple[int, ...] = PROBE_LENGTHS) -> list[list[int]]:
    """Fixed token sequences (the same every run); ids from the middle of the vocabulary, clear of specials."""
    import torch

    generator = torch.Generator().manual_seed(0)
    low, high = vocab_size // 8, vocab_size // 2
    return [torch.randint(low, high, (n,), generator=generator).tolist() for n in lengths]


def _logits(model: Any, batch: dict[str, Any]) -> Any:
    """The forward `SFTTrainer.compute_loss` runs (no labels: the full logits), on the model's device."""
    import torch

    device = next(model.parameters()).device
    inputs = {
        k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items() if k != "labels"
    }
    return model(**inputs, use_cache=False).logits[0].float()


def measure_isolation(model: Any, collator: Any) -> Isolation:
    """How much packing the first probe document before the second changes the second one's logits."""
    import torch

    first, second = probe_documents(int(model.config.get_text_config().vocab_size))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            packed = _logits(model, collator([{"input_ids": first}, {"input_ids": second}]))
            alone = [_logits(model, collator([{"input_ids": doc}])) for doc in (first, second)]
    finally:
        model.train(was_training)
    noise, leak = (
        ((part - single).abs().mean() / single.std().clamp(min=1e-6)).item()
        for part, single in zip(packed.split([len(first), len(second)]), alone, strict=True)
    )
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None) or "unknown"
    return Isolation(str(impl), leak, noise)


def check_isolation(trainer: Any) -> Isolation | None:
    """Stop before training when packed documents would attend to each other; None when there is nothing to
    probe (no packing, or weights not materialized on this process, e.g. FSDP's meta-device loading)."""
    collator = trainer.data_collator
    if not getattr(collator, "padding_free", False):
        return None
    model = trainer.model
    if any(p.device.type == "meta" for p in model.parameters()):
        log.info("sft: packing isolation not probed on this process (weights on the meta device)")
        return None
    result = measure_isolation(model, collator)
    if not result.isolated:
        raise BadInput(
            f"sft.train.packing: packed documents attend to each other with attention implementation "
            f"{result.attn_implementation!r} (a document's logits change by {result.leak:.2f} std when another "
            f"is packed before it; limit {LEAK_TOLERANCE}, numerical noise {result.noise:.3f}). This model's "
            f"attention does not take document boundaries from position_ids; set sft.train.packing: false "
            f"(padded batches), or load the model with sdpa, eager, flex_attention or flash_attention_2"
        )
    log.info(
        "sft: packed documents isolated (%s: leak %.1e std, numerical noise %.1e)",
        result.attn_implementation,
        result.leak,
        result.noise,
    )
    return result


__all__ = [
    "LEAK_TOLERANCE",
    "NOISE_FACTOR",
    "Isolation",
    "check_isolation",
    "measure_isolation",
    "probe_documents",
]
