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
folder records the cluster's fingerprint (pipelines/units.py): running the stage again keeps a finished cluster
with the same fingerprint, resumes an interrupted one from its last complete checkpoint, and starts over (saying
why) when the config or the starting SFT adapter changed.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from pipelines import episodes
from pipelines.artifacts import RLResult, RLSummary
from pipelines.envs.base import ToolEnv, guarded
from pipelines.envs.code_runner import admit_model_code_for
from pipelines.errors import BadInput, MidtrainError
from pipelines.hashing import fingerprint, sha256_file
from pipelines.inference import Engine
from pipelines.resources import PeakMemory, library_versions
from pipelines.rl.rewards import FailureCounts, build_reward_funcs
from pipelines.rl.rollouts import RolloutFunction, Sampling, Scorer, advantage_reward, keyed_prompts
from pipelines.run_config import REPO_ROOT, RLSection, RunConfig
from pipelines.sft.outputs import ADAPTER_WEIGHTS, check_vllm_compatible, read_json, write_json
from pipelines.tasks import sampling
from pipelines.tracking import LocalMetricsCallback, read_metrics, wandb_session
from pipelines.units import plan_unit, prepare_unit

if TYPE_CHECKING:
    from pipelines.rl.vllm_rollouts import VllmRollouts

log = logging.getLogger("midtrain.rl")
REWARDS_PLOT = "rewards.png"
BEFORE_FILE = "heldout_before.json"  # the starting policy's held-out evaluation, kept until the run finishes
FAILURES_FILE = "rl_failures.json"  # failure totals at a checkpoint; written last, so it marks it complete
ROLLOUT_TOTALS_FILE = "rollout_totals.json"  # the midtrain rollout loop's totals at a checkpoint
ROLLOUTS_FILE = "rollouts.json"  # the midtrain rollout loop's totals and settings for the finished run
# Settings that change how a run is recorded, not what it learns: editing them keeps its checkpoints valid.
UNFINGERPRINTED_TRAIN_KEYS = {"save_steps", "save_total_limit", "logging_steps"}


# -- inputs ----------------------------------------------------------------------------------------------------
def heldout_spec(config: RunConfig) -> tuple[int, int]:
    """(seed, decontaminated pool size) of the RL stage's held-out tasks (`rl.eval_seed`, else the recipe's), the
    pool as the run's mix was built."""
    assert config.rl is not None
    return sampling.heldout_spec(config.data.recipe, config.rl.eval_seed, config.run_dir / "data")


def check_seeds(config: RunConfig, eval_seed: int) -> None:
    """RL prompts must not come from a seed that produced SFT data or the held-out tasks."""
    assert config.rl is not None
    sft_seeds: dict[int, str] = {}
    for category, spec in config.data.recipe.categories.items():
        for source in spec.sources:
            if source.type == "generated":
                sft_seeds[source.seed] = f"data.recipe.categories.{category} source {source.name!r}"
    seed = config.rl.task_seed
    if seed in sft_seeds:
        raise BadInput(
            f"rl.task_seed={seed} is also the seed of {sft_seeds[seed]}: RL tasks must be unseen in SFT"
        )
    if seed == eval_seed:
        raise BadInput(f"rl.task_seed={seed} equals the held-out seed; pick another rl.task_seed")


def prompt_rows_for_tasks(
    items: Sequence[sampling.DomainTask], env_classes: dict[str, type[ToolEnv]]
) -> list[dict[str, Any]]:
    """TRL rows of task-file tasks: their own opening messages, in the environment each one names."""
    return [
        {
            "prompt": episodes.prompt_messages(item.task),
            "task": item.task.to_json(),
            "environment": item.env_key,
            "tools": json.dumps(env_classes[item.env_key]._tool_schemas(), sort_keys=True),
        }
        for item in items
    ]


def prompt_rows(
    items: Sequence[sampling.DomainTask], env_classes: dict[str, type[ToolEnv]] | None = None
) -> list[dict[str, Any]]:
    """TRL rows: `prompt`, `task` (env ground truth), `environment` (the `environment_factory` key: the domain,
    or its tool view), `tools` (the specs that environment offers, as JSON text)."""
    from pipelines.tasks.generate import task_to_prompt_row

    rows = []
    for item in items:
        if item.task.judge is not None:  # a task-file task: its environment need not be a built-in domain
            assert env_classes is not None, "task-file tasks need their environment classes"
            rows += prompt_rows_for_tasks([item], env_classes)
            continue
        row = task_to_prompt_row(item.task)
        if item.environment:
            assert env_classes is not None, "tool views need their classes"
            row["environment"] = item.environment
            row["tools"] = json.dumps(env_classes[item.environment]._tool_schemas(), sort_keys=True)
        rows.append(row)
    return rows


def bind_environments(
    rl: RLSection, domains: dict[str, tuple[type, Any]], items: list[sampling.DomainTask]
) -> tuple[list[sampling.DomainTask], dict[str, type]]:
    """`items` and the `environment_factory` classes that run them: one per domain (`offered_tools: all`) or
    one per tool view (`offered_tools: task`, see `pipelines.rl.tool_views`)."""
    from pipelines.rl.tool_views import with_task_tools, with_tool_views

    env_classes = {name: spec[0] for name, spec in domains.items()}
    if rl.tasks is not None:  # a task file's rows say which tools they offer
        return with_task_tools(items, env_classes)
    if rl.offered_tools == "all":
        return items, env_classes
    return with_tool_views(items, env_classes, rl.distractor_tools)


def check_forkable(rl: RLSection, env_classes: dict[str, type[ToolEnv]]) -> None:
    """Tree rollouts copy environments at forks: refuse, before anything loads, one that cannot be copied."""
    if rl.rollouts.shape != "tree":
        return
    refused = {name: cls._fork_refusal for name, cls in env_classes.items() if cls._fork_refusal is not None}
    if refused:
        name, why = next(iter(sorted(refused.items())))
        raise BadInput(f"rl.rollouts.shape: tree: environment {name!r} cannot fork: {why}")


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


def rollout_budget_warnings(config: RunConfig, cluster: str) -> list[str]:
    """`rl.max_completion_length` against the episodes the starting SFT adapter was trained on: a rollout cut
    off before its answer earns no outcome reward, so GRPO would learn from truncation, not from the task.
    Built-in tasks need at most `max_difficulty` calls; a task file's rows say nothing of theirs."""
    rl = config.rl
    assert rl is not None
    calls = rl.max_difficulty if rl.tasks is None else None
    return episodes.budget_warnings(
        episodes.trained_lengths(sft_adapter_dir(config, cluster)), f"sft/{cluster}", calls,
        ("rl.max_completion_length", rl.max_completion_length),
    )  # fmt: skip


def load_policy(config: RunConfig, cluster: str) -> tuple[Any, Any]:
    """(trainable PEFT model, tokenizer): the SFT adapter on the (NF4) base, or a fresh LoRA with `from_base`."""
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training

    from pipelines.chat import load_tokenizer
    from pipelines.models import fetch_model
    from pipelines.sft.model import load_base_model, lora_config, project_only_labelled_positions

    rl = config.rl
    assert rl is not None
    base = load_base_model(config.model, rl.quantization)
    project_only_labelled_positions()  # GRPO scores completions with the same fused head, prompts unlabelled
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
    model_config = config.model
    return model, load_tokenizer(
        tokenizer_source, model_config.chat_template, tool_format=model_config.tool_format
    )


def grpo_args(
    config: RunConfig,
    cluster: str,
    out_dir: Path,
    weights: list[float],
    template_kwargs: dict[str, Any],
    **fixed: Any,
) -> Any:
    """GRPOConfig: `grpo_keywords`, `fixed` settings the chosen rollout loop needs, and whatever `rl.train.extra`
    passes through."""
    from trl import GRPOConfig

    from pipelines.train_args import trainer_config

    assert config.rl is not None
    ours = grpo_keywords(config, cluster, out_dir, weights, template_kwargs) | fixed
    return trainer_config(GRPOConfig, ours, config.rl.train.extra, "rl")


def grpo_keywords(
    config: RunConfig, cluster: str, out_dir: Path, weights: list[float], template_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The shared `rl.train` mapping plus group size, rollout limits, KL and reward weights, and the codec's
    template arguments (Llama's fixed date), so TRL renders prompts as the SFT data was rendered."""
    from pipelines.train_args import training_kwargs

    rl = config.rl
    assert rl is not None
    return dict(
        **training_kwargs(rl.train, out_dir, f"{config.name}-rl-{cluster}", config.tracking),
        num_generations=rl.num_generations,
        max_completion_length=rl.max_completion_length,
        max_tool_calling_iterations=rl.max_tool_calling_iterations,
        temperature=rl.temperature,
        beta=rl.beta,
        reward_weights=weights,
        remove_unused_columns=False,
        chat_template_kwargs=dict(template_kwargs) or None,
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
    rollout_loop: RolloutLoop | None = None,
) -> Any:
    """GRPOTrainer for one cluster: TRL's own tool loop over `env_classes`, or (`rollout_loop`) midtrain's
    rollouts through `rollout_func` (pipelines/rl/rollouts.py)."""
    import os

    from datasets import Dataset
    from trl import GRPOTrainer

    from pipelines.thought import load_thought_schema

    rl = config.rl
    assert rl is not None
    schema = load_thought_schema(config.model.thought_schema)
    model, tokenizer = load_policy(config, cluster)
    codec = trl_codec(tokenizer)
    eos_ids = _eos_token_ids(model, tokenizer)
    funcs, weights = build_reward_funcs(
        rl.reward_weights, codec, schema, failures, rl.tool_call_scale, eos_ids
    )
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # environment_factory is experimental upstream
    if rollout_loop is not None:
        return _midtrain_loop_trainer(
            config, cluster, out_dir, model, tokenizer, rows, rollout_loop, callbacks,
            Scorer(funcs, weights, codec, schema, rl.reflexion.discount), failures,
        )  # fmt: skip
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=list(funcs),  # TRL appends the env rewards to the list it is given
        args=grpo_args(config, cluster, out_dir, weights, codec.template_kwargs),
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


@dataclass
class RolloutLoop:
    """What midtrain's rollout loop needs besides the trainer: the tasks behind the rows, their environments,
    and on resume the loop's state at the checkpoint and the step it was taken at."""

    items: list[sampling.DomainTask]
    env_classes: dict[str, type]
    checkpoint_state: dict[str, Any] | None = None
    start_step: int = 0
    function: RolloutFunction | None = None


def _midtrain_loop_trainer(
    config: RunConfig,
    cluster: str,
    out_dir: Path,
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    loop: RolloutLoop,
    callbacks: Sequence[Any],
    scorer: Scorer,
    failures: FailureCounts,
) -> Any:
    """GRPOTrainer whose rollouts come from `RolloutFunction`: one reward (each segment's advantage, weight 1,
    `scale_rewards: none`: the function already centred and scaled it per group), no environment_factory."""
    from datasets import Dataset
    from trl import GRPOTrainer

    rl = config.rl
    assert rl is not None
    function = RolloutFunction(rl, loop.items, rows, loop.env_classes, scorer, out_dir, seed=rl.train.seed)
    if loop.checkpoint_state is not None:
        function.restore(loop.checkpoint_state, loop.start_step)
    loop.function = function
    # The advantages arrive centred and scaled per group: TRL must not scale them again, re-normalise them per
    # reward, or drop a fork's segment for not ending in EOS (it ends where the branches continue).
    # `use_vllm` stays off: with `generation.backend: vllm` the loop decodes on its own engine (VllmRollouts).
    args = grpo_args(
        config, cluster, out_dir, [1.0], scorer.codec.template_kwargs, scale_rewards="none",
        multi_objective_aggregation="sum_then_normalize", mask_truncated_completions=False, use_vllm=False,
    )  # fmt: skip
    function.sampling = Sampling.from_args(args)
    if rl.generation.backend == "vllm":
        function.vllm = vllm_rollouts(config, tokenizer)
    budget = (
        [TokenBudgetCallback(function, rl.rollouts.max_generated_tokens)]
        if rl.rollouts.max_generated_tokens
        else []
    )
    return GRPOTrainer(
        model=model,
        reward_funcs=[advantage_reward],
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        rollout_func=function,
        callbacks=[
            LocalMetricsCallback(out_dir),
            FailureTotalsCallback(failures, function),
            *budget,
            *callbacks,
        ],
    )


def vllm_rollouts(config: RunConfig, tokenizer: Any) -> VllmRollouts:
    """The loop's vLLM engine over the base (started on the first rollout call, with the policy's LoRA)."""
    import os

    from pipelines.codecs import codec_for
    from pipelines.models import resolve_model
    from pipelines.rl.vllm_rollouts import VllmRollouts

    assert config.rl is not None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Every rank would start an engine of its own on its device; TRL's loop shards one across ranks.
        raise BadInput(
            "rl.generation.backend: vllm on midtrain's rollout loop runs in one process; under accelerate/torchrun "
            "use rollouts.loop: trl (TRL's vLLM) or generation.backend: hf"
        )
    base = resolve_model(config.model.name_or_path, config.model.revision)
    stops = codec_for(tokenizer).end_of_turn_ids(tokenizer)
    return VllmRollouts(base, stops, config.model.dtype, config.rl.generation)


def check_vllm_policy(config: RunConfig, cluster: str) -> None:
    """With midtrain's loop on vLLM: BadInput now, before any evaluation or training, for an SFT adapter vLLM
    would refuse (the first rollout would otherwise find out)."""
    from pipelines.models import resolve_model
    from pipelines.vllm_export import base_vocab_size, check_adapters

    rl = config.rl
    assert rl is not None
    if (
        rl.generation.backend != "vllm"
        or rl.from_base
        or not rl.rollouts.uses_midtrain_loop(rl.reflexion, rl.curriculum)
    ):
        return
    base = resolve_model(config.model.name_or_path, config.model.revision)
    check_adapters({f"sft/{cluster}": sft_adapter_dir(config, cluster)}, base_vocab_size(base))


class TokenBudgetCallback(TrainerCallback):
    """Stops training once the rollouts have generated `rollouts.max_generated_tokens` model tokens."""

    def __init__(self, function: RolloutFunction, budget: int) -> None:
        self.function, self.budget = function, budget

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.function.generated_tokens >= self.budget:
            log.info("rl: %d generated tokens reached the budget (%d): stopping", self.function.generated_tokens,
                     self.budget)  # fmt: skip
            control.should_training_stop = True


def trl_codec(tokenizer: Any) -> Any:
    """The tokenizer's codec, if TRL's GRPO tool loop can use it: that loop renders tool turns with the chat
    template itself, so the generic `json` format (tools and results written by midtrain as plain text) cannot."""
    from pipelines.codecs import codec_for

    codec = codec_for(tokenizer)
    if not codec.trl_tool_loop:
        raise BadInput(
            f"rl: the {codec.name!r} tool format is written by midtrain in plain text, but TRL's GRPO tool loop "
            "renders tool turns with the chat template itself; use a model (or model.chat_template) whose "
            "template renders tools, or set model.tool_format to one of hermes, qwen3, llama3, mistral, smollm2"
        )
    return codec


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
    return fingerprint(
        {
            "stage": "rl",
            "cluster": cluster,
            "model": config.model.model_dump(mode="json"),
            "rl": rl.model_dump(mode="json", exclude={"clusters": True, "train": UNFINGERPRINTED_TRAIN_KEYS}),
            "heldout": list(heldout_spec(config)),
            "start": start_fingerprint(config, cluster),
        }
    )


def last_complete_checkpoint(out_dir: Path) -> Path | None:
    """The newest `checkpoint-N` whose failure totals were written (a kill mid-save leaves them out)."""
    steps = []
    for path in out_dir.glob("checkpoint-*"):
        suffix = path.name.removeprefix("checkpoint-")
        if suffix.isdigit() and (path / FAILURES_FILE).is_file():
            steps.append((int(suffix), path))
    return max(steps)[1] if steps else None


def finished_fingerprint(out_dir: Path) -> str | None:
    """The fingerprint a finished, servable RL adapter in `out_dir` was trained with (None: not finished)."""
    if not RLSummary.path_in(out_dir).is_file() or check_vllm_compatible(out_dir):
        return None
    return RLSummary.read(out_dir).config_fingerprint


def prepare_output_dir(out_dir: Path, cluster: str, cluster_fingerprint: str, restart: bool) -> Any:
    """Skip, resume or start over this cluster's folder (pipelines/units.py); returns the plan."""
    plan = plan_unit(
        out_dir, "rl", cluster_fingerprint, finished_fingerprint, last_complete_checkpoint, restart
    )
    if plan.action == "resume":
        log.info("rl: %s: resuming from %s", cluster, plan.checkpoint)
    prepare_unit(out_dir, "rl", cluster, cluster_fingerprint, plan)
    return plan


class FailureTotalsCallback(TrainerCallback):
    """Writes the run's failure totals (and the rollout loop's totals) into each checkpoint, so a resumed run's
    summary counts the whole run and a token budget goes on from where it stopped."""

    def __init__(self, failures: FailureCounts, rollouts: RolloutFunction | None = None) -> None:
        self.failures = failures
        self.rollouts = rollouts

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if self.rollouts is not None:
                write_json(checkpoint / ROLLOUT_TOTALS_FILE, self.rollouts.state())
            write_json(
                checkpoint / FAILURES_FILE, self.failures.as_dict()
            )  # last: it marks the checkpoint whole


def restored_failures(checkpoint: Path | None) -> FailureCounts:
    """The failure totals up to `checkpoint` (none for a fresh start)."""
    stored = read_json(checkpoint / FAILURES_FILE) if checkpoint is not None else None
    return FailureCounts(Counter(stored or {}))


def restored_rollout_state(checkpoint: Path | None) -> dict[str, Any] | None:
    """The rollout loop's totals and curriculum at `checkpoint` (None for a fresh start)."""
    return read_json(checkpoint / ROLLOUT_TOTALS_FILE) if checkpoint is not None else None


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
    *,
    clusters: Sequence[str] | None = None,
    callbacks: Sequence[Any] = (),
    restart: bool = False,
) -> RLResult:
    """GRPO for every cluster of `rl.clusters` (or the `clusters` subset); return each training summary.

    Per cluster (pipelines/units.py): finished with the same fingerprint → kept; interrupted → resumed from its
    last complete checkpoint; changed → started over. `restart`: start every cluster over. `callbacks`: extra
    `TrainerCallback`s for every trainer.
    """
    if config.rl is None:
        raise BadInput("the config has no `rl` section")
    rl = config.rl
    check_generation_backend(rl)
    names = adapter_clusters(rl, clusters)
    if rl.tasks is not None:
        domains, train_items, held_out = task_file_inputs(config)
        sandbox = None  # a task file's environments run no model-written code of ours
    else:
        domains, train_items, held_out, sandbox = builtin_inputs(config)
    if not rl.from_base:
        for name in names:
            sft_adapter_dir(config, name)  # fail on a missing adapter before any training starts
            check_vllm_policy(config, name)
            for warning in rollout_budget_warnings(config, name):
                log.warning("rl: %s", warning)
    try:
        summaries = {
            name: train_cluster(config, name, domains, train_items, held_out, callbacks, restart, sandbox)
            for name in names
        }
    finally:
        from pipelines.envs.external import close_environments

        close_environments()  # the MCP sessions TRL's environment pool still holds
    return RLResult(clusters=summaries)


def builtin_inputs(
    config: RunConfig,
) -> tuple[dict[str, tuple[type, Any]], list[sampling.DomainTask], sampling.HeldOut | None, dict | None]:
    """(environments, training tasks, held-out tasks, sandbox level) from the built-in domains' samplers."""
    rl = config.rl
    assert rl is not None
    domains = sampling.fixed_method_domains(rl.domains)
    sandbox = admit_model_code_for(domains, config.sandbox, "rl")  # before anything loads or trains
    eval_seed, decontaminated_n = heldout_spec(config)
    check_seeds(config, eval_seed)
    held_out = (
        sampling.heldout_tasks(
            domains, rl.eval_tasks_per_domain, eval_seed, rl.max_difficulty, decontaminated_n
        )
        if rl.eval_tasks_per_domain
        else None
    )
    if held_out and (warning := held_out.contamination_warning()):
        log.warning("rl: %s", warning)
    train_items = sampling.sample_tasks(
        domains,
        rl.n_tasks,
        rl.task_seed,
        rl.max_difficulty,
        rl.irrelevance_fraction,
        exclude_ids={item.task.task_id for item in held_out.items} if held_out else frozenset(),
    )
    return domains, train_items, held_out, sandbox


def task_file_inputs(
    config: RunConfig,
) -> tuple[dict[str, tuple[type, Any]], list[sampling.DomainTask], sampling.HeldOut | None]:
    """(environments, training tasks, held-out tasks) from `rl.tasks`: its train rows, and up to
    `eval_tasks_per_domain` held-out rows per environment; rejected rows go to `rl/task_rejects.jsonl`."""
    from pipelines.tasks.task_file import load_task_file

    rl = config.rl
    assert rl is not None and rl.tasks is not None
    task_set = load_task_file(rl.tasks, rl.env)
    if task_set.rejects:
        task_set.write_rejects(config.run_dir / "rl" / "task_rejects.jsonl")
    if not task_set.train:
        raise BadInput(f"rl.tasks {rl.tasks}: no `train` rows to train on ({len(task_set.heldout)} held out)")
    domains = {name: (guarded(cls), None) for name, cls in task_set.envs.items()}  # type: ignore[arg-type]  # classes are hashable: mypy#11470
    train_items = [sampling.DomainTask(task.domain, task) for task in task_set.train]
    picked: dict[str, int] = {}
    held = []
    for task in task_set.heldout:
        if picked.get(task.domain, 0) < rl.eval_tasks_per_domain:
            picked[task.domain] = picked.get(task.domain, 0) + 1
            held.append(sampling.DomainTask(task.domain, task))
    decontaminated = tasks_decontaminated(config, task_set.path)
    if held and not decontaminated:
        log.warning("rl: the recipe's decontamination.sets lack `tasks:%s`: the SFT mix was not checked against "
                    "these held-out tasks", rl.tasks)  # fmt: skip
    held_out = sampling.HeldOut(held, seed=0, pool_size=len(task_set.heldout), decontaminated=decontaminated)
    return domains, train_items, held_out if held else None


def tasks_decontaminated(config: RunConfig, task_file: Path) -> bool:
    """Was the run's mix decontaminated against this task file's held-out rows (a `tasks:PATH` set)? As the mix was
    built (its manifest), else as the recipe says."""
    from pipelines.tasks.task_file import TASKS_SET_PREFIX

    checked = sampling.built_decontamination(config.run_dir / "data") or config.data.recipe.decontamination
    for entry in checked.sets:
        if entry.startswith(TASKS_SET_PREFIX):
            path = Path(entry.removeprefix(TASKS_SET_PREFIX))
            candidates = [path, REPO_ROOT / path] if not path.is_absolute() else [path]
            if any(c.is_file() and c.resolve() == task_file for c in candidates):
                return True
    return False


def train_cluster(
    config: RunConfig,
    cluster: str,
    domains: dict[str, tuple[type, Any]],
    train_items: list[sampling.DomainTask],
    held_out: sampling.HeldOut | None,
    callbacks: Sequence[Any] = (),
    restart: bool = False,
    sandbox: dict[str, Any] | None = None,
) -> RLSummary:
    """Evaluate the starting policy, train (or resume), evaluate again, save; return the training summary.
    `sandbox`: the isolation model-written code ran under (recorded in the summary), None when none ran."""
    out_dir = config.run_dir / "rl" / cluster
    cluster_fingerprint = rl_fingerprint(config, cluster)
    plan = prepare_output_dir(out_dir, cluster, cluster_fingerprint, restart)
    if plan.action == "skip":
        log.info("rl: %s already trained with this config; kept", cluster)
        return RLSummary.read(out_dir)
    job = ClusterJob(cluster, out_dir, cluster_fingerprint, plan.checkpoint)
    assert config.rl is not None
    train_items, train_envs = bind_environments(config.rl, domains, train_items)
    eval_items, eval_envs = bind_environments(config.rl, domains, held_out.items if held_out else [])
    failures = restored_failures(job.checkpoint)
    rows = prompt_rows(train_items, train_envs)
    loop = None
    if config.rl.rollouts.uses_midtrain_loop(config.rl.reflexion, config.rl.curriculum):
        check_forkable(config.rl, train_envs)
        train_items, rows = keyed_prompts(train_items, rows)
        loop = RolloutLoop(train_items, train_envs, restored_rollout_state(job.checkpoint), job.start_step)
    trainer = build_trainer(config, cluster, out_dir, rows, train_envs, failures, callbacks, loop)
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
            config=wandb_config | {"config_fingerprint": cluster_fingerprint},
            resume=job.checkpoint is not None,
        ) as wandb_run,
        PeakMemory() as peak,
    ):
        started = time.perf_counter()
        try:
            output = trainer.train(resume_from_checkpoint=str(job.checkpoint) if job.checkpoint else None)
        finally:
            if loop is not None and loop.function is not None and loop.function.vllm is not None:
                loop.function.vllm.close()  # its memory goes back before the evaluation after training
        wall_time = time.perf_counter() - started
        after = evaluate()
        summary = _summary(trainer, output, wall_time, peak, failures, train_items, job, config)
        if loop is not None and loop.function is not None:
            summary.rollouts = loop.function.summary()
            write_json(out_dir / ROLLOUTS_FILE, summary.rollouts)
        summary.heldout = _heldout_report(out_dir, held_out, before, after)
        summary.sandbox = sandbox
        if wandb_run is not None:
            wandb_run.summary.update(_flat_numbers(summary.model_dump(mode="json")))
    _save_outputs(trainer, out_dir, summary)
    return summary


def _heldout_report(
    out_dir: Path, held_out: sampling.HeldOut | None, before: dict | None, after: dict | None
) -> dict[str, Any] | None:
    """Write `eval_before_after.json`; return the summary's `heldout` entry (None without held-out tasks)."""
    if held_out is None or before is None or after is None:
        return None
    comparison = episodes.before_after(before, after, held_out)
    write_json(out_dir / episodes.EVAL_FILE, comparison)
    report = {
        "n_tasks": len(held_out.items),
        "outcome_before": before["outcome"],
        "outcome_after": after["outcome"],
        **({"sampling": after["sampling"]} if "sampling" in after else {}),
    }
    return {**report, **comparison["delta"]}


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
        model = trainer.model
        was_training = model.training
        model.eval()
        try:
            # A fresh engine each time: its prefix cache holds KV of the weights it was built with.
            policy = Engine.for_tokenizer(model, trainer.processing_class)
            return episodes.evaluate_policy(
                policy,
                trainer.processing_class,
                items,
                env_classes,
                schema,
                rl.max_tool_calling_iterations,
                rl.max_completion_length,
                rl.tool_call_scale,
                description=f"rl held-out ({len(items)} tasks)",
                sampling=rl.eval_sampling,
            )
        finally:
            model.train(was_training)

    return evaluate


def _summary(
    trainer: Any,
    output: Any,
    wall_time: float,
    peak: PeakMemory,
    failures: FailureCounts,
    items: list[sampling.DomainTask],
    job: ClusterJob,
    config: RunConfig,
) -> RLSummary:
    rl = config.rl
    assert rl is not None
    history = trainer.state.log_history
    own_loop = rl.rollouts.uses_midtrain_loop(rl.reflexion, rl.curriculum)
    domains: dict[str, int] = {}
    for item in items:
        domains[item.domain] = domains.get(item.domain, 0) + 1
    steps = trainer.state.global_step
    return RLSummary(
        cluster=job.cluster,
        start="base" if rl.from_base else f"sft/{job.cluster}",
        base_model=config.model.name_or_path,
        config_fingerprint=job.fingerprint,
        steps=steps,
        resumed_from_step=job.start_step,
        wall_time_s=round(wall_time, 3),
        seconds_per_step=round(wall_time / max(1, steps - job.start_step), 3),
        mean_train_loss_this_session=output.training_loss,
        # Under midtrain's rollout loop TRL's `reward` is the advantage (mean 0); the rollouts' own rewards are
        # logged under `rollout/`.
        final_reward=_last(history, "rollout/reward") if own_loop else _last(history, "reward"),
        final_rewards={
            k.split("/")[-2]: v
            for k, v in _last_row(history, "rollout/rewards/" if own_loop else "rewards/").items()
        },
        tool_call_frequency=_last(history, "tools/call_frequency"),
        tool_failure_frequency=_last(history, "tools/failure_frequency"),
        failures=failures.as_dict(),
        reward_weights=dict(zip(trainer.reward_func_names, trainer.reward_weights.tolist(), strict=True)),
        tasks={"n": len(items), "by_domain": domains, "seed": rl.task_seed},
        peak_memory_bytes=peak.peak_bytes,
        peak_memory_kind=peak.kind,
        device=str(trainer.args.device),
        quantized=bool(getattr(trainer.model, "is_loaded_in_4bit", False)),
        versions=library_versions(),
    )


def _last(history: list[dict[str, Any]], key: str) -> float | None:
    return next((row[key] for row in reversed(history) if key in row), None)


def _last_row(history: list[dict[str, Any]], prefix: str) -> dict[str, float]:
    """The `rewards/<name>/mean` values of the last log row that has them."""
    for row in reversed(history):
        found = {k: v for k, v in row.items() if k.startswith(prefix) and k.endswith("/mean")}
        if found:
            return found
    return {}


def _save_outputs(trainer: Any, out_dir: Path, summary: RLSummary) -> None:
    """Adapter + tokenizer, refused if vLLM could not serve it; reward curves; summary."""
    trainer.save_model(str(out_dir))
    trainer.processing_class.save_pretrained(str(out_dir))
    problems = check_vllm_compatible(out_dir)
    if problems:
        raise MidtrainError(f"{out_dir}: adapter is not vLLM-compatible: {'; '.join(problems)}")
    write_rewards_plot(out_dir / "metrics.jsonl", out_dir / REWARDS_PLOT)
    summary.write(out_dir)
    # A finished run has no use for its checkpoints (optimizer state included) or the stored starting numbers
    # (they are in eval_before_after.json); running the stage again keeps it while its fingerprint matches.
    for checkpoint in out_dir.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)
    (out_dir / BEFORE_FILE).unlink(missing_ok=True)


def write_rewards_plot(metrics_path: Path, plot_path: Path) -> None:
    """One line per reward component (`rewards/<name>/mean`) and the weighted total, against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    # TRL's own loop logs `rewards/<name>/mean`; midtrain's loop `rollout/rewards/<name>/mean` and `rollout/reward`
    # (TRL's `reward` is then the advantage).
    own = any("rollout/reward" in row for row in rows)
    prefix, total = ("rollout/rewards/", "rollout/reward") if own else ("rewards/", "reward")
    keys = sorted({k for row in rows for k in row if k.startswith(prefix) and k.endswith("/mean")})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in [total, *keys]:
        name = "total (weighted)" if key == total else key.split("/")[-2]
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
