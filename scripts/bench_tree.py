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

`--backends hf,vllm` runs every arm once per rollout decoder (`rl.generation.backend`; vLLM needs its own venv,
`make setup-vllm`) and prints vLLM's rollout tokens/s over the HF engine's per shape: rollout seconds are the
rollout calls' own (generation, tools, scoring and, for vLLM, saving and loading each step's LoRA; the engine's
one start is reported apart), so the optimizer's share of a step does not dilute the ratio. `--heldout 0` skips the held-out evaluations.

An arm at a budget where this recipe learns (~80k tokens) takes hours on a 2-core CPU, so the arms may run apart:
`--arms tree --merge chain.json` adds the arms of an earlier run of the same settings from the same adapter
(checked: every setting that shapes an arm, and the adapter's SHA-256; the config by its path, so leave the
file unchanged between them). The JSON keeps each arm's per-task held-out outcomes, so tree and chain are
compared task by task (tree - chain after training, paired 95% interval).

    python scripts/bench_tree.py configs/smollm2-135m-demo.yaml --sft-adapter runs/NAME/sft/tool --budget 8000
    .venv-vllm/bin/python scripts/bench_tree.py --sft-adapter A --arms chain --backends hf,vllm --heldout 0
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from pipelines.episodes import paired_interval
from pipelines.rl import train as stage
from pipelines.run_config import RunConfig, load_run_config
from pipelines.tracking import read_metrics


def arm_generations(args: argparse.Namespace, arm: str) -> int:
    """Sequences a step trains: the chain arm's rollouts, or the tree arm's segments."""
    return args.chain_generations if arm == "chain" else args.tree_generations


def arm_config(args: argparse.Namespace, arm: str, backend: str, out: Path) -> RunConfig:
    generations = arm_generations(args, arm)
    micro_batch = args.micro_batch or generations
    forced = [
        f"output_dir={out}",
        f"name=bench-{arm}-{backend}",
        "rl.clusters=[tool]",
        "rl.from_base=false",
        "rl.rollouts.loop=midtrain",
        f"rl.rollouts.shape={arm}",
        f"rl.rollouts.tree.branches={args.branches}",
        f"rl.rollouts.tree.depth={args.depth}",
        f"rl.rollouts.max_generated_tokens={args.budget}",
        f"rl.num_generations={generations}",
        # A step trains one group; --micro-batch splits it into micro-batches so that 8 chains or 12 tree segments fit
        # in memory (each segment re-forwards its whole prefix), the gradient the same (bs1 x ga8 = bs8 x ga1).
        f"rl.train.per_device_train_batch_size={micro_batch}",
        f"rl.train.gradient_accumulation_steps={generations // micro_batch}",
        # The budget, not a step count, ends an arm, and a tree spends it over more steps than chains do, so no
        # step-keyed schedule fits both: each arm trains at the config's learning rate throughout. (With the
        # config's warmup ratio of this 10,000-step horizon an arm stayed in warm-up, at ~1% of its rate, to its end.)
        "rl.train.max_steps=10000",
        "rl.train.lr_scheduler_type=constant",
        "rl.train.warmup_ratio=0.0",
        "rl.train.logging_steps=1",
        f"rl.train.save_steps={10**6}",
        f"rl.eval_tasks_per_domain={args.heldout}",
        f"rl.n_tasks={args.tasks}",
        "tracking.report_to=[none]",
    ]
    # The arm's backend goes last: it names the arm, so no --set may change it.
    backend_overrides = [
        *(args.vllm_overrides if backend == "vllm" else []),
        f"rl.generation.backend={backend}",
    ]
    config = load_run_config(args.config, [*forced, *args.overrides, *backend_overrides])
    if config.rl is None:
        raise SystemExit(f"{args.config}: no `rl` section")
    target = config.run_dir / "sft" / "tool"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(args.sft_adapter, target)
    return config


def run_arm(args: argparse.Namespace, arm: str, backend: str, out: Path) -> dict[str, Any]:
    config = arm_config(args, arm, backend, out)
    started = time.perf_counter()
    summary = stage.run(config).clusters["tool"]
    total = time.perf_counter() - started
    out_dir = config.run_dir / "rl" / "tool"
    rows = [r for r in read_metrics(out_dir / "metrics.jsonl") if "rollout/reward" in r]
    comparison = json.loads((out_dir / "eval_before_after.json").read_text()) if args.heldout else None
    totals = (summary.rollouts or {}).get("totals", {})
    generated = totals.get("generated_tokens") or 0
    # vLLM's engine starts once, inside the first rollout call: a one-time cost, reported apart from throughput.
    engine_start_s = (summary.rollouts or {}).get("vllm_engine_start_s", 0.0)
    rollout_s = (totals.get("rollout_ms") or 0) / 1000 - engine_start_s
    return {
        "backend": backend,
        "micro_batches_per_step": config.rl.train.gradient_accumulation_steps,
        "steps": summary.steps,
        "groups": totals.get("groups"),
        "leaves": totals.get("leaves"),
        "segments": totals.get("segments"),
        "generated_tokens": generated,
        "train_wall_s": summary.wall_time_s,  # training only; the held-out evaluations are outside it
        "stage_wall_s": round(total, 1),
        "generated_tokens_per_s": generated / max(summary.wall_time_s, 1e-9),
        "rollout_s": round(rollout_s, 3),
        "rollout_tokens_per_s": generated / max(rollout_s, 1e-9),
        "vllm_engine_start_s": engine_start_s,
        "learning_rates": sorted({r["learning_rate"] for r in rows if "learning_rate" in r}),
        "mean_reward": statistics.mean(r["rollout/reward"] for r in rows) if rows else None,
        "last_reward": rows[-1]["rollout/reward"] if rows else None,
        "passed_leaves": totals.get("passed_leaves"),
        "peak_memory_gb": round(summary.peak_memory_bytes / 2**30, 2),
        **heldout(comparison),
    }


def heldout(comparison: dict[str, Any] | None) -> dict[str, Any]:
    if comparison is None:  # --heldout 0: the stage evaluated nothing
        return {"heldout_n": 0, "outcome_before": None, "outcome_after": None}
    return {
        "heldout_n": comparison["after"]["n_tasks"],
        "outcome_before": comparison["before"]["outcome"],
        "outcome_after": comparison["after"]["outcome"],
        "outcome_after_ci95": comparison["after"]["ci95"]["outcome"],
        "outcome_change_ci95": comparison["delta"].get("outcome_ci95"),
        # Each reward's held-out mean (unweighted, as the stage's evaluation scores it): the reward after the budget.
        "heldout_rewards_before": comparison["before"].get("rewards"),
        "heldout_rewards_after": comparison["after"].get("rewards"),
        # Per task, so that arms run apart (--merge) are still compared on the same tasks, pair by pair.
        "heldout_task_ids": comparison["heldout"]["task_ids"],
        "outcome_per_task_before": comparison["before"].get("outcome_per_task"),
        "outcome_per_task_after": comparison["after"].get("outcome_per_task"),
    }


def adapter_sha256(adapter: Path) -> str:
    """The starting adapter's identity (its weights and config), not its path: runs apart may copy it elsewhere."""
    digest = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        digest.update((adapter / name).read_bytes())
    return digest.hexdigest()


def arm_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Everything that shapes an arm's run: two runs may be merged only where these are equal."""
    return {
        "config": args.config,
        "budget": args.budget,
        "chain_generations": args.chain_generations,
        "tree_generations": args.tree_generations,
        "branches": args.branches,
        "depth": args.depth,
        "micro_batch": args.micro_batch,
        "heldout": args.heldout,
        "tasks": args.tasks,
        "overrides": args.overrides,
        "vllm_overrides": args.vllm_overrides,
    }


def is_arm(value: Any) -> bool:
    return isinstance(value, dict) and "backend" in value and "generated_tokens" in value


def merged_arms(path: Path, results: dict[str, Any], running: set[str]) -> dict[str, Any]:
    """The arms of an earlier run (`--json` of this script) that may stand beside this run's, or SystemExit why not."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"--merge {path}: cannot read it ({err})") from None
    if "settings" not in earlier or "sft_adapter_sha256" not in earlier:
        raise SystemExit(f"--merge {path}: written before runs recorded their settings; run its arms again")
    for key in ("settings", "sft_adapter_sha256"):
        if earlier[key] != results[key]:
            raise SystemExit(f"--merge {path}: its {key} differ: {earlier[key]} vs this run's {results[key]}")
    arms = {key: value for key, value in earlier.items() if is_arm(value)}
    if clash := sorted(set(arms) & (running | {k for k, v in results.items() if is_arm(v)})):
        raise SystemExit(f"--merge {path}: arms {clash} are already in this run")
    return arms


def tree_minus_chain(chain: dict[str, Any], tree: dict[str, Any]) -> dict[str, Any] | None:
    """Held-out outcome after training, tree - chain on the same tasks from the same start (None: not comparable)."""
    ids = chain.get("heldout_task_ids")
    if not ids or ids != tree.get("heldout_task_ids"):
        return None
    before_c, before_t = chain["outcome_per_task_before"], tree["outcome_per_task_before"]
    after_c, after_t = chain["outcome_per_task_after"], tree["outcome_per_task_after"]
    diffs = [(t or 0.0) - (c or 0.0) for c, t in zip(after_c, after_t, strict=True)]
    return {
        "n": len(ids),
        "difference": round(sum(diffs) / len(diffs), 6),
        "ci95": paired_interval(after_c, after_t),
        "tree_won": sum(d > 0 for d in diffs),
        "chain_won": sum(d < 0 for d in diffs),
        # Greedy decoding of the same adapter: both starting evaluations should agree task by task.
        "same_start": before_c == before_t,
    }


def arm_key(arm: str, backend: str) -> str:
    """`chain`, `tree` on the HF engine (the names earlier results used); `chain+vllm` on vLLM."""
    return arm if backend == "hf" else f"{arm}+{backend}"


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
    parser.add_argument(
        "--micro-batch", type=int, help="sequences per forward/backward (default: a whole group at once)"
    )
    parser.add_argument("--heldout", type=int, default=30, help="held-out tasks per domain")
    parser.add_argument("--tasks", type=int, default=256, help="training tasks to draw from")
    parser.add_argument("--arms", default="chain,tree")
    parser.add_argument("--backends", default="hf", help="rollout decoders, each arm runs once per backend")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override a.b=c")
    parser.add_argument(
        "--vllm-set", dest="vllm_overrides", action="append", default=[],
        help="override for the vLLM arms only, e.g. rl.generation.gpu_memory_utilization=0.15",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--merge", type=Path, action="append", default=[],
        help="add the arms of an earlier --json of the same settings and adapter (arms run apart)",
    )  # fmt: skip
    args = parser.parse_args()
    if not (args.sft_adapter / "adapter_config.json").is_file():
        raise SystemExit(f"{args.sft_adapter}: no adapter_config.json (pass an SFT adapter folder)")
    if unknown := set(args.backends.split(",")) - {"hf", "vllm"}:
        raise SystemExit(f"--backends: unknown {sorted(unknown)} (hf, vllm)")
    for arm in args.arms.split(","):
        generations = arm_generations(args, arm)
        if args.micro_batch and generations % args.micro_batch:
            raise SystemExit(
                f"--micro-batch {args.micro_batch} does not divide the {arm} arm's {generations} generations"
            )
    if args.vllm_overrides and "vllm" not in args.backends.split(","):
        raise SystemExit("--vllm-set: no vLLM arm runs (add vllm to --backends)")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

    results: dict[str, Any] = {
        "budget": args.budget,
        "micro_batch": args.micro_batch,
        "config": args.config,
        "sft_adapter": str(args.sft_adapter),
        "sft_adapter_sha256": adapter_sha256(args.sft_adapter),
        "settings": arm_settings(args),
    }
    runs = [(arm, backend) for arm in args.arms.split(",") for backend in args.backends.split(",")]
    running = {arm_key(arm, backend) for arm, backend in runs}
    for path in args.merge:  # checked before hours of training, not after
        merged = merged_arms(path, results, running)
        results |= merged
        print(f"--merge {path}: arms {sorted(merged)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_tree_") as tmp:
        for arm, backend in runs:
            key = arm_key(arm, backend)
            results[key] = run_arm(args, arm, backend, Path(tmp) / key)
            print(json.dumps({key: results[key]}), flush=True)
    shown = [key for key, value in results.items() if is_arm(value)]
    print(f"\nequal budget: {args.budget} generated tokens per arm")
    print(f"{'arm':11s} {'steps':>5s} {'groups':>6s} {'tokens':>7s} {'train s':>8s} {'tok/s':>6s} "
          f"{'rollout tok/s':>13s} {'reward':>7s} {'held-out outcome after (n)':>30s} "
          f"{'change [95%]':>16s}")  # fmt: skip
    for key in shown:
        r = results[key]
        after = "not evaluated"
        if r["outcome_after"] is not None:
            after = f"{r['outcome_after']:.3f} {_interval(r['outcome_after_ci95'])} ({r['heldout_n']})"
        print(f"{key:11s} {r['steps']:5d} {r['groups']:6d} {r['generated_tokens']:7d} "
              f"{r['train_wall_s']:8.0f} {r['generated_tokens_per_s']:6.1f} {r['rollout_tokens_per_s']:13.1f} "
              f"{r['mean_reward']:7.3f} {after:>30s} {_interval(r.get('outcome_change_ci95')):>16s}")  # fmt: skip
    for backend in ("hf", "vllm"):
        chain, tree = results.get(arm_key("chain", backend)), results.get(arm_key("tree", backend))
        versus = tree_minus_chain(chain, tree) if chain and tree else None
        if versus is not None:
            results[arm_key("tree_minus_chain", backend)] = versus
            print(f"{arm_key('tree', backend)} - {arm_key('chain', backend)}, held-out outcome after training: "
                  f"{versus['difference']:+.3f} {_interval(versus['ci95'])} (n = {versus['n']}; tree won "
                  f"{versus['tree_won']} tasks, chain {versus['chain_won']}; same start: {versus['same_start']})")  # fmt: skip
    for arm in ("chain", "tree"):
        hf, vllm = results.get(arm_key(arm, "hf")), results.get(arm_key(arm, "vllm"))
        if hf and vllm:
            ratio = vllm["rollout_tokens_per_s"] / max(hf["rollout_tokens_per_s"], 1e-9)
            results[f"{arm}_vllm_over_hf_rollout_tokens_per_s"] = ratio
            wall = hf["generated_tokens_per_s"] / max(vllm["generated_tokens_per_s"], 1e-9)
            print(f"{arm}: rollout tokens/s vLLM / HF = {ratio:.2f}x; "
                  f"training wall time per generated token vLLM / HF = {wall:.2f}x")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
