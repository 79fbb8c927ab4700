"""Base model loading (NF4 QLoRA or plain), LoRA config and device/precision choices for the SFT stage."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from pipelines.errors import BadInput
from pipelines.run_config import LoraSection, ModelSection, QuantSection, TrainSection

log = logging.getLogger("midtrain.sft")


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


def native_bf16() -> bool:
    """This machine computes bf16 in hardware: a CUDA GPU that supports it, or a CPU with AMX-BF16 or AVX512-BF16
    (a CPU whose flags cannot be read counts as without)."""
    if cuda_available():
        return bf16_supported()
    return cpu_has_native_bf16() is True


def compute_dtype(quant: QuantSection) -> Any:
    if quant.compute_dtype == "auto":
        return _torch_dtype("bfloat16" if bf16_supported() else "float32")
    if quant.compute_dtype == "bfloat16-if-native":
        return _torch_dtype("bfloat16" if native_bf16() else "float32")
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

    if quant.compute_dtype == "bfloat16" and cpu_emulates_bf16():
        log.warning(
            "quantization.compute_dtype=bfloat16 on a CPU without AVX512-BF16/AMX-BF16: every NF4 matmul runs in "
            "emulated bf16, ~90x slower than float32 on an AVX2 CPU (compute_dtype: bfloat16-if-native or float32)"
        )
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

    from pipelines import attention
    from pipelines.models import fetch_model

    attention.install()  # TRL's own RL generation runs masked batches too (pipelines/attention.py)
    path = fetch_model(model.name_or_path, model.revision)
    kwargs: dict[str, Any] = {"dtype": model_dtype(model, quant)}
    if (config := quantization_config(quant)) is not None:
        kwargs["quantization_config"] = config
    if (device_map := _device_map(quant)) is not None:
        kwargs["device_map"] = device_map
    try:
        base = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise BadInput(f"model {model.name_or_path!r}: cannot load from {path}: {exc}") from None
    keep_nf4_weights_trainable(base)
    return base


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


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool | None:
    """Whether this CPU has bf16 matmul instructions (AVX512-BF16 or AMX-BF16); None where /proc/cpuinfo
    cannot tell (not Linux)."""
    try:
        flags = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_emulates_bf16() -> bool:
    """bf16 asked for here runs on a CPU known to lack bf16 instructions (the case both bf16 warnings name)."""
    return not cuda_available() and cpu_has_native_bf16() is False


def precision_flags(train: TrainSection) -> tuple[bool, bool]:
    """(bf16, fp16) for TrainingArguments. `auto`: bf16 on CUDA GPUs that support it, float32 elsewhere;
    `bf16-if-native`: bf16 wherever the hardware computes it (those GPUs, and CPUs with bf16 instructions).

    `bf16` on CPU is bf16 autocast (accelerate wraps the forward in `torch.autocast("cpu", bfloat16)`): matmuls
    run in bf16 while weights, LoRA parameters and optimizer state stay float32. On a CPU with bf16 matmul
    instructions that is ~1.7x the float32 step rate (configs/README.md); without them bf16 is emulated and slower.
    """
    mode = train.mixed_precision
    if mode == "auto":
        return bf16_supported(), False
    if mode == "bf16-if-native":
        return native_bf16(), False
    if mode == "bf16" and cuda_available() and not bf16_supported():
        raise BadInput("sft.train.mixed_precision=bf16: this GPU has no bf16 support; use auto, fp16 or no")
    if mode == "bf16" and cpu_emulates_bf16():
        log.warning(
            "mixed_precision=bf16 on a CPU without AVX512-BF16/AMX-BF16: bf16 matmuls are emulated, ~90x "
            "slower than float32 on an AVX2 CPU (mixed_precision: bf16-if-native or no)"
        )
    if mode == "fp16" and not cuda_available():
        raise BadInput("sft.train.mixed_precision=fp16 needs a CUDA GPU; use auto, bf16 or no")
    return mode == "bf16", mode == "fp16"


def keep_adapter_float32(model: Any, quant: QuantSection) -> None:
    """Undo TRL's cast of a quantized model's trainable (LoRA) weights to bfloat16, except for bf16 compute
    on a GPU (TRL follows the QLoRA paper's GPU setup there). On CPU, with float32 compute, bf16 adapters turn
    every LoRA matmul into a bf16 one outside autocast (~15x slower on an AVX-512 CPU without bf16 units) and
    round away small updates; with bf16 compute the stage trains under bf16 autocast (`mixed_precision: bf16`),
    which runs the LoRA matmuls in bf16 anyway while float32 weights keep the updates that bf16 would round
    away (mixed-precision training's float32 master weights). Float16 compute keeps float32 adapters, as AMP
    expects."""
    import torch

    if quant.mode != "nf4" or (compute_dtype(quant) == torch.bfloat16 and cuda_available()):
        return
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.to(torch.float32)
    leave_input_dtype_to_autocast(model)


def leave_input_dtype_to_autocast(model: Any) -> None:
    """Under autocast, a LoRA layer's input keeps its dtype; outside autocast PEFT casts it as before.

    PEFT casts each LoRA layer's input to the adapter weight's dtype (its NF4 layer skips that under autocast,
    but asks `torch.is_autocast_enabled()` without a device, which is false under CPU autocast). With float32
    adapters over an NF4 base with bf16 compute, the input arrives in bf16, so every LoRA layer makes a float32
    copy of it, which autocast then casts back to bf16 for the matmul: nothing gained, and the copies raised the embedded model's peak at 2 x
    2,048 tokens from 6,267 to 6,862 MiB (scripts/bench_sft.py on the demo mix; TRL's packed peer with bf16
    adapters: 5,356), same loss and speed. Outside autocast (the packing probe, a float32 forward) the cast is still needed:
    an fp32 weight cannot multiply a bf16 input. `cast_input_dtype_enabled` is the flag PEFT's own
    `helpers.disable_input_dtype_casting` sets (peft 0.21.2 in the lock; tests/test_sft.py checks it)."""
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    def follow_autocast(module: Any, args: tuple[Any, ...]) -> None:
        x = args[0] if args else None
        if isinstance(x, torch.Tensor):
            module.cast_input_dtype_enabled = not torch.is_autocast_enabled(x.device.type)

    for module in model.modules():
        if (
            isinstance(module, BaseTunerLayer)
            and isinstance(module, torch.nn.Module)
            and hasattr(module, "lora_A")
        ):
            module.register_forward_pre_hook(follow_autocast)


def keep_nf4_weights_trainable(model: Any) -> None:
    """Turn off bitsandbytes' CPU inference repacking of NF4 weights in a base that trains (every base that
    `load_base_model` loads: SFT, RL, the benchmark's peers).

    On a CPU with AVX512-BF16 (bitsandbytes 0.50), the first forward of a `Linear4bit` in eval mode without
    grad (the SFT packing probe, a periodic `evaluate()`, RL's evaluation of its starting policy before GRPO's
    first step) repacks its weight in place into a layout that `matmul_4bit` routes to `gemv_4bit`, which has no
    autograd kernel. Training after that backpropagates nothing through the base layers, silently: on the tiny
    model the LoRA of q/k/v/gate/up (10 of 14 lora_B) got no gradient; the embedded model's adapters came out
    with all-zero lora_B in some layers. `support_avx512bf16_for_cpu` is the module's own switch for that path
    (tests/test_packing.py checks it still exists in the locked version); eval forwards then run the kernel
    training runs."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def project_only_labelled_positions() -> None:
    """Let TRL's fused LM head skip the positions without a label on CPU too.

    TRL (1.16, `trainer.utils.add_fused_lm_head`) projects hidden states through the LM head in tiles and, on
    Triton devices only, just the positions whose next token carries a label; elsewhere it projects every
    position, to keep tile shapes fixed for compiled backends (Neuron). Eager CPU compiles nothing, and there the
    head's forward, its backward recompute and its input gradient (which `chunked_logprob._addmm_fp32` runs in
    float32 off CUDA, even under bf16 autocast) cover the embedded model's 49,152-word vocabulary for every
    prompt and tool-schema token, ~70% of a `tool` trace (GRPO scores its completions with the same head, its
    prompts unlabelled). The kernel's own choice (`chunked_logprob._use_triton`) is untouched, so CPU keeps TRL's torch tiles; the loss
    and gradients are the same (tests/test_sft.py compares them, and fails when the pinned TRL moves the name)."""
    from trl.kernels import chunked_logprob
    from trl.trainer import utils as trl_utils

    if getattr(trl_utils._use_triton, "midtrain_compacts_cpu", False):
        return
    kernel_choice = chunked_logprob._use_triton

    def compact(device: Any) -> bool:
        return device.type == "cpu" or kernel_choice(device)

    compact.midtrain_compacts_cpu = True  # type: ignore[attr-defined]
    trl_utils._use_triton = compact
