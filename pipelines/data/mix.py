"""Mixing by tokens: targets per category and source, deterministic sampling with capped upsampling, the
train/eval split by Trace id, and the final row order.

Only what mixing needs is in memory (per pool row: its spill row, token count and eval flag); rows
themselves stay in the build's spill file. Targets are planned first, so a recipe that cannot be filled
fails before anything is written:
- category target = share × total_tokens; source target = category target × weight / Σ weights;
- a source supplies at most `max_epochs` passes over its train rows (eval rows are used once);
- if a source cannot reach its target the build stops with the numbers (`BadInput`), or, with
  `allow_shortfall: true`, capped sources give their slack to the others by water-filling: first among the
  sources of the category, then among the categories (keeping their relative shares); the manifest says so.
Sampling walks a seeded permutation of each pool per epoch and takes a row while that brings the running
total closer to the target, which lands every source within half a row of its target.
"""

from __future__ import annotations

import hashlib
import random
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.errors import BadInput
from pipelines.recipe import Recipe

TOLERANCE_TOKENS = 0.5


@dataclass
class SourcePool:
    """A source's clean, rendered rows (indices into the spill) with what mixing needs to know of them.

    Typed arrays, not lists: 13 bytes a row instead of ~100 (a billion-token mix is ~a million rows)."""

    name: str
    category: str
    weight: float
    max_epochs: float
    rows: array[int] = field(default_factory=lambda: array("q"))
    tokens: array[int] = field(default_factory=lambda: array("i"))
    eval_mask: bytearray = field(default_factory=bytearray)  # 1: the row's id puts it in the eval split

    @property
    def train_tokens(self) -> int:
        return sum(t for t, e in zip(self.tokens, self.eval_mask, strict=True) if not e)

    @property
    def eval_tokens(self) -> int:
        return sum(t for t, e in zip(self.tokens, self.eval_mask, strict=True) if e)

    @property
    def capacity(self) -> float:
        return self.eval_tokens + self.max_epochs * self.train_tokens


@dataclass
class MixPlan:
    category_targets: dict[str, float]
    source_targets: dict[str, float]
    rebalanced: bool = False
    notes: list[str] = field(default_factory=list)


class TrainPairs:
    """(spill row, epoch) pairs, in order, as two typed columns: 12 bytes a pair where a list of tuples took
    ~100, the largest per-row state of a build's driver (a 50B-token mix selects ~33M rows). Iterates, compares
    and appends as a list of (row, epoch) tuples would."""

    __slots__ = ("epochs", "rows")

    def __init__(self, rows: Any = None, epochs: Any = None) -> None:
        self.rows = array("q") if rows is None else rows
        self.epochs = array("i") if epochs is None else epochs

    @classmethod
    def of(cls, pairs: Iterable[tuple[int, int]]) -> TrainPairs:
        out = cls()
        for pair in pairs:
            out.append(pair)
        return out

    @classmethod
    def concat(cls, parts: Iterable[TrainPairs]) -> TrainPairs:
        parts = list(parts)
        rows = np.concatenate([np.asarray(p.rows, dtype=np.int64) for p in parts] or [np.empty(0, np.int64)])
        epochs = np.concatenate(
            [np.asarray(p.epochs, dtype=np.int32) for p in parts] or [np.empty(0, np.int32)]
        )
        return cls(rows, epochs)

    def append(self, pair: tuple[int, int]) -> None:
        self.rows.append(pair[0])
        self.epochs.append(pair[1])

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(map(int, self.rows), map(int, self.epochs), strict=True)

    def __getitem__(self, index: int) -> tuple[int, int]:
        return int(self.rows[index]), int(self.epochs[index])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TrainPairs):
            return NotImplemented
        return bool(
            np.array_equal(np.asarray(self.rows), np.asarray(other.rows))
            and np.array_equal(np.asarray(self.epochs), np.asarray(other.epochs))
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, like the list it replaces

    def __repr__(self) -> str:
        return f"TrainPairs({list(self)[:8]}{'…' if len(self) > 8 else ''}, n={len(self)})"


@dataclass
class Selection:
    """Rows a source contributes: train as (pool row, epoch), eval as pool rows (each once, epoch 0)."""

    train: TrainPairs = field(default_factory=TrainPairs)
    eval: list[int] = field(default_factory=list)
    tokens: int = 0
    epochs: int = 0


def id_digest(trace_id: str, seed: int) -> int:
    """A row's id as 64 bits (seeded): what the split draws from, and what the manifest counts distinct ids by."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{trace_id}".encode(), digest_size=8).digest(), "big")


def is_eval_id(trace_id: str, seed: int, fraction: float) -> bool:
    """The split is a pure function of the id, so an id can never land in both train and eval."""
    return is_eval_digest(id_digest(trace_id, seed), fraction)


def is_eval_digest(digest: int, fraction: float) -> bool:
    return fraction > 0 and digest / 2**64 < fraction


# -- planning ------------------------------------------------------------------------------------------------
def water_fill(total: float, weights: dict[str, float], caps: dict[str, float]) -> dict[str, float]:
    """Split `total` by `weights`; whoever hits its cap keeps the cap and the rest is re-split by weight."""
    alloc: dict[str, float] = {}
    free = {k: w for k, w in weights.items() if w > 0}
    alloc.update({k: 0.0 for k in weights if k not in free})
    remaining = total
    while free:
        wsum = sum(free.values())
        fair = {k: remaining * w / wsum for k, w in free.items()}
        capped = [k for k, v in fair.items() if v > caps[k] + TOLERANCE_TOKENS]
        if not capped:
            alloc.update(fair)
            break
        for k in capped:
            alloc[k] = caps[k]
            remaining -= caps[k]
            del free[k]
    return alloc


def plan_mix(recipe: Recipe, pools: dict[str, SourcePool]) -> MixPlan:
    """Token targets per category and source; raises BadInput (with the numbers) when the recipe can't fill."""
    cat_targets = {k: c.share * recipe.total_tokens for k, c in recipe.categories.items()}
    src_targets = _split_by_weight(recipe, pools, cat_targets)
    short = {name: t for name, t in src_targets.items() if t > pools[name].capacity + TOLERANCE_TOKENS}
    if not short:
        return MixPlan(cat_targets, src_targets)
    if not recipe.allow_shortfall:
        raise BadInput(_shortfall_message(recipe, pools, cat_targets, src_targets))
    return _rebalance(recipe, pools, cat_targets)


def _split_by_weight(
    recipe: Recipe, pools: dict[str, SourcePool], cat_targets: dict[str, float]
) -> dict[str, float]:
    targets = {}
    for key, cat in recipe.categories.items():
        wsum = sum(s.weight for s in cat.sources)
        for src in cat.sources:
            targets[src.name] = cat_targets[key] * src.weight / wsum if wsum else 0.0
    return targets


def _rebalance(recipe: Recipe, pools: dict[str, SourcePool], cat_targets: dict[str, float]) -> MixPlan:
    cat_caps = {k: sum(pools[s.name].capacity for s in c.sources) for k, c in recipe.categories.items()}
    shares = {k: c.share for k, c in recipe.categories.items()}
    new_cat = water_fill(float(recipe.total_tokens), shares, cat_caps)
    src_targets: dict[str, float] = {}
    for key, cat in recipe.categories.items():
        weights = {s.name: s.weight for s in cat.sources}
        caps = {s.name: pools[s.name].capacity for s in cat.sources}
        src_targets.update(water_fill(new_cat[key], weights, caps))
    notes = [
        f"category {k!r}: target {cat_targets[k]:,.0f} → {new_cat[k]:,.0f} tokens"
        for k in recipe.categories
        if abs(new_cat[k] - cat_targets[k]) > TOLERANCE_TOKENS
    ]
    planned = sum(new_cat.values())
    if planned < recipe.total_tokens - TOLERANCE_TOKENS:
        notes.append(f"total: {recipe.total_tokens:,} → {planned:,.0f} tokens (every source is at its cap)")
    return MixPlan(new_cat, src_targets, rebalanced=True, notes=notes)


def _shortfall_message(
    recipe: Recipe, pools: dict[str, SourcePool], cat_targets: dict[str, float], src_targets: dict[str, float]
) -> str:
    lines = [f"recipe {recipe.name!r} cannot fill its token budget of {recipe.total_tokens:,}:"]
    for key, cat in recipe.categories.items():
        names = [s.name for s in cat.sources]
        if all(src_targets[n] <= pools[n].capacity + TOLERANCE_TOKENS for n in names):
            continue
        available = sum(pools[n].capacity for n in names)
        lines.append(
            f"  category {key!r} (share {cat.share}) needs {cat_targets[key]:,.0f} tokens, "
            f"its sources can supply {available:,.0f}:"
        )
        for n in names:
            p = pools[n]
            lines.append(
                f"    source {n!r}: needs {src_targets[n]:,.0f}, available {p.train_tokens:,} train tokens "
                f"× max_epochs {p.max_epochs:g} + {p.eval_tokens:,} eval = {p.capacity:,.0f} ({len(p.rows)} rows)"
            )
    lines.append("fix: add sources or rows, raise max_epochs, lower the share, or set allow_shortfall: true")
    return "\n".join(lines)


# -- sampling ------------------------------------------------------------------------------------------------
def sample_source(pool: SourcePool, target: float, seed: int) -> Selection:
    """Seeded per-epoch permutations; repeats (epoch ≥ 1) only for train rows and only up to max_epochs.

    Within an epoch, rows that would overshoot the target are passed over (later, smaller rows fill the gap);
    at the end of an epoch, the passed-over row that overshoots least is taken if that lands closer to the
    target than leaving the gap, so every source ends within half a row of its target."""
    sel = Selection()
    budget = _TrainBudget(pool.max_epochs * pool.train_tokens)
    smallest_train = min((n for n, e in zip(pool.tokens, pool.eval_mask, strict=True) if not e), default=None)
    for epoch in range(max(1, _ceil(pool.max_epochs))):
        order = list(range(len(pool.rows)))
        random.Random(f"{seed}:{pool.name}:{epoch}").shuffle(order)
        passed_over = []
        for i in order:
            if pool.eval_mask[i] and epoch > 0:
                continue
            if sel.tokens + pool.tokens[i] <= target and budget.allows(pool, i):
                _take(sel, pool, i, epoch, budget)
            else:
                passed_over.append(i)
        gap = target - sel.tokens
        closest = min(
            (i for i in passed_over if budget.allows(pool, i)), key=lambda i: pool.tokens[i], default=None
        )
        if closest is not None and pool.tokens[closest] - gap < gap:
            _take(sel, pool, closest, epoch, budget)
            break
        # Another epoch only helps when some train row still fits into the gap.
        if smallest_train is None or smallest_train > gap:
            break
    sel.epochs = 1 + max(sel.train.epochs, default=0)
    return sel


@dataclass
class _TrainBudget:
    """max_epochs × train tokens: the most a source's train rows may contribute, repeats included."""

    cap: float
    taken: int = 0

    def allows(self, pool: SourcePool, i: int) -> bool:
        return bool(pool.eval_mask[i]) or self.taken + pool.tokens[i] <= self.cap + TOLERANCE_TOKENS


def _take(sel: Selection, pool: SourcePool, i: int, epoch: int, budget: _TrainBudget) -> None:
    n = pool.tokens[i]
    if pool.eval_mask[i]:
        sel.eval.append(pool.rows[i])
    else:
        sel.train.append((pool.rows[i], epoch))
        budget.taken += n
    sel.tokens += n


def _ceil(value: float) -> int:
    whole = int(value)
    return whole if whole == value else whole + 1


def order_train(
    pairs: TrainPairs, difficulty: Sequence[int] | Mapping[int, int], seed: int, curriculum: str
) -> TrainPairs:
    """Global shuffle across sources; with `curriculum: difficulty`, a stable sort by tool-call count on top.

    The pairs are sorted (by row, then epoch) and shuffled by `random.Random(...).shuffle` on an index array:
    the permutation depends only on the length, so the order is the one shuffling the sorted list of tuples
    gave, without a Python object per row."""
    rows = np.asarray(pairs.rows, dtype=np.int64)
    epochs = np.asarray(pairs.epochs, dtype=np.int32)
    order = np.lexsort((epochs, rows))
    random.Random(f"{seed}:train-order").shuffle(order)  # type: ignore[arg-type]  # swaps items by index
    if curriculum == "difficulty":
        if isinstance(difficulty, Mapping):
            keys = np.fromiter((difficulty[int(r)] for r in rows[order]), dtype=np.int64, count=len(order))
        else:
            keys = np.asarray(difficulty, dtype=np.int64)[rows[order]]
        order = order[np.argsort(keys, kind="stable")]
    return TrainPairs(rows[order], epochs[order])


def order_eval(rows: list[int], seed: int) -> list[int]:
    ordered = sorted(rows)
    random.Random(f"{seed}:eval-order").shuffle(ordered)
    return ordered
