"""What a stage costs and runs on: peak memory of a block, library versions. Light to import (no torch at
import time), so `midtrain run` can wrap every stage and the data stage can record versions before torch loads."""

from __future__ import annotations

import ctypes
import importlib.metadata
import platform
import sys
import threading


class PeakMemory:
    """Peak memory over a `with` block.

    GPU: `torch.cuda.max_memory_allocated` (reset on entry) when torch is loaded and a GPU is there. Always: the
    process RSS, sampled by a background thread (psutil), since `ru_maxrss` is a lifetime peak and would carry
    over from earlier adapters or stages.
    """

    def __init__(self, interval_s: float = 0.02) -> None:
        self.interval_s = interval_s
        self.peak_rss = 0
        self._cuda_peak: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _cuda() -> object | None:
        torch = sys.modules.get("torch")  # only if some stage loaded it: never import torch for this
        return torch if torch is not None and torch.cuda.is_available() else None

    def __enter__(self) -> PeakMemory:
        import psutil

        self._process = psutil.Process()
        self.peak_rss = self._process.memory_info().rss
        torch = self._cuda()
        if torch is not None:
            torch.cuda.reset_peak_memory_stats()  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_rss = max(self.peak_rss, self._process.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_rss = max(self.peak_rss, self._process.memory_info().rss)
        torch = self._cuda()
        if torch is not None:
            self._cuda_peak = int(torch.cuda.max_memory_allocated())  # type: ignore[attr-defined]

    @property
    def kind(self) -> str:
        return "rss" if self._cuda_peak is None else "cuda_max_memory_allocated"

    @property
    def peak_bytes(self) -> int:
        """The GPU allocator's peak where there is a GPU (the scarce memory there), else the process RSS."""
        return self.peak_rss if self._cuda_peak is None else self._cuda_peak


TRAINING_LIBRARIES = ("torch", "transformers", "trl", "peft")


def release_freed_memory() -> bool:
    """Return the C heap's free pages to the OS (glibc's `malloc_trim(0)`): whether any were (False without glibc).

    Why: the data build's driver tokenizes and cleans in several threads (the render thread, the tokenizer's
    pool), each with its own glibc arena; what they free stays in the arenas, so the resident memory a phase leaves
    grows with the corpus (measured at the write step's start: 51 MB of freed-but-held pages on the 10 MB bench
    corpus, 112 MB on 100 MB) though nothing holds it. Arrow's own pool (mimalloc) is not affected."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:  # an optimisation: whatever fails here must not fail the build
        return bool(ctypes.CDLL(None).malloc_trim(0))  # the process's own symbols: glibc is loaded
    except (OSError, AttributeError):
        return False


def library_versions(names: tuple[str, ...] = TRAINING_LIBRARIES) -> dict[str, str]:
    """Installed versions (from package metadata, so nothing is imported), plus Python's."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
