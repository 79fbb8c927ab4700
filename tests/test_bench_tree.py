"""scripts/bench_tree.py run for real on the tiny model: both shapes reach the token budget and report it."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers import make_adapter

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_tree.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_tree", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_bench(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["bench_tree.py", *argv])
    load_bench().main()


def tiny_args(model: Path, adapter: Path, out: Path, budget: int) -> list[str]:
    return [
        "configs/smollm2-135m-demo.yaml", "--sft-adapter", str(adapter), "--budget", str(budget),
        "--heldout", "0", "--tasks", "8", "--json", str(out),
        "--set", f"model.name_or_path={model}", "--set", "rl.domains=[calculator]",
        "--set", "rl.max_completion_length=24", "--set", "rl.irrelevance_fraction=0.0",
        "--set", "rl.train.gradient_checkpointing=false",
    ]  # fmt: skip


def test_bench_tree_spends_the_budget_in_both_shapes_and_reports_rollout_throughput(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    adapter = tmp_path / "sft-tool"
    make_adapter(tiny_model_dir, adapter, seed=0)
    out = tmp_path / "bench.json"
    # 4 chains and 6 tree segments a step, trained 2 sequences at a time.
    run_bench(monkeypatch, [*tiny_args(tiny_model_dir, adapter, out, budget=150), "--micro-batch", "2"])
    results = json.loads(out.read_text())
    for arm, micro_batches in (("chain", 2), ("tree", 3)):
        r = results[arm]
        assert r["backend"] == "hf" and r["steps"] >= 1 and r["micro_batches_per_step"] == micro_batches
        assert r["generated_tokens"] >= 150  # the budget, not max_steps, ended the arm
        assert r["learning_rates"] == [5.0e-5]  # the demo's rate from the first step on: no warm-up, no decay
        # Rollout seconds are the rollout calls' share of training, so they are inside its wall time.
        assert 0 < r["rollout_s"] < r["train_wall_s"] and r["vllm_engine_start_s"] == 0.0
        assert r["heldout_n"] == 0 and r["outcome_after"] is None  # --heldout 0: no evaluation ran
    printed = capsys.readouterr().out
    assert "not evaluated" in printed and "vLLM / HF" not in printed  # one backend: no ratio


def test_bench_tree_refuses_what_it_cannot_run(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SystemExit, match="no adapter_config.json"):
        run_bench(monkeypatch, tiny_args(tiny_model_dir, tmp_path, tmp_path / "b.json", budget=10))
    adapter = tmp_path / "sft-tool"
    make_adapter(tiny_model_dir, adapter, seed=0)
    args = tiny_args(tiny_model_dir, adapter, tmp_path / "b.json", budget=10)
    with pytest.raises(SystemExit, match=r"--backends: unknown \['sglang'\]"):
        run_bench(monkeypatch, [*args, "--backends", "hf,sglang"])
    with pytest.raises(SystemExit, match="--vllm-set: no vLLM arm runs"):
        run_bench(monkeypatch, [*args, "--vllm-set", "rl.generation.max_model_length=4096"])
    # Checked before any arm runs: 4 divides the chain arm's 4 rollouts, not the tree arm's 6 segments.
    with pytest.raises(SystemExit, match="--micro-batch 4 does not divide the tree arm's 6 generations"):
        run_bench(monkeypatch, [*args, "--micro-batch", "4"])
