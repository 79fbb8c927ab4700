"""One policy for a stage's units of work (an SFT adapter, an RL cluster) when a run is repeated.

Each unit's folder records the fingerprint of what determines its weights (`unit_state.json`). Run again:
- finished with the same fingerprint → kept (so adding a cluster to a finished run trains only the new one);
- interrupted with the same fingerprint → resumed from its last complete checkpoint;
- anything else (the config or the starting weights changed) → started over, with a warning that says why.
`restart=True` starts every unit over. The same rule holds for `midtrain run`, `midtrain sft` and `midtrain rl`,
so no command needs a `--resume` flag to make progress after an interruption or an edit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipelines import folders
from pipelines.artifacts import UnitState

log = logging.getLogger("midtrain.units")
# State files of earlier midtrain versions: a folder holding one is ours to clear too.
LEGACY_STATE_FILES = ("sft_run.json", "rl_run.json")


@dataclass(frozen=True)
class UnitPlan:
    action: Literal["skip", "resume", "start"]
    checkpoint: Path | None = None
    reason: str = ""


def plan_unit(
    out_dir: Path,
    stage: str,
    fingerprint: str,
    finished_fingerprint: Callable[[Path], str | None],
    last_checkpoint: Callable[[Path], Path | None],
    restart: bool = False,
) -> UnitPlan:
    """Decide, without touching the folder, what to do with one unit (see the module docstring)."""
    if restart:
        return UnitPlan("start", reason="restart requested")
    done = finished_fingerprint(out_dir) if out_dir.is_dir() else None
    if done == fingerprint:
        return UnitPlan("skip", reason="finished with this config")
    state = UnitState.read_if_present(out_dir) if out_dir.is_dir() else None
    checkpoint = last_checkpoint(out_dir) if out_dir.is_dir() else None
    if checkpoint is not None and state is not None and state.config_fingerprint == fingerprint:
        return UnitPlan("resume", checkpoint, "interrupted with this config")
    if done is not None or checkpoint is not None:
        return UnitPlan("start", reason=f"{stage} config or its inputs changed since {out_dir} was trained")
    return UnitPlan("start", reason="new")


def prepare_unit(out_dir: Path, stage: str, unit: str, fingerprint: str, plan: UnitPlan) -> None:
    """Make the folder match the plan: a fresh start clears what an earlier run of this unit left, only if
    midtrain wrote it (pipelines/folders.py); the new folder records the fingerprint."""
    if plan.action != "start":
        return
    if plan.reason not in ("new", "restart requested"):
        log.warning("%s: %s: %s; starting it over", stage, unit, plan.reason)
    _adopt_earlier_unit(out_dir, stage)
    folders.fresh_output_dir(out_dir, f"{stage} output folder")
    UnitState(stage=stage, unit=unit, config_fingerprint=fingerprint).write(out_dir)


def _adopt_earlier_unit(out_dir: Path, stage: str) -> None:
    """A unit folder of a midtrain version from before output markers holds its state file: that proves it ours."""
    if not out_dir.is_dir() or folders.is_ours(out_dir):
        return
    if UnitState.path_in(out_dir).is_file() or any((out_dir / f).is_file() for f in LEGACY_STATE_FILES):
        folders.mark(out_dir, f"{stage} output folder")
