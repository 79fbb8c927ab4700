"""Progress bars: shown on a terminal, off under `--quiet` and in CI; the data build's bar counts each source's
rows, kept rows, tokens and rejects."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import progress
from tests.helpers import prose

REPO = Path(__file__).resolve().parent.parent
RECIPE = """\
name: bars
total_tokens: 2000
eval_fraction: 0
allow_shortfall: true
decontamination: {{sets: []}}
near_dedup: {{enabled: false}}
categories:
  text: {{share: 1.0, sources: [{{name: docs, type: local, path: {path}, format: text}}]}}
"""


def test_when_bars_show(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CI", progress.QUIET_ENV, progress.PROGRESS_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert progress.enabled()
    monkeypatch.setenv("CI", "true")
    assert not progress.enabled()
    monkeypatch.setenv(progress.PROGRESS_ENV, "always")
    assert progress.enabled()
    progress.set_quiet(True)
    try:
        assert not progress.enabled()  # --quiet wins over everything
    finally:
        progress.set_quiet(False)
    monkeypatch.setenv(progress.PROGRESS_ENV, "never")
    monkeypatch.delenv("CI")
    assert not progress.enabled()


def _build(tmp_path: Path, *options: str, out: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {
        progress.PROGRESS_ENV: "always",
        "COLUMNS": "200",
    }
    recipe = tmp_path / "recipe.yaml"
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *options, "data", "build", str(recipe), "--out", str(tmp_path / out)],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=600, check=False,
    )  # fmt: skip


@pytest.mark.integration
def test_data_build_bar_counts_rows_tokens_and_rejects_and_quiet_hides_it(tmp_path: Path) -> None:
    docs = tmp_path / "docs.jsonl"
    lines = [json.dumps({"text": prose(7000 + i, 80)}) for i in range(30)] + ["{not json", '{"text": 7}']
    docs.write_text("\n".join(lines) + "\n")
    (tmp_path / "recipe.yaml").write_text(RECIPE.format(path=docs))

    shown = _build(tmp_path, out="shown")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "text/docs" in shown.stderr and "32 rows" in shown.stderr, shown.stderr[-2000:]
    assert "30 kept" in shown.stderr and "2 rejected" in shown.stderr and " tokens" in shown.stderr

    quiet = _build(tmp_path, "--quiet", out="quiet")
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "text/docs" not in quiet.stderr
    assert (tmp_path / "quiet" / "manifest.json").read_bytes() == (
        tmp_path / "shown" / "manifest.json"
    ).read_bytes()
