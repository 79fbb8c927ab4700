"""SFT stage: one QLoRA adapter per thought cluster of the mix (`midtrain sft CONFIG`).

For each cluster in `sft.clusters` (plus `generalist` on the whole mix when enabled) the stage selects that
cluster's train rows and a `replay_fraction` share of other clusters' rows, trains a LoRA adapter on a 4-bit
NF4 base (`sft.quantization.mode: none` for plain LoRA) with TRL's `SFTTrainer`, and writes
`runs/<name>/sft/<cluster>/`:

- `adapter_config.json` + `adapter_model.safetensors`: a PEFT adapter vLLM serves (checked after saving by
  `check_vllm_compatible`), plus the tokenizer with the chat template it was trained with;
- `training_summary.json` (tokens seen, steps, wall time, peak memory, final train/eval loss, data manifest
  hash, config fingerprint), `metrics.jsonl`, `loss.png`, `checkpoint-N/` folders to resume from.

Rows arrive pre-tokenized from the data stage (`input_ids` + `assistant_masks`); TRL turns the mask into
labels, so the loss covers assistant tokens of tool traces and every token of code/text documents. Packing is
best-fit-decreasing and padding-free by default (`sft.train.packing`); before training, the stage checks that
packed documents do not attend to each other with the model's attention implementation (`sft/packing.py`).

Scale-out: nothing here assumes one process (files are written by the main process only), so the same
command runs under `accelerate launch`:

    accelerate launch --config_file configs/accelerate/ddp.yaml -m pipelines.cli sft CONFIG
    accelerate launch --config_file configs/accelerate/fsdp_qlora.yaml -m pipelines.cli sft CONFIG

Under FSDP the 4-bit weights are stored in the compute dtype (`quantization.quant_storage: auto`), which
FSDP needs to shard them; set `quantization.compute_dtype` to `bfloat16` on GPUs (auto picks it).
"""

from __future__ import annotations

from pipelines.sft.outputs import adapter_fingerprint, check_vllm_compatible, finished_fingerprint
from pipelines.sft.stage import adapter_names, run, train_adapter

__all__ = [
    "adapter_fingerprint",
    "adapter_names",
    "check_vllm_compatible",
    "finished_fingerprint",
    "run",
    "train_adapter",
]
