"""`configs/byo-mcp-shop.yaml` end to end on CPU: the fixture MCP server through `data build` (a teacher source
against a real OpenAI-compatible server), `data verify` (offline, from the teacher cache), `sft`, `rl` on the
task file's train rows and `eval` on its held-out rows, with the tiny test model as policy and teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.run_config import load_run_config
from tests.openai_server import serve

CONFIG = "configs/byo-mcp-shop.yaml"


@pytest.mark.slow
def test_mcp_server_to_mix_adapter_rl_and_eval_table(tmp_path: Path, tiny_model_dir: Path) -> None:
    from pipelines.data.build import run as build_data
    from pipelines.data.build import verify
    from pipelines.eval.stage import run as evaluate
    from pipelines.rl.train import run as train_rl
    from pipelines.sft import run as train_sft

    config = load_run_config(
        CONFIG,
        [f"output_dir={tmp_path}", f"model.name_or_path={tiny_model_dir}", "sft.train.max_steps=2",
         "sft.train.save_steps=2", "rl.train.max_steps=1", "rl.max_completion_length=32",
         "eval.max_new_tokens=16", "eval.rollout_tokens=48", "eval.targets=[base,rl]", "rl.eval_tasks_per_domain=1"],
    )  # fmt: skip
    teacher_source = config.data.recipe.categories["tool"].sources[0]
    teacher_source.samples_per_task = 1
    teacher_source.teacher.max_tokens = 24
    with serve(tiny_model_dir) as url:
        teacher_source.teacher.base_url = url
        teacher_source.teacher.model = str(tiny_model_dir)
        built = build_data(config)

    manifest = built.manifest
    source = next(s for s in manifest["sources"] if s["name"] == "shop-teacher")
    assert source["type"] == "teacher" and source["revision"]["responses_used"] >= 5
    assert len(source["revision"]["cache_sha256"]) == 64
    rejects = [json.loads(line) for line in (built.out_dir / "rejects.jsonl").read_text().splitlines()]
    teacher_rejects = [r for r in rejects if r["source"] == "shop-teacher"]
    assert len(teacher_rejects) + source["rows_clean"] == 5  # every train task: a trace or a reason
    assert all(r["stage"] == "teacher" and r["reason"] and r["detail"] for r in teacher_rejects)
    assert manifest["decontamination"]["heldout_task_ids"] >= 2  # the task file's held-out ids are indexed
    assert verify(built.out_dir).identical  # offline: the endpoint is gone, the cache answers

    sft = train_sft(config)
    assert sft.adapters["tool"].steps == 2
    rl = train_rl(config).clusters["tool"]
    assert rl.steps == 1 and rl.tasks["by_domain"] == {"shop": 5}
    comparison = json.loads((config.run_dir / "rl" / "tool" / "eval_before_after.json").read_text())
    assert comparison["heldout"]["task_ids"] == ["shop-heldout-001"]
    assert comparison["heldout"]["decontaminated"] is True

    results = evaluate(config)
    assert set(results.targets) == {"base", "rl/tool"}
    for suites in results.targets.values():
        assert suites["heldout"]["n"] == 2 and suites["heldout"]["outcome"] is not None
    table = (config.run_dir / "eval" / "results.md").read_text()
    assert "| rl/tool |" in table and "heldout/outcome" in table
    predictions = [
        json.loads(line) for line in (config.run_dir / "eval" / "predictions.jsonl").read_text().splitlines()
    ]
    assert {p["id"] for p in predictions} == {"shop-heldout-001", "shop-heldout-002"}
