"""Global dedup of a build: exact and near duplicates across all work units, decided once, in recipe order.

Workers write, per unit, each candidate row's content digest and MinHash values (pipelines/data/ingest.py);
this step reads them back in unit order and applies the same rules a single process applies row by row:
- exact: a row whose normalised content equals an earlier row's is dropped, naming the first one;
- near: a row that shares an LSH band (all values of one band equal; datasketch's bands for the recipe's
  threshold and num_perm) with an earlier row *kept* by near dedup is dropped, naming the earliest such row.
  Exact duplicates take no part, and neither do rows without words to shingle (`clean.NearDeduper`).

The near rule is sequential (whether a row is kept depends on earlier decisions), but only rows that share a
band with another row can be affected, so the order-dependent pass walks just those. It is the shape of
datatrove's MinHash pipeline (signatures per shard → buckets per band → resolve → filter) with one
difference that the lockfile needs: the survivor of a cluster is the first row in recipe order, and a chain
A~B~C where A and C are not alike keeps C (datatrove's connected components would drop it), exactly as the
in-process rule does. Memory: 16 bytes per candidate for the digests and, one band at a time, 4×rows-per-band
bytes per near candidate, plus the rows that collide.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

EXACT = ("exact_dedup", "exact_duplicate")
NEAR = ("near_dedup", "near_duplicate")


@dataclass(frozen=True)
class UnitKeys:
    """Where one unit's dedup keys are: `digest.npy` (candidates × 16 bytes), `has_sig.npy` (bool per
    candidate) and `sig.npy` (one row of MinHash values per candidate that has one)."""

    folder: Path

    def digests(self) -> np.ndarray:
        return np.load(self.folder / "digest.npy")

    def has_sig(self) -> np.ndarray:
        return np.load(self.folder / "has_sig.npy")

    def sig(self) -> np.ndarray:
        return np.load(self.folder / "sig.npy", mmap_mode="r")


@dataclass(frozen=True)
class Duplicate:
    stage: str
    reason: str
    kept: int  # global candidate index of the row it duplicates


def resolve_duplicates(
    units: list[UnitKeys], bands: list[tuple[int, int]] | None
) -> list[dict[int, Duplicate]]:
    """Per unit: candidate index → why it is a duplicate (and of which global candidate). `bands` None: no
    near dedup."""
    digests = [u.digests() for u in units]
    offsets = np.cumsum([0] + [len(d) for d in digests])
    total = int(offsets[-1])
    dups: dict[int, Duplicate] = {}
    if total:
        keys = np.concatenate(digests).view(np.dtype("V16")).ravel()
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        first_of = first[inverse.ravel()]
        exact = first_of != np.arange(total)
        for row in np.flatnonzero(exact).tolist():
            dups[row] = Duplicate(*EXACT, int(first_of[row]))
        if bands:
            dups.update(_near_duplicates(units, offsets, exact, bands))
    return _by_unit(dups, offsets)


def _near_duplicates(
    units: list[UnitKeys], offsets: np.ndarray, exact: np.ndarray, bands: list[tuple[int, int]]
) -> dict[int, Duplicate]:
    has_sig = [u.has_sig() for u in units]
    # Per unit: which of its signature rows take part (not exact duplicates), and their global candidate index.
    picks, rows = [], []
    for u, flags in enumerate(has_sig):
        in_unit = ~exact[offsets[u] : offsets[u + 1]]
        picks.append(np.flatnonzero(in_unit[flags]))
        rows.append(offsets[u] + np.flatnonzero(flags & in_unit))
    candidates = np.concatenate(rows) if rows else np.empty(0, dtype=np.int64)
    collide_rows, collide_buckets = [], []
    bucket_offset = 0
    for start, end in bands:
        parts = [np.ascontiguousarray(u.sig()[pick, start:end]) for u, pick in zip(units, picks, strict=True)]
        values = np.concatenate(parts) if parts else np.empty((0, end - start), dtype=np.uint32)
        if not len(values):
            return {}
        keys = values.view(np.dtype(f"V{values.shape[1] * values.itemsize}")).ravel()
        _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        inverse = inverse.ravel()
        shared = np.flatnonzero(counts[inverse] >= 2)
        collide_rows.append(shared)
        collide_buckets.append(inverse[shared] + bucket_offset)
        bucket_offset += len(counts)
    return {
        int(candidates[row]): Duplicate(*NEAR, int(candidates[kept]))
        for row, kept in _greedy(np.concatenate(collide_rows), np.concatenate(collide_buckets)).items()
    }


def _greedy(rows: np.ndarray, buckets: np.ndarray) -> dict[int, int]:
    """Walk the rows that share a bucket in order: a row whose buckets hold a kept row is dropped (naming the
    earliest), otherwise it is kept and claims its buckets. Rows sharing no bucket are kept and never seen."""
    order = np.lexsort((buckets, rows))
    row_list, bucket_list = rows[order].tolist(), buckets[order].tolist()
    owner: dict[int, int] = {}
    dropped: dict[int, int] = {}
    start = 0
    while start < len(row_list):
        row = row_list[start]
        end = start
        while end < len(row_list) and row_list[end] == row:
            end += 1
        mine = bucket_list[start:end]
        hits = [owner[b] for b in mine if b in owner]
        if hits:
            dropped[row] = min(hits)
        else:
            owner.update(dict.fromkeys(mine, row))
        start = end
    return dropped


def _by_unit(dups: dict[int, Duplicate], offsets: np.ndarray) -> list[dict[int, Duplicate]]:
    out: list[dict[int, Duplicate]] = [{} for _ in range(len(offsets) - 1)]
    for row in sorted(dups):
        unit = int(np.searchsorted(offsets, row, side="right")) - 1
        out[unit][row - int(offsets[unit])] = dups[row]
    return out


def locate(row: int, offsets: np.ndarray) -> tuple[int, int]:
    """(unit, candidate index in the unit) of a global candidate index."""
    unit = int(np.searchsorted(offsets, row, side="right")) - 1
    return unit, row - int(offsets[unit])
