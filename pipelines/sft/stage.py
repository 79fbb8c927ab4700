"""Train one LoRA adapter per cluster with TRL's SFTTrainer (see the package docstring for the layout)."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.artifacts import SFTResult, SFTSummary
from pipelines.errors import BadInput, MidtrainError
from pipelines.hashing import sha256_file
from pipelines.resources import PeakMemory, library_versions
from pipelines.run_config import RunConfig, SFTSection
from pipelines.sft import data as mixdata
from pipelines.sft.model import (
    fsdp_enabled,
    keep_adapter_float32,
    load_base_model,
    lora_config,
    project_only_labelled_positions,
)
from pipelines.sft.outputs import adapter_fingerprint, check_vllm_compatible, finished_fingerprint
from pipelines.sft.packing import check_isolation
from pipelines.tracking import LocalMetricsCallback, wandb_session
from pipelines.units import UnitPlan, plan_unit, prepare_unit

log = logging.getLogger("midtrain.sft")


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


@contextmanager
def _main_process_first() -> Iterator[None]:
    """Main process first (it writes the datasets cache), the others then read it."""
    if _world_size() <= 1:
        yield
        return
    from accelerate import PartialState

    with PartialState().main_process_first():
        yield


def _barrier() -> None:
    if _world_size() > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def adapter_names(sft: SFTSection, only: Sequence[str] | None = None) -> list[str]:
    """Adapters to train: `sft.clusters` (+ generalist), or the `--clusters` subset of them."""
    configured = [*sft.clusters, *([mixdata.GENERALIST] if sft.generalist else [])]
    if not only:
        return configured
    allowed = [*sft.clusters, mixdata.GENERALIST]
    unknown = [name for name in only if name not in allowed]
    if unknown:
        raise BadInput(
            f"--clusters: {unknown} not in sft.clusters ({', '.join(sft.clusters)}) or 'generalist'"
        )
    return list(dict.fromkeys(only))


@dataclass
class Mix:
    """The mix as the trainer sees it, screened once for all adapters."""

    data_dir: Path
    manifest_sha256: str
    train: Any
    eval: Any
    train_screen: mixdata.Screened
    eval_screen: mixdata.Screened | None


def load_screened_mix(config: RunConfig, vocab_size: int) -> Mix:
    assert config.sft is not None
    data_dir = config.run_dir / "data"
    manifest = data_dir / "manifest.json"
    if not manifest.is_file():
        raise BadInput(f"{manifest}: missing; build the mix first with `midtrain data build CONFIG`")
    cache = config.run_dir / "sft" / ".datasets_cache"
    max_length = config.sft.train.max_length
    with _main_process_first():
        train = mixdata.load_mix(data_dir, "train", cache)
        held_out = mixdata.load_mix(data_dir, "validation", cache, required=False)
    train_screen = mixdata.screen(train, "train", max_length, vocab_size)
    eval_screen = mixdata.screen(held_out, "eval", max_length, vocab_size) if held_out is not None else None
    return Mix(data_dir, sha256_file(manifest), train, held_out, train_screen, eval_screen)


def check_mix_format(manifest: Path, tokenizer: Any, config: RunConfig) -> None:
    """BadInput when the mix was rendered in another tool-call format than the one this config's model writes:
    SFT would teach a format that RL, eval and serving do not read, and every score would be zero (say, after
    `model.tool_format` changed and `midtrain sft` ran without `midtrain data build`)."""
    import json

    from pipelines.codecs import codec_for

    try:
        rendered = json.loads(manifest.read_text(encoding="utf-8")).get("tokenizer", {}).get("tool_format")
    except (OSError, ValueError, AttributeError):
        return  # a missing or unreadable manifest is load_screened_mix's to report
    model_format = codec_for(tokenizer).name
    if rendered is not None and rendered != model_format:
        raise BadInput(
            f"{manifest}: the mix was rendered in the {rendered!r} tool-call format, but this config's model writes "
            f"{model_format!r} (model.tool_format: {config.model.tool_format}); rebuild it with `midtrain data build "
            f"CONFIG` (`midtrain run` after removing {manifest.parent}), or set model.tool_format: {rendered}"
        )


def _write_rejects(config: RunConfig, mix: Mix) -> None:
    import json

    rejects = mix.train_screen.rejects + (mix.eval_screen.rejects if mix.eval_screen else [])
    path = config.run_dir / "sft" / "rejects.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects), encoding="utf-8")
    if rejects:
        log.warning("sft: %d mix rows rejected (reasons in %s)", len(rejects), path)


def run(
    config: RunConfig,
    *,
    clusters: Sequence[str] | None = None,
    callbacks: Sequence[Any] = (),
    restart: bool = False,
) -> SFTResult:
    """Train every adapter of `sft` (or the `clusters` subset); return each adapter's training summary.

    Per adapter (pipelines/units.py): finished with the same fingerprint → kept; interrupted → resumed from its
    last checkpoint; changed → started over. `restart`: start every adapter over. `callbacks`: extra
    `TrainerCallback`s for every trainer.
    """
    if config.sft is None:
        raise BadInput("the config has no `sft` section")
    names = adapter_names(config.sft, clusters)
    tokenizer = _load_tokenizer(config)
    check_mix_format(config.run_dir / "data" / "manifest.json", tokenizer, config)
    mix = load_screened_mix(config, _vocab_size(config))
    mixdata.check_clusters(mix.train_screen, names)
    if _is_main_process():
        _write_rejects(config, mix)
    adapters = {
        name: train_adapter(config, name, mix, tokenizer, restart=restart, callbacks=callbacks)
        for name in names
    }
    return SFTResult(adapters=adapters)


def _load_tokenizer(config: RunConfig) -> Any:
    from pipelines.chat import load_tokenizer
    from pipelines.models import fetch_model

    path = fetch_model(config.model.name_or_path, config.model.revision)
    return load_tokenizer(str(path), config.model.chat_template, tool_format=config.model.tool_format)


def _vocab_size(config: RunConfig) -> int:
    from transformers import AutoConfig

    from pipelines.models import fetch_model

    model_config = AutoConfig.from_pretrained(fetch_model(config.model.name_or_path, config.model.revision))
    return int(model_config.get_text_config().vocab_size)


def _last_checkpoint(out_dir: Path) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    found = get_last_checkpoint(str(out_dir))
    return Path(found) if found else None


def _prepare_output_dir(out_dir: Path, adapter: str, fingerprint: str, restart: bool) -> UnitPlan:
    """What to do with this adapter's folder (skip, resume or start over), decided by the main process."""
    plan = plan_unit(out_dir, "sft", fingerprint, finished_fingerprint, _last_checkpoint, restart)
    if plan.action == "resume":
        log.info("sft: resuming %s from %s", adapter, plan.checkpoint)
    if _is_main_process():
        prepare_unit(out_dir, "sft", adapter, fingerprint, plan)
    _barrier()
    return plan


def trainer_args(config: RunConfig, adapter: str, out_dir: Path, has_eval: bool) -> Any:
    """SFTConfig: `trainer_keywords` and whatever `sft.train.extra` passes through."""
    from trl import SFTConfig

    from pipelines.train_args import trainer_config

    assert config.sft is not None
    ours = trainer_keywords(config, adapter, out_dir, has_eval)
    return trainer_config(SFTConfig, ours, config.sft.train.extra, "sft")


def trainer_keywords(config: RunConfig, adapter: str, out_dir: Path, has_eval: bool) -> dict[str, Any]:
    """The shared `sft.train` mapping plus packing/padding-free, periodic eval and token counting."""
    from pipelines.train_args import training_kwargs

    assert config.sft is not None
    train = config.sft.train
    periodic_eval = has_eval and train.eval_steps is not None
    return dict(
        **training_kwargs(train, out_dir, f"{config.name}-sft-{adapter}", config.tracking),
        max_length=train.max_length,
        packing=train.packing,
        packing_strategy="bfd",
        padding_free=train.packing,
        # PEFT's FSDP-QLoRA recipe checkpoints with the reentrant variant; elsewhere the library default.
        gradient_checkpointing_kwargs={"use_reentrant": True} if fsdp_enabled() else None,
        eval_strategy="steps" if periodic_eval else "no",
        eval_steps=train.eval_steps if periodic_eval else None,
        # Padding-free batches hold no padding, so every token is real; padded batches count the mask.
        include_num_input_tokens_seen="all" if train.packing else "non_padding",
        dataset_num_proc=config.data.num_proc if config.data.num_proc > 1 else None,
    )


def _generation_lengths(mix: Mix, selection: mixdata.Selection) -> dict[str, Any]:
    """The cluster's own rows' turn and episode lengths (replay rows are other adapters' habits), read in
    batches so a large mix is never materialised."""
    own = mix.train.select(selection.indices[: selection.cluster_rows])
    calls = "difficulty" in own.column_names
    own = own.select_columns(["assistant_masks", *(["difficulty"] if calls else [])])
    rows = (
        (mask, batch["difficulty"][i] if calls else None)
        for batch in own.iter(batch_size=1024)
        for i, mask in enumerate(batch["assistant_masks"])
    )
    return mixdata.generation_lengths(rows)


def _datasets(mix: Mix, selection: mixdata.Selection, adapter: str) -> tuple[Any, Any]:
    """Only `input_ids` + `assistant_masks` reach TRL: it treats them as pre-tokenized and turns the mask
    into labels (-100 where the mask is 0)."""
    train = mix.train.select(selection.indices).select_columns(mixdata.TRAINER_COLUMNS)
    if mix.eval_screen is None:
        return train, None
    rows = mixdata.eval_indices(mix.eval_screen, adapter)
    held_out = mix.eval.select(rows).select_columns(mixdata.TRAINER_COLUMNS) if rows else None
    return train, held_out


def build_trainer(
    config: RunConfig,
    adapter: str,
    out_dir: Path,
    train: Any,
    held_out: Any,
    tokenizer: Any,
    callbacks: Sequence,
) -> Any:
    from trl import SFTTrainer

    assert config.sft is not None
    args = trainer_args(config, adapter, out_dir, has_eval=held_out is not None)
    model = load_base_model(config.model, config.sft.quantization)
    project_only_labelled_positions()
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=held_out,
        processing_class=tokenizer,
        peft_config=lora_config(config.sft.lora),
        callbacks=[LocalMetricsCallback(out_dir), *callbacks],
    )
    keep_adapter_float32(trainer.model, config.sft.quantization)
    check_isolation(trainer)
    return trainer


@dataclass
class AdapterJob:
    """One adapter's training: where it goes, what it trains on, what it resumes from."""

    adapter: str
    out_dir: Path
    fingerprint: str
    checkpoint: str | None
    selection: mixdata.Selection

    @property
    def start_step(self) -> int:
        return int(Path(self.checkpoint).name.rsplit("-", 1)[-1]) if self.checkpoint else 0


def train_adapter(
    config: RunConfig,
    adapter: str,
    mix: Mix,
    tokenizer: Any,
    restart: bool = False,
    callbacks: Sequence[Any] = (),
) -> SFTSummary:
    """Select rows, train, save the adapter + tokenizer, check it is servable, write training_summary.json."""
    assert config.sft is not None
    # From here on the config is this adapter's: its `sft.cluster_train` keys applied, so the fingerprint, the
    # trainer and the row selection all see one `sft.train`, and another adapter's keys do not retrain it.
    sft = config.sft.for_adapter(adapter)
    config = config.model_copy(update={"sft": sft})
    out_dir = config.run_dir / "sft" / adapter
    fingerprint = adapter_fingerprint(config, adapter, mix.manifest_sha256)
    plan = _prepare_output_dir(out_dir, adapter, fingerprint, restart)
    if plan.action == "skip":
        log.info("sft: %s already trained with this config; kept", adapter)
        return SFTSummary.read(out_dir)
    checkpoint = str(plan.checkpoint) if plan.checkpoint else None
    selection = mixdata.select(mix.train_screen, adapter, sft.replay_fraction, sft.train.seed)
    selection.generation_lengths = _generation_lengths(mix, selection)
    job = AdapterJob(adapter, out_dir, fingerprint, checkpoint, selection)
    train, held_out = _datasets(mix, selection, adapter)
    _log_job(job, held_out)
    trainer = build_trainer(config, adapter, out_dir, train, held_out, tokenizer, callbacks)
    summary = _train_tracked(config, job, trainer, mix.manifest_sha256, held_out)
    _save_outputs(trainer, tokenizer, out_dir, summary, sft.keep_checkpoints)
    return summary


def _log_job(job: AdapterJob, held_out: Any) -> None:
    if not _is_main_process():
        return
    selection = job.selection
    log.info(
        "sft: %s: %d cluster rows + %d replay rows (%d tokens), %d eval rows%s → %s",
        job.adapter,
        selection.cluster_rows,
        selection.replay_rows,
        selection.cluster_tokens + selection.replay_tokens,
        len(held_out) if held_out is not None else 0,
        f", resuming from step {job.start_step}" if job.checkpoint else "",
        job.out_dir,
    )


def _train_tracked(
    config: RunConfig, job: AdapterJob, trainer: Any, manifest_sha256: str, held_out: Any
) -> SFTSummary:
    """Train (and evaluate) inside the adapter's wandb run and a peak-memory probe; return the summary."""
    wandb_config = {
        "midtrain": config.model_dump(mode="json"),
        "adapter": job.adapter,
        "data_manifest_sha256": manifest_sha256,
        "config_fingerprint": job.fingerprint,
        "selection": job.selection.summary(),
    }
    with (
        wandb_session(
            config.tracking,
            wandb_dir=config.run_dir / "wandb",
            out_dir=job.out_dir,
            name=f"{config.name}-sft-{job.adapter}",
            group=config.name,
            config=wandb_config,
            resume=job.checkpoint is not None,
            is_main_process=trainer.accelerator.is_main_process,
        ) as wandb_run,
        PeakMemory() as peak,
    ):
        started = time.perf_counter()
        output = trainer.train(resume_from_checkpoint=job.checkpoint)
        eval_metrics = trainer.evaluate() if held_out is not None else {}
        wall_time = time.perf_counter() - started
        summary = _summary(trainer, output, eval_metrics, job, held_out, wall_time, peak)
        summary.data_manifest_sha256, summary.base_model = manifest_sha256, config.model.name_or_path
        if wandb_run is not None:
            numbers = summary.model_dump()
            wandb_run.summary.update({k: v for k, v in numbers.items() if isinstance(v, int | float)})
    return summary


def _last_logged(history: list[dict[str, Any]], key: str) -> float | None:
    return next((row[key] for row in reversed(history) if key in row), None)


def _summary(
    trainer: Any,
    output: Any,
    eval_metrics: dict[str, float],
    job: AdapterJob,
    held_out: Any,
    wall_time: float,
    peak: PeakMemory,
) -> SFTSummary:
    state = trainer.state
    return SFTSummary(
        adapter=job.adapter,
        config_fingerprint=job.fingerprint,
        base_model="",
        data_manifest_sha256="",
        steps=state.global_step,
        resumed_from_step=job.start_step,
        tokens_seen=int(state.num_input_tokens_seen),
        wall_time_s=round(wall_time, 3),
        peak_memory_bytes=peak.peak_bytes,
        peak_memory_kind=peak.kind,
        final_train_loss=_last_logged(state.log_history, "loss"),
        mean_train_loss_this_session=output.training_loss,
        final_eval_loss=eval_metrics.get("eval_loss"),
        world_size=trainer.accelerator.num_processes,
        device=str(trainer.args.device),
        quantized=bool(getattr(trainer.model, "is_loaded_in_4bit", False)),
        data={**job.selection.summary(), "eval_rows": len(held_out) if held_out is not None else 0},
        versions=library_versions(),
    )


def _save_outputs(
    trainer: Any, tokenizer: Any, out_dir: Path, summary: SFTSummary, keep_checkpoints: bool = False
) -> None:
    """Adapter + tokenizer (with the chat template it was trained with) + summary; main process writes."""
    if trainer.is_fsdp_enabled:
        # Sharded state dicts would save one shard per rank; the adapter must be one servable file.
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(out_dir))
    if not trainer.accelerator.is_main_process:
        return
    tokenizer.save_pretrained(str(out_dir))
    problems = check_vllm_compatible(out_dir)
    if problems:
        raise MidtrainError(f"{out_dir}: adapter is not vLLM-compatible: {'; '.join(problems)}")
    summary.write(out_dir)
    if keep_checkpoints:  # scored later, for the score-vs-tokens curve
        return
    # A finished adapter is kept by later runs, so its checkpoints (optimizer state: 2-3x the adapter's
    # size each) have no further use; the folder keeps only what later stages read.
    for checkpoint in out_dir.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)


__all__ = ["adapter_names", "build_trainer", "run", "train_adapter", "trainer_args"]
