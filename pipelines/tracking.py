"""Experiment tracking shared by the training stages (SFT now, RL later).

Three things, all usable from any `transformers.Trainer` (TRL's trainers included):
- `wandb_session`: one wandb run per adapter, offline by default (no account, files under
  `runs/<name>/wandb/`), online when `tracking.wandb_mode: online`. The Trainer's own `WandbCallback` reuses
  the run we open, so losses land in it; we add the run config and the data manifest hash.
- `LocalMetricsCallback`: `metrics.jsonl` (one JSON object per log call) and `loss.png` next to the adapter,
  so a run can be inspected without wandb at all.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from pipelines.errors import BadInput
from pipelines.run_config import TrackingSection

METRICS_FILE = "metrics.jsonl"
LOSS_PLOT = "loss.png"
WANDB_ID_FILE = "wandb_run_id.txt"
log = logging.getLogger("midtrain")


def uses_wandb(tracking: TrackingSection) -> bool:
    return "wandb" in tracking.report_to and tracking.wandb_mode != "disabled"


def report_to(tracking: TrackingSection) -> list[str]:
    """The Trainer's `report_to`, always explicit: transformers' default ("all" installed integrations) would
    silently start whatever loggers happen to be installed. An integration that is not installed is bad input
    here, before training, not a traceback from the Trainer's callback."""
    from transformers.integrations.integration_utils import get_available_reporting_integrations

    chosen = [n for n in tracking.report_to if n != "none" and (n != "wandb" or uses_wandb(tracking))]
    installed = set(get_available_reporting_integrations())
    missing = [n for n in chosen if n not in installed]
    if missing:
        raise BadInput(
            f"tracking.report_to: {', '.join(missing)}: not installed in this environment (install the "
            "integration's Python package, e.g. `pip install trackio`), or remove it from report_to"
        )
    return chosen or ["none"]


@contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for a block and restore the previous values after it."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def _wandb_run_id(out_dir: Path, resume: bool) -> str:
    """A resumed adapter continues its wandb run; a fresh one gets a new id (stored next to the adapter)."""
    id_file = out_dir / WANDB_ID_FILE
    if resume and id_file.is_file():
        return id_file.read_text().strip()
    run_id = uuid.uuid4().hex[:12]
    out_dir.mkdir(parents=True, exist_ok=True)
    id_file.write_text(run_id + "\n")
    return run_id


@contextmanager
def wandb_session(
    tracking: TrackingSection,
    *,
    wandb_dir: Path,
    out_dir: Path,
    name: str,
    group: str,
    config: dict[str, Any],
    resume: bool = False,
    is_main_process: bool = True,
) -> Iterator[Any]:
    """Open the wandb run for one adapter (main process only) and finish it after the block.

    Yields the wandb run, or None when wandb is off or this is not the main process.
    """
    if not uses_wandb(tracking) or not is_main_process:
        yield None
        return
    import wandb

    wandb_dir.mkdir(parents=True, exist_ok=True)
    env = {"WANDB_MODE": tracking.wandb_mode, "WANDB_DIR": str(wandb_dir), "WANDB_PROJECT": tracking.project}
    with _env(env):
        try:
            run = wandb.init(
                project=tracking.project,
                entity=tracking.entity,
                name=name,
                group=group,
                dir=str(wandb_dir),
                mode=tracking.wandb_mode,
                id=_wandb_run_id(out_dir, resume),
                resume="allow",
                config=config,
            )
        except (wandb.errors.UsageError, wandb.errors.AuthenticationError) as exc:
            raise BadInput(
                f"tracking.wandb_mode={tracking.wandb_mode}: wandb could not start ({exc}); run `wandb login` "
                "or set WANDB_API_KEY for online mode, or use `--set tracking.wandb_mode=offline`"
            ) from None
        try:
            yield run
        finally:
            run.finish()
            _tell_how_to_sync(run, tracking)


def _tell_how_to_sync(run: Any, tracking: TrackingSection) -> None:
    """An offline run stays on this machine until `wandb sync` uploads it: say so, with the folder."""
    if tracking.wandb_mode != "offline":
        return
    folder = Path(run.dir).parent  # run.dir is <wandb_dir>/wandb/offline-run-<time>-<id>/files
    log.info(
        "wandb: offline run saved in %s; upload it with: wandb sync %s", folder, shlex.quote(str(folder))
    )


class LocalMetricsCallback(TrainerCallback):
    """Writes `metrics.jsonl` (every log call) and `loss.png` (train + eval loss) into `out_dir`.

    On resume, rows logged after the checkpoint's step are dropped first, so the file reads as one clean run.
    Only the main process writes.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.metrics_path = self.out_dir / METRICS_FILE
        self.plot_path = self.out_dir / LOSS_PLOT

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        kept = [row for row in read_metrics(self.metrics_path) if row.get("step", 0) <= state.global_step]
        self.metrics_path.write_text("".join(json.dumps(row) + "\n" for row in kept))

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, "epoch": state.epoch, **logs}
        with self.metrics_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, default=float) + "\n")

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            write_loss_plot(self.metrics_path, self.plot_path)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            write_loss_plot(self.metrics_path, self.plot_path)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_loss_plot(metrics_path: Path, plot_path: Path) -> None:
    """Train loss (every log step) and eval loss (every evaluation) against the optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label, style in (("loss", "train", "-"), ("eval_loss", "eval", "o--")):
        points = [(row["step"], row[key]) for row in rows if key in row]
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, style, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(plot_path.parent.name)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(plot_path, dpi=100)
    plt.close(fig)
