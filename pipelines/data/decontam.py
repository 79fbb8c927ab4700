"""Decontamination: drop training rows that contain an eval text, judged by word n-gram overlap (13 default).

A row is contaminated by an eval text when it contains at least `min_overlap` (default half) of that text's
distinct n-grams. One shared n-gram is not enough: the project's own held-out requests come from the same
templates as the generated training traces ("…, save it as the solution and make sure the tests pass"), so
any-overlap would reject every trace of a domain for sharing boilerplate, not the task. A copied eval
question covers all of its n-grams; set `min_overlap: 1e-9` for the GPT-3-style any-overlap rule.

Eval sets (`Decontamination.sets` in the recipe):
- `bfcl`: every question text in every JSON file that the installed `bfcl-eval` package ships under
  `bfcl_eval/data/` (live and non-live, multi-turn, memory prerequisites and the unused sets too: a question
  is a question whichever leaderboard category uses it);
- `tasks:PATH`: a task file's `split: heldout` rows (their user messages, and their ids);
- `heldout`: the project's own held-out eval tasks, sampled by the environments' task samplers
  (`pipelines.tasks.domains.draw_tasks`) with `heldout_seed`/`heldout_n`: their request texts, and their task ids
  (a generated trace whose `meta.task_id` is a held-out task's is dropped however it is phrased);
- any other entry: a .jsonl/.json path whose string values are eval texts.

Eval texts shorter than `n` words cannot contain an n-gram; they are matched as whole word sequences when
they have at least `MIN_SHORT_WORDS` words (shorter ones, like BFCL's "How old am I?", are common phrasing,
not evidence of contamination), and eval n-grams made only of numbers are dropped (digit runs like matrix
literals occur all over code). Matching uses the same word hashes as dedup (`clean.split_words`), and a
bitmap prefilter keeps the per-row cost at a few numpy passes.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.data.clean import Verdict, ngram_hashes, split_words
from pipelines.errors import BadInput
from pipelines.recipe import Decontamination

MIN_SHORT_WORDS = 8


_BITMAP_BITS = 22  # 4 MB prefilter per index: a row's n-grams are mostly misses, and a bitmap miss is cheap


@dataclass
class _Index:
    """Sorted 64-bit keys (n-gram hashes) → which eval text they came from, behind a bitmap prefilter.

    For short eval texts the key is the hash of their first MIN_SHORT_WORDS words, and `full`/`lengths`
    hold the whole text's hash and length, checked only where a key matches."""

    keys: np.ndarray
    owners: np.ndarray
    full: np.ndarray
    lengths: np.ndarray
    bitmap: np.ndarray

    @classmethod
    def build(cls, keys: np.ndarray, owners: np.ndarray, full: np.ndarray, lengths: np.ndarray) -> _Index:
        order = np.argsort(keys, kind="stable")
        bitmap = np.zeros(1 << _BITMAP_BITS, dtype=bool)
        bitmap[keys & np.uint64((1 << _BITMAP_BITS) - 1)] = True
        return cls(keys[order], owners[order], full[order], lengths[order], bitmap)

    def hits(self, grams: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position in `grams`, entry) for every entry whose key equals a gram, all owners of a shared key
        included; the bitmap rejects most grams before any binary search."""
        if not len(self.keys) or not len(grams):
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        maybe = np.flatnonzero(self.bitmap[grams & np.uint64((1 << _BITMAP_BITS) - 1)])
        left = np.searchsorted(self.keys, grams[maybe], side="left")
        counts = np.searchsorted(self.keys, grams[maybe], side="right") - left
        ends = np.cumsum(counts)
        within = np.arange(int(ends[-1]) if len(ends) else 0) - np.repeat(ends - counts, counts)
        return np.repeat(maybe, counts), np.repeat(left, counts) + within


@dataclass
class _Parts:
    """One eval set's keys before indexing: every n-gram of texts with ≥ n words (`long_*`), and texts with
    MIN_SHORT_WORDS ≤ words < n keyed by their first MIN_SHORT_WORDS words (`short_*`)."""

    labels: list[str]
    long_keys: np.ndarray
    long_owners: np.ndarray
    long_totals: np.ndarray  # distinct n-grams per eval text (0 for short texts)
    short_keys: np.ndarray
    short_owners: np.ndarray
    short_full: np.ndarray
    short_lengths: np.ndarray


class ContaminationIndex:
    """All eval sets of a recipe in one index (one lookup per row, whatever the number of sets);
    `verdict(word_hashes)` names the set and the eval item a row overlaps."""

    def __init__(self, ngram: int, min_overlap: float = 0.5) -> None:
        self.ngram = ngram
        self.min_overlap = min_overlap
        self.short_window = min(MIN_SHORT_WORDS, ngram)
        self.counts: dict[str, int] = {}  # eval texts indexed per set (manifest)
        self._labels: list[tuple[str, str]] = []  # (set, item) per owner id
        self._parts: list[tuple[int, _Parts]] = []  # (owner offset, parts)
        self._long: _Index | None = None
        self._short: _Index | None = None
        self._totals = _I32
        self.task_ids: dict[str, str] = {}  # held-out task id → set name

    def add_texts(self, set_name: str, items: Iterable[tuple[str, str]]) -> None:
        self._add(set_name, _collect(items, self.ngram))

    def add_bfcl(self) -> None:
        self._add("bfcl", _bfcl_parts(self.ngram))

    def add_heldout(self, tasks: list[Any]) -> None:
        """Held-out tasks by request text and by task id: a generated trace of the very same task (equal
        `meta.task_id`) is a leak even when its request is phrased differently."""
        self.add_texts("heldout", ((f"heldout:{t.task_id}", t.request) for t in tasks))
        self.task_ids.update({t.task_id: "heldout" for t in tasks})

    def add_task_file(self, path: str) -> None:
        """A task file's held-out rows (pipelines.tasks.task_file), by request text and by id, as set `tasks:PATH`."""
        from pipelines.tasks.task_file import task_file_heldout_rows

        set_name = f"tasks:{Path(path).name}"
        rows = task_file_heldout_rows(path)
        self.add_texts(set_name, ((f"{set_name}:{row_id}", text) for row_id, text in rows))
        self.task_ids.update({row_id: set_name for row_id, _ in rows})

    def task_verdict(self, task_id: Any) -> Verdict | None:
        set_name = self.task_ids.get(str(task_id)) if task_id else None
        return Verdict(f"contaminated:{set_name}", f"same task as {set_name}:{task_id}") if set_name else None

    def _add(self, set_name: str, parts: _Parts) -> None:
        self._parts.append((len(self._labels), parts))
        self._labels.extend((set_name, label) for label in parts.labels)
        self.counts[set_name] = len(parts.labels)
        self._long = self._short = None

    def _freeze(self) -> tuple[_Index, _Index]:
        if self._long is None or self._short is None:
            p, cat = self._parts, np.concatenate
            self._long = _Index.build(
                cat([x.long_keys for _, x in p] + [_U64]),
                cat([x.long_owners + off for off, x in p] + [_I32]),
                cat([np.zeros(len(x.long_keys), dtype=np.uint64) for _, x in p] + [_U64]),
                cat([np.full(len(x.long_keys), self.ngram, dtype=np.int32) for _, x in p] + [_I32]),
            )
            self._totals = cat([x.long_totals for _, x in p] + [_I32])
            self._short = _Index.build(
                cat([x.short_keys for _, x in p] + [_U64]),
                cat([x.short_owners + off for off, x in p] + [_I32]),
                cat([x.short_full for _, x in p] + [_U64]),
                cat([x.short_lengths for _, x in p] + [_I32]),
            )
        return self._long, self._short

    def verdict(self, hashes: np.ndarray) -> Verdict | None:
        long, short = self._freeze()
        verdict = self._long_verdict(long, ngram_hashes(hashes, self.ngram))
        if verdict is not None:
            return verdict
        owner = _short_hit(short, hashes, ngram_hashes(hashes, self.short_window))
        if owner is not None:
            set_name, label = self._labels[owner]
            return Verdict(f"contaminated:{set_name}", f"contains the whole eval text {label}")
        return None

    def _long_verdict(self, long: _Index, grams: np.ndarray) -> Verdict | None:
        """The eval text whose distinct n-grams the row covers most, if that is at least `min_overlap`."""
        _, entries = long.hits(grams)
        if not len(entries):
            return None
        owners, shared = np.unique(long.owners[np.unique(entries)], return_counts=True)
        coverage = shared / self._totals[owners]
        best = int(np.argmax(coverage))
        if coverage[best] < self.min_overlap:
            return None
        set_name, label = self._labels[int(owners[best])]
        detail = f"shares {shared[best]} of the {self._totals[owners[best]]} {self.ngram}-grams of {label}"
        return Verdict(f"contaminated:{set_name}", detail)


_U64 = np.empty(0, dtype=np.uint64)
_I32 = np.empty(0, dtype=np.int32)


def _short_hit(index: _Index, hashes: np.ndarray, short_grams: np.ndarray) -> int | None:
    """A short eval text is in the row when its first words match somewhere and its full hash matches there."""
    for pos, entry in zip(*index.hits(short_grams), strict=True):
        length = int(index.lengths[entry])
        window = hashes[pos : pos + length]
        if len(window) == length and ngram_hashes(window, length)[0] == index.full[entry]:
            return int(index.owners[entry])
    return None


def _collect(items: Iterable[tuple[str, str]], ngram: int) -> _Parts:
    labels: list[str] = []
    long_keys: list[np.ndarray] = []
    long_owners: list[np.ndarray] = []
    totals: list[int] = []
    short: dict[str, list[int]] = {"keys": [], "owners": [], "full": [], "lengths": []}
    short_window = min(MIN_SHORT_WORDS, ngram)
    for label, text in items:
        found = split_words(text)
        n_words = len(found.hashes)
        grams = _U64
        if n_words >= ngram:
            grams = np.unique(ngram_hashes(found.hashes, ngram)[~_all_numeric(found.numeric, ngram)])
        if n_words < short_window or found.numeric.all() or (n_words >= ngram and not len(grams)):
            continue
        owner = len(labels)
        labels.append(label)
        totals.append(len(grams))
        if n_words >= ngram:
            long_keys.append(grams)
            long_owners.append(np.full(len(grams), owner, dtype=np.int32))
        else:
            short["keys"].append(int(ngram_hashes(found.hashes[:short_window], short_window)[0]))
            short["owners"].append(owner)
            short["full"].append(int(ngram_hashes(found.hashes, n_words)[0]))
            short["lengths"].append(n_words)
    return _Parts(
        labels,
        np.concatenate([*long_keys, _U64]),
        np.concatenate([*long_owners, _I32]),
        np.array(totals, dtype=np.int32),
        np.array(short["keys"], dtype=np.uint64),
        np.array(short["owners"], dtype=np.int32),
        np.array(short["full"], dtype=np.uint64),
        np.array(short["lengths"], dtype=np.int32),
    )


@lru_cache(maxsize=4)
def _bfcl_parts(ngram: int) -> _Parts:
    """The installed package's files do not change within a process (verify rebuilds in the same one)."""
    return _collect(bfcl_questions(), ngram)


def _all_numeric(numeric: np.ndarray, window: int) -> np.ndarray:
    """Windows made only of numbers ("1 2 3 … 13", matrix literals) are everywhere in code and prove nothing."""
    sums = np.convolve(numeric.astype(np.int32), np.ones(window, dtype=np.int32), mode="valid")
    return sums == window


def build_index(config: Decontamination) -> ContaminationIndex:
    """Index every set the recipe names."""
    index = ContaminationIndex(config.ngram, config.min_overlap)
    for name in config.sets:
        if name == "bfcl":
            index.add_bfcl()
        elif name == "heldout":
            index.add_heldout(heldout_tasks(config))
        elif name.startswith("tasks:"):
            index.add_task_file(name.removeprefix("tasks:"))
        else:
            index.add_texts(Path(name).name, file_texts(Path(name)))
    return index


# -- the eval sets -------------------------------------------------------------------------------------------
def bfcl_data_dir() -> Path:
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or spec.origin is None:
        raise BadInput(
            "decontamination set 'bfcl': the bfcl-eval package is not installed (pip install bfcl-eval)"
        )
    return Path(spec.origin).parent / "data"


def bfcl_questions(data_dir: Path | None = None) -> Iterator[tuple[str, str]]:
    """(`file#id`, text) for every question text in every JSON(-lines) file under bfcl_eval/data/."""
    root = data_dir or bfcl_data_dir()
    for path in sorted(root.rglob("*.json")):
        for n, record in enumerate(_json_records(path)):
            if not isinstance(record, dict) or "question" not in record:
                continue
            label = f"{path.relative_to(root)}#{record.get('id', n)}"
            for text in _strings(record["question"]):
                yield label, text


def heldout_tasks(config: Decontamination) -> list[Any]:
    """The held-out eval tasks: the environments' task samplers with `heldout_seed`/`heldout_n`."""
    from pipelines.tasks.domains import draw_tasks

    return draw_tasks(["all"], config.heldout_n, config.heldout_seed)


def file_texts(path: Path) -> Iterator[tuple[str, str]]:
    """Every string value of every record of a user-named eval file (.jsonl or .json)."""
    if not path.is_file():
        raise BadInput(f"decontamination set {str(path)!r}: file not found")
    for n, record in enumerate(_json_records(path)):
        for text in _strings(record):
            yield f"{path.name}#{n}", text


def _json_records(path: Path) -> Iterator[Any]:
    """JSON-lines (what bfcl-eval ships, despite the .json suffix), or one JSON document as a fallback."""
    text = path.read_text(encoding="utf-8")
    try:
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError:
        try:
            whole = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadInput(f"{path}:{exc.lineno}: not JSON or JSON-lines ({exc.msg})") from None
        records = whole if isinstance(whole, list) else [whole]
    yield from records


def _strings(value: Any) -> Iterator[str]:
    """Texts inside a question: plain strings, message dicts' `content`, nested turn lists."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, dict):
        if "content" in value:
            yield from _strings(value["content"])
        else:
            for item in value.values():
                yield from _strings(item)
