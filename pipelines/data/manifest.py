"""manifest.json: the mix lockfile. It records everything a byte-exact rebuild needs (the recipe as built, the
Hub commit each `hf` source was read at, tokenizer and template hashes, thought schema, seeds, library versions)
and everything a reader wants to check (per-source rows/tokens/rejects/epochs, target vs achieved shares, each
output file's sha256).

Nothing time- or machine-dependent goes in (no timestamps, no absolute cache paths of the tokenizer), so two
builds of the same recipe on the same library versions write the same manifest bytes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict

from pipelines import resources
from pipelines.config import load_json, validate_data
from pipelines.errors import BadInput
from pipelines.hashing import sha256_file
from pipelines.recipe import Recipe


class RowLookup(Protocol):
    """The build's per-row bookkeeping by spill row (`build._RowMetaTable`): source, cluster, token counts."""

    def __getitem__(self, row: int, /) -> Any: ...

    def unique_ids(self, rows: Any, /) -> int: ...

    def token_sums(self, rows: Any, /) -> tuple[int, int]: ...


MANIFEST = "manifest.json"
REJECTS = "rejects.jsonl"
CARD = "README.md"  # the dataset card: what the Hub shows and `load_dataset` reads the split layout from
# 2: `messages`/`tools`/`text` columns, `validation-*` shards (was `eval-*`), the dataset card.
FORMAT = "midtrain-data/2"
FORMAT_PREFIX = "midtrain-data/"
# Shard name prefixes are the split names datasets infers from file names (`eval-*` would load as `test`).
TRAIN, VALIDATION = "train", "validation"
LIBRARIES = ("transformers", "tokenizers", "datasets", "pyarrow", "datasketch", "numpy")


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def canonical_json(payload: Any) -> str:
    return json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def recipe_record(recipe: Recipe) -> dict[str, Any]:
    """The recipe as built. Key order is kept (not sorted): category and source order decide which of two
    duplicates survives, so it is part of the recipe's identity and of its hash."""
    data = recipe.model_dump(mode="json")
    blob = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return {"recipe": data, "recipe_sha256": sha256_text(blob)}


def library_versions() -> dict[str, str]:
    return resources.library_versions(LIBRARIES)


def tokenizer_record(
    tokenizer: Any, ref: str, revision: str | None, training_template: str
) -> dict[str, Any]:
    """Identity of the tokenizer by content: tokenizer.json's sha256 (the serialized backend when the folder
    has none), the chat templates' sha256 (the one for prompts and the `{% generation %}` training one) and the
    tool-call format its codec writes."""
    from pipelines.codecs import codec_for

    folder = Path(getattr(tokenizer, "name_or_path", "") or "")
    file = folder / "tokenizer.json"
    tok_sha = sha256_file(file) if file.is_file() else sha256_text(tokenizer.backend_tokenizer.to_str())
    return {
        "id": ref,
        "revision": revision,
        "tokenizer_json_sha256": tok_sha,
        "chat_template_sha256": sha256_text(tokenizer.chat_template or ""),
        "training_chat_template_sha256": sha256_text(training_template or ""),
        "eos_token": tokenizer.eos_token,
        "vocab_size": len(tokenizer),
        "tool_format": codec_for(
            tokenizer
        ).name,  # the codec the mix was rendered with (what training learns)
    }


def hf_features(fields: list[tuple[str, Any]]) -> str:
    """The `huggingface` schema metadata `datasets` reads a parquet file's features from (its
    `Features.to_arrow_schema` format), written here so the bytes do not depend on the datasets version."""
    import pyarrow as pa

    def feature(arrow_type: Any) -> dict[str, Any]:
        if getattr(arrow_type, "extension_name", None) == "arrow.json":
            return {"_type": "Json"}
        if pa.types.is_list(arrow_type):
            return {"feature": feature(arrow_type.value_type), "_type": "List"}
        return {"dtype": str(arrow_type), "_type": "Value"}

    return json.dumps({"info": {"features": {name: feature(t) for name, t in fields}}})


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> Path:
    path = out_dir / MANIFEST
    # Not sort_keys: the recipe's order matters (see recipe_record); every dict here is built in a fixed order.
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


class _Record(BaseModel):
    # Strict types (a count is an int, not "12"), extra keys allowed: newer builds may add fields.
    model_config = ConfigDict(extra="allow", strict=True)


class FileRecord(_Record):
    sha256: str
    rows: int
    tokens: int | None = None
    loss_tokens: int | None = None


class ShareRecord(_Record):
    tokens: int
    share: float
    target_tokens: int | None = None
    target_share: float | None = None


class MixRecord(_Record):
    total_tokens_target: int
    total_tokens: int
    rebalanced: bool
    notes: list[str]
    categories: dict[str, ShareRecord]
    sources: dict[str, ShareRecord]
    clusters: dict[str, ShareRecord]


class SourceRecord(_Record):
    name: str
    type: str
    category: str
    revision: dict[str, Any]
    rows_in: int
    rows_clean: int
    rows_out: int
    tokens_in: int
    tokens_out: int
    epochs_used: float
    rejects: dict[str, int]
    rejects_total: int


class SplitRecord(_Record):
    rows: int
    unique_ids: int
    tokens: int
    loss_tokens: int


class RejectsRecord(_Record):
    total: int
    by_reason: dict[str, int]


class BuildRecord(BaseModel):
    """The manifest's `build` section: exactly the BuildSettings fields."""

    model_config = ConfigDict(extra="forbid", strict=True)
    tokenizer: str
    tokenizer_revision: str | None
    chat_template: str
    thought_schema: str | None
    tool_format: str = "auto"  # manifests written before tool-call codecs have none


class ManifestRecord(_Record):
    """What the commands that read a manifest (verify, inspect, report, publish, sft) rely on."""

    format: str
    recipe: dict[str, Any]
    recipe_sha256: str
    build: BuildRecord
    sources: list[SourceRecord]
    mix: MixRecord
    splits: dict[str, SplitRecord]
    rejects: RejectsRecord
    files: dict[str, FileRecord]


def read_manifest(data_dir: Path) -> dict[str, Any]:
    """The manifest as written, after checking every field the readers use: a hand-edited or foreign file is
    one BadInput naming the file and key, never a KeyError or TypeError later."""
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise BadInput(f"{path}: not found (is {data_dir} a `midtrain data build` output folder?)")
    manifest = load_json(path, "a `midtrain data build` manifest")
    if not isinstance(manifest, dict):
        raise BadInput(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    found = manifest.get("format")
    if isinstance(found, str) and found.startswith(FORMAT_PREFIX) and found != FORMAT:
        raise BadInput(
            f"{path}: a mix in format {found!r}, written by another midtrain version (this one reads "
            f"{FORMAT!r}); rebuild it with `midtrain data build`"
        )
    if found != FORMAT:
        raise BadInput(f"{path}: format {found!r}, expected {FORMAT!r}")
    validate_data(ManifestRecord, manifest, str(path))
    return manifest


def hub_commits(manifest: dict[str, Any]) -> dict[str, str]:
    """Source name → the Hub commit the lockfile says the source was read at (`data verify` rebuilds at these,
    wherever the branch named in the recipe has moved since)."""
    commits = {}
    for source in manifest.get("sources", []):
        pinned = source.get("revision")
        if source.get("type") == "hf" and isinstance(pinned, dict) and isinstance(pinned.get("commit"), str):
            commits[source["name"]] = pinned["commit"]
    return commits


def file_record(
    path: Path, rows: int, tokens: int | None = None, loss_tokens: int | None = None
) -> dict[str, Any]:
    record: dict[str, Any] = {"sha256": sha256_file(path), "rows": rows}
    if tokens is not None:
        record["tokens"] = tokens
    if loss_tokens is not None:
        record["loss_tokens"] = loss_tokens
    return record


def shares(tokens: dict[str, float], targets: dict[str, float] | None = None) -> dict[str, dict[str, Any]]:
    """{key: tokens, share (achieved), target_tokens, target_share} with shares rounded for readability."""
    total = sum(tokens.values()) or 1
    target_total = sum((targets or {}).values()) or 1
    out = {}
    for key in sorted(set(tokens) | set(targets or {})):
        entry: dict[str, Any] = {
            "tokens": int(tokens.get(key, 0)),
            "share": round(tokens.get(key, 0) / total, 6),
        }
        if targets is not None:
            entry["target_tokens"] = round(targets.get(key, 0.0))
            entry["target_share"] = round(targets.get(key, 0.0) / target_total, 6)
        out[key] = entry
    return out


def mix_report(
    recipe: Recipe,
    plan: Any,
    pools: dict[str, Any],
    selections: dict[str, Any],
    meta: RowLookup,
    stats: dict[str, Any],
) -> dict[str, Any]:
    """The manifest's `sources`, `mix`, `splits` and `rejects` sections (tokens are train + eval)."""
    sources = [_source_entry(stats[name], pools[name], selections[name], plan) for name in pools]
    cat_tokens: dict[str, float] = defaultdict(float)
    for entry in sources:
        cat_tokens[entry["category"]] += entry["tokens_out"]
    categories = shares(
        dict(cat_tokens), {k: c.share * recipe.total_tokens for k, c in recipe.categories.items()}
    )
    for key, entry in categories.items():
        entry["planned_tokens"] = round(plan.category_targets.get(key, 0.0))
    by_reason: Counter = Counter()
    for s in stats.values():
        by_reason.update(s.rejects)
    return {
        "sources": sources,
        "mix": {
            "total_tokens_target": recipe.total_tokens,
            "total_tokens": int(sum(cat_tokens.values())),
            "rebalanced": plan.rebalanced,
            "notes": plan.notes,
            "categories": categories,
            "sources": shares({e["name"]: e["tokens_out"] for e in sources}, plan.source_targets),
            "clusters": _cluster_shares(pools, selections, meta, plan),
        },
        "splits": _splits(selections, meta),
        "rejects": {"total": sum(by_reason.values()), "by_reason": dict(sorted(by_reason.items()))},
    }


def _source_entry(stat: Any, pool: Any, sel: Any, plan: Any) -> dict[str, Any]:
    rows_out = np.concatenate(
        [np.asarray(sel.train.rows, dtype=np.int64), np.asarray(sel.eval, dtype=np.int64)]
    )
    return {
        "name": stat.name,
        "type": stat.type,
        "category": stat.category,
        "revision": stat.revision,
        "rows_in": stat.rows_in,
        "rows_clean": stat.rows_clean,
        "rows_out": len(rows_out),
        "unique_rows_out": len(np.unique(rows_out)),
        "eval_rows": len(sel.eval),
        "tokens_in": stat.tokens_in,
        "tokens_out": sel.tokens,
        "target_tokens": round(plan.source_targets.get(stat.name, 0.0)),
        "max_epochs": pool.max_epochs,
        "epochs_touched": sel.epochs,
        "epochs_used": round(sel.tokens / stat.tokens_in, 4) if stat.tokens_in else 0.0,
        "rejects": dict(sorted(stat.rejects.items())),
        "rejects_total": sum(stat.rejects.values()),
    }


def _cluster_shares(
    pools: dict[str, Any], selections: dict[str, Any], meta: RowLookup, plan: Any
) -> dict[str, Any]:
    """Achieved tokens per cluster; target = each source's target split by its pool's cluster proportions."""
    achieved: dict[str, float] = defaultdict(float)
    target: dict[str, float] = defaultdict(float)
    for name, pool in pools.items():
        sel = selections[name]
        for row in itertools.chain(sel.train.rows, sel.eval):
            info = meta[row]  # one lookup: each builds a record
            achieved[info.cluster] += info.n_tokens
        pool_total = sum(pool.tokens) or 1
        for row, n in zip(pool.rows, pool.tokens, strict=True):
            target[meta[row].cluster] += plan.source_targets.get(name, 0.0) * n / pool_total
    return shares(dict(achieved), dict(target))


def _splits(selections: dict[str, Any], meta: RowLookup) -> dict[str, Any]:
    # numpy columns, not Python lists: a 50B-token mix selects ~33M rows (36 bytes a row as a list of ints).
    empty = [np.empty(0, dtype=np.int64)]
    train = np.concatenate(
        [np.asarray(sel.train.rows, dtype=np.int64) for sel in selections.values()] or empty
    )
    evals = np.concatenate([np.asarray(sel.eval, dtype=np.int64) for sel in selections.values()] or empty)

    def summary(rows: Any) -> dict[str, int]:
        tokens, loss = meta.token_sums(rows)
        return {"rows": len(rows), "unique_ids": meta.unique_ids(rows), "tokens": tokens, "loss_tokens": loss}

    return {TRAIN: summary(train), VALIDATION: summary(evals)}
