"""The vLLM export's pieces that need no vLLM: the tool-call parser read off real chat templates, adapters with
rank/alpha patterns rewritten to one scale (PEFT's outputs unchanged), and refusals that exit 2 with the
adapter and tensor named. The printed command itself is run by tests/test_vllm.py (`make test-vllm`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import trl

from pipelines.errors import BadInput
from pipelines.vllm_export import uniform_scaling_copy, vllm_tool_parser

TEMPLATES = Path(trl.__file__).parent / "chat_templates"
OWN_TEMPLATES = Path(__file__).parent.parent / "pipelines" / "templates"


@pytest.mark.parametrize(
    ("template", "parser"),
    [("qwen2_5", "hermes"), ("qwen3", "hermes"), ("llama3_1", "llama3_json"), ("llama3_2", "llama3_json"),
     ("smollm2_native", "xlam"), ("mistral_v3_midtrain", "mistral")],
)  # fmt: skip
def test_tool_parser_follows_the_templates_tool_call_format(template: str, parser: str) -> None:
    path = TEMPLATES / f"{template}.jinja"
    text = path.read_text() if path.is_file() else (OWN_TEMPLATES / f"{template}.jinja").read_text()
    assert vllm_tool_parser(text) == parser


def test_a_template_without_a_known_tool_format_is_bad_input() -> None:
    with pytest.raises(BadInput, match="--tool-call-parser"):
        vllm_tool_parser((TEMPLATES / "gemma.jinja").read_text())


def _patterned_adapter(base: Path, out: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False,
                        rank_pattern={"q_proj": 4, "down_proj": 16}, alpha_pattern={"v_proj": 64, "q_proj": 4})  # fmt: skip
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.mul_(5.0)
    model.save_pretrained(out)
    return out


def _logits(base: Path, adapter: Path) -> tuple[torch.Tensor, dict[str, float]]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    scales = {
        n: m.scaling["default"]
        for n, m in model.named_modules()
        if isinstance(getattr(m, "scaling", None), dict)
    }
    with torch.no_grad():
        return model(torch.tensor([[1, 2, 3, 4, 5, 6]])).logits, scales


def test_rank_and_alpha_patterns_are_folded_into_lora_b(tmp_path: Path, tiny_model_dir: Path) -> None:
    adapter = _patterned_adapter(tiny_model_dir, tmp_path / "patterned")
    copy = uniform_scaling_copy(adapter, tmp_path / "copy")
    original, scales = _logits(tiny_model_dir, adapter)
    rewritten, new_scales = _logits(tiny_model_dir, copy)
    assert len(set(scales.values())) > 1  # the patterns really gave modules different scales
    assert set(new_scales.values()) == {2.0}  # every module at the global alpha/r, what vLLM < 0.32 applies
    torch.testing.assert_close(rewritten, original, rtol=1e-4, atol=1e-4)
    config = json.loads((copy / "adapter_config.json").read_text())
    assert config["rank_pattern"] == {"q_proj": 4, "down_proj": 16}  # PEFT still needs the shapes
    assert uniform_scaling_copy(copy, tmp_path / "again") != copy  # patterns remain, so it would rewrite
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16}))
    assert uniform_scaling_copy(plain, tmp_path / "unused") == plain


def test_export_refuses_an_adapter_vllm_would_refuse(tmp_path: Path, tiny_model_dir: Path) -> None:
    from safetensors.torch import load_file, save_file

    from pipelines.router import run
    from pipelines.run_config import RouterSection
    from tests.helpers import make_adapter, two_cluster_config, write_shards

    run_dir = tmp_path / "bad"
    write_shards(run_dir / "data")
    for name, seed in (("tool", 1), ("plan", 2)):
        make_adapter(tiny_model_dir, run_dir / "sft" / name, seed)
    weights = run_dir / "sft" / "plan" / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    name = next(k for k in tensors if k.endswith("q_proj.lora_B.weight"))
    tensors[name.replace(".weight", ".bias")] = torch.zeros(tensors[name].shape[0])  # what lora_bias writes
    save_file(tensors, str(weights))
    run(
        two_cluster_config(
            run_dir, tiny_model_dir, RouterSection(method="tfidf", threshold=0.3, generated_requests=0)
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "router", "export", str(run_dir / "router"), "--vllm",
         str(tmp_path / "lora.json")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2 and "adapters vLLM would refuse" in result.stderr
    assert "plan: tensors vLLM cannot parse" in result.stderr and "lora_B.bias" in result.stderr
    assert result.stdout == "" and not (tmp_path / "lora.json").exists()
