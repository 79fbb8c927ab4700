"""Killing `midtrain run` mid-SFT and running it again resumes from the last checkpoint and finishes,
skipping the data stage that had already finished (tiny model, real stages, real subprocesses)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.artifacts import SFTSummary, StageMarker
from pipelines.run_config import REPO_ROOT

RECIPE = """\
name: tiny-mix
seed: 0
total_tokens: 12000
eval_fraction: 0.05
max_seq_len: 1024
categories:
  tool:
    share: 0.6
    sources:
      - {name: gen, type: generated, domains: [calculator, calendar], n: 120, seed: 0, cluster: tool}
  text:
    share: 0.4
    sources:
      - {name: pydoc, type: pydoc_text, cluster: tool, max_chunk_chars: 3000}
decontamination: {sets: []}
"""

CONFIG = """\
name: resume
output_dir: {runs}
model: {{name_or_path: {model}}}
data: {{recipe: {recipe}}}
sft:
  clusters: [tool]
  replay_fraction: 0.0
  quantization: {{mode: none}}
  lora: {{r: 4, alpha: 8}}
  train: {{max_steps: 12, per_device_train_batch_size: 2, max_length: 512, save_steps: 2,
           gradient_checkpointing: false, save_total_limit: null}}
tracking: {{report_to: [none]}}
"""


def _midtrain(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        **kwargs,
    )


@pytest.mark.timeout(600)
def test_killed_run_resumes_mid_sft(tmp_path: Path, tiny_model_dir: Path) -> None:
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    config = tmp_path / "run.yaml"
    config.write_text(
        CONFIG.format(runs=tmp_path / "runs", model=tiny_model_dir, recipe=tmp_path / "recipe.yaml")
    )
    adapter_dir = tmp_path / "runs" / "resume" / "sft" / "tool"

    first = _midtrain("run", str(config))
    deadline = time.time() + 400
    while not list(adapter_dir.glob("checkpoint-*")):
        assert first.poll() is None, first.stdout.read()
        assert time.time() < deadline, "no SFT checkpoint appeared"
        time.sleep(0.5)
    time.sleep(1.0)  # let the checkpoint finish writing before the kill, as a real crash might not
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert not (adapter_dir / "training_summary.json").exists()

    second = _midtrain("run", str(config))
    output, _ = second.communicate(timeout=400)
    assert second.returncode == 0, output
    assert "data — up to date, skipped" in output
    summary = SFTSummary.read(adapter_dir)
    assert summary.steps == 12 and summary.resumed_from_step >= 2
    assert StageMarker.read(tmp_path / "runs" / "resume" / "sft").resumed is True
    assert (tmp_path / "runs" / "resume" / "report.md").is_file()
