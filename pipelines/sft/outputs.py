"""What an SFT adapter folder holds and promises: vLLM-servable adapter, fingerprint, training summary."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pipelines.run_config import RunConfig

SUMMARY_FILE = "training_summary.json"
RUN_STATE_FILE = "sft_run.json"
VLLM_MAX_LORA_RANK = 64
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def check_vllm_compatible(adapter_dir: str | Path) -> list[str]:
    """Problems that would make vLLM refuse this PEFT adapter folder (empty list: servable).

    vLLM serves plain LoRA only: ranks up to `max_lora_rank` (64 is the largest default-friendly value), no
    trained biases, no fully trained extra modules (`modules_to_save`) and no DoRA magnitude vectors.
    """
    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        return [f"{config_path}: missing"]
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        return [f"{config_path}: invalid JSON ({exc.msg} at line {exc.lineno})"]
    problems = []
    if config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type is {config.get('peft_type')!r}; vLLM serves LORA adapters only")
    ranks = [config.get("r", 0), *(config.get("rank_pattern") or {}).values()]
    if max(ranks) > VLLM_MAX_LORA_RANK:
        problems.append(f"rank {max(ranks)} > {VLLM_MAX_LORA_RANK} (vLLM max_lora_rank)")
    if config.get("bias", "none") != "none":
        problems.append(f"bias is {config.get('bias')!r}; vLLM needs bias 'none'")
    if config.get("modules_to_save"):
        problems.append(
            f"modules_to_save {config['modules_to_save']} is set; vLLM cannot load fully trained modules"
        )
    if config.get("use_dora"):
        problems.append("use_dora is true; vLLM does not serve DoRA adapters")
    if not any((adapter_dir / name).is_file() for name in ADAPTER_WEIGHTS):
        problems.append(f"{adapter_dir}: no adapter weights ({' or '.join(ADAPTER_WEIGHTS)})")
    return problems


def adapter_fingerprint(config: RunConfig, adapter: str, manifest_sha256: str) -> str:
    """What determines an adapter's weights: base model, SFT settings, seed and the exact mix.

    The list of clusters is left out: adding a cluster to the config must not invalidate the others.
    """
    assert config.sft is not None
    payload = {
        "stage": "sft",
        "adapter": adapter,
        "model": config.model.model_dump(mode="json"),
        "sft": config.sft.model_dump(mode="json", exclude={"clusters", "generalist"}),
        "data_manifest_sha256": manifest_sha256,
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def is_complete(out_dir: Path, fingerprint: str) -> bool:
    """The adapter in `out_dir` finished training with exactly this config and mix."""
    summary = read_json(out_dir / SUMMARY_FILE)
    return (
        bool(summary)
        and summary.get("config_fingerprint") == fingerprint
        and not check_vllm_compatible(out_dir)
    )


def library_versions() -> dict[str, str]:
    import peft
    import torch
    import transformers
    import trl

    return {m.__name__: m.__version__ for m in (torch, transformers, trl, peft)}
