"""Eval stage (`midtrain eval CONFIG`): base, SFT, RL and routed targets on BFCL and held-out live tasks.

Writes `runs/<name>/eval/`: `results.json` (publish and the report read it), `results.md` (targets × metrics),
`results.png` (grouped bars) and `predictions.jsonl` (every example's raw output, calls, verdict and error).

Decisions:
- One base model in memory for every target. Adapters are attached with PEFT on first use and chosen per row
  with `adapter_names` (`__base__` = no adapter), so a routed batch can mix adapters in one forward pass. When
  the routed target runs, the model comes from `serve.Router` (base + the bundle's adapters preloaded) and the
  SFT/RL adapters are added to it, so the base weights are loaded once. Arrow bundles mix adapters inside the
  model, so they keep their own model.
- Generation goes through one function, `GenerateFn` (prompt ids + adapter per row → new ids). The real one
  (`Engine`) decodes greedily in left-padded batches, drops each row at its end-of-turn token instead of
  carrying it to the batch's longest reply (`greedy_decode`), and prefills the system turn that a domain's
  held-out prompts share (every tool schema: most of their tokens) once per adapter. Tests inject a stub
  here, so the scoring path runs deterministically without a model.
- Held-out tasks are the RL stage's (`pipelines.rl.evaluate.heldout_tasks`: same seed, same decontaminated
  pool), run live by its loop and scored by its `score_episodes` on the tasks that need calls; irrelevance
  tasks (another domain's request asked where no tool fits) come from a derived seed and are scored apart, as
  is the recovery rate.
- Each target's prompts use the tokenizer saved with its adapter (the chat template it was trained with).
- Adapters (QLoRA-trained too) run on the unquantized base, as `serve.Router` and vLLM serve them.
- BFCL `overall` is the unweighted mean over categories, as BFCL summarises its subcategories.
- A target whose outputs do not exist is skipped with the reason; only "nothing can run" is an error.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.artifacts import EvalResults
from pipelines.chat import load_tokenizer, render_prompt
from pipelines.codecs import Codec, codec_for
from pipelines.envs.code_runner import admit_model_code_for
from pipelines.errors import BadInput
from pipelines.eval.bfcl import (
    BfclExample,
    decode_tool_calls,
    example_to_trace,
    load_category,
    score_example,
)
from pipelines.eval.results import plot_results, results_table
from pipelines.rl import rewards
from pipelines.rl.evaluate import (
    DomainTask,
    Episode,
    fixed_method_domains,
    foreign_domains,
    heldout_spec,
    heldout_tasks,
    irrelevant_task,
    run_episodes,
    sample_domain_task,
    score_episodes,
)
from pipelines.router import BASE, adapter_source, load_bundle, request_text
from pipelines.run_config import EvalSection, RunConfig
from pipelines.schema import Message, Trace
from pipelines.thought import ThoughtSchema, load_thought_schema

log = logging.getLogger("midtrain.eval")

ARROW = "__arrow__"  # a routed row served by an Arrow model (per-token mixing inside the model)
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
DEFAULT_TASKS_PER_DOMAIN = 20  # held-out tasks per domain when eval.limit is None (BFCL then runs everything)
PREFIX_CACHE_MIN_TOKENS = 32  # shorter shared prefixes are not worth a separate forward
PREFIX_CACHE_TOKENS = 16_384  # prefix tokens whose KV is kept (LRU): ~750 MB on the embedded model

# (prompt token ids, adapter folder per row (None = base, ARROW), max new tokens) → generated ids per row
GenerateFn = Callable[[list[list[int]], list[str | None], int], list[list[int]]]


# -- targets -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    key: str  # "base", "sft/tool", "rl/tool", "routed": the keys of results.json
    adapter: str | None = None  # adapter folder (absolute) for sft/rl targets
    router_dir: Path | None = None  # the bundle, for the routed target


def discover_targets(config: RunConfig, kinds: Sequence[str]) -> tuple[list[Target], dict[str, str]]:
    """The targets of `kinds` whose outputs exist, and a reason for each one that does not."""
    targets: list[Target] = []
    skipped: dict[str, str] = {}
    for kind in dict.fromkeys(kinds):
        if kind == "base":
            targets.append(Target("base"))
        elif kind == "routed":
            found, reason = _routed_target(config.run_dir / "router")
            targets += [found] if found else []
            skipped |= {"routed": reason} if reason else {}
        else:
            found, reasons = _adapter_targets(config.run_dir / kind, kind)
            targets += found
            skipped |= reasons
    return targets, skipped


def _adapter_targets(folder: Path, kind: str) -> tuple[list[Target], dict[str, str]]:
    if not folder.is_dir():
        return [], {kind: f"{folder} does not exist (run `midtrain {kind} CONFIG` first)"}
    targets, skipped = [], {}
    for adapter_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        missing = adapter_problem(adapter_dir)
        if missing:
            skipped[f"{kind}/{adapter_dir.name}"] = missing
        else:
            targets.append(Target(f"{kind}/{adapter_dir.name}", str(adapter_dir.resolve())))
    if not targets and not skipped:
        skipped[kind] = f"{folder} holds no adapter folders"
    return targets, skipped


def adapter_problem(adapter_dir: Path) -> str:
    """Why a folder is not a usable PEFT adapter ("" when it is)."""
    missing = [] if (adapter_dir / "adapter_config.json").is_file() else ["adapter_config.json"]
    if not any((adapter_dir / name).is_file() for name in ADAPTER_WEIGHTS):
        missing.append(" or ".join(ADAPTER_WEIGHTS))
    return f"{adapter_dir} is missing {', '.join(missing)} (training unfinished?)" if missing else ""


def _routed_target(router_dir: Path) -> tuple[Target | None, str]:
    if not (router_dir / "router.json").is_file():
        return None, f"{router_dir}/router.json does not exist (run `midtrain router train CONFIG` first)"
    try:
        _, meta = load_bundle(router_dir)
        for ref in meta.adapters.values():
            adapter_source(router_dir, ref)
    except BadInput as exc:
        return None, str(exc)
    return Target("routed", router_dir=router_dir), ""


class RouteTable:
    """Request text → adapter folder, from a router bundle (routing needs no language model)."""

    def __init__(self, router_dir: Path) -> None:
        self.router, meta = load_bundle(router_dir)
        self.arrow = meta.method == "arrow"
        self.sources = {name: adapter_source(router_dir, ref) for name, ref in meta.adapters.items()}

    def adapters(self, texts: list[str]) -> list[str | None]:
        if self.arrow:
            return [ARROW] * len(texts)
        return [self.sources.get(r.adapter) for r in self.router.route(texts)] if texts else []

    def tokenizer_source(self) -> str | None:
        """The first adapter's tokenizer, as `serve.Router` uses."""
        first = next(iter(self.sources.values()), None)
        return first if first and (Path(first) / "tokenizer_config.json").is_file() else None


# -- generation --------------------------------------------------------------------------------------------------
class Engine:
    """The real `GenerateFn`: one base model, PEFT adapters attached on first use, picked per row."""

    def __init__(
        self, config: RunConfig, pad_token_id: int, eos_token_id: int, router_dir: Path | None
    ) -> None:
        import torch

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.dtype = _torch_dtype(config.model.dtype, self.device)
        self.pad_token_id, self.eos_token_id = pad_token_id, eos_token_id
        self.names: dict[str, str] = {}  # adapter folder → PEFT adapter name
        self.arrow_model: Any = None
        self._prefix_cache: OrderedDict[tuple[str, tuple[int, ...]], Any] = OrderedDict()
        router = _serve_router(router_dir, config.model.thought_schema) if router_dir else None
        if router is not None and router.requests.method != "arrow":
            self.model = router.model
            self.names = {str(Path(path).resolve()): name for name, path in router.sources.items()}
        else:
            self.arrow_model = router.model.to(self.device, self.dtype) if router is not None else None
            self.model = _load_base(config, self.dtype)
        self.model.to(self.device, self.dtype).eval()

    def _adapter_name(self, adapter: str | None) -> str:
        if adapter is None:
            return BASE
        if adapter not in self.names:
            from peft import PeftModel

            name = f"{Path(adapter).parent.name}-{Path(adapter).name}"  # e.g. sft-tool
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(adapter, adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, adapter, adapter_name=name)
            self.model.to(self.device, self.dtype).eval()
            self.names[adapter] = name
        return self.names[adapter]

    def __call__(
        self, prompts: list[list[int]], adapters: list[str | None], max_new_tokens: int
    ) -> list[list[int]]:
        import torch

        names = [self._adapter_name(a) if a != ARROW else ARROW for a in adapters]
        model = self.arrow_model if ARROW in names else self.model
        cached = self._prefix_lengths(prompts, names) if model is self.model else [0] * len(prompts)
        cache = self._batch_cache(prompts, names, cached) if any(cached) else None
        if cache is None:
            cached = [0] * len(prompts)
        input_ids, attention = pad_batch(prompts, cached, self.pad_token_id)
        start = time.perf_counter()
        context, per_row = self._adapters(names) if model is self.model else (contextlib.nullcontext(), None)
        with context:
            new_ids = greedy_decode(
                model,
                torch.tensor(input_ids, device=self.device),
                torch.tensor(attention, device=self.device),
                cache,
                max_new_tokens,
                self.eos_token_id,
                per_row,
            )
        log.debug(
            "generate: %d rows, width %d, cached prefixes %s, %d new tokens (longest) in %.1fs",
            len(prompts), len(input_ids[0]), sorted(set(cached)), max(map(len, new_ids)),
            time.perf_counter() - start,
        )  # fmt: skip
        return new_ids

    def _adapters(self, names: list[str]) -> tuple[Any, list[str] | None]:
        """(context, adapter_names) for a batch. One adapter for every row takes PEFT's plain path (active adapter,
        or adapters disabled for the base): PEFT's per-row `adapter_names` path costs ~15% more per token on CPU,
        so it is kept for mixed (routed) batches."""
        if not self.names:
            return contextlib.nullcontext(), None
        if len(set(names)) > 1:
            return contextlib.nullcontext(), names
        if names[0] == BASE:
            return self.model.disable_adapter(), None
        self.model.set_adapter(names[0])
        return contextlib.nullcontext(), None

    # -- prefix KV reuse ------------------------------------------------------------------------------------------
    # Held-out prompts of a domain share the system turn with every tool schema (~1,000 tokens on the embedded
    # model) on every step of every episode. Prefilling it once per adapter instead of once per row and step is
    # most of the stage's CPU time; rows of different domains each bring their own cached prefix, so batches
    # stay wide. BFCL examples each have their own tools, so their prompts are prefilled as usual. Each row's
    # cached KV is left-padded to the longest; positions come from the attention mask, so every token keeps the
    # position it has without the cache. Models whose cache is not plain per-layer KV (sliding windows) opt out.

    def _prefix_lengths(self, prompts: list[list[int]], names: list[str]) -> list[int]:
        """Per row, how many leading tokens come from the prefix cache: its first turn (the system prompt with
        every tool schema) when that is cached already or shared with another row of the batch; else 0."""
        turns = [first_turn_length(p, self.eos_token_id) for p in prompts]
        keys = [(name, tuple(p[:n])) for p, name, n in zip(prompts, names, turns, strict=True)]
        counts = Counter(keys)
        return [
            n if n >= PREFIX_CACHE_MIN_TOKENS and (counts[key] > 1 or key in self._prefix_cache) else 0
            for n, key in zip(turns, keys, strict=True)
        ]

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
            context, _ = self._adapters([name])
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
    eos_token_id: int,
    adapter_names: list[str] | None = None,
) -> list[list[int]]:
    """Greedy decoding that drops each row from the batch once it emits the end-of-turn token.

    `generate` keeps finished rows in the batch until the last one ends, so one rambling reply makes every row
    pay for its length; here the batch shrinks (KV cache rows, mask, adapters) as rows finish. Plain argmax, no
    logits processors: what greedy `generate` does for a model without penalties in its generation config.
    `cache` may hold KV for the first columns of `input_ids` (the prefix cache); the rest is prefilled. Each row
    ends with its end-of-turn token, or after `max_new_tokens`.
    """
    import torch
    from transformers import DynamicCache

    cache = cache if cache is not None else DynamicCache()
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    done = cache.get_seq_length()
    step_ids, step_positions = input_ids[:, done:], positions[:, done:]
    rows = list(range(input_ids.shape[0]))  # original index of each row still in the batch
    out: list[list[int]] = [[] for _ in rows]
    for _ in range(max_new_tokens):
        kwargs = {"adapter_names": [adapter_names[r] for r in rows]} if adapter_names else {}
        with torch.no_grad():
            logits = model(
                input_ids=step_ids, attention_mask=attention_mask, position_ids=step_positions,
                past_key_values=cache, use_cache=True, logits_to_keep=1, **kwargs,
            ).logits[:, -1]  # fmt: skip
        next_ids = logits.argmax(-1)
        for row, token in zip(rows, next_ids.tolist(), strict=True):
            out[row].append(token)
        keep = (next_ids != eos_token_id).nonzero().flatten()
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
    return out


def _torch_dtype(name: str, device: str) -> Any:
    import torch

    if name == "auto":  # bf16 where the GPU has it; CPU generation is fastest (and exact) in float32
        return torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, name)


def _load_base(config: RunConfig, dtype: Any) -> Any:
    from transformers import AutoModelForCausalLM

    from pipelines.models import resolve_model

    ref = resolve_model(config.model.name_or_path, config.model.revision)
    return AutoModelForCausalLM.from_pretrained(ref, revision=config.model.revision, dtype=dtype)


def _serve_router(router_dir: Path, thought_schema: str) -> Any:
    from pipelines.serve import Router

    return Router(router_dir, thought_schema)


class PolicyModel:
    """The `model` that `run_episodes` drives, served by a `GenerateFn` with one adapter for every row.

    `run_episodes` left-pads and calls `model.generate(input_ids=…, attention_mask=…, max_new_tokens=…)`; this
    strips the padding, asks the GenerateFn, and returns prompt + new ids as `generate` would. One reply is
    capped at `max_reply_tokens` (eval.max_new_tokens): the loop asks for the whole episode's remaining budget,
    and one rambling row would otherwise hold its batch for all of it. A capped reply has no end-of-turn token,
    so the loop ends that episode as out of tokens, exactly as when the budget runs out.
    """

    training = False

    def __init__(
        self, generate: GenerateFn, adapter: str | None, pad_token_id: int, max_reply_tokens: int
    ) -> None:
        self._generate, self.adapter, self.pad_token_id = generate, adapter, pad_token_id
        self.max_reply_tokens = max_reply_tokens

    def eval(self) -> PolicyModel:
        return self

    def parameters(self) -> Any:
        import torch

        yield torch.zeros(0)

    def generate(self, input_ids: Any, attention_mask: Any, max_new_tokens: int, **_: Any) -> Any:
        import torch

        prompts = [row[mask.bool()].tolist() for row, mask in zip(input_ids, attention_mask, strict=True)]
        new = self._generate(
            prompts, [self.adapter] * len(prompts), min(max_new_tokens, self.max_reply_tokens)
        )
        width = max((len(ids) for ids in new), default=0)
        padded = [ids + [self.pad_token_id] * (width - len(ids)) for ids in new]
        return torch.cat(
            [input_ids.cpu(), torch.tensor(padded, dtype=input_ids.dtype).reshape(len(new), width)], 1
        )


def decode_reply(tokenizer: Any, ids: list[int]) -> str:
    """New token ids → reply text, cut at the end-of-turn token (padding comes after it)."""
    end = codec_for(tokenizer).end_of_turn
    return tokenizer.decode(ids, skip_special_tokens=False).split(end, 1)[0]


def generate_texts(
    generate: GenerateFn,
    tokenizer: Any,
    prompts: list[str],
    adapters: list[str | None],
    max_new_tokens: int,
    batch_size: int,
) -> list[str]:
    """Replies in input order; prompts are batched by length so padding (and wasted compute) stays small."""
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    replies: list[str] = [""] * len(ids)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        outputs = generate([ids[i] for i in chunk], [adapters[i] for i in chunk], max_new_tokens)
        for i, new_ids in zip(chunk, outputs, strict=True):
            replies[i] = decode_reply(tokenizer, new_ids)
    return replies


# -- BFCL --------------------------------------------------------------------------------------------------------
def load_bfcl(section: EvalSection) -> list[BfclExample]:
    return [ex for category in section.bfcl_categories for ex in load_category(category, section.limit)]


def eval_bfcl(
    target: Target,
    examples: list[BfclExample],
    tokenizer: Any,
    schema: ThoughtSchema,
    generate: GenerateFn,
    adapters: list[str | None],
    section: EvalSection,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Per-category accuracy + overall for one target, and one prediction row per example."""
    prompts = [render_prompt(example_to_trace(ex), tokenizer, schema) for ex in examples]
    replies = generate_texts(
        generate, tokenizer, prompts, adapters, section.max_new_tokens, section.batch_size
    )
    codec = codec_for(tokenizer)
    rows = [
        bfcl_prediction(target.key, ex, reply, schema, codec)
        for ex, reply in zip(examples, replies, strict=True)
    ]
    return bfcl_metrics(examples, [row["ok"] for row in rows]), rows


def bfcl_prediction(
    target: str, example: BfclExample, reply: str, schema: ThoughtSchema, codec: Codec
) -> dict[str, Any]:
    parsed = codec.parse(reply, schema)
    decoded = decode_tool_calls(parsed.tool_calls, example.functions)
    ok, error = score_example(example, decoded)
    if not ok and parsed.errors:
        error = f"{error} (unparsed: {'; '.join(parsed.errors)})"
    return {
        "target": target,
        "suite": "bfcl",
        "category": example.category,
        "id": example.id,
        "raw": reply,
        "calls": decoded,
        "ok": ok,
        "error": error,
    }


def bfcl_metrics(examples: list[BfclExample], correct: list[bool]) -> dict[str, Any]:
    by_category: dict[str, list[bool]] = {}
    for example, ok in zip(examples, correct, strict=True):
        by_category.setdefault(example.category, []).append(ok)
    metrics: dict[str, Any] = {c: round(sum(v) / len(v), 6) for c, v in by_category.items()}
    metrics["overall"] = round(sum(metrics.values()) / len(metrics), 6) if metrics else None
    metrics["n"] = len(examples)
    return metrics


# -- held-out tasks ----------------------------------------------------------------------------------------------
@dataclass
class Heldout:
    items: list[DomainTask]
    env_classes: dict[str, type]
    skipped: str = ""  # why there are no tasks, when there are none


def heldout_seed(config: RunConfig, section: EvalSection) -> int | None:
    """eval.heldout_seed, else rl.eval_seed: by default exactly the RL stage's held-out tasks, so its
    before/after numbers and these agree."""
    if section.heldout_seed is not None:
        return section.heldout_seed
    return config.rl.eval_seed if config.rl is not None else None


def load_heldout(config: RunConfig, section: EvalSection) -> Heldout:
    """The RL stage's held-out tasks per domain, plus irrelevance tasks from a derived seed; or, with
    `eval.tasks`, the task file's held-out rows."""
    if section.tasks is not None:
        return task_file_heldout(section)
    if not section.heldout_domains:
        return Heldout([], {}, "eval.heldout_domains is empty")
    domains = _domains(section.heldout_domains)
    if not domains:
        return Heldout([], {}, "no registered environment domain has fixed tool methods")
    per_domain = section.limit or DEFAULT_TASKS_PER_DOMAIN
    seed, decontaminated_n = heldout_spec(config.data.recipe, heldout_seed(config, section))
    held_out = heldout_tasks(domains, per_domain, seed, section.heldout_max_difficulty, decontaminated_n)
    if not held_out.decontaminated:
        log.warning("eval: some held-out tasks lie outside the set the SFT mix was decontaminated against")
    n_irrelevant = math.ceil(per_domain * section.heldout_irrelevance_fraction)
    irrelevant = irrelevance_tasks(domains, n_irrelevant, seed, section.heldout_max_difficulty)
    return Heldout(held_out.items + irrelevant, {name: spec[0] for name, spec in domains.items()})


def task_file_heldout(section: EvalSection) -> Heldout:
    """`eval.tasks`: its `heldout` rows (at most `limit` per environment), each in its environment or the view
    of the tools it names."""
    from pipelines.rl.evaluate import guarded
    from pipelines.rl.tool_views import with_task_tools
    from pipelines.tasks.task_file import load_task_file

    assert section.tasks is not None
    task_set = load_task_file(section.tasks, section.env)
    counts: Counter[str] = Counter()
    items = []
    for task in task_set.heldout:
        if section.limit is None or counts[task.domain] < section.limit:
            counts[task.domain] += 1
            items.append(DomainTask(task.domain, task))
    if not items:
        return Heldout([], {}, f"eval.tasks {section.tasks}: no `heldout` rows")
    classes = {name: guarded(cls) for name, cls in task_set.envs.items()}
    items, classes = with_task_tools(items, classes)
    return Heldout(items, classes)


def _domains(names: list[str]) -> dict[str, tuple[type, Any]]:
    try:
        return fixed_method_domains(names)
    except BadInput as exc:  # its message names rl.domains; here the key is ours
        raise BadInput(str(exc).replace("rl.domains", "eval.heldout_domains")) from None


def irrelevance_tasks(
    domains: dict[str, tuple[type, Any]], per_domain: int, seed: int, max_difficulty: int
) -> list[DomainTask]:
    """Per domain, `per_domain` distinct requests of domains its tools cannot serve (the generator's table),
    asked in a normal, populated state of the domain (one of its own tasks' setup)."""
    rng = random.Random(f"eval-irrelevance/{seed}")
    names = sorted(domains)
    out: list[DomainTask] = []
    for domain in names:
        foreign = foreign_domains(domain, names)
        seen: set[str] = set()
        for _ in range(20 * per_domain if foreign else 0):
            if len(seen) == per_domain:
                break
            other = rng.choice(foreign)
            foreign_task = sample_domain_task(other, domains[other][1], rng, max_difficulty)
            own_task = sample_domain_task(domain, domains[domain][1], rng, max_difficulty)
            task = irrelevant_task(domain, foreign_task, own_task)
            if task.task_id not in seen:
                seen.add(task.task_id)
                out.append(DomainTask(domain, task))
    return out


def heldout_route_text(item: DomainTask, env_class: type) -> str:
    """What the router sees for a task: its request and the environment's tool names (as in training)."""
    trace = Trace(
        id=item.task.task_id,
        source="heldout",
        kind="tool",
        cluster="tool",
        tools=env_class._tool_schemas(),
        messages=[Message(role="user", content=item.task.request)],
    )
    return request_text(trace)


def eval_heldout(
    target: Target,
    heldout: Heldout,
    tokenizer: Any,
    schema: ThoughtSchema,
    generate: GenerateFn,
    adapters: list[str | None],
    section: EvalSection,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Live greedy episodes of every task, grouped by adapter (`run_episodes` drives one model at a time)."""
    groups: dict[str | None, list[int]] = {}
    for i, adapter in enumerate(adapters):
        groups.setdefault(adapter, []).append(i)
    episodes: list[Episode | None] = [None] * len(heldout.items)
    for adapter, indices in groups.items():
        model = PolicyModel(generate, adapter, tokenizer.pad_token_id, section.max_new_tokens)
        items = [heldout.items[i] for i in indices]
        done = run_episodes(
            model, tokenizer, items, heldout.env_classes,
            section.max_tool_rounds, section.rollout_tokens, section.batch_size,
        )  # fmt: skip
        for i, episode in zip(indices, done, strict=True):
            episodes[i] = episode
    finished = [ep for ep in episodes if ep is not None]
    codec = codec_for(tokenizer)
    outcomes = episode_outcomes(finished, schema, codec)
    rows = [
        heldout_prediction(target.key, ep, o, schema, codec) for ep, o in zip(finished, outcomes, strict=True)
    ]
    return heldout_metrics(finished, outcomes, schema, codec), rows


def episode_outcomes(episodes: Sequence[Episode], schema: ThoughtSchema, codec: Codec) -> list[float]:
    """Each episode's outcome (1.0 = the environment's ground truth met; irrelevant: declined without a call)."""
    outcomes = []
    for ep in episodes:
        rollout = rewards.parse_rollout(ep.completion, codec, schema)
        value, _ = rewards.outcome_score(rollout, ep.item.task, ep.env)
        outcomes.append(value)
    return outcomes


def had_tool_error(episode: Episode) -> bool:
    return any(
        rewards.is_error_result(str(m.get("content", "")))
        for m in episode.completion
        if isinstance(m, dict) and m.get("role") == "tool"
    )


def recovery_rate(episodes: Sequence[Episode], outcomes: Sequence[float]) -> float | None:
    """Of the episodes where a tool returned an error, the share that still succeeded (None: no errors)."""
    after_error = [o for ep, o in zip(episodes, outcomes, strict=True) if had_tool_error(ep)]
    return round(sum(after_error) / len(after_error), 6) if after_error else None


def irrelevance_accuracy(episodes: Sequence[Episode], outcomes: Sequence[float]) -> float | None:
    """Of the irrelevant-request tasks, the share answered without any call (None: there were none)."""
    values = [o for ep, o in zip(episodes, outcomes, strict=True) if rewards.is_irrelevant(ep.item.task)]
    return round(sum(values) / len(values), 6) if values else None


def heldout_metrics(
    episodes: Sequence[Episode], outcomes: Sequence[float], schema: ThoughtSchema, codec: Codec
) -> dict[str, Any]:
    """Outcome, format rate and call accuracy on tasks that need calls (as the RL stage reports them), recovery
    rate after a tool error, irrelevance accuracy, and n = every episode."""
    relevant = [i for i, ep in enumerate(episodes) if not rewards.is_irrelevant(ep.item.task)]
    scored = score_episodes([episodes[i] for i in relevant], schema, codec) if relevant else {}
    return {
        "outcome": scored.get("outcome"),
        "format_rate": scored.get("format_rate"),
        "call_accuracy": scored.get("call_accuracy"),
        "recovery_rate": recovery_rate([episodes[i] for i in relevant], [outcomes[i] for i in relevant]),
        "irrelevance_accuracy": irrelevance_accuracy(episodes, outcomes),
        "n": len(episodes),
    }


def heldout_prediction(
    target: str, episode: Episode, outcome: float, schema: ThoughtSchema, codec: Codec
) -> dict[str, Any]:
    rollout = rewards.parse_rollout(episode.completion, codec, schema)
    irrelevant = rewards.is_irrelevant(episode.item.task)
    return {
        "target": target,
        "suite": "heldout",
        "domain": episode.item.domain,
        "id": episode.item.task.task_id,
        "irrelevant": irrelevant,
        "raw": episode.completion,
        "calls": [{"name": c.name, "arguments": c.arguments} for c in rollout.calls],
        "ok": outcome >= 1.0,
        "error": "" if outcome >= 1.0 else _failed_env(episode) or episode_error(rollout, irrelevant),
    }


def _failed_env(episode: Episode) -> str:
    """An environment that died mid-episode (an MCP server crash or timeout) is the reason, whatever the model did."""
    failure = getattr(episode.env, "_env_failure", None) or getattr(episode.env, "_reset_error", None)
    return f"environment failed: {failure}" if failure else ""


def episode_error(rollout: rewards.Rollout, irrelevant: bool) -> str:
    """Why an episode failed, in the words a person inspecting predictions.jsonl needs first."""
    if irrelevant:
        return "called a tool on a request no tool fits" if rollout.attempted else "did not finish its answer"
    if not rollout.finished:
        return "did not finish (token budget or tool rounds ran out)"
    if rollout.attempted == 0:
        return "answered without calling a tool"
    if rollout.malformed:
        return f"{rollout.malformed} malformed tool call(s)"
    errors = [text for _, text in rollout.results if rewards.is_error_result(text)]
    suffix = f" after {len(errors)} tool error(s), last: {errors[-1][:120]}" if errors else ""
    return "final answer or state does not match the ground truth" + suffix


# -- the stage ---------------------------------------------------------------------------------------------------
class Tokenizers:
    """Each target's tokenizer (its adapter's saved one, else the base's), loaded once per source."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self._loaded: dict[str, Any] = {}

    def get(self, source: str | None) -> Any:
        key = source or ""
        if key not in self._loaded:
            model = self.config.model
            self._loaded[key] = (
                load_tokenizer(source)
                if source
                else load_tokenizer(
                    model.name_or_path, model.chat_template, model.revision, model.tool_format
                )
            )
        return self._loaded[key]

    def for_target(self, target: Target, routes: RouteTable | None) -> Any:
        if routes is not None:
            return self.get(routes.tokenizer_source())
        has_own = target.adapter and (Path(target.adapter) / "tokenizer_config.json").is_file()
        return self.get(target.adapter if has_own else None)


def run(config: RunConfig, generate: GenerateFn | None = None) -> EvalResults:
    """Evaluate every target on every suite; write results.json/.md/.png and predictions.jsonl."""
    section = config.eval or EvalSection()
    schema = load_thought_schema(config.model.thought_schema)
    targets, skipped = discover_targets(config, section.targets)
    if not targets:
        reasons = "; ".join(f"{k}: {v}" for k, v in skipped.items())
        raise BadInput(f"eval.targets {section.targets}: none can run ({reasons})")
    examples = load_bfcl(section)
    heldout = load_heldout(config, section)
    if heldout.skipped:
        skipped["heldout"] = heldout.skipped
    sandbox = admit_model_code_for(heldout.env_classes, config.sandbox, "eval")
    if not examples and not heldout.items:
        raise BadInput(
            "eval: nothing to evaluate (eval.bfcl_categories and the held-out suite are both empty)"
        )
    tokenizers = Tokenizers(config)
    routes = {t.key: RouteTable(t.router_dir) for t in targets if t.router_dir is not None}
    generate = generate or _engine(config, tokenizers.get(None), targets)
    results: dict[str, Any] = {"model": config.model.name_or_path, "limit": section.limit, "targets": {}}
    predictions: list[dict[str, Any]] = []
    seconds: dict[str, float] = {}
    for target in targets:
        start = time.perf_counter()
        suites, rows = eval_target(
            target, routes.get(target.key), tokenizers, examples, heldout, schema, generate, section
        )
        seconds[target.key] = round(time.perf_counter() - start, 2)
        results["targets"][target.key] = suites
        predictions += rows
        log.info("eval %s: %s in %.1fs", target.key, _headline(suites), seconds[target.key])
    results |= {"skipped": skipped, "seconds": seconds}
    results |= {"sandbox": sandbox} if sandbox is not None else {}
    typed = EvalResults.model_validate(results)
    write_outputs(config.run_dir / "eval", typed, predictions)
    from pipelines.envs.external import close_environments

    close_environments()
    return typed


def eval_target(
    target: Target,
    routes: RouteTable | None,
    tokenizers: Tokenizers,
    examples: list[BfclExample],
    heldout: Heldout,
    schema: ThoughtSchema,
    generate: GenerateFn,
    section: EvalSection,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Both suites for one target; the routed target asks the router which adapter serves each request."""
    tokenizer = tokenizers.for_target(target, routes)
    suites: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    if examples:
        texts = [request_text(example_to_trace(ex)) for ex in examples] if routes else []
        adapters = routes.adapters(texts) if routes else [target.adapter] * len(examples)
        suites["bfcl"], found = eval_bfcl(target, examples, tokenizer, schema, generate, adapters, section)
        rows += found
    if heldout.items:
        texts = (
            [heldout_route_text(it, heldout.env_classes[it.domain]) for it in heldout.items] if routes else []
        )
        adapters = routes.adapters(texts) if routes else [target.adapter] * len(heldout.items)
        suites["heldout"], found = eval_heldout(
            target, heldout, tokenizer, schema, generate, adapters, section
        )
        rows += found
    return suites, rows


def _engine(config: RunConfig, tokenizer: Any, targets: list[Target]) -> Engine:
    start = time.perf_counter()
    router_dir = next((t.router_dir for t in targets if t.router_dir is not None), None)
    end_of_turn = tokenizer.convert_tokens_to_ids(codec_for(tokenizer).end_of_turn)  # = eos for most families
    engine = Engine(config, tokenizer.pad_token_id, end_of_turn, router_dir)
    log.info("eval: base model loaded in %.1fs on %s", time.perf_counter() - start, engine.device)
    return engine


def _headline(suites: dict[str, Any]) -> str:
    bfcl = suites.get("bfcl", {}).get("overall")
    outcome = suites.get("heldout", {}).get("outcome")
    return f"bfcl overall {bfcl}, held-out outcome {outcome}"


# -- outputs -----------------------------------------------------------------------------------------------------
def write_outputs(out_dir: Path, results: EvalResults, predictions: list[dict[str, Any]]) -> None:
    results.write(out_dir)
    with (out_dir / "predictions.jsonl").open("w", encoding="utf-8") as handle:
        for row in predictions:
            handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    (out_dir / "results.md").write_text(results_table(results))
    plot_results(results, out_dir / "results.png")
