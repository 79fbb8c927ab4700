"""Masked grouped-query attention on CPU reads the shared KV heads in place (pipelines/attention.py) and gives
exactly what transformers' own `sdpa` gives, on the tiny model and the embedded one; training keeps
transformers' function."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers.integrations import sdpa_attention
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from pipelines import attention


def _padded_logits(model: Any, use_transformers_sdpa: bool, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Logits of a left-padded batch (so every forward has a mask), with or without midtrain's function."""
    with monkeypatch.context() as patch:
        if use_transformers_sdpa:
            patch.setitem(ALL_ATTENTION_FUNCTIONS, "sdpa", sdpa_attention.sdpa_attention_forward)
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(100, 5000, (3, 24), generator=generator)
        mask = torch.ones_like(ids)
        mask[0, :9], mask[1, :2] = 0, 0
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits
        return logits[mask.bool()]


@pytest.mark.parametrize("which", ["tiny", "embedded"])
def test_grouped_kv_sdpa_equals_transformers_sdpa(
    which: str, tiny_model_dir: Path, embedded_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModelForCausalLM

    folder = tiny_model_dir if which == "tiny" else embedded_model_dir
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert model.config._attn_implementation == "sdpa"
    assert model.config.num_attention_heads > model.config.num_key_value_heads  # grouped: what is tested
    attention.install()
    calls = []
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", _spy(calls))
    ours = _padded_logits(model, use_transformers_sdpa=False, monkeypatch=monkeypatch)
    assert calls and all(calls)  # every layer took the grouped path
    calls.clear()
    theirs = _padded_logits(model, use_transformers_sdpa=True, monkeypatch=monkeypatch)
    assert calls and not any(calls)  # transformers repeated the KV heads itself
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def _spy(calls: list[bool]) -> Any:
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(bool(kwargs.get("enable_gqa")))
        return real(*args, **kwargs)

    return spy


def test_training_and_unmasked_calls_go_to_transformers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a mask, with an argument it does not handle, off the CPU or with gradients on (training: measured
    slower grouped), transformers' function runs; else the grouped path."""
    seen: list[str] = []

    def transformers_sdpa(*args: Any, **kwargs: Any) -> tuple[Any, None]:
        seen.append("transformers")
        return args[1].transpose(1, 2), None

    monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward", transformers_sdpa)
    module = torch.nn.Module()
    module.num_key_value_groups = 3  # type: ignore[assignment]
    query, key = torch.randn(1, 6, 4, 8), torch.randn(1, 2, 4, 8)
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool).tril()
    with torch.no_grad():
        attention.sdpa_grouped_kv(module, query, key, key, None)  # no mask: transformers' enable_gqa path
        attention.sdpa_grouped_kv(module, query, key, key, mask, softcap=30.0)  # not ours to drop
        attention.sdpa_grouped_kv(module, query.to("meta"), key.to("meta"), key.to("meta"), mask.to("meta"))
    attention.sdpa_grouped_kv(module, query.requires_grad_(), key, key, mask)  # training
    assert seen == ["transformers"] * 4
    with torch.no_grad():
        out, _ = attention.sdpa_grouped_kv(module, query, key, key, mask)
    assert seen == ["transformers"] * 4 and out.shape == (1, 4, 6, 8)
