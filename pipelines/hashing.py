"""File content hashes shared by the stages (data manifests, source pins, model provenance).

Files are read in 1 MiB blocks so multi-GB shards and model weights never have to fit in memory. This module
imports nothing heavy on purpose: model fetching and the data stage both hash files before torch is loaded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

_BLOCK_BYTES = 1 << 20


def update_with_file(digest: Any, path: Path) -> None:
    """Feed a file's bytes into a running hashlib digest (callers may mix in names or separators too)."""
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(_BLOCK_BYTES), b""):
            digest.update(block)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    update_with_file(digest, path)
    return digest.hexdigest()


def fingerprint(payload: Any) -> str:
    """The one fingerprint rule: sha256 of the payload as canonical JSON (sorted keys, no spaces).

    Stages, SFT adapters and RL clusters all fingerprint what determines their output with this, so "did
    anything that matters change?" has one answer everywhere.
    """
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()
