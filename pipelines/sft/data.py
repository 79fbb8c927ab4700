"""Read the mix the data stage wrote and pick each adapter's rows.

An adapter for cluster C trains on every usable train row of C plus a replay slice of the other clusters:
`replay_fraction` is the share of the adapter's training *tokens* that come from other clusters (so 0.1
means one replay token per nine cluster tokens, whatever the clusters' relative sizes). Replay rows are a
seeded permutation of the other rows, so the same config always selects the same rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.chat import labelled_spans
from pipelines.errors import BadInput

GENERALIST = "generalist"
MIX_COLUMNS = ("id", "cluster", "kind", "n_tokens", "input_ids", "assistant_masks")
OPTIONAL_COLUMNS = ("difficulty",)  # tool calls per row: read where every shard has it
TRAINER_COLUMNS = ["input_ids", "assistant_masks"]


def shard_files(data_dir: Path, split: str) -> list[Path]:
    return sorted(Path(data_dir).glob(f"{split}-*.parquet"))


def load_mix(data_dir: Path, split: str, cache_dir: Path, required: bool = True) -> Any:
    """The `split` shards of a mix as one `datasets.Dataset` (memory-mapped), or None if absent and optional."""
    import pyarrow.parquet as pq
    from datasets import load_dataset

    files = shard_files(data_dir, split)
    if not files:
        if required:
            raise BadInput(
                f"{data_dir}: no {split}-*.parquet shards; build the mix first with `midtrain data build CONFIG`"
            )
        return None
    names = [pq.read_schema(path).names for path in files]
    for path, present in zip(files, names, strict=True):
        missing = [c for c in MIX_COLUMNS if c not in present]
        if missing:
            raise BadInput(
                f"{path}: missing column(s) {missing} (see the data-stage contract in docs/DESIGN.md)"
            )
    optional = [c for c in OPTIONAL_COLUMNS if all(c in present for present in names)]
    return load_dataset(
        "parquet",
        data_files=[str(p) for p in files],
        split="train",
        columns=[*MIX_COLUMNS, *optional],
        cache_dir=str(cache_dir),
    )


@dataclass
class Screened:
    """Per-row facts of a mix split, and the rows no adapter may train on (with reasons)."""

    split: str
    ids: list[str]
    clusters: np.ndarray
    n_tokens: np.ndarray
    usable: np.ndarray
    rejects: list[dict[str, Any]] = field(default_factory=list)

    def cluster_names(self) -> list[str]:
        return sorted(set(self.clusters.tolist()))


def _list_stats(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row length, sum and max of a list<int> column, in numpy (no Python loop over tokens)."""
    array = column.combine_chunks()
    offsets = np.asarray(array.offsets, dtype=np.int64)
    values = np.asarray(array.flatten(), dtype=np.int64)
    offsets = offsets - offsets[0]
    lengths = np.diff(offsets)
    sums = np.zeros(len(lengths), dtype=np.int64)
    maxes = np.full(len(lengths), -1, dtype=np.int64)
    nonempty = lengths > 0
    if nonempty.any():
        starts = offsets[:-1][nonempty]
        sums[nonempty] = np.add.reduceat(values, starts)[: int(nonempty.sum())]
        maxes[nonempty] = np.maximum.reduceat(values, starts)[: int(nonempty.sum())]
    return lengths, sums, maxes


def screen(mix: Any, split: str, max_length: int, vocab_size: int) -> Screened:
    """Check every row against what the trainer needs; unusable rows become rejects with a reason."""
    table = mix.data.table
    ids = table.column("id").to_pylist()
    lengths, _, max_ids = _list_stats(table.column("input_ids"))
    mask_lengths, loss_tokens, _ = _list_stats(table.column("assistant_masks"))
    bad_vocab = np.flatnonzero(max_ids >= vocab_size)
    if bad_vocab.size:
        first = int(bad_vocab[0])
        raise BadInput(
            f"{split} row {first} (id {ids[first]}): token id {int(max_ids[first])} >= the model's vocabulary size "
            f"{vocab_size}; the mix was tokenized for another model (check model.name_or_path and the manifest)"
        )
    reasons = [
        (lengths != mask_lengths, "input_ids and assistant_masks differ in length"),
        (lengths > max_length, f"longer than sft.train.max_length={max_length}"),
        (loss_tokens == 0, "no loss tokens (assistant_masks all 0)"),
    ]
    clusters = np.asarray(table.column("cluster").to_pylist(), dtype=object)
    usable = np.ones(len(ids), dtype=bool)
    rejects = []
    for bad, reason in reasons:
        for row in np.flatnonzero(bad & usable):
            rejects.append(
                {"split": split, "row": int(row), "id": ids[row], "cluster": clusters[row], "reason": reason}
            )
        usable &= ~bad
    return Screened(split, ids, clusters, lengths, usable, rejects)


def check_clusters(screened: Screened, wanted: list[str]) -> None:
    """Every requested cluster needs usable train rows; name the clusters the mix does have."""
    present = screened.cluster_names()
    for cluster in wanted:
        if cluster == GENERALIST:
            continue
        rows = screened.clusters == cluster
        if not rows.any():
            raise BadInput(
                f"sft.clusters: cluster {cluster!r} has no rows in the train mix; "
                f"clusters in the mix: {', '.join(present) or '(none)'}"
            )
        if not (rows & screened.usable).any():
            raise BadInput(
                f"sft.clusters: every train row of cluster {cluster!r} was rejected "
                f"(see sft/rejects.jsonl, e.g. {_first_reason(screened, cluster)})"
            )


def _first_reason(screened: Screened, cluster: str) -> str:
    return next((r["reason"] for r in screened.rejects if r["cluster"] == cluster), "?")


@dataclass
class Selection:
    adapter: str
    indices: list[int]
    cluster_rows: int
    replay_rows: int
    cluster_tokens: int
    replay_tokens: int
    rejected_rows: int
    generation_lengths: dict[str, Any] = field(default_factory=dict)  # see `generation_lengths`

    def summary(self) -> dict[str, Any]:
        return {
            "cluster_rows": self.cluster_rows,
            "replay_rows": self.replay_rows,
            "cluster_tokens": self.cluster_tokens,
            "replay_tokens": self.replay_tokens,
            "rejected_rows": self.rejected_rows,
            **({"generation_lengths": self.generation_lengths} if self.generation_lengths else {}),
        }


def _length_stats(lengths: list[int]) -> dict[str, int]:
    """n, median, 90th percentile (nearest rank from above: at least a tenth of the rows are that long or
    longer) and max."""
    ordered = sorted(lengths)

    def at(share: float) -> int:
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]

    return {"n": len(ordered), "p50": at(0.5), "p90": at(0.9), "max": ordered[-1]}


def generation_lengths(rows: Iterable[tuple[Sequence[int], int | None]]) -> dict[str, Any]:
    """How long the turns an adapter learns to write are, for the budgets RL and eval give the model.

    `rows`: each row's assistant mask and the tool calls it makes (the mix's `difficulty` column, the unit of
    `rl.max_difficulty` and `eval.heldout_max_difficulty`; None where unknown). `replies`: the length of every
    labelled run (one assistant turn, its end-of-turn token included). `episodes`, keyed by k: the tokens from
    a row's first labelled token to its end (generated and tool-result tokens, as TRL's `max_completion_length`
    counts them) over the rows making 1..k calls; rows without a call count only as replies. Quantiles, not
    lists: the summary stays small for any mix."""
    replies: list[int] = []
    episodes: dict[int, list[int]] = {}
    for mask, calls in rows:
        runs = labelled_spans(mask)
        if not runs:
            continue
        replies += [end - begin for begin, end in runs]
        if calls and len(runs) > 1:  # a call answered: tool results and another turn follow it
            episodes.setdefault(calls, []).append(len(mask) - runs[0][0])
    if not replies:
        return {}
    cumulative: dict[str, dict[str, int]] = {}
    upto: list[int] = []
    for calls in range(1, max(episodes, default=0) + 1):
        upto += episodes.get(calls, [])
        if upto:
            cumulative[str(calls)] = _length_stats(upto)
    return {"replies": _length_stats(replies), "episodes": cumulative}


def adapter_seed(seed: int, adapter: str) -> int:
    """A per-adapter seed that does not depend on Python's salted `hash`."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{adapter}".encode()).digest()[:8], "little")


def select(screened: Screened, adapter: str, replay_fraction: float, seed: int) -> Selection:
    """Row indices for one adapter: its cluster's usable rows, then the seeded replay slice."""
    if adapter == GENERALIST:
        own = screened.usable
        rejected = int((~screened.usable).sum())
    else:
        own = (screened.clusters == adapter) & screened.usable
        rejected = int(((screened.clusters == adapter) & ~screened.usable).sum())
    own_idx = np.flatnonzero(own)
    own_tokens = int(screened.n_tokens[own_idx].sum())
    replay_idx = np.zeros(0, dtype=np.int64)
    if adapter != GENERALIST and replay_fraction > 0:
        others = np.flatnonzero(~own & screened.usable & (screened.clusters != adapter))
        others = np.random.default_rng(adapter_seed(seed, adapter)).permutation(others)
        target = own_tokens * replay_fraction / (1 - replay_fraction)
        # Smallest prefix of the permutation that reaches the token target (overshoots by < one row).
        reached = np.cumsum(screened.n_tokens[others]) >= target
        cut = int(np.argmax(reached)) + 1 if reached.any() else len(others)
        replay_idx = np.sort(others[:cut]) if target > 0 else replay_idx
    return Selection(
        adapter=adapter,
        indices=[*own_idx.tolist(), *replay_idx.tolist()],
        cluster_rows=len(own_idx),
        replay_rows=len(replay_idx),
        cluster_tokens=own_tokens,
        replay_tokens=int(screened.n_tokens[replay_idx].sum()),
        rejected_rows=rejected,
    )


def eval_indices(screened: Screened, adapter: str) -> list[int]:
    """Held-out rows of the adapter's own cluster (all clusters for the generalist), no replay."""
    rows = screened.usable if adapter == GENERALIST else (screened.clusters == adapter) & screened.usable
    return np.flatnonzero(rows).tolist()
