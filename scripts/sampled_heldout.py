"""Held-out outcome of two adapters sampled at a temperature, k samples a task, paired per task.

RL's before/after evaluation decodes greedily. After GRPO the 135M policy's greedy mode loops (`</think>` then
`<verify>…</verify></think>` until the budget), while GRPO optimised the policy at its sampling temperature; this
measures both adapters there: the RL stage's own held-out tasks (the config's `rl` section with the `--set`
overrides the RL run used), the same rewards and answers-only outcome rule, each task's outcome averaged over
its k samples, and the 95% interval of the per-task change (n = tasks, not episodes).

    python scripts/sampled_heldout.py configs/smollm2-135m-demo.yaml runs/NAME --samples 2 --temperature 0.8 \
        --set rl.eval_tasks_per_domain=60 ...
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

from pipelines import episodes
from pipelines.inference import Engine, sampler
from pipelines.models import resolve_model
from pipelines.rl.train import bind_environments, builtin_inputs
from pipelines.run_config import load_run_config
from pipelines.thought import load_thought_schema


def per_task_outcomes(
    folder: Path, config, items, envs, samples: int, temperature: float, first_seed: int
) -> list[float]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    base = AutoModelForCausalLM.from_pretrained(resolve_model(config.model.name_or_path), dtype=torch.float32)
    engine = Engine.for_tokenizer(PeftModel.from_pretrained(base, folder).eval(), tokenizer)
    schema = load_thought_schema(config.model.thought_schema)
    rl = config.rl
    totals = [0.0] * len(items)
    for s in range(samples):
        started = time.perf_counter()
        generate = partial(engine, pick=sampler(temperature, seed=first_seed + s))
        metrics = episodes.evaluate_policy(
            generate, tokenizer, items, envs, schema, rl.max_tool_calling_iterations, rl.max_completion_length,
            rl.tool_call_scale, description=f"{folder.name} sample {s}",
        )  # fmt: skip
        totals = [t + (o or 0.0) for t, o in zip(totals, metrics["outcome_per_task"], strict=True)]
        print(
            f"{folder}: sample {s} (seed {first_seed + s}) outcome {metrics['outcome']:.3f} "
            f"failures {metrics['failures']} in {time.perf_counter() - started:.0f} s",
            flush=True,
        )
    return [t / samples for t in totals]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config")
    parser.add_argument("run_dir", type=Path, help="the run folder holding sft/<cluster> and rl/<cluster>")
    parser.add_argument("--cluster", default="tool")
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--first-seed", type=int, default=1000, help="sample s uses seed first_seed + s")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=None, help="JSON with every task's mean outcome")
    args = parser.parse_args()
    config = load_run_config(args.config, args.overrides)
    domains, _, held_out, _ = builtin_inputs(config)
    if held_out is None:
        raise SystemExit("the config's rl section holds no held-out tasks (rl.eval_tasks_per_domain)")
    items, envs = bind_environments(config.rl, domains, held_out.items)
    scores = {
        stage: per_task_outcomes(
            args.run_dir / stage / args.cluster,
            config,
            items,
            envs,
            args.samples,
            args.temperature,
            args.first_seed,
        )
        for stage in ("sft", "rl")
    }
    interval = episodes.paired_interval(scores["sft"], scores["rl"])
    for stage, values in scores.items():
        print(
            f"{stage}/{args.cluster}: mean outcome {sum(values) / len(values):.3f} over {len(values)} tasks"
        )
    print(f"paired change per task, 95%: {interval}")
    if args.out:
        args.out.write_text(json.dumps({"scores": scores, "paired_ci95": interval}, indent=1))


if __name__ == "__main__":
    main()
