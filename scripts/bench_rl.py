"""Cost of our environments and rewards: GRPO steps of the RL stage vs a plain TRL GRPO script, in one run.

Both trainers get the same model (base + a fresh LoRA, per the config's quantization), the same batch, lengths
and seed, and prompts of the same tokens: the plain script receives our prompts already rendered with the same
tool schemas (as text), and scores with a constant reward; the stage runs live environments, multi-turn tool
calls and all seven rewards. Reported per variant: seconds per GRPO step and rollout tokens per second
(completion tokens generated per second of step time, which corrects for rollouts of different lengths), then
the ratios. The first step is a warm-up and is left out when there are at least 3.

    python scripts/bench_rl.py configs/smollm2-135m-demo.yaml --steps 4
    python scripts/bench_rl.py configs/smollm2-135m-demo.yaml --set model.name_or_path=/path/to/tiny
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from pipelines.rl import train as stage
from pipelines.rl.rewards import FailureCounts, reward_name
from pipelines.run_config import RunConfig, load_run_config
from pipelines.tasks import sampling
from pipelines.tracking import read_metrics


def bench_config(path: str, overrides: list[str], steps: int, out: Path) -> RunConfig:
    forced = [
        f"output_dir={out}",
        "rl.from_base=true",  # no SFT adapter needed; both variants train the same fresh LoRA
        "rl.eval_tasks_per_domain=0",
        f"rl.train.max_steps={steps}",
        "rl.train.logging_steps=1",
        "tracking.report_to=[none]",
    ]
    config = load_run_config(path, [*forced, *overrides])
    if config.rl is None:
        raise SystemExit(f"{path}: no `rl` section")
    return config


def constant_reward(completions: list[Any], **kwargs: Any) -> list[float]:
    """The plain script's reward: constant, so it costs nothing to compute."""
    return [0.0] * len(completions)


def rendered_rows(config: RunConfig, rows: list[dict[str, Any]], tokenizer: Any) -> list[dict[str, str]]:
    """Our prompts as the exact text TRL renders for the stage (same tools, same generation prompt)."""
    from pipelines.tasks.domains import DOMAINS

    out = []
    for row in rows:
        env_class = DOMAINS[row["environment"]][0]
        text = tokenizer.apply_chat_template(
            row["prompt"], tools=env_class._tool_schemas(), add_generation_prompt=True, tokenize=False
        )
        out.append({"prompt": text})
    return out


def plain_trainer(config: RunConfig, rows: list[dict[str, Any]], out_dir: Path) -> Any:
    from datasets import Dataset
    from trl import GRPOTrainer

    model, tokenizer = stage.load_policy(config, "bench")
    return GRPOTrainer(
        model=model,
        reward_funcs=[constant_reward],
        args=stage.grpo_args(config, "plain", out_dir, [1.0], {}),
        train_dataset=Dataset.from_list(rendered_rows(config, rows, tokenizer)),
        processing_class=tokenizer,
    )


class Stopwatch:
    """Seconds spent inside our own code during the stage's steps: reward functions and env resets/tools."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, func: Any) -> Any:
        @functools.wraps(func)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        return timed

    def env_class(self, env_class: type) -> type:
        """A subclass (same name) whose reset and tools are timed; TRL calls those on every rollout."""
        timed = type(env_class.__name__, (env_class,), {"reset": self.wrap(env_class.reset)})
        # Set after creation: ToolEnv.__init_subclass__ would otherwise wrap (and record) each tool twice.
        for name in env_class._tool_methods():
            setattr(timed, name, self.wrap(getattr(env_class, name)))
        return timed


def ours_trainer(
    config: RunConfig, rows: list[dict[str, Any]], out_dir: Path, env_classes: dict, watch: Stopwatch
) -> Any:
    build = stage.build_reward_funcs

    def timed_rewards(*args: Any, **kwargs: Any) -> tuple[list[Any], list[float]]:
        funcs, weights = build(*args, **kwargs)
        named = []
        for func in funcs:
            timed = watch.wrap(func)
            timed.__name__ = reward_name(func)  # TRL logs each reward under its function name
            named.append(timed)
        return named, weights

    stage.build_reward_funcs = timed_rewards
    try:
        classes = {name: watch.env_class(cls) for name, cls in env_classes.items()}
        return stage.build_trainer(config, "bench", out_dir, rows, classes, FailureCounts())
    finally:
        stage.build_reward_funcs = build


def measure(trainer: Any, completions_per_step: int) -> dict[str, float]:
    """Seconds per step and rollout tokens/s from TRL's own per-step log (`step_time`, completion lengths)."""
    from transformers.trainer_utils import set_seed

    set_seed(trainer.args.seed)
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    rows = [r for r in trainer.state.log_history if "step_time" in r]
    timed = rows[1:] if len(rows) >= 3 else rows
    seconds = [r["step_time"] for r in timed]
    tokens = [r["completions/mean_length"] * completions_per_step for r in timed]
    return {
        "steps_timed": len(timed),
        "seconds_per_step": statistics.mean(seconds),
        "rollout_tokens_per_s": sum(tokens) / sum(seconds),
        "mean_completion_tokens": statistics.mean(r["completions/mean_length"] for r in timed),
        "tool_calls_per_rollout": statistics.mean(r.get("tools/call_frequency", 0.0) for r in timed),
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", nargs="?", default="configs/smollm2-135m-demo.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override a.b=c")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

    with tempfile.TemporaryDirectory(prefix="bench_rl_") as tmp:
        config = bench_config(args.config, args.overrides, args.steps, Path(tmp))
        rl = config.rl
        assert rl is not None
        domains = sampling.fixed_method_domains(rl.domains)
        items = sampling.sample_tasks(
            domains, rl.n_tasks, rl.task_seed, rl.max_difficulty, rl.irrelevance_fraction
        )
        rows = stage.prompt_rows(items)
        per_step = rl.train.per_device_train_batch_size * rl.train.gradient_accumulation_steps
        plain = measure(plain_trainer(config, rows, Path(tmp) / "plain"), per_step)
        ours_dir = Path(tmp) / "ours"
        watch = Stopwatch()
        trainer = ours_trainer(config, rows, ours_dir, {n: s[0] for n, s in domains.items()}, watch)
        ours = measure(trainer, per_step)
        ours["envs_and_rewards_s_per_step"] = watch.seconds / max(1, trainer.state.global_step)
        reward_rows = read_metrics(ours_dir / "metrics.jsonl")
    result = {
        "model": config.model.name_or_path,
        "quantization": rl.quantization.mode,
        "completions_per_step": per_step,
        "max_completion_length": rl.max_completion_length,
        "domains": sorted(domains),
        "plain_trl": plain,
        "midtrain_rl": ours,
        "step_time_ratio": ours["seconds_per_step"] / plain["seconds_per_step"],
        "tokens_per_s_ratio": ours["rollout_tokens_per_s"] / plain["rollout_tokens_per_s"],
        "final_reward": next((r["reward"] for r in reversed(reward_rows) if "reward" in r), None),
    }
    for name in ("plain_trl", "midtrain_rl"):
        r = result[name]
        print(
            f"{name:12s} {r['seconds_per_step']:8.2f} s/step  {r['rollout_tokens_per_s']:8.1f} rollout tok/s  "
            f"({r['mean_completion_tokens']:.0f} tokens/rollout, {r['tool_calls_per_rollout']:.2f} calls/rollout)"
        )
    own = ours["envs_and_rewards_s_per_step"]
    print(
        f"inside our envs + rewards: {own:.3f} s/step = {100 * own / ours['seconds_per_step']:.2f}% of a step "
        "(timed directly, so CPU contention from other jobs cancels out)"
    )
    extra = (1 / result["tokens_per_s_ratio"] - 1) * 100
    print(
        f"ratio (ours / plain): {result['step_time_ratio']:.3f} x step time, "
        f"{result['tokens_per_s_ratio']:.3f} x rollout tokens/s  → {extra:+.1f}% time per rollout token "
        f"(target: <= +10%)"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
