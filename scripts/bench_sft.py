"""Benchmark the SFT stage's trainer against a plain TRL SFTTrainer with padded batches.

Both arms train the same base model (same quantization and LoRA), on the same rows, with the same batch size
and number of optimizer steps; they differ in what the stage adds: best-fit-decreasing packing into
padding-free batches, and (NF4 with float32 compute, i.e. on CPU) LoRA weights kept in float32 where TRL
casts them to bf16. `--quantization none` isolates the packing gain. Each arm runs in its own subprocess so
peak memory is its own. Throughput counts real tokens only (padding excluded) between the end of the
warm-up steps and the last step. Note a packed step carries up to batch × max_length real tokens, a padded
one fewer, so at equal steps the stage's peak activation memory is that of a full batch.

    python scripts/bench_sft.py                                  # CPU: embedded SmolLM2-135M, synthetic rows
    python scripts/bench_sft.py --data runs/demo/data            # rows of a built mix instead
    python scripts/bench_sft.py --model-config llama3.1-8b --random-init --lora-r 16 \\
        --max-length 2048 --batch-size 4 --steps 10              # GPU: random-init Llama-3.1-8B shape, QLoRA

Synthetic rows: Python stdlib source text cut to log-normal lengths (median max_length/4, clipped to
[32, max_length]), half of them with the first 60% of tokens masked out like a prompt; a long-tailed length
mix like chat SFT data, which is what makes padding expensive.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

ARMS = ("midtrain", "trl-padded")
MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "llama3.1-8b": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "rope_parameters": {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "tie_word_embeddings": False,
    },
    # A CPU-sized smoke test of the random-init path.
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 49152,
        "tie_word_embeddings": True,
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct", help="Base model reference.")
    parser.add_argument(
        "--model-config", choices=sorted(MODEL_CONFIGS), help="Architecture for --random-init."
    )
    parser.add_argument("--random-init", action="store_true", help="Random weights of --model-config shape.")
    parser.add_argument("--data", type=Path, help="A mix folder (train-*.parquet); default: synthetic rows.")
    parser.add_argument("--rows", type=int, default=64, help="Synthetic rows.")
    parser.add_argument("--steps", type=int, default=4, help="Optimizer steps per arm.")
    parser.add_argument("--warmup-steps", type=int, default=1, help="Steps excluded from the timing.")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--quantization", choices=("nf4", "none"), default="nf4")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", type=Path, help="Write both arms' results and the ratios here.")
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.random_init and not args.model_config:
        parser.error("--random-init needs --model-config")
    if args.steps <= args.warmup_steps:
        parser.error("--steps must be larger than --warmup-steps")
    return args


# --- preparation (parent process) ---------------------------------------------------------------------------


def random_init_model(name: str, tokenizer_ref: str, out: Path) -> Path:
    """Save a randomly initialised model of a named shape (weights are irrelevant to throughput)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from pipelines.chat import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_ref)
    config = LlamaConfig(
        **MODEL_CONFIGS[name],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    torch.manual_seed(0)
    # Initialising 8B parameters is minutes on CPU and seconds on the GPU.
    with torch.device("cuda" if cuda else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    del model
    return out


def stdlib_token_stream(tokenizer: Any, n_tokens: int) -> list[int]:
    """Token ids of Python stdlib sources (sorted files, so every run reads the same text)."""
    ids: list[int] = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        ids += tokenizer(path.read_text(encoding="utf-8", errors="replace"), add_special_tokens=False)[
            "input_ids"
        ]
        if len(ids) >= n_tokens:
            break
    return ids


def synthetic_rows(tokenizer: Any, n_rows: int, max_length: int, seed: int) -> dict[str, list]:
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(max_length / 4), 0.8, n_rows), 32, max_length).astype(int)
    stream = stdlib_token_stream(tokenizer, int(lengths.sum()))
    rows: dict[str, list] = {"input_ids": [], "assistant_masks": []}
    pos = 0
    for i, length in enumerate(lengths):
        ids = stream[pos : pos + length]
        pos += length
        prompt = int(0.6 * length) if i % 2 else 0  # every other row masks a prompt, like a chat trace
        rows["input_ids"].append(ids)
        rows["assistant_masks"].append([0] * prompt + [1] * (len(ids) - prompt))
    return rows


def mix_rows(data_dir: Path, max_length: int) -> dict[str, list]:
    import pyarrow.parquet as pq

    files = sorted(data_dir.glob("train-*.parquet"))
    if not files:
        raise SystemExit(f"{data_dir}: no train-*.parquet shards")
    rows: dict[str, list] = {"input_ids": [], "assistant_masks": []}
    for path in files:
        table = pq.read_table(path, columns=["input_ids", "assistant_masks"]).to_pydict()
        for ids, mask in zip(table["input_ids"], table["assistant_masks"], strict=True):
            if len(ids) <= max_length and any(mask):
                rows["input_ids"].append(ids)
                rows["assistant_masks"].append(mask)
    return rows


def prepare(args: argparse.Namespace, workdir: Path) -> Path:
    """Model folder + `rows.parquet` in `workdir`; returns the model path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.chat import load_tokenizer
    from pipelines.models import fetch_model

    model_path = fetch_model(args.model)
    if args.random_init:
        model_path = random_init_model(args.model_config, str(model_path), workdir / "model")
    tokenizer = load_tokenizer(str(model_path))
    if args.data:
        rows = mix_rows(args.data, args.max_length)
    else:
        rows = synthetic_rows(tokenizer, args.rows, args.max_length, args.seed)
    pq.write_table(pa.table(rows), workdir / "rows.parquet")
    return model_path


# --- one arm (child process) -----------------------------------------------------------------------------------


def throughput_timer(warmup_steps: int) -> Any:
    from transformers import TrainerCallback

    class ThroughputTimer(TrainerCallback):
        """Wall time and real tokens between the end of step `warmup_steps` and the last step."""

        def __init__(self) -> None:
            self.marks: dict[str, tuple[float, int]] = {}

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize()
            mark = (time.perf_counter(), int(state.num_input_tokens_seen))
            if state.global_step == warmup_steps:
                self.marks["start"] = mark
            if state.global_step == state.max_steps:
                self.marks["end"] = mark

    return ThroughputTimer()


def bench_config(args: argparse.Namespace, model_path: Path, workdir: Path) -> Any:
    from pipelines.run_config import RunConfig

    recipe = {"name": "bench", "total_tokens": 1, "categories": {"text": {"share": 1.0, "sources": []}}}
    recipe["categories"]["text"]["sources"] = [{"name": "bench", "type": "pydoc_text"}]
    train = {
        "max_steps": args.steps,
        "per_device_train_batch_size": args.batch_size,
        "max_length": args.max_length,
        "gradient_checkpointing": args.gradient_checkpointing,
        "save_steps": args.steps + 1,
        "seed": args.seed,
    }
    sft = {
        "clusters": ["bench"],
        "quantization": {"mode": args.quantization},
        "lora": {"r": args.lora_r, "alpha": 2 * args.lora_r},
        "train": train,
    }
    return RunConfig.model_validate(
        {
            "name": "bench",
            "output_dir": str(workdir / "runs"),
            "model": {"name_or_path": str(model_path)},
            "data": {"recipe": recipe},
            "sft": sft,
            "tracking": {"report_to": ["none"]},
        }
    )


def plain_trl_trainer(config: Any, out_dir: Path, train: Any, tokenizer: Any, callback: Any) -> Any:
    """What a user gets from TRL out of the box: padded batches, no packing; same model, LoRA and schedule."""
    from trl import SFTConfig, SFTTrainer

    from pipelines.sft.model import cuda_available, load_base_model, lora_config, precision_flags

    sft = config.sft
    bf16, fp16 = precision_flags(sft.train)
    args = SFTConfig(
        output_dir=str(out_dir),
        max_steps=sft.train.max_steps,
        per_device_train_batch_size=sft.train.per_device_train_batch_size,
        learning_rate=sft.train.learning_rate,
        lr_scheduler_type=sft.train.lr_scheduler_type,
        warmup_steps=sft.train.warmup_ratio,
        max_length=sft.train.max_length,
        packing=False,
        padding_free=False,
        gradient_checkpointing=sft.train.gradient_checkpointing,
        logging_steps=1,
        save_strategy="no",
        seed=sft.train.seed,
        use_cpu=not cuda_available(),
        bf16=bf16,
        fp16=fp16,
        report_to="none",
        include_num_input_tokens_seen="non_padding",
    )
    model = load_base_model(config.model, sft.quantization)
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=train,
        processing_class=tokenizer,
        peft_config=lora_config(sft.lora),
        callbacks=[callback],
    )


def run_arm(args: argparse.Namespace) -> dict[str, Any]:
    from datasets import Dataset

    from pipelines.chat import load_tokenizer
    from pipelines.resources import PeakMemory
    from pipelines.sft.stage import build_trainer

    workdir = args.workdir
    model_path = Path((workdir / "model_path.txt").read_text().strip())
    config = bench_config(args, model_path, workdir)
    train = Dataset.from_parquet(str(workdir / "rows.parquet"), cache_dir=str(workdir / "cache"))
    tokenizer = load_tokenizer(str(model_path))
    timer = throughput_timer(args.warmup_steps)
    out_dir = workdir / args.arm
    if args.arm == "midtrain":
        trainer = build_trainer(config, "bench", out_dir, train, None, tokenizer, [timer])
    else:
        trainer = plain_trl_trainer(config, out_dir, train, tokenizer, timer)
    with PeakMemory() as peak:
        trainer.train()
    (start, tokens_start), (end, tokens_end) = timer.marks["start"], timer.marks["end"]
    return {
        "arm": args.arm,
        "tokens_per_s": (tokens_end - tokens_start) / (end - start),
        "timed_tokens": tokens_end - tokens_start,
        "timed_s": end - start,
        "tokens_seen": tokens_end,
        "peak_memory_bytes": peak.peak_bytes,
        "peak_memory_kind": peak.kind,
        "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "final_loss": next(r["loss"] for r in reversed(trainer.state.log_history) if "loss" in r),
    }


# --- driver --------------------------------------------------------------------------------------------------


def child_command(args: argparse.Namespace, arm: str, workdir: Path) -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--arm", arm, "--workdir", str(workdir)]
    for flag in ("steps", "warmup_steps", "batch_size", "max_length", "quantization", "lora_r", "seed"):
        command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if not args.gradient_checkpointing:
        command.append("--no-gradient-checkpointing")
    return command


def report(results: dict[str, dict[str, Any]], rows: int) -> dict[str, Any]:
    ours, plain = results["midtrain"], results["trl-padded"]
    ratios = {
        "tokens_per_s": ours["tokens_per_s"] / plain["tokens_per_s"],
        "peak_memory": ours["peak_memory_bytes"] / plain["peak_memory_bytes"],
    }
    print(f"rows: {rows}   memory: {ours['peak_memory_kind']}")
    print(f"{'arm':<12}{'tokens/s':>12}{'timed tokens':>14}{'timed s':>10}{'peak MiB':>10}{'final loss':>12}")
    for name in ARMS:
        r = results[name]
        print(
            f"{name:<12}{r['tokens_per_s']:>12.1f}{r['timed_tokens']:>14}{r['timed_s']:>10.1f}"
            f"{r['peak_memory_bytes'] / 2**20:>10.0f}{r['final_loss']:>12.4f}"
        )
    print(
        f"ratio midtrain / trl-padded: tokens/s {ratios['tokens_per_s']:.2f}x, peak memory {ratios['peak_memory']:.2f}x"
    )
    return ratios


def main(argv: list[str] | None = None) -> None:
    import pyarrow.parquet as pq

    args = parse_args(argv)
    if args.arm:
        print("BENCH_RESULT " + json.dumps(run_arm(args)), flush=True)
        return
    with tempfile.TemporaryDirectory(prefix="bench_sft_") as tmp:
        workdir = Path(tmp)
        model_path = prepare(args, workdir)
        (workdir / "model_path.txt").write_text(str(model_path))
        rows = pq.read_metadata(workdir / "rows.parquet").num_rows
        results = {}
        for arm in ARMS:
            done = subprocess.run(
                child_command(args, arm, workdir), capture_output=True, text=True, check=False
            )
            line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
            if done.returncode != 0 or line is None:
                sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
                raise SystemExit(f"arm {arm} failed (exit {done.returncode})")
            results[arm] = json.loads(line.removeprefix("BENCH_RESULT "))
        ratios = report(results, rows)
    if args.json_out:
        payload = {"args": {k: str(v) for k, v in vars(args).items()}, "arms": results, "ratios": ratios}
        args.json_out.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
