"""`midtrain export ADAPTER --out DIR`: an adapter merged into its base, as a standalone model folder.

What `axolotl merge-lora` and `llamafactory-cli export` give: safetensors weights (`W + B·A·scale` folded in by
PEFT's `merge_and_unload`), the tokenizer and chat template the adapter was trained with, and a model card.
Any stack that loads a transformers checkpoint serves it, without LoRA support (vLLM without `--enable-lora`,
llama.cpp's converter, TGI).

Decisions:
- The base is loaded unquantized in the export dtype, and a QLoRA adapter is merged into it as eval and vLLM
  serve it: merging into NF4 weights would round the update into 4 bits.
- The tokenizer comes from the adapter folder, not the base: the chat template (and tool-call format) the
  adapter was trained with is the one the merged model needs. An adapter saved without one (a plain
  `save_pretrained` of another tool) gets the base's, and the export says so.
- The tokenizer's response template (how `transformers serve` parses replies) is written with today's field
  names: an adapter saved before the reasoning field was renamed would otherwise serve no reasoning.
- The folder is written in a scratch folder next to `--out` and moved in when complete, so an interrupted
  export never leaves a half-written model where a finished one is expected.
- The card names the public model the base came from: an embedded base (midtrain's de-quantized GGUF) is named
  by its upstream id, with a note that its weights are the GGUF's, not the upstream safetensors.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from pipelines import folders
from pipelines.artifacts import MergedModel
from pipelines.codecs import current_response_template
from pipelines.config import load_json
from pipelines.errors import BadInput

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
DTYPES = ("auto", "float32", "bfloat16", "float16")
log = logging.getLogger("midtrain")


def export_merged(
    adapter_dir: str | Path, out_dir: str | Path, base: str | None = None, dtype: str = "auto"
) -> MergedModel:
    """Merge the PEFT adapter in `adapter_dir` into its base and write the model folder `out_dir`."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    config = _adapter_config(adapter_dir)
    if dtype not in DTYPES:
        raise BadInput(f"--dtype {dtype!r}: one of {', '.join(DTYPES)}")
    folders.check_replaceable(out_dir, "export folder")  # before minutes of loading, not after
    folders.check_writable(out_dir, "export folder")
    ref = _base_reference(config, adapter_dir, base)
    model = AutoModelForCausalLM.from_pretrained(
        ref, dtype="auto" if dtype == "auto" else getattr(torch, dtype)
    )
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    tokenizer_source = _tokenizer_source(adapter_dir, ref)
    folders.clean_stale_scratch(out_dir.parent, f"{out_dir.name}.export")
    work = folders.scratch_dir(out_dir.parent, f"{out_dir.name}.export")
    result = MergedModel(
        adapter=str(adapter_dir),
        base_model=ref,
        public_base_model=public_base_model(ref)[0],
        dtype=str(merged.dtype).removeprefix("torch."),
        tokenizer_from="adapter" if tokenizer_source == str(adapter_dir) else "base",
    )
    try:
        merged.save_pretrained(work, safe_serialization=True)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
        # An older adapter's field names, as servers read them (a tokenizer without a template keeps none).
        if getattr(tokenizer, "response_template", None):
            tokenizer.response_template = current_response_template(tokenizer.response_template)
        tokenizer.save_pretrained(work)
        (work / "README.md").write_text(model_card(adapter_dir, config, tokenizer, result))
        result.write(work)
        folders.replace_dir(work, out_dir, "export folder")
    finally:
        if work.exists():
            shutil.rmtree(work)  # the scratch folder this call created: only left when the export failed
    return result


def _adapter_config(adapter_dir: Path) -> dict[str, Any]:
    if not (adapter_dir / "adapter_config.json").is_file():
        raise BadInput(
            f"{adapter_dir}: no adapter_config.json (expected a PEFT adapter folder, e.g. runs/NAME/sft/tool)"
        )
    if not any((adapter_dir / name).is_file() for name in ADAPTER_WEIGHTS):
        raise BadInput(f"{adapter_dir}: no {' or '.join(ADAPTER_WEIGHTS)} (training unfinished?)")
    config = load_json(adapter_dir / "adapter_config.json", "a PEFT adapter config")
    if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA":
        raise BadInput(
            f"{adapter_dir}/adapter_config.json: not a LoRA adapter (peft_type {config.get('peft_type')!r})"
        )
    return config


def _tokenizer_source(adapter_dir: Path, base: str) -> str:
    if (adapter_dir / "tokenizer_config.json").is_file():
        return str(adapter_dir)
    log.warning(
        "%s holds no tokenizer: the merged model gets the base's (%s), chat template included",
        adapter_dir,
        base,
    )
    return base


def _base_reference(config: dict[str, Any], adapter_dir: Path, base: str | None) -> str:
    """`--base`, else the base the adapter was trained on (its config's `base_model_name_or_path`)."""
    from pipelines.models import resolve_model

    ref = base or config.get("base_model_name_or_path")
    if not isinstance(ref, str) or not ref:
        raise BadInput(f"{adapter_dir}/adapter_config.json names no base model; pass --base MODEL")
    return resolve_model(ref)


def public_base_model(base: str) -> tuple[str, str]:
    """The id a card names for the resolved base `base` (a Hub id or a local folder), and a note on where its
    weights came from when that id alone misleads."""
    from pipelines.models import embedded_origin

    if not Path(base).exists():
        return base, ""
    origin = embedded_origin(Path(base))
    if origin is None:
        return f"<local>/{Path(base).name}", ""
    note = (
        f"The base weights are `{origin['upstream']}` as shipped in the GGUF `{origin['gguf']}` of "
        f"`{origin['source']}`, de-quantized: not bit-identical to the upstream safetensors."
    )
    return origin["upstream"], note


def _vllm_tool_parser(tokenizer: Any) -> str | None:
    """vLLM's tool parser for the format the merged model's template writes; None when vLLM has none (or the
    template writes no tool calls at all)."""
    from pipelines.codecs import codec_for

    try:
        return codec_for(tokenizer).vllm_tool_parser
    except (ValueError, BadInput):
        return None


def model_card(adapter_dir: Path, config: dict[str, Any], tokenizer: Any, result: MergedModel) -> str:
    from huggingface_hub import ModelCard, ModelCardData

    from pipelines.vllm_export import VLLM_SERVER_MODULE

    public_base, origin = public_base_model(result.base_model)
    data = ModelCardData(
        base_model=public_base,
        base_model_relation="merge",
        library_name="transformers",
        tags=["midtrain", "tool-calling", "agentic", "merged-lora"],
        pipeline_tag="text-generation",
    )
    parser = _vllm_tool_parser(tokenizer)
    tool_flags = f" --enable-auto-tool-choice --tool-call-parser {parser}" if parser else ""
    template_note = (
        "The tokenizer and chat template are the adapter's: the ones it was trained with."
        if result.tokenizer_from == "adapter"
        else "The adapter was saved without a tokenizer: tokenizer and chat template are the base model's."
    )
    lora = {k: config.get(k) for k in ("r", "lora_alpha", "target_modules", "use_rslora") if k in config}
    body = "\n".join(
        [
            f"# {adapter_dir.name} (merged)",
            "",
            f"The LoRA adapter `{adapter_dir.name}`, trained with [midtrain](https://pypi.org/project/midtrain/), "
            f"merged into `{public_base}` (weights in {result.dtype}). {template_note}"
            + (f" {origin}" if origin else ""),
            "",
            f"LoRA: `{json.dumps(lora, sort_keys=True)}`.",
            "",
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            'model = AutoModelForCausalLM.from_pretrained("MERGED_DIR")  # this folder, or its Hub repo',
            'tokenizer = AutoTokenizer.from_pretrained("MERGED_DIR")',
            "```",
            "",
            "```bash",
            "# no --enable-lora: the adapter is in the weights; the folder's chat template is the trained one",
            f"python -m {VLLM_SERVER_MODULE} --model MERGED_DIR{tool_flags}",
            f"vllm serve MERGED_DIR{tool_flags}   # the same, on a GPU build of vLLM",
            "```",
            "",
        ]
    )
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n{body}"))
