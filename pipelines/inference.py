"""The one inference engine: every reply midtrain generates (eval, the RL stage's held-out loop, serving,
`midtrain chat`, `model chat`), greedy or sampled, comes out of `Engine`, so they decode alike.

- `GenerateFn` is the interface: prompt token ids and an adapter per row, a token budget → new token ids per row.
  Stages depend on it, not on a model; tests inject a stub.
- `Engine` is the real one: one model (a base, or a `PeftModel` with any number of named adapters), rows picked
  per adapter (`None` = the base: adapters off; a folder is attached on first use). One adapter for the whole
  batch takes PEFT's plain path, switched by repointing each LoRA layer (`activate_adapter`); a mixed batch
  uses PEFT's per-row `adapter_names`.
- `greedy_decode` drops each row at its end-of-turn token instead of carrying it to the batch's longest reply,
  and continues from cached KV of a shared prefix: held-out prompts of a domain share the system turn with
  every tool schema, which is most of their tokens.
The KV prefix cache assumes the weights do not change while an engine lives: build a new engine after training
steps (the RL stage builds one per evaluation).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("midtrain.inference")

BASE = "__base__"  # no adapter: PEFT's own name for it in a mixed batch's `adapter_names`
ARROW = "__arrow__"  # a routed row served by an Arrow model (per-token mixing inside that model)
PREFIX_CACHE_MIN_TOKENS = 32  # shorter shared prefixes are not worth a separate forward
PREFIX_CACHE_TOKENS = 16_384  # prefix tokens whose KV is kept (LRU): ~750 MB on the embedded model

# (prompt token ids, adapter per row (None = base, a folder, a loaded adapter's name, ARROW), max new tokens)
#   → generated ids per row, each ending at its end-of-turn token or at the budget
GenerateFn = Callable[[list[list[int]], list[str | None], int], list[list[int]]]


class Engine:
    """A `GenerateFn` over one model and its adapters (see the module docstring)."""

    def __init__(
        self,
        model: Any,
        pad_token_id: int,
        stop_ids: Collection[int],
        end_of_turn_id: int | None = None,
        adapters: dict[str, str] | None = None,
        arrow_model: Any = None,
    ) -> None:
        """`adapters`: folder → name of the adapters already loaded into `model` (a router's); `end_of_turn_id`:
        the token that closes the system turn, for prefix reuse (None: no reuse)."""
        from pipelines import attention

        attention.install()  # masked grouped-query attention without KV copies on CPU (pipelines/attention.py)
        self.model = model
        self.pad_token_id = pad_token_id
        self.stop_ids = set(stop_ids)
        self.end_of_turn_id = end_of_turn_id
        self.names = {str(Path(path).resolve()): name for path, name in (adapters or {}).items()}
        self.loaded = set(self.names.values())
        self.arrow_model = arrow_model
        self.device = next(model.parameters()).device
        self._lora_layers: list[Any] | None = None
        self._prefix_cache: OrderedDict[tuple[str, tuple[int, ...]], Any] = OrderedDict()

    @classmethod
    def for_tokenizer(cls, model: Any, tokenizer: Any, **kwargs: Any) -> Engine:
        """An engine that stops where the tokenizer's codec ends a turn."""
        from pipelines.codecs import codec_for

        codec = codec_for(tokenizer)
        end = tokenizer.convert_tokens_to_ids(codec.end_of_turn)
        end_id = end if isinstance(end, int) and end != getattr(tokenizer, "unk_token_id", None) else None
        return cls(model, tokenizer.pad_token_id, codec.end_of_turn_ids(tokenizer), end_id, **kwargs)

    # -- adapters ---------------------------------------------------------------------------------------------
    def adapter_name(self, adapter: str | None) -> str:
        """The PEFT adapter name serving `adapter` (a folder is attached on first use; None is the base)."""
        if adapter is None or adapter == BASE:
            return BASE
        if adapter in self.loaded or adapter == ARROW:
            return adapter
        key = str(Path(adapter).resolve())
        if key not in self.names:
            from peft import PeftModel

            name = f"{Path(adapter).parent.name}-{Path(adapter).name}"  # e.g. sft-tool
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(adapter, adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, adapter, adapter_name=name)
            self.model.to(self.device).eval()
            self.names[key] = name
            self.loaded.add(name)
            self._lora_layers = None
        return self.names[key]

    def _select(self, names: list[str]) -> tuple[Any, list[str] | None]:
        """(context, adapter_names) for a batch. One adapter for every row takes PEFT's plain path (active adapter,
        or adapters disabled for the base): PEFT's per-row `adapter_names` path costs ~15% more per token on CPU,
        so it is kept for mixed (routed) batches. A model with no named adapters runs as it is."""
        if not self.loaded:
            return contextlib.nullcontext(), None
        if len(set(names)) > 1:
            return contextlib.nullcontext(), names
        if names[0] == BASE:
            return self.model.disable_adapter(), None
        if self._lora_layers is None:
            self._lora_layers = tuner_layers(self.model)
        activate_adapter(self.model, self._lora_layers, names[0])
        return contextlib.nullcontext(), None

    # -- generation -------------------------------------------------------------------------------------------
    def __call__(
        self,
        prompts: list[list[int]],
        adapters: list[str | None],
        max_new_tokens: int,
        pick: Pick | None = None,
        shared_prefixes: list[int] | None = None,
    ) -> list[list[int]]:
        """New ids per row. `pick`: sampling (default greedy); `shared_prefixes`: per row, a prefix length the
        caller knows other rows share (a tree rollout's fork point), reused from cached KV like the system turn."""
        import torch

        names = [self.adapter_name(a) for a in adapters]
        model = self.arrow_model if ARROW in names else self.model
        cached = (
            self._prefix_lengths(prompts, names, shared_prefixes)
            if model is self.model
            else [0] * len(prompts)
        )
        cache = self._batch_cache(prompts, names, cached) if any(cached) else None
        if cache is None:
            cached = [0] * len(prompts)
        input_ids, attention = pad_batch(prompts, cached, self.pad_token_id)
        start = time.perf_counter()
        context, per_row = self._select(names) if model is self.model else (contextlib.nullcontext(), None)
        with context:
            new_ids = greedy_decode(
                model,
                torch.tensor(input_ids, device=self.device),
                torch.tensor(attention, device=self.device),
                cache,
                max_new_tokens,
                self.stop_ids,
                per_row,
                pick,
            )
        log.debug(
            "generate: %d rows, width %d, cached prefixes %s, %d new tokens (longest) in %.1fs",
            len(prompts), len(input_ids[0]), sorted(set(cached)), max(map(len, new_ids)),
            time.perf_counter() - start,
        )  # fmt: skip
        return new_ids

    def sampling(self, temperature: float, seed: int) -> GenerateFn:
        """This engine sampling at `temperature` (`sampler`), one generator seeded with `seed` for every call:
        the same calls in the same order draw the same tokens."""
        return functools.partial(self, pick=sampler(temperature, seed=seed))

    def stream(
        self, prompt: list[int], adapter: str | None, max_new_tokens: int, pick: Pick | None = None
    ) -> Iterator[int]:
        """One request's tokens as they are decoded (the served endpoint's streaming path): the same loop as
        `__call__` on a batch of one, with `pick` for sampling. Closing the iterator stops the decoding."""
        import torch

        name = self.adapter_name(adapter)
        model = self.arrow_model if name == ARROW else self.model
        context, _ = self._select([name]) if model is self.model else (contextlib.nullcontext(), None)
        ids = torch.tensor([prompt], device=self.device)
        with context:
            for step in decode_steps(model, ids, torch.ones_like(ids), None, max_new_tokens, self.stop_ids,
                                     pick=pick):  # fmt: skip
                yield step[0][1]

    # -- prefix KV reuse ----------------------------------------------------------------------------------------
    # Held-out prompts of a domain share the system turn with every tool schema (~1,000 tokens on the embedded
    # model) on every step of every episode. Prefilling it once per adapter instead of once per row and step is
    # most of the eval stage's CPU time; rows of different domains each bring their own cached prefix, so
    # batches stay wide. BFCL examples each have their own tools, so their prompts are prefilled as usual. Each
    # row's cached KV is left-padded to the longest; positions come from the attention mask, so every token
    # keeps the position it has without the cache. Models whose cache is not plain per-layer KV opt out.
    def _prefix_lengths(
        self, prompts: list[list[int]], names: list[str], shared: list[int] | None = None
    ) -> list[int]:
        """Per row, how many leading tokens come from the prefix cache: the caller's shared prefix, else its
        first turn (the system prompt with every tool schema), when that is cached already or shared with
        another row of the batch; else 0. A prefix always leaves at least one token of the row to prefill."""
        if self.end_of_turn_id is None and shared is None:
            return [0] * len(prompts)
        candidates = [  # the caller's prefix first, then the first turn; each length once
            list(dict.fromkeys(min(n, len(p) - 1) for n in (shared[i] if shared else 0, self._turn(p)) if n))
            for i, p in enumerate(prompts)
        ]
        counts = Counter(
            (name, tuple(p[:n])) for p, name, ns in zip(prompts, names, candidates, strict=True) for n in ns
        )
        out = []
        for p, name, ns in zip(prompts, names, candidates, strict=True):
            keys = [(n, (name, tuple(p[:n]))) for n in ns if n >= PREFIX_CACHE_MIN_TOKENS]
            out.append(next((n for n, key in keys if counts[key] > 1 or key in self._prefix_cache), 0))
        return out

    def _turn(self, prompt: list[int]) -> int:
        return 0 if self.end_of_turn_id is None else first_turn_length(prompt, self.end_of_turn_id)

    def _batch_cache(self, prompts: list[list[int]], names: list[str], cached: list[int]) -> Any:
        """past_key_values for the batch: each row's cached prefix KV, left-padded with zeros (masked out)."""
        import torch
        from transformers import DynamicCache

        per_row = [
            self._prefix_kv(name, p[:n]) if n else []
            for p, name, n in zip(prompts, names, cached, strict=True)
        ]
        if any(n and kv is None for n, kv in zip(cached, per_row, strict=True)):
            return None
        width = max(cached)
        template = next(kv for kv in per_row if kv)
        layers = []
        for index, (keys, values) in enumerate(template):
            stacked = []
            for like, which in ((keys, 0), (values, 1)):
                rows = [_left_pad(kv[index][which] if kv else None, width, like) for kv in per_row]
                stacked.append(torch.cat(rows))
            layers.append(tuple(stacked))
        return DynamicCache(layers)

    def _prefix_kv(self, name: str, prefix: list[int]) -> list[tuple[Any, Any]] | None:
        """Per-layer (keys, values) of `prefix` under one adapter: computed once, kept within a token budget."""
        import torch

        key = (name, tuple(prefix))
        if key not in self._prefix_cache:
            context, _ = self._select([name])
            with context, torch.no_grad():
                out = self.model(input_ids=torch.tensor([prefix], device=self.device), use_cache=True)
            layers = getattr(out.past_key_values, "layers", [])
            plain = bool(layers) and all(type(layer).__name__ == "DynamicLayer" for layer in layers)
            self._prefix_cache[key] = [(layer.keys, layer.values) for layer in layers] if plain else None
            while (
                sum(len(p) for _, p in self._prefix_cache) > PREFIX_CACHE_TOKENS
                and len(self._prefix_cache) > 1
            ):
                self._prefix_cache.popitem(last=False)
        self._prefix_cache.move_to_end(key)
        return self._prefix_cache[key]


def _left_pad(tensor: Any, width: int, like: Any) -> Any:
    """A (1, heads, length, dim) KV tensor padded with zeros on the left to `width` (None: all zeros)."""
    import torch

    length = 0 if tensor is None else tensor.shape[2]
    zeros = like.new_zeros((1, like.shape[1], width - length, like.shape[3]))
    return zeros if tensor is None else torch.cat([zeros, tensor], dim=2)


def first_turn_length(prompt: list[int], end_of_turn: int) -> int:
    """Tokens up to and including the first end-of-turn token; 0 when there is none or nothing follows it."""
    try:
        length = prompt.index(end_of_turn) + 1
    except ValueError:
        return 0
    return length if length < len(prompt) else 0


def pad_batch(
    prompts: list[list[int]], cached: list[int], pad_token_id: int
) -> tuple[list[list[int]], list[list[int]]]:
    """Rows of equal width: [pad][cached prefix][pad][rest of the row]. With nothing cached, plain left padding;
    the masks make every real token see exactly what it sees unpadded."""
    head = max(cached)
    tail = max(len(p) - n for p, n in zip(prompts, cached, strict=True))
    ids, mask = [], []
    for p, n in zip(prompts, cached, strict=True):
        lead, gap = head - n, tail - (len(p) - n)
        ids.append([pad_token_id] * lead + p[:n] + [pad_token_id] * gap + p[n:])
        mask.append([0] * lead + [1] * n + [0] * gap + [1] * (len(p) - n))
    return ids, mask


def greedy_decode(
    model: Any,
    input_ids: Any,
    attention_mask: Any,
    cache: Any,
    max_new_tokens: int,
    stop_ids: Collection[int],
    adapter_names: list[str] | None = None,
    pick: Pick | None = None,
) -> list[list[int]]:
    """Replies for a batch, greedy unless `pick` samples: each row ends with its stop (end-of-turn) token or
    after `max_new_tokens`."""
    out: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
    steps = decode_steps(
        model, input_ids, attention_mask, cache, max_new_tokens, stop_ids, adapter_names, pick
    )
    for step in steps:
        for row, token in step:
            out[row].append(token)
    return out


Pick = Callable[[Any], Any]  # last-position logits (rows × vocab) → next token id per row


def decode_steps(
    model: Any,
    input_ids: Any,
    attention_mask: Any,
    cache: Any,
    max_new_tokens: int,
    stop_ids: Collection[int],
    adapter_names: list[str] | None = None,
    pick: Pick | None = None,
) -> Iterator[list[tuple[int, int]]]:
    """The one decode loop: yields, per step, (row, token) for every row still running; a row leaves the batch
    once it emits a stop token.

    `generate` keeps finished rows in the batch until the last one ends, so one rambling reply makes every row
    pay for its length; here the batch shrinks (KV cache rows, mask, adapters) as rows finish. `pick` chooses
    the next token (default: argmax, what greedy `generate` does for a model without penalties in its generation
    config; `sampler` gives temperature/top-p). `cache` may hold KV for the first columns of `input_ids` (the
    prefix cache); the rest is prefilled. Run step by step it streams one request (`Engine.stream`).
    """
    import torch
    from transformers import DynamicCache

    cache = cache if cache is not None else DynamicCache()
    stops = torch.tensor(sorted(stop_ids), device=input_ids.device)
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    done = cache.get_seq_length()
    step_ids, step_positions = input_ids[:, done:], positions[:, done:]
    rows = list(range(input_ids.shape[0]))  # original index of each row still in the batch
    for _ in range(max_new_tokens):
        kwargs = {"adapter_names": [adapter_names[r] for r in rows]} if adapter_names else {}
        with torch.no_grad():
            logits = model(
                input_ids=step_ids, attention_mask=attention_mask, position_ids=step_positions,
                past_key_values=cache, use_cache=True, logits_to_keep=1, **kwargs,
            ).logits[:, -1]  # fmt: skip
            next_ids = pick(logits) if pick is not None else logits.argmax(-1)
        yield list(zip(rows, next_ids.tolist(), strict=True))
        keep = (~torch.isin(next_ids, stops)).nonzero().flatten()
        if keep.numel() == 0:
            break
        if keep.numel() < len(rows):
            cache.batch_select_indices(keep)
            rows = [rows[i] for i in keep.tolist()]
            attention_mask, next_ids = attention_mask[keep], next_ids[keep]
            step_positions = step_positions[keep]
        ones = attention_mask.new_ones((len(rows), 1))
        attention_mask = torch.cat([attention_mask, ones], dim=1)
        step_ids, step_positions = next_ids[:, None], step_positions[:, -1:] + 1


def sampler(
    temperature: float,
    top_p: float = 1.0,
    seed: int | None = None,
    top_k: int = 0,
    min_p: float | None = None,
) -> Pick | None:
    """Sampling as transformers' and vLLM's: softmax(logits / temperature), then the `top_k` most likely tokens
    (0: all), then the smallest set whose probability reaches `top_p`, then those at least `min_p` x the top
    token's probability (None: all); `seed` makes it repeatable. Temperature 0 is greedy (None: argmax)."""
    if temperature <= 0:
        return None
    import torch

    generators: dict[Any, Any] = {}

    def pick(logits: Any) -> Any:
        generator = generators.get(logits.device)
        if generator is None:
            generator = generators[logits.device] = torch.Generator(device=logits.device)
            generator.manual_seed(seed) if seed is not None else generator.seed()
        scaled = logits.float() / temperature
        if 0 < top_k < scaled.shape[-1]:
            kth = scaled.topk(top_k, dim=-1).values[..., -1:]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        probs = torch.softmax(scaled, dim=-1)
        if top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the tokens ranked above each one
            sorted_probs[before >= top_p] = 0.0  # the top token always stays (its `before` is 0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        if min_p is not None and min_p > 0:  # relative to the top token, which every cut above keeps
            probs = probs.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, 0.0)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    return pick


def tuner_layers(model: Any) -> list[Any]:
    """The PEFT layers (one per adapted module) whose active adapter a switch repoints."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [module for module in model.modules() if isinstance(module, BaseTunerLayer)]


def activate_adapter(model: Any, layers: list[Any], adapter: str) -> None:
    """Switch a frozen `PeftModel` to `adapter`: repoint each LoRA layer's active adapter, nothing else.

    PEFT's `set_adapter` also walks every module of the model and re-sets `requires_grad` on every adapter
    weight, which made a switch cost ~10 ms on the 30-layer embedded model. Inference never trains, so the
    pointer is all that changes; the state left is the same as `set_adapter`'s (tests/test_router.py). Reaches
    into `BaseTunerLayer._active_adapter` (peft is upper-bounded in pyproject.toml for it).
    """
    for layer in layers:
        layer._active_adapter = [adapter]
    model.active_adapter = adapter  # PeftModel and its LoraModel each keep their own record
    model.base_model.active_adapter = adapter


def decode_reply(tokenizer: Any, ids: list[int]) -> str:
    """New token ids → reply text, cut at the end-of-turn token (padding comes after it)."""
    from pipelines.codecs import codec_for

    end = codec_for(tokenizer).end_of_turn
    return tokenizer.decode(ids, skip_special_tokens=False).split(end, 1)[0]
