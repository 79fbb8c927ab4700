"""The one mapping from a typed `TrainSection` to the `TrainingArguments` keywords every stage shares.

SFT (`SFTConfig`) and RL (`GRPOConfig`) both subclass `TrainingArguments`; each stage builds its config from
`training_kwargs(...)` plus its own keywords, so a new `train:` key is honoured by every trainer at once.

`train.extra` opens the rest: any other field of the stage's trainer config passes through as given. It is
checked when the config loads (a field the config class does not have is bad input, with the closest names),
and a field midtrain sets itself is refused there with the key that sets it (`learning_rate` →
`train.learning_rate`), so no value is silently overwritten either way. `trainer_config` checks again when the
config is built, against the keywords the stage actually passes.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any, Literal

from pipelines.errors import BadInput
from pipelines.run_config import TrackingSection, TrainSection

# What midtrain sets, and the key a user sets it with instead. `training_kwargs` fills the shared ones (a test
# keeps the two in step); the stages' own keywords are listed per stage.
SHARED_KEYS = {
    "output_dir": "output_dir and name (the run folder)",
    "run_name": "name",
    "max_steps": "train.max_steps",
    "per_device_train_batch_size": "train.per_device_train_batch_size",
    "per_device_eval_batch_size": "train.per_device_eval_batch_size",
    "gradient_accumulation_steps": "train.gradient_accumulation_steps",
    "learning_rate": "train.learning_rate",
    "lr_scheduler_type": "train.lr_scheduler_type",
    "warmup_steps": "train.warmup_ratio",
    "weight_decay": "train.weight_decay",
    "max_grad_norm": "train.max_grad_norm",
    "optim": "train.optim",
    "gradient_checkpointing": "train.gradient_checkpointing",
    "logging_steps": "train.logging_steps",
    "save_strategy": "train.save_steps (checkpoints are what resume reads)",
    "save_steps": "train.save_steps",
    "save_total_limit": "train.save_total_limit",
    "seed": "train.seed",
    "data_seed": "train.seed",
    "use_cpu": "the machine (CUDA when available)",
    "bf16": "train.mixed_precision",
    "fp16": "train.mixed_precision",
    "report_to": "tracking.report_to",
}
STAGE_KEYS = {
    "sft": {
        "max_length": "train.max_length",
        "packing": "train.packing",
        "packing_strategy": "train.packing (BFD)",
        "padding_free": "train.packing",
        "gradient_checkpointing_kwargs": "train.gradient_checkpointing (reentrant under FSDP)",
        "eval_strategy": "train.eval_steps",
        "eval_steps": "train.eval_steps",
        "include_num_input_tokens_seen": "train.packing (token counting follows it)",
        "dataset_num_proc": "data.num_proc",
    },
    "rl": {
        "num_generations": "rl.num_generations",
        "max_completion_length": "rl.max_completion_length",
        "max_tool_calling_iterations": "rl.max_tool_calling_iterations",
        "temperature": "rl.temperature",
        "beta": "rl.beta",
        "reward_weights": "rl.reward_weights",
        "remove_unused_columns": "midtrain (the environments read the task columns)",
        "chat_template_kwargs": "model.tool_format (the codec's template arguments)",
        "use_vllm": "rl.generation.backend",
        "vllm_mode": "rl.generation.vllm_mode",
    },
}


def training_kwargs(
    train: TrainSection, out_dir: Path, run_name: str, tracking: TrackingSection
) -> dict[str, Any]:
    """Schedule, optimizer, checkpoints, seeds, device/precision and tracking as `TrainingArguments` kwargs."""
    from pipelines.sft.model import cuda_available, precision_flags
    from pipelines.tracking import report_to

    bf16, fp16 = precision_flags(train)
    return {
        "output_dir": str(out_dir),
        "run_name": run_name,
        "max_steps": train.max_steps,
        "per_device_train_batch_size": train.per_device_train_batch_size,
        "per_device_eval_batch_size": train.per_device_eval_batch_size,
        "gradient_accumulation_steps": train.gradient_accumulation_steps,
        "learning_rate": train.learning_rate,
        "lr_scheduler_type": train.lr_scheduler_type,
        "warmup_steps": train.warmup_ratio,  # a float in [0, 1) is a ratio of max_steps
        "weight_decay": train.weight_decay,
        "max_grad_norm": train.max_grad_norm,
        "optim": train.optim,
        "gradient_checkpointing": train.gradient_checkpointing,
        "logging_steps": train.logging_steps,
        # Checkpoints hold the optimizer, scheduler and RNG states, so a killed run resumes where it stopped.
        "save_strategy": "steps",
        "save_steps": train.save_steps,
        "save_total_limit": train.save_total_limit,
        "seed": train.seed,
        "data_seed": train.seed,
        "use_cpu": not cuda_available(),
        "bf16": bf16,
        "fp16": fp16,
        "report_to": report_to(tracking),
    }


def _config_class(stage: Literal["sft", "rl"]) -> type:
    if stage == "sft":
        from trl import SFTConfig

        return SFTConfig
    from trl import GRPOConfig

    return GRPOConfig


def owner_of(key: str, stage: Literal["sft", "rl"]) -> str | None:
    if key.startswith("vllm_") and stage == "rl":
        return "rl.generation"
    return SHARED_KEYS.get(key) or STAGE_KEYS[stage].get(key)


def check_extra(extra: dict[str, Any], stage: Literal["sft", "rl"]) -> None:
    """BadInput naming every `train.extra` key that is not a field of the stage's trainer config, or that
    midtrain sets itself; nothing for an empty `extra` (and then trl is not imported)."""
    if not extra:
        return
    cls = _config_class(stage)
    fields = sorted(f.name for f in dataclasses.fields(cls) if f.init)
    problems = []
    for key in extra:
        owner = owner_of(key, stage)
        if owner is not None:
            problems.append(f"{key}: midtrain sets it from {owner}; set that instead")
        elif key not in fields:
            close = difflib.get_close_matches(key, fields, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            problems.append(f"{key}: not a field of {cls.__name__}{hint}")
    if problems:
        raise BadInput(f"{stage}.train.extra: " + "; ".join(problems))


def trainer_config(cls: type, ours: dict[str, Any], extra: dict[str, Any], stage: str) -> Any:
    """`cls(**ours, **extra)`, refusing an extra key that one of ours would have to lose to."""
    clash = sorted(set(ours) & set(extra))
    if clash:
        raise BadInput(
            f"{stage}.train.extra: {', '.join(clash)} set by midtrain itself; remove them from extra"
        )
    if not extra:
        return cls(**ours)
    try:
        return cls(**ours, **extra)
    except (TypeError, ValueError) as exc:  # the config class's own checks of a passed-through value
        raise BadInput(f"{stage}.train.extra: {cls.__name__} refuses it: {exc}") from None


__all__ = ["check_extra", "trainer_config", "training_kwargs"]
