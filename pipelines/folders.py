"""Folders midtrain writes, and the one rule for deleting anything: only what midtrain created.

Every output folder a command may later replace or clear (`data build --out`, `publish --dry-run`, the
stages' folders under `runs/`) carries a marker file written when midtrain created it. Replacing or clearing
a folder is allowed when it does not exist, is empty, or carries the marker; anything else is refused with
exit 2, so a mistyped `--out ~/Documents` costs an error message, not a folder.

Scratch folders (a build's work folder, the old output while the new one moves in) are named
`.<label>-<pid>-<random>` next to their destination and record their owning process; a killed run leaves
them behind, and the next run of the same command removes the ones whose owner is gone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

import psutil

from pipelines.errors import BadInput

OUTPUT_MARKER = ".midtrain-output"
SCRATCH_MARKER = ".midtrain-scratch"
log = logging.getLogger("midtrain")


# -- output folders ------------------------------------------------------------------------------------------
def is_ours(folder: Path) -> bool:
    return (folder / OUTPUT_MARKER).is_file()


def check_replaceable(folder: Path, what: str) -> None:
    """BadInput unless `folder` may be replaced: missing, an empty folder, or one midtrain wrote."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_symlink() or not folder.is_dir():
        kind = "a symlink" if folder.is_symlink() else "a file"
        raise BadInput(f"{what} {folder}: is {kind}, not a folder midtrain wrote; refusing to replace it")
    if is_ours(folder) or not any(folder.iterdir()):
        return
    raise BadInput(
        f"{what} {folder}: refusing to replace it: the folder exists, is not empty and was not written by "
        f"midtrain (no {OUTPUT_MARKER} file in it). Choose another folder, or move its contents away yourself."
    )


def check_writable(folder: Path, what: str) -> None:
    """BadInput unless `folder` (or, while it does not exist, its nearest existing parent) can be written: a
    read-only output folder is reported before the work, not after it."""
    existing = Path(folder).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BadInput(f"{what} {folder}: cannot write in {existing} (read-only or no permission)")


def mark(folder: Path, kind: str, owner: bool = False) -> None:
    """Record that midtrain wrote `folder` (what wrote it, for a human who finds the file); with `owner`, also
    which process is writing it now (`marker`, `owner_alive`)."""
    record: dict[str, Any] = {"written_by": "midtrain", "kind": kind} | (_this_process() if owner else {})
    (Path(folder) / OUTPUT_MARKER).write_text(json.dumps(record) + "\n", encoding="utf-8")


def marker(folder: Path) -> dict[str, Any] | None:
    """The marker `mark` wrote in `folder`, or None (no marker, or not one midtrain can read)."""
    try:
        record = json.loads((Path(folder) / OUTPUT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def fresh_output_dir(folder: Path, what: str, owner: bool = False) -> Path:
    """An empty output folder that midtrain owns: created, or an earlier output of ours cleared (`owner`: its
    marker names this process, see `mark`)."""
    folder = Path(folder)
    check_replaceable(folder, what)
    try:
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        mark(folder, what, owner)
    except OSError as exc:
        raise BadInput(
            f"{what} {folder}: cannot write it ({exc.strerror}); choose a writable folder"
        ) from None
    return folder


def replace_dir(new: Path, dst: Path, what: str) -> None:
    """Move the finished folder `new` to `dst`, replacing an earlier output of ours. The old output moves into a
    scratch folder first and is removed from there, so a killed run never leaves a half-replaced `dst`; what it
    leaves in scratch folders the next build removes."""
    check_replaceable(dst, what)
    mark(new, what)
    _umask_permissions(new)
    if dst.exists():
        trash = scratch_dir(dst.parent, f"{dst.name}.old")
        dst.rename(trash / dst.name)
        new.rename(dst)
        shutil.rmtree(trash)
    else:
        new.rename(dst)
    (dst / SCRATCH_MARKER).unlink(missing_ok=True)  # `new` was a scratch folder until now


def _umask_permissions(folder: Path) -> None:
    """mkdtemp makes folders 0700; an output folder gets the mode any folder the user creates gets."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)


# -- scratch folders -----------------------------------------------------------------------------------------
def _process_start(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def scratch_dir(parent: Path, label: str) -> Path:
    """A new `.<label>-<pid>-<random>` folder in `parent`, recording its owning process."""
    parent = Path(parent)
    pid = os.getpid()
    try:
        parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f".{label}-{pid}-", dir=parent))
    except OSError as exc:
        raise BadInput(
            f"{parent}: cannot write here ({exc.strerror}); choose a writable output folder"
        ) from None
    (folder / SCRATCH_MARKER).write_text(json.dumps(_this_process()) + "\n", encoding="utf-8")
    return folder


def _this_process() -> dict[str, Any]:
    """What `owner_alive` checks: pid, its start time (a reused pid has another) and host."""
    pid = os.getpid()
    return {"pid": pid, "started": _process_start(pid), "host": socket.gethostname()}


def owner_alive(owner: dict) -> bool:
    """Whether the process a marker or scratch folder names may still run (on another host: assumed so)."""
    if owner.get("host") != socket.gethostname():
        return True  # a shared file system: another machine's process cannot be checked, so it is left alone
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return True
    started = _process_start(pid)
    # A reused pid has another start time.
    return started is not None and (owner.get("started") is None or abs(started - owner["started"]) < 1.0)


def clean_stale_scratch(parent: Path, label: str) -> list[Path]:
    """Remove `.<label>-*` scratch folders in `parent` whose owning process is gone; returns what was removed.
    Folders without a readable scratch marker are left alone (unless empty): midtrain cannot prove they are
    its own."""
    removed: list[Path] = []
    parent = Path(parent)
    if not parent.is_dir():
        return removed
    for folder in sorted(parent.glob(f".{label}-*")):
        if folder.is_symlink() or not folder.is_dir():
            continue
        try:
            owner = json.loads((folder / SCRATCH_MARKER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only succeeds when empty: killed between mkdtemp and writing the marker
                removed.append(folder)
            continue
        if not isinstance(owner, dict) or owner_alive(owner):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    if removed:
        log.info(
            "removed %d leftover folder(s) of killed runs: %s", len(removed), ", ".join(map(str, removed))
        )
    return removed
