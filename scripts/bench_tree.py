"""Chain GRPO vs tree GRPO at an equal budget of generated tokens, from the same SFT adapter, in one run.

Both arms run the RL stage itself (midtrain's rollout loop, `rollouts.loop: midtrain`) on the config's tasks,
from a copy of the same SFT adapter, until their rollouts have generated `--budget` model tokens
(`rollouts.max_generated_tokens`; a step in progress finishes, so each arm overshoots by at most one step):
- chain: `--chain-generations` independent rollouts per prompt (TRL's GRPO advantage);
- tree: rollouts fork after their first tool call (`--branches` K, `--depth` D), `--tree-generations` segments
  per prompt (pipelines/rl/rollouts.py: the estimator, prefix trained once).
Reported per arm: optimizer steps, prompts (groups) seen, generated tokens, leaves scored, training wall time,
generated tokens/s, mean rollout reward over the run and at its last step, and the held-out outcome after
training (greedy, live environments, Wilson 95%) with the paired change from the shared starting adapter.

    python scripts/bench_tree.py configs/smollm2-135m-demo.yaml --sft-adapter runs/NAME/sft/tool --budget 8000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from pipelines.rl import train as stage
from pipelines.run_config import RunConfig, load_run_config
from pipelines.tracking import read_metrics


def arm_config(args: argparse.Namespace, arm: str, out: Path) -> RunConfig:
    generations = args.chain_generations if arm == "chain" else args.tree_generations
    forced = [
        f"output_dir={out}",
        f"name=bench-{arm}",
        "rl.clusters=[tool]",
        "rl.from_base=false",
        "rl.rollouts.loop=midtrain",
        f"rl.rollouts.shape={arm}",
        f"rl.rollouts.tree.branches={args.branches}",
        f"rl.rollouts.tree.depth={args.depth}",
        f"rl.rollouts.max_generated_tokens={args.budget}",
        f"rl.num_generations={generations}",
        f"rl.train.per_device_train_batch_size={generations}",
        "rl.train.gradient_accumulation_steps=1",
        "rl.train.max_steps=10000",
        "rl.train.logging_steps=1",
        f"rl.train.save_steps={10**6}",
        f"rl.eval_tasks_per_domain={args.heldout}",
        f"rl.n_tasks={args.tasks}",
        "tracking.report_to=[none]",
    ]
    config = load_run_config(args.config, [*forced, *args.overrides])
    if config.rl is None:
        raise SystemExit(f"{args.config}: no `rl` section")
    target = config.run_dir / "sft" / "tool"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(args.sft_adapter, target)
    return config


def run_arm(args: argparse.Namespace, arm: str, out: Path) -> dict[str, Any]:
    config = arm_config(args, arm, out)
    started = time.perf_counter()
    summary = stage.run(config).clusters["tool"]
    total = time.perf_counter() - started
    out_dir = config.run_dir / "rl" / "tool"
    rows = [r for r in read_metrics(out_dir / "metrics.jsonl") if "rollout/reward" in r]
    comparison = json.loads((out_dir / "eval_before_after.json").read_text())
    totals = (summary.rollouts or {}).get("totals", {})
    return {
        "steps": summary.steps,
        "groups": totals.get("groups"),
        "leaves": totals.get("leaves"),
        "segments": totals.get("segments"),
        "generated_tokens": totals.get("generated_tokens"),
        "train_wall_s": summary.wall_time_s,  # training only; the held-out evaluations are outside it
        "stage_wall_s": round(total, 1),
        "generated_tokens_per_s": (totals.get("generated_tokens") or 0) / max(summary.wall_time_s, 1e-9),
        "mean_reward": statistics.mean(r["rollout/reward"] for r in rows) if rows else None,
        "last_reward": rows[-1]["rollout/reward"] if rows else None,
        "passed_leaves": totals.get("passed_leaves"),
        "heldout_n": comparison["after"]["n_tasks"],
        "outcome_before": comparison["before"]["outcome"],
        "outcome_after": comparison["after"]["outcome"],
        "outcome_after_ci95": comparison["after"]["ci95"]["outcome"],
        "outcome_change_ci95": comparison["delta"].get("outcome_ci95"),
        "peak_memory_gb": round(summary.peak_memory_bytes / 2**30, 2),
    }


def _interval(ci: Any) -> str:
    if not ci:
        return "n/a"
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", nargs="?", default="configs/smollm2-135m-demo.yaml")
    parser.add_argument(
        "--sft-adapter", type=Path, required=True, help="the SFT `tool` adapter both arms start from"
    )
    parser.add_argument("--budget", type=int, default=8000, help="generated tokens per arm")
    parser.add_argument("--chain-generations", type=int, default=4)
    parser.add_argument("--tree-generations", type=int, default=6)
    parser.add_argument("--branches", type=int, default=2)
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--heldout", type=int, default=30, help="held-out tasks per domain")
    parser.add_argument("--tasks", type=int, default=256, help="training tasks to draw from")
    parser.add_argument("--arms", default="chain,tree")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override a.b=c")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if not (args.sft_adapter / "adapter_config.json").is_file():
        raise SystemExit(f"{args.sft_adapter}: no adapter_config.json (pass an SFT adapter folder)")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

    results: dict[str, Any] = {
        "budget": args.budget,
        "config": args.config,
        "sft_adapter": str(args.sft_adapter),
    }
    with tempfile.TemporaryDirectory(prefix="bench_tree_") as tmp:
        for arm in args.arms.split(","):
            results[arm] = run_arm(args, arm, Path(tmp) / arm)
            print(json.dumps({arm: results[arm]}), flush=True)
    print(f"\nequal budget: {args.budget} generated tokens per arm")
    print(f"{'arm':6s} {'steps':>5s} {'groups':>6s} {'tokens':>7s} {'train s':>8s} {'tok/s':>6s} "
          f"{'reward':>7s} {'held-out outcome after (n)':>30s} {'change [95%]':>16s}")  # fmt: skip
    for arm in args.arms.split(","):
        r = results[arm]
        after = f"{r['outcome_after']:.3f} {_interval(r['outcome_after_ci95'])} ({r['heldout_n']})"
        print(f"{arm:6s} {r['steps']:5d} {r['groups']:6d} {r['generated_tokens']:7d} {r['train_wall_s']:8.0f} "
              f"{r['generated_tokens_per_s']:6.1f} {r['mean_reward']:7.3f} {after:>30s} "
              f"{_interval(r['outcome_change_ci95']):>16s}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
