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


def test_bench_tree_merges_arms_run_apart_and_compares_them_task_by_task(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    adapter = tmp_path / "sft-tool"
    make_adapter(tiny_model_dir, adapter, seed=0)
    chain_json, both_json = tmp_path / "chain.json", tmp_path / "both.json"
    args = [*tiny_args(tiny_model_dir, adapter, chain_json, budget=60), "--heldout", "3"]
    run_bench(monkeypatch, [*args, "--arms", "chain"])
    chain_only = json.loads(chain_json.read_text())
    assert "tree" not in chain_only and "tree_minus_chain" not in chain_only
    assert (
        len(chain_only["chain"]["outcome_per_task_after"])
        == len(chain_only["chain"]["heldout_task_ids"])
        == 3
    )
    rewards_after = chain_only["chain"]["heldout_rewards_after"]
    assert set(rewards_after) == set(chain_only["chain"]["heldout_rewards_before"])
    assert {"format", "tool_call", "outcome"} <= set(rewards_after)
    assert rewards_after["outcome"] == pytest.approx(chain_only["chain"]["outcome_after"])

    # What cannot stand beside this run is refused before any arm trains.
    with pytest.raises(SystemExit, match=r"arms \['chain'\] are already in this run"):
        run_bench(monkeypatch, [*args, "--arms", "chain", "--merge", str(chain_json)])
    with pytest.raises(SystemExit, match="its settings differ"):
        run_bench(monkeypatch, [*args, "--arms", "tree", "--budget", "61", "--merge", str(chain_json)])
    other = tmp_path / "other-adapter"
    make_adapter(tiny_model_dir, other, seed=1)
    with pytest.raises(SystemExit, match="its sft_adapter_sha256 differ"):
        run_bench(
            monkeypatch, [*args, "--arms", "tree", "--sft-adapter", str(other), "--merge", str(chain_json)]
        )
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"budget": 60, "chain": chain_only["chain"]}))
    with pytest.raises(SystemExit, match="written before runs recorded their settings"):
        run_bench(monkeypatch, [*args, "--arms", "tree", "--merge", str(old)])
    capsys.readouterr()

    run_bench(monkeypatch, [*args, "--arms", "tree", "--json", str(both_json), "--merge", str(chain_json)])
    both = json.loads(both_json.read_text())
    assert both["chain"] == chain_only["chain"]  # carried over as it was measured
    chain, tree, versus = both["chain"], both["tree"], both["tree_minus_chain"]
    assert tree["heldout_task_ids"] == chain["heldout_task_ids"]
    # Greedy from the same adapter: the two starting evaluations agree task by task.
    assert versus["same_start"] and tree["outcome_per_task_before"] == chain["outcome_per_task_before"]
    diffs = [
        t - c for c, t in zip(chain["outcome_per_task_after"], tree["outcome_per_task_after"], strict=True)
    ]
    assert versus["n"] == 3 and versus["difference"] == pytest.approx(sum(diffs) / 3)
    assert versus["tree_won"] == sum(d > 0 for d in diffs) and versus["chain_won"] == sum(
        d < 0 for d in diffs
    )
    assert versus["ci95"][2] == 3 and versus["ci95"][0] <= versus["difference"] <= versus["ci95"][1]
    printed = capsys.readouterr().out
    assert "arms ['chain']" in printed and "tree - chain, held-out outcome after training" in printed
