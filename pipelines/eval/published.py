"""Adapters from outside the run as eval targets, scored next to what their cards say.

`midtrain eval CONFIG --adapter owner/name` (or a downloaded folder) answers the question a user of a published
adapter asks: does it score what its card says? The adapter is fetched from the Hub (only the files eval reads),
scored with the config's eval settings like any target, and each BFCL category its card publishes
(`.eval_results/*.yaml`, written by `midtrain publish`) is set beside the reproduced score and its Wilson 95%
interval. Greedy decoding on the same base, data and checker reproduces a card exactly; the interval is how far
another machine's numerics may move it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from pipelines.errors import BadInput

KEY_PREFIX = "adapter:"
BFCL_DATASET = "gorilla-llm/Berkeley-Function-Calling-Leaderboard"
EVAL_RESULTS_DIR = ".eval_results"
# What eval reads from an adapter repo: weights, config, the tokenizer with its training template, the card's
# scores. Not optimizer state or anything else a repo may hold.
ADAPTER_REPO_FILES = [
    "adapter_config.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
    "tokenizer*",
    "special_tokens_map.json",
    "chat_template.jinja",
    "README.md",
    f"{EVAL_RESULTS_DIR}/*.yaml",
]
HUB_REPO = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w./-]+))?")
_CARD_LIMIT = re.compile(r"first (\d+) examples per category")


def ref_problem(ref: str) -> str:
    """Why `ref` names neither an adapter folder nor a Hub repo ("" when it names one)."""
    if Path(ref).expanduser().is_dir() or HUB_REPO.fullmatch(ref):
        return ""
    return f"{ref!r} is neither an adapter folder nor a Hub repo (owner/name[@revision])"


def adapter_folder(ref: str) -> Path:
    """A local adapter folder as given, or a Hub repo `owner/name[@revision]` fetched into the Hub cache."""
    local = Path(ref).expanduser()
    if local.is_dir():
        return local.resolve()
    match = HUB_REPO.fullmatch(ref)
    if match is None:
        raise BadInput(f"eval.adapters: {ref_problem(ref)}")
    return _download(match["repo"], match["revision"])


def _download(repo: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"eval.adapters: {repo}" + (f"@{revision}" if revision else "")
    try:
        return Path(snapshot_download(repo, revision=revision, allow_patterns=ADAPTER_REPO_FILES))
    except RevisionNotFoundError:
        raise BadInput(f"{where}: no such revision on the Hub") from None
    except GatedRepoError:
        raise BadInput(f"{where}: gated; accept its terms on the Hub and log in (`hf auth login`)") from None
    except RepositoryNotFoundError:
        raise BadInput(
            f"{where}: no such model repo on the Hub (or it is private: `hf auth login`)"
        ) from None
    except LocalEntryNotFoundError as exc:  # offline, and not in the cache
        raise BadInput(f"{where}: not in the local Hub cache and the Hub cannot be reached ({exc})") from None


def target_key(ref: str) -> str:
    return KEY_PREFIX + ref


def base_model_problem(folder: Path, accepted: set[str]) -> str:
    """Why this adapter cannot be scored on the config's model ("" when it can): an adapter trained on another
    base would be scored on weights it was never trained with."""
    try:
        config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return ""  # `adapter_problem` names a missing or broken adapter_config.json
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not base or base in accepted or Path(str(base)).name in {Path(a).name for a in accepted}:
        return ""
    return f"{folder} was trained on {base!r}; this config's model is {sorted(accepted)[0]!r} (set model.name_or_path)"


def card_scores(folder: Path) -> tuple[dict[str, float], int | None]:
    """The BFCL scores (in [0, 1]) an adapter's card publishes in `.eval_results/*.yaml` (read with
    huggingface_hub's own parser of that format), and how many examples per category they were scored on (None:
    every example, or the card does not say)."""
    from huggingface_hub import parse_eval_result_entries

    scores: dict[str, float] = {}
    limit: int | None = None
    recorded = _card_metadata(folder).get("bfcl_examples_per_category")
    for path in sorted((folder / EVAL_RESULTS_DIR).glob("*.yaml")):
        try:
            entries = parse_eval_result_entries(yaml.safe_load(path.read_text(encoding="utf-8")))
        except (OSError, yaml.YAMLError, UnicodeDecodeError, TypeError, ValueError, KeyError, AttributeError):
            continue  # a file of the card's that is not in the format: its scores are not compared
        for entry in entries:
            value = entry.value
            if (
                entry.dataset_id != BFCL_DATASET
                or isinstance(value, bool)
                or not isinstance(value, int | float)
            ):
                continue
            scores[entry.task_id] = float(value) / 100  # the Hub format is in percent
            found = _CARD_LIMIT.search(entry.notes or "")  # cards written before the metadata field
            limit = int(found[1]) if found else limit
    if recorded == "all":
        limit = None
    elif isinstance(recorded, int) and not isinstance(recorded, bool) and recorded > 0:
        limit = recorded
    return scores, limit


def _card_metadata(folder: Path) -> dict[str, Any]:
    """What midtrain recorded in the card's YAML metadata (`publish.CARD_METADATA_KEY`); {} when absent or
    unreadable (a card of someone else's)."""
    from huggingface_hub import metadata_load

    from pipelines.publish import CARD_METADATA_KEY

    try:
        meta = metadata_load(folder / "README.md")  # the Hub's own reader of a card's metadata block
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, yaml.YAMLError):
        return {}  # ValueError: not a mapping, or an impossible date; RecursionError: absurd nesting
    found = meta.get(CARD_METADATA_KEY) if isinstance(meta, dict) else None
    return found if isinstance(found, dict) else {}


def compare_with_card(folder: Path, bfcl: dict[str, Any], limit: int | None) -> dict[str, Any]:
    """Per category the card publishes: its score, the reproduced one and its interval, and whether the card's
    score lies inside that interval. Scores on different subsets (another `eval.limit`) are not compared."""
    published, card_limit = card_scores(folder)
    if not published:
        return {}
    comparable = card_limit == limit
    categories: dict[str, Any] = {}
    for category, value in published.items():
        interval = (bfcl.get("ci95") or {}).get(category)
        reproduced = bfcl.get(category)
        row: dict[str, Any] = {"card": value, "reproduced": reproduced}
        if interval is not None and reproduced is not None:
            row["ci95"] = interval[:2]
            row["within"] = bool(interval[0] - 1e-9 <= value <= interval[1] + 1e-9) if comparable else None
        categories[category] = row
    return {"card_limit": card_limit, "limit": limit, "categories": categories}


def comparison_lines(key: str, comparison: dict[str, Any]) -> list[str]:
    if not comparison:
        return [f"{key}: its card publishes no BFCL scores (.eval_results/*.yaml); nothing to compare"]
    lines = []
    if comparison["card_limit"] != comparison["limit"]:
        lines.append(
            f"{key}: the card scored the first {comparison['card_limit'] or 'all'} examples per category, this "
            f"run {comparison['limit'] or 'all'}: the scores are of different subsets and are not compared"
        )
    for category, row in comparison["categories"].items():
        if row.get("reproduced") is None:
            lines.append(
                f"{key} bfcl/{category}: card {row['card']:.4f}, not scored here (eval.bfcl_categories)"
            )
            continue
        lo, hi = row.get("ci95", (None, None))
        verdict = {True: "card within", False: "card OUTSIDE", None: "not compared"}[row.get("within")]
        lines.append(
            f"{key} bfcl/{category}: card {row['card']:.4f}, reproduced {row['reproduced']:.4f} "
            f"[{lo:.4f}, {hi:.4f}]: {verdict}"
        )
    return lines
