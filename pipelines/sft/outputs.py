"""What an SFT adapter folder holds and promises: vLLM-servable adapter, fingerprint, training summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines.artifacts import SFTSummary
from pipelines.hashing import fingerprint
from pipelines.run_config import RunConfig

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
    return fingerprint(
        {
            "stage": "sft",
            "adapter": adapter,
            "model": config.model.model_dump(mode="json"),
            "sft": config.sft.model_dump(mode="json", exclude={"clusters", "generalist"}),
            "data_manifest_sha256": manifest_sha256,
        }
    )


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


def finished_fingerprint(out_dir: Path) -> str | None:
    """The fingerprint a finished, servable adapter in `out_dir` was trained with (None: not finished)."""
    path = SFTSummary.path_in(out_dir)
    if not path.is_file() or check_vllm_compatible(out_dir):
        return None
    return SFTSummary.read(out_dir).config_fingerprint
