"""The one mapping from a typed `TrainSection` to the `TrainingArguments` keywords every stage shares.

SFT (`SFTConfig`) and RL (`GRPOConfig`) both subclass `TrainingArguments`; each stage builds its config from
`training_kwargs(...)` plus its own extras, so a new `train:` key is honoured by every trainer at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.run_config import TrackingSection, TrainSection


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


__all__ = ["training_kwargs"]
