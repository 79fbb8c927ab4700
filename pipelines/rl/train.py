"""The RL stage: GRPO with live tool environments, from an SFT adapter (or the base), one run per cluster.

Per cluster, into `runs/<name>/rl/<cluster>/`:
1. policy: the base in NF4 (`rl.quantization`) with the SFT adapter attached as trainable (or a fresh LoRA with
   `from_base`), and the tokenizer saved with that adapter (the chat template it was trained with);
2. prompts: tasks from the environments' samplers on `rl.task_seed` over `rl.domains` (fixed-method tools
   only), some asked where no tool fits (`irrelevance_fraction`), none equal to a held-out task;
3. held-out evaluation of the starting policy, `GRPOTrainer(environment_factory={domain: EnvClass})` with the
   rewards of `pipelines.rl.rewards`, held-out evaluation again → `eval_before_after.json`;
4. outputs: adapter (vLLM-servable, checked) + tokenizer, `metrics.jsonl`, `loss.png`, `rewards.png` (each reward
   component over steps), `training_summary.json` (failure counts included).

Checkpoints every `rl.train.save_steps` (at most `save_total_limit` kept) carry the run's failure totals; the
folder records the stage's config fingerprint (`rl_run.json`). Running the stage again after an interruption
resumes from the last complete checkpoint when the fingerprint matches, and starts over (saying why) when the
config or the starting SFT adapter changed. A finished run keeps no checkpoints, so running it again trains anew.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from pipelines.errors import BadInput, MidtrainError
from pipelines.hashing import sha256_file
from pipelines.recipe import Decontamination
from pipelines.rl import evaluate as rl_eval
from pipelines.rl.rewards import FailureCounts, build_reward_funcs
from pipelines.run_config import RLSection, RunConfig
from pipelines.sft.outputs import ADAPTER_WEIGHTS, read_json, write_json
from pipelines.tracking import LocalMetricsCallback, PeakMemory, read_metrics, wandb_session

log = logging.getLogger("midtrain.rl")
SUMMARY_FILE = "training_summary.json"
REWARDS_PLOT = "rewards.png"
RUN_STATE_FILE = "rl_run.json"  # the config fingerprint the folder's checkpoints were trained with
BEFORE_FILE = "heldout_before.json"  # the starting policy's held-out evaluation, kept until the run finishes
FAILURES_FILE = "rl_failures.json"  # failure totals at a checkpoint; written last, so it marks it complete
# Settings that change how a run is recorded, not what it learns: editing them keeps its checkpoints valid.
UNFINGERPRINTED_TRAIN_KEYS = {"save_steps", "save_total_limit", "logging_steps"}


# -- inputs ----------------------------------------------------------------------------------------------------
def heldout_spec(config: RunConfig) -> tuple[int, int]:
    """(seed, decontaminated pool size) of the held-out tasks: `rl.eval_seed` if set, else the recipe's
    `decontamination.heldout_seed`, whose first `heldout_n` tasks the SFT mix was decontaminated against."""
    assert config.rl is not None
    recipe = config.data.recipe
    decontamination = Decontamination() if isinstance(recipe, str) else recipe.decontamination
    if config.rl.eval_seed is not None and config.rl.eval_seed != decontamination.heldout_seed:
        return config.rl.eval_seed, 0
    return decontamination.heldout_seed, decontamination.heldout_n


def check_seeds(config: RunConfig, eval_seed: int) -> None:
    """RL prompts must not come from a seed that produced SFT data or the held-out tasks."""
    assert config.rl is not None
    recipe = config.data.recipe
    sft_seeds: dict[int, str] = {}
    if not isinstance(recipe, str):
        for category, spec in recipe.categories.items():
            for source in spec.sources:
                if getattr(source, "type", None) == "generated":
                    sft_seeds[source.seed] = f"data.recipe.categories.{category} source {source.name!r}"
    seed = config.rl.task_seed
    if seed in sft_seeds:
        raise BadInput(
            f"rl.task_seed={seed} is also the seed of {sft_seeds[seed]}: RL tasks must be unseen in SFT"
        )
    if seed == eval_seed:
        raise BadInput(f"rl.task_seed={seed} equals the held-out seed; pick another rl.task_seed")


def prompt_rows(
    items: Sequence[rl_eval.DomainTask], env_classes: dict[str, type] | None = None
) -> list[dict[str, Any]]:
    """TRL rows: `prompt`, `task` (env ground truth), `environment` (the `environment_factory` key: the domain,
    or its tool view), `tools` (the specs that environment offers, as JSON text)."""
    from pipelines.generate import task_to_prompt_row

    rows = []
    for item in items:
        row = task_to_prompt_row(item.task)
        if item.environment:
            assert env_classes is not None, "tool views need their classes"
            row["environment"] = item.environment
            row["tools"] = json.dumps(env_classes[item.environment]._tool_schemas(), sort_keys=True)
        rows.append(row)
    return rows


def bind_environments(
    rl: RLSection, domains: dict[str, tuple[type, Any]], items: list[rl_eval.DomainTask]
) -> tuple[list[rl_eval.DomainTask], dict[str, type]]:
    """`items` and the `environment_factory` classes that run them: one per domain (`offered_tools: all`) or
    one per tool view (`offered_tools: task`, see `pipelines.rl.tool_views`)."""
    env_classes = {name: spec[0] for name, spec in domains.items()}
    if rl.offered_tools == "all":
        return items, env_classes
    from pipelines.rl.tool_views import with_tool_views

    return with_tool_views(items, env_classes, rl.distractor_tools)


def check_generation_backend(rl: RLSection) -> None:
    """`generation.backend: vllm` needs vLLM importable here (TRL imports it only when the trainer starts)."""
    import importlib.util

    if rl.generation.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise BadInput(
            "rl.generation.backend: vllm needs the vllm package in this environment (`pip install vllm` on a "
            "GPU machine); or set rl.generation.backend: hf"
        )


def adapter_clusters(rl: RLSection, only: Sequence[str] | None) -> list[str]:
    if not only:
        return list(rl.clusters)
    unknown = [c for c in only if c not in rl.clusters]
    if unknown:
        raise BadInput(f"--clusters: {unknown} not in rl.clusters ({', '.join(rl.clusters)})")
    return list(dict.fromkeys(only))


# -- policy ----------------------------------------------------------------------------------------------------
def sft_adapter_dir(config: RunConfig, cluster: str) -> Path:
    path = config.run_dir / "sft" / cluster
    if not (path / "adapter_config.json").is_file():
        raise BadInput(
            f"{path}: no SFT adapter for cluster {cluster!r}; run `midtrain sft CONFIG` first, "
            "or set rl.from_base: true to start from the base model"
        )
    return path


def load_policy(config: RunConfig, cluster: str) -> tuple[Any, Any]:
    """(trainable PEFT model, tokenizer): the SFT adapter on the (NF4) base, or a fresh LoRA with `from_base`."""
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training

    from pipelines.chat import load_tokenizer
    from pipelines.models import fetch_model
    from pipelines.sft.model import load_base_model, lora_config

    rl = config.rl
    assert rl is not None
    base = load_base_model(config.model, rl.quantization)
    if rl.quantization.mode == "nf4":
        # Casts norms/embeddings to fp32 and enables input grads, as SFTTrainer does for QLoRA; TRL's GRPO
        # trainer does not do it for a model that arrives already wrapped.
        base = prepare_model_for_kbit_training(
            base, use_gradient_checkpointing=rl.train.gradient_checkpointing
        )
    if rl.from_base:
        tokenizer_source = str(fetch_model(config.model.name_or_path, config.model.revision))
        model = get_peft_model(base, lora_config(rl.lora))
    else:
        adapter = sft_adapter_dir(config, cluster)
        tokenizer_source = str(adapter)
        model = PeftModel.from_pretrained(base, str(adapter), is_trainable=True)
    return model, load_tokenizer(tokenizer_source, config.model.chat_template)


def grpo_args(config: RunConfig, cluster: str, out_dir: Path, weights: list[float]) -> Any:
    """GRPOConfig: the shared `rl.train` mapping plus group size, rollout limits, KL and reward weights."""
    from trl import GRPOConfig

    from pipelines.train_args import training_kwargs

    rl = config.rl
    assert rl is not None
    return GRPOConfig(
        **training_kwargs(rl.train, out_dir, f"{config.name}-rl-{cluster}", config.tracking),
        num_generations=rl.num_generations,
        max_completion_length=rl.max_completion_length,
        max_tool_calling_iterations=rl.max_tool_calling_iterations,
        temperature=rl.temperature,
        beta=rl.beta,
        reward_weights=weights,
        remove_unused_columns=False,
        **rl.generation.grpo_kwargs(),
    )


def build_trainer(
    config: RunConfig,
    cluster: str,
    out_dir: Path,
    rows: list[dict[str, Any]],
    env_classes: dict[str, type],
    failures: FailureCounts,
    callbacks: Sequence[Any] = (),
) -> Any:
    import os

    from datasets import Dataset
    from trl import GRPOTrainer

    from pipelines.thought import load_thought_schema

    rl = config.rl
    assert rl is not None
    schema = load_thought_schema(config.model.thought_schema)
    model, tokenizer = load_policy(config, cluster)
    eos_ids = _eos_token_ids(model, tokenizer)
    funcs, weights = build_reward_funcs(rl.reward_weights, schema, failures, rl.tool_call_scale, eos_ids)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # environment_factory is experimental upstream
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=list(funcs),  # TRL appends the env rewards to the list it is given
        args=grpo_args(config, cluster, out_dir, weights),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        environment_factory=dict(env_classes),
        callbacks=[LocalMetricsCallback(out_dir), FailureTotalsCallback(failures), *callbacks],
    )
    # Each env class defines `get_reward`, which TRL appends after our functions with weight 1, one column per
    # domain. Our `outcome` reward already is that value (it records the final answer, then asks the env), with
    # the configured weight; counting it again at weight 1 would silently make outcome weigh `outcome + 1`. So
    # the appended columns keep their logging (`rewards/<EnvClass>/mean`: success rate per domain for free) and
    # get weight 0 in the advantage.
    trainer.reward_weights[len(funcs) :] = 0.0
    return trainer


def _eos_token_ids(model: Any, tokenizer: Any) -> tuple[int, ...]:
    """Tokens that end a completion, as TRL counts them (the model's eos ids, the tokenizer's eos and pad)."""
    declared = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    declared = [declared] if isinstance(declared, int) else list(declared or [])
    ids = [*declared, tokenizer.eos_token_id, tokenizer.pad_token_id]
    return tuple(sorted({int(i) for i in ids if i is not None}))


# -- checkpoints and resume -----------------------------------------------------------------------------------
def start_fingerprint(config: RunConfig, cluster: str) -> str:
    """What the policy starts from: `base`, or the SFT adapter's weights hash (a retrained SFT adapter makes the
    checkpoints taken from the old one stale, even when the `rl` section did not change)."""
    assert config.rl is not None
    if config.rl.from_base:
        return "base"
    adapter = sft_adapter_dir(config, cluster)
    weights = next((adapter / name for name in ADAPTER_WEIGHTS if (adapter / name).is_file()), None)
    if weights is None:
        raise BadInput(
            f"{adapter}: no adapter weights ({' or '.join(ADAPTER_WEIGHTS)}); run `midtrain sft` again"
        )
    return f"sft:{sha256_file(weights)}"


def rl_fingerprint(config: RunConfig, cluster: str) -> str:
    """What determines a cluster's RL weights: base model, `rl` settings, held-out spec (its tasks are kept out
    of training) and the starting adapter. `rl.clusters` is left out: adding a cluster keeps the others valid."""
    rl = config.rl
    assert rl is not None
    payload = {
        "stage": "rl",
        "cluster": cluster,
        "model": config.model.model_dump(mode="json"),
        "rl": rl.model_dump(mode="json", exclude={"clusters": True, "train": UNFINGERPRINTED_TRAIN_KEYS}),
        "heldout": list(heldout_spec(config)),
        "start": start_fingerprint(config, cluster),
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def last_complete_checkpoint(out_dir: Path) -> Path | None:
    """The newest `checkpoint-N` whose failure totals were written (a kill mid-save leaves them out)."""
    steps = []
    for path in out_dir.glob("checkpoint-*"):
        suffix = path.name.removeprefix("checkpoint-")
        if suffix.isdigit() and (path / FAILURES_FILE).is_file():
            steps.append((int(suffix), path))
    return max(steps)[1] if steps else None


def prepare_output_dir(out_dir: Path, fingerprint: str, resume: bool) -> Path | None:
    """The checkpoint to resume from (same fingerprint), or None after clearing the folder for a fresh start."""
    checkpoint = last_complete_checkpoint(out_dir) if resume and out_dir.is_dir() else None
    if checkpoint is not None:
        stored = (read_json(out_dir / RUN_STATE_FILE) or {}).get("config_fingerprint")
        if stored == fingerprint:
            log.info("rl: %s: resuming from %s", out_dir.name, checkpoint)
            return checkpoint
        # Restarting rather than refusing: an RL checkpoint is only worth its few steps, and `midtrain run`
        # must be able to re-run this stage after an upstream change without a manual cleanup.
        log.warning(
            "rl: %s: %s was trained with another rl config or start adapter (fingerprint %s != %s); "
            "starting this cluster over",
            out_dir.name,
            checkpoint,
            str(stored)[:12],
            fingerprint[:12],
        )
    if out_dir.exists():
        shutil.rmtree(out_dir)
    write_json(out_dir / RUN_STATE_FILE, {"config_fingerprint": fingerprint})
    return None


class FailureTotalsCallback(TrainerCallback):
    """Writes the run's failure totals into each checkpoint, so a resumed run's summary counts the whole run."""

    def __init__(self, failures: FailureCounts) -> None:
        self.failures = failures

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            write_json(checkpoint / FAILURES_FILE, self.failures.as_dict())


def restored_failures(checkpoint: Path | None) -> FailureCounts:
    """The failure totals up to `checkpoint` (none for a fresh start)."""
    stored = read_json(checkpoint / FAILURES_FILE) if checkpoint is not None else None
    return FailureCounts(Counter(stored or {}))


@dataclass
class ClusterJob:
    """One cluster's GRPO run: where it goes, its fingerprint, the checkpoint it resumes from."""

    cluster: str
    out_dir: Path
    fingerprint: str
    checkpoint: Path | None

    @property
    def start_step(self) -> int:
        return int(self.checkpoint.name.removeprefix("checkpoint-")) if self.checkpoint else 0


def starting_evaluation(out_dir: Path, evaluate: Any) -> dict[str, Any] | None:
    """The held-out evaluation of the starting policy, once per run: a resumed run's policy has already moved,
    so it reads the numbers its first session stored (the folder is cleared whenever the fingerprint changes)."""
    stored = read_json(out_dir / BEFORE_FILE)
    if stored is not None:
        return stored["before"]
    before = evaluate()
    write_json(out_dir / BEFORE_FILE, {"before": before})
    return before


# -- the stage -------------------------------------------------------------------------------------------------
def run(
    config: RunConfig,
    clusters: Sequence[str] | None = None,
    callbacks: Sequence[Any] = (),
    resume: bool = True,
) -> dict[str, dict[str, Any]]:
    """GRPO for every cluster of `rl.clusters` (or the `clusters` subset); return each training summary.

    `resume`: continue an interrupted cluster from its last checkpoint when its fingerprint still matches
    (else it starts over); False always starts over. `callbacks`: extra `TrainerCallback`s for every trainer.
    """
    if config.rl is None:
        raise BadInput("the config has no `rl` section")
    rl = config.rl
    check_generation_backend(rl)
    names = adapter_clusters(rl, clusters)
    domains = rl_eval.fixed_method_domains(rl.domains)
    eval_seed, decontaminated_n = heldout_spec(config)
    check_seeds(config, eval_seed)
    held_out = (
        rl_eval.heldout_tasks(
            domains, rl.eval_tasks_per_domain, eval_seed, rl.max_difficulty, decontaminated_n
        )
        if rl.eval_tasks_per_domain
        else None
    )
    if held_out and not held_out.decontaminated:
        log.warning(
            "rl: some held-out tasks lie outside the decontaminated set (pool %d)", held_out.pool_size
        )
    train_items = rl_eval.sample_tasks(
        domains,
        rl.n_tasks,
        rl.task_seed,
        rl.max_difficulty,
        rl.irrelevance_fraction,
        exclude_ids={item.task.task_id for item in held_out.items} if held_out else frozenset(),
    )
    if not rl.from_base:
        for name in names:
            sft_adapter_dir(config, name)  # fail on a missing adapter before any training starts
    return {
        name: train_cluster(config, name, domains, train_items, held_out, callbacks, resume) for name in names
    }


def train_cluster(
    config: RunConfig,
    cluster: str,
    domains: dict[str, tuple[type, Any]],
    train_items: list[rl_eval.DomainTask],
    held_out: rl_eval.HeldOut | None,
    callbacks: Sequence[Any] = (),
    resume: bool = True,
) -> dict[str, Any]:
    """Evaluate the starting policy, train (or resume), evaluate again, save; return the training summary."""
    out_dir = config.run_dir / "rl" / cluster
    fingerprint = rl_fingerprint(config, cluster)
    job = ClusterJob(cluster, out_dir, fingerprint, prepare_output_dir(out_dir, fingerprint, resume))
    assert config.rl is not None
    train_items, train_envs = bind_environments(config.rl, domains, train_items)
    eval_items, eval_envs = bind_environments(config.rl, domains, held_out.items if held_out else [])
    failures = restored_failures(job.checkpoint)
    rows = prompt_rows(train_items, train_envs)
    trainer = build_trainer(config, cluster, out_dir, rows, train_envs, failures, callbacks)
    evaluate = _evaluator(config, trainer, eval_envs, eval_items)
    before = starting_evaluation(out_dir, evaluate)
    wandb_config = {"midtrain": config.model_dump(mode="json"), "cluster": cluster, "stage": "rl"}
    with (
        wandb_session(
            config.tracking,
            wandb_dir=config.run_dir / "wandb",
            out_dir=out_dir,
            name=f"{config.name}-rl-{cluster}",
            group=config.name,
            config=wandb_config | {"config_fingerprint": fingerprint},
            resume=job.checkpoint is not None,
        ) as wandb_run,
        PeakMemory() as peak,
    ):
        started = time.perf_counter()
        output = trainer.train(resume_from_checkpoint=str(job.checkpoint) if job.checkpoint else None)
        wall_time = time.perf_counter() - started
        after = evaluate()
        summary = _summary(trainer, output, wall_time, peak, failures, train_items, job, config)
        summary |= _heldout_report(out_dir, held_out, before, after)
        if wandb_run is not None:
            wandb_run.summary.update(_flat_numbers(summary))
    _save_outputs(trainer, out_dir, summary)
    return summary


def _heldout_report(
    out_dir: Path, held_out: rl_eval.HeldOut | None, before: dict | None, after: dict | None
) -> dict[str, Any]:
    """Write `eval_before_after.json`; return the summary's `heldout` entry (empty without held-out tasks)."""
    if held_out is None or before is None or after is None:
        return {}
    comparison = rl_eval.before_after(before, after, held_out)
    write_json(out_dir / rl_eval.EVAL_FILE, comparison)
    report = {
        "n_tasks": len(held_out.items),
        "outcome_before": before["outcome"],
        "outcome_after": after["outcome"],
    }
    return {"heldout": {**report, **comparison["delta"]}}


def _flat_numbers(summary: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of the summary as `a/b` keys, for the wandb run summary."""
    out: dict[str, float] = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            out |= _flat_numbers(value, f"{prefix}{key}/")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = value
    return out


def _evaluator(config: RunConfig, trainer: Any, env_classes: dict[str, type], items: list) -> Any:
    """A closure evaluating the trainer's current policy on the held-out tasks (None when there are none)."""
    from pipelines.thought import load_thought_schema

    rl = config.rl
    assert rl is not None
    schema = load_thought_schema(config.model.thought_schema)

    def evaluate() -> dict[str, Any] | None:
        if not items:
            return None
        return rl_eval.evaluate_policy(
            trainer.model,
            trainer.processing_class,
            items,
            env_classes,
            schema,
            rl.max_tool_calling_iterations,
            rl.max_completion_length,
            rl.tool_call_scale,
        )

    return evaluate


def _summary(
    trainer: Any,
    output: Any,
    wall_time: float,
    peak: PeakMemory,
    failures: FailureCounts,
    items: list[rl_eval.DomainTask],
    job: ClusterJob,
    config: RunConfig,
) -> dict[str, Any]:
    from pipelines.sft.outputs import library_versions

    rl = config.rl
    assert rl is not None
    history = trainer.state.log_history
    domains: dict[str, int] = {}
    for item in items:
        domains[item.domain] = domains.get(item.domain, 0) + 1
    steps = trainer.state.global_step
    return {
        "cluster": job.cluster,
        "start": "base" if rl.from_base else f"sft/{job.cluster}",
        "base_model": config.model.name_or_path,
        "config_fingerprint": job.fingerprint,
        "steps": steps,
        "resumed_from_step": job.start_step,
        # Time, loss and peak memory are this session's; rewards, failures and history cover the whole run.
        "wall_time_s": round(wall_time, 3),
        "seconds_per_step": round(wall_time / max(1, steps - job.start_step), 3),
        "mean_train_loss_this_session": output.training_loss,
        "final_reward": _last(history, "reward"),
        "final_rewards": {k.split("/")[1]: v for k, v in _last_row(history, "rewards/").items()},
        "tool_call_frequency": _last(history, "tools/call_frequency"),
        "tool_failure_frequency": _last(history, "tools/failure_frequency"),
        "failures": failures.as_dict(),
        "reward_weights": dict(zip(trainer.reward_func_names, trainer.reward_weights.tolist(), strict=True)),
        "tasks": {"n": len(items), "by_domain": domains, "seed": rl.task_seed},
        "peak_memory_bytes": peak.peak_bytes,
        "peak_memory_kind": peak.kind,
        "device": str(trainer.args.device),
        "quantized": bool(getattr(trainer.model, "is_loaded_in_4bit", False)),
        "versions": library_versions(),
    }


def _last(history: list[dict[str, Any]], key: str) -> float | None:
    return next((row[key] for row in reversed(history) if key in row), None)


def _last_row(history: list[dict[str, Any]], prefix: str) -> dict[str, float]:
    """The `rewards/<name>/mean` values of the last log row that has them."""
    for row in reversed(history):
        found = {k: v for k, v in row.items() if k.startswith(prefix) and k.endswith("/mean")}
        if found:
            return found
    return {}


def _save_outputs(trainer: Any, out_dir: Path, summary: dict[str, Any]) -> None:
    """Adapter + tokenizer, refused if vLLM could not serve it; reward curves; summary."""
    from pipelines.sft.outputs import check_vllm_compatible

    trainer.save_model(str(out_dir))
    trainer.processing_class.save_pretrained(str(out_dir))
    problems = check_vllm_compatible(out_dir)
    if problems:
        raise MidtrainError(f"{out_dir}: adapter is not vLLM-compatible: {'; '.join(problems)}")
    write_rewards_plot(out_dir / "metrics.jsonl", out_dir / REWARDS_PLOT)
    write_json(out_dir / SUMMARY_FILE, summary)
    # A finished run has no use for its checkpoints (optimizer state included) or the stored starting numbers
    # (they are in eval_before_after.json); running the stage again starts over.
    for checkpoint in out_dir.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)
    (out_dir / BEFORE_FILE).unlink(missing_ok=True)


def write_rewards_plot(metrics_path: Path, plot_path: Path) -> None:
    """One line per reward component (`rewards/<name>/mean`) and the weighted total, against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    keys = sorted({k for row in rows for k in row if k.startswith("rewards/") and k.endswith("/mean")})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in ["reward", *keys]:
        name = "total (weighted)" if key == "reward" else key.split("/")[1]
        if name.endswith("]"):
            continue  # one column per tool view (`CalculatorEnv[a+b]`): too many lines; `outcome` has the total
        # Env-class columns are TRL's per-domain `get_reward`, logged at weight 0 (see build_trainer): dashed.
        style, label = ("--", f"{name} (logged only)") if name.endswith("Env") else ("-", name)
        points = [(row["step"], row[key]) for row in rows if row.get(key) is not None]
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, style, marker="o" if len(points) < 20 else None, label=label, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("mean reward")
    ax.set_title(f"GRPO rewards: {plot_path.parent.name}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(plot_path, dpi=100)
    plt.close(fig)
