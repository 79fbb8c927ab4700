"""`midtrain run`: fingerprints skip finished stages and re-run what a config edit touches; the report renders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines import run as pipeline
from pipelines.errors import BadInput
from pipelines.report import write_report
from pipelines.run_config import load_run_config
from tests import fake_runs

DEMO = "configs/smollm2-135m-demo.yaml"


def _config(tmp_path: Path, *overrides: str):
    return load_run_config(DEMO, [f"output_dir={tmp_path}", *overrides])


def test_editing_rl_invalidates_rl_and_downstream_only(tmp_path: Path) -> None:
    before = pipeline.fingerprints(_config(tmp_path))
    after = pipeline.fingerprints(_config(tmp_path, "rl.train.max_steps=7"))
    changed = {s for s in pipeline.STAGES if before[s] != after[s]}
    assert changed == {"rl", "router", "eval", "publish", "report"}
    data_edit = pipeline.fingerprints(_config(tmp_path, "data.num_proc=2"))
    assert {s for s in pipeline.STAGES if before[s] != data_edit[s]} == set(
        pipeline.STAGES
    )  # all consume data


def _mark_done(config, stages) -> None:
    prints = pipeline.fingerprints(config)
    for stage in stages:
        folder = pipeline.stage_dir(config, stage)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / pipeline.MARKER).write_text(
            json.dumps({"fingerprint": prints[stage], "wall_s": 1.0, "peak_rss_mb": 10.0})
        )


def test_plan_skips_finished_and_honours_from_and_only(tmp_path: Path) -> None:
    config = _config(tmp_path)
    _mark_done(config, ["data", "sft"])
    plan = dict(pipeline.plan(config))
    assert plan["data"] is False and plan["sft"] is False and plan["rl"] is True
    assert dict(pipeline.plan(config, start="sft"))["sft"] is True
    assert dict(pipeline.plan(config, start="sft"))["data"] is False
    assert pipeline.plan(config, only="data") == [("data", True)]
    edited = _config(tmp_path, "sft.train.max_steps=3")
    assert dict(pipeline.plan(edited))["sft"] is True and dict(pipeline.plan(edited))["data"] is False
    with pytest.raises(BadInput, match="--from 'bogus': not an enabled stage"):
        pipeline.plan(config, start="bogus")


def test_disabled_sections_are_not_planned(tmp_path: Path) -> None:
    config = _config(tmp_path, "publish.enabled=false")
    assert "publish" not in pipeline.enabled_stages(config)


def test_report_renders_every_section_present(tmp_path: Path) -> None:
    config = _config(tmp_path)
    run_dir = config.run_dir
    (run_dir / "data").mkdir(parents=True)
    (run_dir / "data" / "manifest.json").write_text(
        json.dumps(
            fake_runs.manifest(
                [fake_runs.source("gen", "generated", {"seed": 0}, 450, rejects_total=1)],
                {"tool": fake_runs.share(450, 0.45, 0.45)},
                1000,
                by_reason={"near_duplicate": 1},
            )
        )
    )
    (run_dir / "router").mkdir()
    (run_dir / "router" / "accuracy.json").write_text(
        json.dumps(
            {
                "accuracy": 0.95,
                "n": 20,
                "per_cluster": {"tool": {"precision": 1.0, "recall": 0.9, "f1-score": 0.95, "support": 10}},
            }
        )
    )
    (run_dir / "eval").mkdir()
    (run_dir / "eval" / "results.json").write_text(
        json.dumps(
            {
                "targets": {
                    "base": {"bfcl": {"simple_python": 0.1, "n": 5}},
                    "sft/tool": {"bfcl": {"simple_python": 0.4}},
                },
                "skipped": {"rl": "no rl adapters"},
            }
        )
    )
    _mark_done(config, ["data"])
    out = write_report(config, DEMO)
    markdown = (run_dir / "report.md").read_text()
    assert "| tool | 450 | 0.450 | 0.450 |" in markdown
    assert "| near_duplicate | 1 |" in markdown
    assert "Held-out routing accuracy 0.950 on 20 requests." in markdown
    assert "| sft/tool | 0.400 |" in markdown and "Skipped rl: no rl adapters" in markdown
    assert f"midtrain run {DEMO}" in markdown
    page = (run_dir / "report.html").read_text()
    tables = sum(line.startswith("| --- |") for line in markdown.splitlines())
    assert page.count("<table>") == tables == 6 and page.endswith("</html>\n")
    assert out["images"] == []  # no PNGs were written by this fake run
