"""Base model loading (NF4 QLoRA or plain), LoRA config and device/precision choices for the SFT stage."""

from __future__ import annotations

import os
from typing import Any

from pipelines.errors import BadInput
from pipelines.run_config import LoraSection, ModelSection, QuantSection, TrainSection


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def bf16_supported() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def fsdp_enabled() -> bool:
    """`accelerate launch` with an FSDP config exports this to every process."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")


def _torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, name)


def compute_dtype(quant: QuantSection) -> Any:
    if quant.compute_dtype == "auto":
        return _torch_dtype("bfloat16" if bf16_supported() else "float32")
    return _torch_dtype(quant.compute_dtype)


def storage_dtype(quant: QuantSection) -> Any:
    """FSDP shards only float tensors and needs one dtype per module, so 4-bit weights are stored in the
    compute dtype there (bitsandbytes packs them into any storage type)."""
    if quant.quant_storage == "auto":
        return compute_dtype(quant) if fsdp_enabled() else _torch_dtype("uint8")
    return _torch_dtype(quant.quant_storage)


def model_dtype(model: ModelSection, quant: QuantSection) -> Any:
    """dtype of the weights that stay unquantized (embeddings, norms, and everything for `mode: none`)."""
    if quant.mode == "nf4":
        storage = storage_dtype(quant)
        return storage if storage.is_floating_point else compute_dtype(quant)
    if model.dtype == "auto":
        return _torch_dtype("bfloat16" if bf16_supported() else "float32")
    return _torch_dtype(model.dtype)


def quantization_config(quant: QuantSection) -> Any:
    if quant.mode == "none":
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=quant.double_quant,
        bnb_4bit_compute_dtype=compute_dtype(quant),
        bnb_4bit_quant_storage=storage_dtype(quant),
    )


def _device_map(quant: QuantSection) -> Any:
    """Each DDP process quantizes its own copy onto its own GPU; FSDP and CPU load without a device map
    (FSDP places shards itself, and `cpu_ram_efficient_loading` needs the weights on CPU first)."""
    if quant.mode == "none" or not cuda_available() or fsdp_enabled():
        return None
    from accelerate import PartialState

    return {"": PartialState().local_process_index}


def load_base_model(model: ModelSection, quant: QuantSection) -> Any:
    """The frozen base model the adapter trains on, in NF4 (QLoRA) or at full precision."""
    from transformers import AutoModelForCausalLM

    from pipelines.models import fetch_model

    path = fetch_model(model.name_or_path, model.revision)
    kwargs: dict[str, Any] = {"dtype": model_dtype(model, quant)}
    if (config := quantization_config(quant)) is not None:
        kwargs["quantization_config"] = config
    if (device_map := _device_map(quant)) is not None:
        kwargs["device_map"] = device_map
    try:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise BadInput(f"model {model.name_or_path!r}: cannot load from {path}: {exc}") from None


def lora_config(lora: LoraSection) -> Any:
    """A plain LoRA that vLLM can serve: no bias, no DoRA, no extra trainable modules."""
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        bias="none",
        use_dora=False,
        task_type="CAUSAL_LM",
    )


def precision_flags(train: TrainSection) -> tuple[bool, bool]:
    """(bf16, fp16) for TrainingArguments; mixed precision only where the device supports it."""
    mode = train.mixed_precision
    if mode == "auto":
        return bf16_supported(), False
    if mode == "bf16" and not bf16_supported():
        raise BadInput("sft.train.mixed_precision=bf16: this device has no CUDA bf16 support; use auto or no")
    if mode == "fp16" and not cuda_available():
        raise BadInput("sft.train.mixed_precision=fp16 needs a CUDA GPU; use auto or no")
    return mode == "bf16", mode == "fp16"


def keep_adapter_in_compute_dtype(model: Any, quant: QuantSection) -> None:
    """Undo TRL's cast of a quantized model's trainable (LoRA) weights to bfloat16 unless bf16 is the
    compute dtype. TRL follows the QLoRA paper's GPU setup; with float32 compute (the CPU default) bf16
    adapters turn every LoRA matmul into an emulated bf16 one (~15x slower on an AVX-512 CPU without
    bf16 units) and round away small updates. Float16 compute keeps float32 adapters, as AMP expects."""
    import torch

    if quant.mode != "nf4" or compute_dtype(quant) == torch.bfloat16:
        return
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.to(torch.float32)
