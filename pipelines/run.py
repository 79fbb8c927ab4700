"""`midtrain run CONFIG`: data → sft → rl → router → eval → publish → report, as one resumable script.

Each finished stage writes `runs/<name>/<stage>/.midtrain-stage.json` with its fingerprint: a hash of the
config sections it reads plus the fingerprints of the stages it consumes. Re-running skips a stage whose
fingerprint still matches, so editing `rl:` re-runs rl and everything downstream but not data or sft. A stage
that started but never wrote its marker was interrupted: it re-runs with `resume=True` (SFT continues from
its last checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.config import load_json
from pipelines.errors import BadInput
from pipelines.run_config import RunConfig

STAGES = ("data", "sft", "rl", "router", "eval", "publish", "report")
# Which config sections each stage reads, and which stages' outputs it consumes.
READS = {
    "data": ("model", "data"),
    "sft": ("model", "sft", "tracking"),
    "rl": ("model", "rl", "tracking"),
    "router": ("router",),
    "eval": ("eval",),
    "publish": ("publish",),
    "report": (),
}
CONSUMES = {
    "data": (),
    "sft": ("data",),
    "rl": ("sft",),
    "router": ("data", "sft", "rl"),
    "eval": ("data", "sft", "rl", "router"),
    "publish": ("eval", "router"),
    "report": ("data", "sft", "rl", "router", "eval", "publish"),
}
MARKER = ".midtrain-stage.json"


def enabled_stages(config: RunConfig) -> list[str]:
    """Stages with a config section (data and report always run; publish only when enabled)."""
    present = {
        "data": True,
        "sft": config.sft is not None,
        "rl": config.rl is not None,
        "router": config.router is not None and config.sft is not None,
        "eval": config.eval is not None,
        "publish": bool(config.publish and config.publish.enabled),
        "report": True,
    }
    return [s for s in STAGES if present[s]]


def fingerprints(config: RunConfig) -> dict[str, str]:
    dumped = config.model_dump(mode="json")
    prints: dict[str, str] = {}
    for stage in STAGES:
        payload = {
            "sections": {k: dumped.get(k) for k in READS[stage]},
            "upstream": {s: prints.get(s) for s in CONSUMES[stage]},
        }
        blob = json.dumps(payload, sort_keys=True).encode()
        prints[stage] = hashlib.sha256(blob).hexdigest()[:16]
    return prints


def stage_dir(config: RunConfig, stage: str) -> Path:
    return config.run_dir if stage == "report" else config.run_dir / stage


def finished(config: RunConfig, stage: str, fingerprint: str) -> bool:
    record = stage_record(config, stage)
    return record is not None and record.get("fingerprint") == fingerprint


class PeakMemory:
    """Peak resident memory of this process during a block (sampled), plus CUDA's own peak when present."""

    def __init__(self, interval_s: float = 0.2) -> None:
        import psutil

        self._process = psutil.Process()
        self._interval = interval_s
        self._stop = threading.Event()
        self.peak_rss = 0

    def __enter__(self) -> PeakMemory:
        self.peak_rss = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak_rss = max(self.peak_rss, self._process.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, self._process.memory_info().rss)


@dataclass
class StageResult:
    stage: str
    status: str  # "ran" | "skipped" | "failed"
    wall_s: float = 0.0
    peak_rss_mb: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)


def _runners(config_path: str) -> dict[str, Callable[[RunConfig, bool], Any]]:
    """Stage entry points, imported lazily so `midtrain run --help` stays fast."""

    def data(config: RunConfig, resume: bool) -> Any:
        from pipelines.data.build import run

        return run(config)

    def sft(config: RunConfig, resume: bool) -> Any:
        from pipelines.sft.stage import run

        return run(config, resume=resume)

    def rl(config: RunConfig, resume: bool) -> Any:
        from pipelines.rl.train import run

        return run(config)

    def router(config: RunConfig, resume: bool) -> Any:
        from pipelines.router import run

        return run(config)

    def evaluate(config: RunConfig, resume: bool) -> Any:
        from pipelines.eval.stage import run

        return run(config)

    def publish(config: RunConfig, resume: bool) -> Any:
        from pipelines.publish import run

        return run(config)

    def report(config: RunConfig, resume: bool) -> Any:
        from pipelines.report import write_report

        return write_report(config, config_path)

    return {
        "data": data,
        "sft": sft,
        "rl": rl,
        "router": router,
        "eval": evaluate,
        "publish": publish,
        "report": report,
    }


def plan(config: RunConfig, start: str | None = None, only: str | None = None) -> list[tuple[str, bool]]:
    """(stage, must_run) for each enabled stage; `start` forces it and everything after, `only` one stage."""
    stages = enabled_stages(config)
    for name, value in (("--from", start), ("--only", only)):
        if value is not None and value not in stages:
            raise BadInput(
                f"{name} {value!r}: not an enabled stage of this config (stages: {', '.join(stages)})"
            )
    prints = fingerprints(config)
    out = []
    forced = False
    for stage in stages:
        forced = forced or stage == start
        if only is not None and stage != only:
            continue
        must = forced or only == stage or not finished(config, stage, prints[stage])
        out.append((stage, must))
    return out


def run_stage(config: RunConfig, stage: str, fingerprint: str, config_path: str = "") -> StageResult:
    folder = stage_dir(config, stage)
    interrupted = folder.exists() and not (folder / MARKER).is_file() and stage != "report"
    start = time.perf_counter()
    with PeakMemory() as memory:
        summary = _runners(config_path or f"configs/{config.name}.yaml")[stage](config, interrupted)
    result = StageResult(
        stage, "ran", time.perf_counter() - start, memory.peak_rss / 2**20, _jsonable(summary)
    )
    folder.mkdir(parents=True, exist_ok=True)
    marker = {
        "fingerprint": fingerprint,
        "wall_s": round(result.wall_s, 2),
        "peak_rss_mb": round(result.peak_rss_mb, 1),
        "resumed": interrupted,
    }
    (folder / MARKER).write_text(json.dumps(marker, indent=2))
    return result


def _jsonable(value: Any) -> dict[str, Any]:
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    elif hasattr(value, "__dataclass_fields__"):
        from dataclasses import asdict

        value = asdict(value)
    if not isinstance(value, dict):
        return {"result": str(value)[:200]}
    return json.loads(json.dumps(value, default=str))


def stage_record(config: RunConfig, stage: str) -> dict[str, Any] | None:
    """The stage's done-marker, or None. A marker that is not a JSON object (truncated, hand-edited) only
    means the stage is not known to be done: it runs again, which rewrites the marker."""
    marker = stage_dir(config, stage) / MARKER
    if not marker.is_file():
        return None
    try:
        record = load_json(marker, "a stage's done-marker")
    except BadInput as exc:
        logging.getLogger("midtrain").warning("%s; the %s stage will run again", exc, stage)
        return None
    return record if isinstance(record, dict) else None
