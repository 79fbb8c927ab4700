"""What an SFT adapter folder holds and promises: vLLM-servable adapter, fingerprint, training summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines.artifacts import SFTSummary
from pipelines.hashing import fingerprint
from pipelines.run_config import RunConfig

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
# vLLM's `--max-lora-rank` accepts only these values (vllm/config/lora.py `MaxLoRARanks`, vLLM 0.32).
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# The tensor-name endings vLLM parses (vllm/lora/utils.py `parse_fine_tuned_lora_name`); any other tensor in an
# adapter file makes it raise "... is unsupported LoRA weight" when the adapter is requested.
VLLM_LORA_TENSOR_SUFFIXES = (".lora_A.weight", ".lora_B.weight", ".lora_embedding_A", ".lora_embedding_B")
# Tensors vLLM skips on purpose (vllm/lora/utils.py `is_base_embedding_weights`).
VLLM_SKIPPED_TENSOR_SUFFIXES = (".embed_tokens.base_layer.weight", ".lm_head.base_layer.weight")
# PEFT settings that change what an adapter computes and that vLLM refuses (vllm/lora/peft_helper.py
# `_validate_features`): key → (is it set?, why vLLM refuses).
_REFUSED_FEATURES = {
    "use_dora": "vLLM does not serve DoRA adapters",
    "lora_bias": "vLLM does not serve LoRA biases (lora_bias)",
    "layer_replication": "vLLM does not serve layer_replication",
    "alora_invocation_tokens": "vLLM does not serve Activated LoRA (aLoRA)",
    "use_bdlora": "vLLM does not serve block-diagonal LoRA",
    "use_qalora": "vLLM does not serve QALoRA",
}
# `init_lora_weights` values that leave a plain LoRA on disk; PiSSA, OLoRA, CorDA and LoftQ modify the base.
_PLAIN_INITS = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")


def read_adapter_tensors(adapter_dir: str | Path) -> dict[str, list[int]]:
    """Tensor name → shape, from the safetensors header (nothing is loaded) or a `.bin` state dict."""
    adapter_dir = Path(adapter_dir)
    safetensors_path = adapter_dir / ADAPTER_WEIGHTS[0]
    if safetensors_path.is_file():
        from safetensors import safe_open

        with safe_open(str(safetensors_path), framework="numpy") as f:
            return {name: list(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118
    import torch

    state = torch.load(adapter_dir / ADAPTER_WEIGHTS[1], map_location="cpu", weights_only=True)
    return {name: list(tensor.shape) for name, tensor in state.items()}


def adapter_rank(tensors: dict[str, list[int]]) -> int:
    """The largest rank in the file (lora_A is rank × in; lora_embedding_A is rank × vocab)."""
    ranks = [
        shape[0] for name, shape in tensors.items() if name.endswith((".lora_A.weight", ".lora_embedding_A"))
    ]
    return max(ranks, default=0)


def check_vllm_compatible(adapter_dir: str | Path, base_vocab_size: int | None = None) -> list[str]:
    """Problems that would make vLLM refuse this PEFT adapter folder (empty list: servable).

    Reads what vLLM reads: adapter_config.json (vllm/lora/peft_helper.py) and the weight file's tensor names and
    shapes (vllm/lora/lora_model.py). `base_vocab_size` (the base config's `vocab_size`) also checks embedding
    LoRA widths and the adapter tokenizer's size. `rank_pattern`/`alpha_pattern` are not problems here: vLLM
    0.32 applies them, and `midtrain router export` rewrites them away for older vLLM (router.py).
    """
    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        return [f"{config_path}: missing"]
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        return [f"{config_path}: invalid JSON ({exc.msg} at line {exc.lineno})"]
    problems = _config_problems(config)
    if not any((adapter_dir / name).is_file() for name in ADAPTER_WEIGHTS):
        return [*problems, f"{adapter_dir}: no adapter weights ({' or '.join(ADAPTER_WEIGHTS)})"]
    try:
        tensors = read_adapter_tensors(adapter_dir)
    except Exception as exc:  # a truncated or foreign file: safetensors and torch raise many types
        return [*problems, f"{adapter_dir}: cannot read the adapter weights ({type(exc).__name__}: {exc})"]
    problems += _tensor_problems(tensors, base_vocab_size)
    if base_vocab_size is not None:
        problems += _tokenizer_problems(adapter_dir, base_vocab_size)
    return problems


def _config_problems(config: dict[str, Any]) -> list[str]:
    problems = []
    if config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type is {config.get('peft_type')!r}; vLLM serves LORA adapters only")
    ranks = [config.get("r", 0), *(config.get("rank_pattern") or {}).values()]
    if max(ranks) > VLLM_MAX_LORA_RANKS[-1]:
        problems.append(f"rank {max(ranks)} > {VLLM_MAX_LORA_RANKS[-1]} (the largest vLLM --max-lora-rank)")
    if config.get("bias", "none") != "none":
        problems.append(f"bias is {config.get('bias')!r}; vLLM needs bias 'none'")
    if config.get("modules_to_save"):
        problems.append(
            f"modules_to_save {config['modules_to_save']} is set; vLLM cannot load fully trained modules"
        )
    problems += [f"{key} is set: {why}" for key, why in _REFUSED_FEATURES.items() if config.get(key)]
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in _PLAIN_INITS:
        problems.append(f"init_lora_weights is {init!r}: it changes the base weights, which vLLM does not")
    return problems


def _tensor_problems(tensors: dict[str, list[int]], base_vocab_size: int | None) -> list[str]:
    problems = []
    foreign = [
        name
        for name in tensors
        if not name.endswith(VLLM_LORA_TENSOR_SUFFIXES + VLLM_SKIPPED_TENSOR_SUFFIXES)
    ]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" (+{len(foreign) - 3} more)" if len(foreign) > 3 else "")
        problems.append(
            f"tensors vLLM cannot parse (it accepts only lora_A/lora_B weights and lora_embedding_A/B): {shown}"
        )
    if base_vocab_size is not None:
        for name, shape in tensors.items():
            if name.endswith(".lora_embedding_A") and shape[-1] != base_vocab_size:
                problems.append(
                    f"{name}: embedding LoRA width {shape[-1]} != the base vocabulary {base_vocab_size}"
                )
    return problems


def _tokenizer_problems(adapter_dir: Path, base_vocab_size: int) -> list[str]:
    """An adapter tokenizer with more tokens than the base embeds needs added embeddings, which vLLM lacks."""
    if not (adapter_dir / "tokenizer_config.json").is_file():
        return []
    from transformers import AutoTokenizer

    size = len(AutoTokenizer.from_pretrained(adapter_dir))
    if size > base_vocab_size:
        return [
            f"the adapter's tokenizer has {size} tokens, the base embeds {base_vocab_size} (added tokens)"
        ]
    return []


def adapter_fingerprint(config: RunConfig, adapter: str, manifest_sha256: str) -> str:
    """What determines an adapter's weights: base model, SFT settings, seed and the exact mix.

    The list of clusters is left out (and whether checkpoints are kept): adding a cluster to the config must not invalidate the others. The caller
    passes the adapter's own config (`SFTSection.for_adapter`): its `train` has the adapter's `cluster_train` keys
    applied and the table itself is empty, so it is not dumped and the other adapters' keys do not count.
    """
    assert config.sft is not None
    return fingerprint(
        {
            "stage": "sft",
            "adapter": adapter,
            "model": config.model.model_dump(mode="json"),
            "sft": config.sft.model_dump(mode="json", exclude={"clusters", "generalist", "keep_checkpoints"}),
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
