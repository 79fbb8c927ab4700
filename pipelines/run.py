"""`midtrain run CONFIG`: every registered stage (pipelines/stages.py) in order, as one resumable script.

Each finished stage writes a `StageMarker` into its folder with its fingerprint: the config sections it reads
plus the fingerprints of the stages it consumes. Re-running skips a stage whose fingerprint still matches, so
editing `rl:` re-runs rl and everything downstream but not data or sft. A stage that runs again decides per unit
of work what to keep (pipelines/units.py): finished adapters whose own fingerprint matches are kept, interrupted
ones resume, changed ones start over.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from pipelines.artifacts import StageMarker
from pipelines.errors import BadInput
from pipelines.hashing import fingerprint
from pipelines.resources import PeakMemory
from pipelines.run_config import RunConfig
from pipelines.stages import BY_NAME, STAGES, Stage, enabled_stages


def fingerprints(config: RunConfig) -> dict[str, str]:
    dumped = config.model_dump(mode="json")
    prints: dict[str, str] = {}
    for stage in STAGES:
        payload = {
            "sections": {k: dumped.get(k) for k in stage.sections},
            "upstream": {s: prints.get(s) for s in stage.consumes},
        }
        prints[stage.name] = fingerprint(payload)[:16]
    return prints


def marker(config: RunConfig, stage: Stage) -> StageMarker | None:
    """The stage's done-marker, or None. A malformed marker (truncated, hand-edited) only means the stage is
    not known to be done: it runs again, which rewrites the marker."""
    try:
        return StageMarker.read_if_present(stage.out_dir(config))
    except BadInput as exc:
        logging.getLogger("midtrain").warning("%s; the %s stage will run again", exc, stage.name)
        return None


def finished(config: RunConfig, stage: Stage, stage_fingerprint: str) -> bool:
    found = marker(config, stage)
    return found is not None and found.fingerprint == stage_fingerprint


@dataclass
class StageResult:
    stage: str
    status: str  # "ran" | "skipped"
    wall_s: float = 0.0
    peak_rss_mb: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)


def plan(config: RunConfig, start: str | None = None, only: str | None = None) -> list[tuple[Stage, bool]]:
    """(stage, must_run) for each enabled stage; `start` forces it and everything after, `only` one stage."""
    stages = enabled_stages(config)
    names = [s.name for s in stages]
    for flag, value in (("--from", start), ("--only", only)):
        if value is not None and value not in names:
            raise BadInput(
                f"{flag} {value!r}: not an enabled stage of this config (stages: {', '.join(names)})"
            )
    prints = fingerprints(config)
    out = []
    forced = False
    for stage in stages:
        forced = forced or stage.name == start
        if only is not None and stage.name != only:
            continue
        must = forced or only == stage.name or not finished(config, stage, prints[stage.name])
        out.append((stage, must))
    return out


def run_stage(config: RunConfig, stage: Stage | str, stage_fingerprint: str) -> StageResult:
    """Run one stage, then record it finished. Its units decide what to keep (pipelines/units.py)."""
    stage = BY_NAME[stage] if isinstance(stage, str) else stage
    folder = stage.out_dir(config)
    # A folder without a marker holds an interrupted earlier attempt (the report writes into the run dir).
    resumed = bool(stage.folder) and folder.exists() and marker(config, stage) is None
    start = time.perf_counter()
    with PeakMemory() as memory:
        artifact = stage.entry()(config)
    wall_s, peak_mb = time.perf_counter() - start, memory.peak_rss / 2**20
    StageMarker(
        stage=stage.name, fingerprint=stage_fingerprint, wall_s=round(wall_s, 2), peak_rss_mb=round(peak_mb, 1),
        resumed=resumed,
    ).write(folder)  # fmt: skip
    summary = artifact.model_dump(mode="json") if isinstance(artifact, BaseModel) else {}
    return StageResult(stage.name, "ran", wall_s, peak_mb, summary)
