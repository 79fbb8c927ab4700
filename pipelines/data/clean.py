"""Cleaning steps of the data stage: quality filters, exact dedup, near-dup (MinHash LSH).

All steps work on plain text views of a Trace (`dedup_text`) and on arrays of 64-bit word hashes
(`word_hashes`), which decontamination (decontam.py) shares: a row's words are hashed once and reused for
MinHash shingles and eval n-grams. Everything is vectorised with numpy because cleaning sits next to
tokenization on the critical path (scripts/bench_data.py holds it to ≥ 0.6× raw tokenizer throughput).
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass

import numpy as np
from datasketch import MinHash, MinHashLSH

from pipelines.recipe import NearDedup, QualityFilters
from pipelines.schema import Trace

# Odd 64-bit multiplier for the polynomial n-gram hash; arithmetic wraps mod 2^64 on purpose.
_NGRAM_BASE = np.uint64(0x9E3779B97F4A7C15)
_ALPHA_BYTES = (string.ascii_letters).encode()
_SYMBOL_BYTES = "".join(c for c in string.punctuation).encode()
_NON_ASCII_BYTES = bytes(range(128, 256))


@dataclass(frozen=True)
class Verdict:
    """Why a row was dropped: `reason` is a fixed code (counted in the manifest), `detail` the specifics."""

    reason: str
    detail: str = ""


# -- text views ----------------------------------------------------------------------------------------------
def dedup_text(trace: Trace) -> str:
    """The words that make a row what it is. Tool specs are left out: every trace of a domain shares them,
    so including them would make all of a domain's traces near-duplicates of each other."""
    if trace.kind != "tool":
        return trace.text
    parts: list[str] = []
    for msg in trace.messages:
        parts.extend(t.text for t in msg.thinking)
        if msg.content:
            parts.append(msg.content)
        parts.extend(f"{c.name} {json.dumps(c.arguments, sort_keys=True)}" for c in msg.tool_calls)
    return "\n".join(parts)


def normalise(text: str) -> str:
    """Case and whitespace do not make a row new."""
    return " ".join(text.lower().split())


def content_hash(text: str) -> str:
    return content_digest(text).hex()


def content_digest(text: str) -> bytes:
    """16 bytes that equal exactly when two texts are the same up to case and whitespace."""
    return hashlib.blake2b(normalise(text).encode("utf-8"), digest_size=16).digest()


# -- quality filters -----------------------------------------------------------------------------------------
def quality_verdict(text: str, filters: QualityFilters) -> Verdict | None:
    """First failing filter for a code/text document, or None. Ratios are over UTF-8 bytes (non-ASCII bytes
    count as letters: they are almost always letters of non-English text), which keeps this C-speed."""
    n_chars = len(text)
    if n_chars < filters.min_chars:
        return Verdict("too_short", f"{n_chars} chars < min_chars {filters.min_chars}")
    if n_chars > filters.max_chars:
        return Verdict("too_long_chars", f"{n_chars} chars > max_chars {filters.max_chars}")
    data = text.encode("utf-8")
    visible = len(data) - data.count(b" ") - data.count(b"\n") - data.count(b"\t") - data.count(b"\r")
    visible = max(visible, 1)
    symbols = len(data) - len(data.translate(None, _SYMBOL_BYTES))
    if symbols / visible > filters.max_symbol_ratio:
        return Verdict("symbol_ratio", f"symbol ratio {symbols / visible:.3f} > {filters.max_symbol_ratio}")
    alpha = len(data) - len(data.translate(None, _ALPHA_BYTES + _NON_ASCII_BYTES))
    if alpha / visible < filters.min_alpha_ratio:
        return Verdict("alpha_ratio", f"alpha ratio {alpha / visible:.3f} < {filters.min_alpha_ratio}")
    repeated = repeated_line_fraction(text)
    if repeated > filters.max_repeated_line_fraction:
        return Verdict(
            "repeated_lines", f"repeated-line fraction {repeated:.3f} > {filters.max_repeated_line_fraction}"
        )
    return None


def repeated_line_fraction(text: str) -> float:
    """Share of non-blank lines that repeat an earlier line (boilerplate, spam, generated filler).

    Very short lines (`)`, `else:`, `pass`) repeat in any healthy code file, so only lines with at least
    8 visible characters count."""
    lines = [s for line in text.splitlines() if len(s := line.strip()) >= 8]
    if not lines:
        return 0.0
    return 1.0 - len(set(lines)) / len(lines)


# -- word hashes and n-grams ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Words:
    """A text's words as 64-bit hashes, and which of them are all digits (decontamination skips those)."""

    hashes: np.ndarray
    numeric: np.ndarray


def split_words(text: str) -> Words:
    """Lower-cased words = maximal runs of ASCII letters, digits, `_` and non-ASCII bytes (UTF-8 letters),
    hashed without a Python loop: a polynomial prefix hash over the bytes (mod 2^64, so wrap-around is the
    arithmetic), one subtraction per word, shifted to position 0 by the inverse power, then MurmurHash3's
    64-bit finalizer. Punctuation, spacing and case never change a word's identity."""
    data = np.frombuffer(text.lower().encode("utf-8"), dtype=np.uint8)
    if not len(data):
        return Words(np.empty(0, dtype=np.uint64), np.empty(0, dtype=bool))
    is_word = _WORD_BYTES[data]
    edges = np.flatnonzero(np.diff(is_word.astype(np.int8), prepend=0, append=0))
    starts, ends = edges[0::2], edges[1::2]
    powers, inverses = _powers(len(data) + 1)
    prefix = np.zeros(len(data) + 1, dtype=np.uint64)
    np.cumsum((data.astype(np.uint64) + np.uint64(1)) * powers[: len(data)], out=prefix[1:])
    hashes = _fmix((prefix[ends] - prefix[starts]) * inverses[starts], _FMIX64)
    digits = np.zeros(len(data) + 1, dtype=np.int64)
    np.cumsum(_DIGIT_BYTES[data], out=digits[1:])
    return Words(hashes, (digits[ends] - digits[starts]) == (ends - starts))


def word_hashes(text: str) -> np.ndarray:
    return split_words(text).hashes


_WORD_BYTES = np.zeros(256, dtype=bool)
_WORD_BYTES[[ord(c) for c in string.ascii_letters + string.digits + "_"]] = True
_WORD_BYTES[128:] = True
_DIGIT_BYTES = np.zeros(256, dtype=np.int64)
_DIGIT_BYTES[[ord(c) for c in string.digits]] = 1
_BYTE_BASE = np.uint64(0x100000001B3)  # odd, so it is invertible mod 2^64
_power_cache: list[np.ndarray] = []


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """BASE^i and BASE^-i (mod 2^64) for i < n, grown by doubling and kept (a few MB for 200k-char rows)."""
    if not _power_cache or len(_power_cache[0]) < n:
        size = max(n, 2 * len(_power_cache[0]) if _power_cache else 1 << 16)
        inverse = pow(int(_BYTE_BASE), -1, 1 << 64)
        powers = np.empty(size, dtype=np.uint64)
        inverses = np.empty(size, dtype=np.uint64)
        powers[0] = inverses[0] = 1
        powers[1:] = _BYTE_BASE
        inverses[1:] = np.uint64(inverse)
        _power_cache[:] = [np.cumprod(powers), np.cumprod(inverses)]
    return _power_cache[0], _power_cache[1]


# MurmurHash3's finalizers as (shifts, multipliers): the 64-bit one mixes word hashes; the 32-bit one is what
# datasketch applies to shingles before its affine permutations (so our signatures match its MinHash).
_FMIX64 = ((33, 33, 33), (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53))
_FMIX32 = ((16, 13, 16), (0x85EBCA6B, 0xC2B2AE35))


def _fmix(h: np.ndarray, constants: tuple[tuple[int, ...], tuple[int, ...]]) -> np.ndarray:
    """xor-shift, multiply, xor-shift, multiply, xor-shift, in the array's own unsigned width (wrap-around)."""
    shifts, multipliers = constants
    word = h.dtype.type
    for shift, multiplier in zip(shifts[:-1], multipliers, strict=True):
        h = h ^ (h >> word(shift))
        h = h * word(multiplier)
    return h ^ (h >> word(shifts[-1]))


def ngram_hashes(hashes: np.ndarray, n: int) -> np.ndarray:
    """Polynomial hash of every window of `n` consecutive words (empty when the text is shorter)."""
    count = len(hashes) - n + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint64)
    out = np.zeros(count, dtype=np.uint64)
    for offset in range(n):
        out *= _NGRAM_BASE
        out += hashes[offset : offset + count]
    return out


# -- dedup ---------------------------------------------------------------------------------------------------
class ExactDeduper:
    """Normalised content hash → id of the first row that had it (deterministic source order wins)."""

    def __init__(self) -> None:
        self._first: dict[str, str] = {}

    def check_and_add(self, digest: str, row_id: str) -> Verdict | None:
        kept = self._first.setdefault(digest, row_id)
        return None if kept == row_id else Verdict("exact_duplicate", f"same content as {kept}")


class NearDeduper:
    """MinHash LSH over word shingles (datasketch). Signatures are computed with numpy in one shot per row;
    `signature` is bit-identical to `MinHash(hashfunc=identity).update_batch(shingles)` (tested).

    `check_and_add` is the rule in one process: a row is a near-duplicate when it shares an LSH band with a
    row kept before it. The build applies the same rule across all its work units at once
    (`dedup.resolve_duplicates`, tested against this class), from the signatures its workers wrote."""

    def __init__(self, config: NearDedup) -> None:
        self.config = config
        self._proto = MinHash(num_perm=config.num_perm, seed=1)
        a, b = self._proto.permutations
        self._a = a.astype(np.uint32)
        self._b = b.astype(np.uint32)
        self._lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm)
        self._ids: list[str] = []

    def shingles(self, hashes: np.ndarray) -> np.ndarray:
        """32-bit shingle hashes (datasketch's default scheme is 32-bit); repeats are harmless to a min."""
        grams = ngram_hashes(hashes, min(self.config.shingle_words, max(len(hashes), 1)))
        return (grams >> np.uint64(32)).astype(np.uint32)

    @property
    def bands(self) -> list[tuple[int, int]]:
        """The LSH bands datasketch picks for this threshold and num_perm: two rows are candidates when all
        values of one band are equal (what `dedup.resolve_duplicates` groups by)."""
        return list(self._lsh.hashranges)

    def signature_values(self, hashes: np.ndarray) -> np.ndarray | None:
        """A row's MinHash values (uint32, num_perm of them), or None when it has no words to shingle."""
        shingles = self.shingles(hashes)
        return self._values(shingles) if len(shingles) else None

    def signature(self, shingles: np.ndarray) -> MinHash:
        values = self._values(shingles)
        return MinHash(seed=1, hashvalues=values, permutations=self._proto.permutations, scheme="affine32")

    def _values(self, shingles: np.ndarray) -> np.ndarray:
        values = np.full(self.config.num_perm, np.iinfo(np.uint32).max, dtype=np.uint32)
        for start in range(0, len(shingles), 4096):  # bounded temp matrix: num_perm × 4096
            permuted = np.multiply.outer(self._a, _fmix(shingles[start : start + 4096], _FMIX32))
            permuted += self._b[:, None]
            np.minimum(values, permuted.min(axis=1), out=values)
        return values

    def check_and_add(self, hashes: np.ndarray, row_id: str) -> Verdict | None:
        shingles = self.shingles(hashes)
        if len(shingles) == 0:
            return None
        sig = self.signature(shingles)
        matches = self._lsh.query(sig)
        if matches:
            return Verdict("near_duplicate", f"near-duplicate of {self._ids[min(matches)]}")
        self._lsh.insert(len(self._ids), sig, check_duplication=False)
        self._ids.append(row_id)
        return None
