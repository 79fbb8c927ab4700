"""The mix's dataset card (`README.md` in the data folder): what the Hub shows and how `datasets` finds splits.

Written from the manifest alone (before the manifest lists the card's own sha256), so a rebuild writes the
same bytes and `data verify` checks the card like every other output file. No repo id goes in: the same card
describes the local folder and the Hub copy `midtrain publish` uploads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipelines.data import manifest as mf

COLUMNS = (
    ("id", "string", "the trace or document id (unique per split; repeats of an upsampled row share it)"),
    ("source", "string", "the recipe source the row came from"),
    ("category", "string", "the recipe category (`tool`, `code`, `text`, …) whose token share it counts to"),
    ("kind", "string", "`tool` (a conversation) or `code`/`text` (a document)"),
    ("cluster", "string", "the thinking-mode cluster an adapter trains on"),
    ("pattern", "string", "the generator's pattern of a tool trace (single, parallel, recovery, …)"),
    ("difficulty", "int32", "tool calls in the trace (0 for documents)"),
    ("epoch", "int32", "0 for a row's first use, k for its k-th upsampled repeat"),
    ("n_tokens", "int32", "rendered length in tokens"),
    ("n_loss_tokens", "int32", "tokens in the loss (assistant turns; every token of a document)"),
    ("messages", "list<json>", "tool traces: the conversation, OpenAI/TRL format (null for documents)"),
    ("tools", "list<json>", "tool traces: the offered tools as OpenAI function specs"),
    ("text", "string", "documents: the text (null for tool traces)"),
    ("input_ids", "list<int32>", "the row rendered with the mix's tokenizer and chat template"),
    ("assistant_masks", "list<int8>", "1 on the tokens in the loss"),
    ("trace", "string", "the row in midtrain's own trace format (JSON)"),
)


def write_card(out_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write README.md for a built mix; return its manifest file record."""
    path = out_dir / mf.CARD
    path.write_text(dataset_card(manifest), encoding="utf-8")
    return mf.file_record(path, rows=0)


def dataset_card(manifest: dict[str, Any]) -> str:
    recipe = manifest["recipe"]
    splits = manifest["splits"]
    rows = sum(s["rows"] for s in splits.values())
    metadata = {
        "configs": [
            {
                "config_name": "default",
                "data_files": [
                    {"split": split, "path": f"{split}-*.parquet"} for split in (mf.TRAIN, mf.VALIDATION)
                ],
            }
        ],
        "pretty_name": recipe.get("name"),
        "license": "other",  # each source keeps its own license; the card lists them
        "task_categories": ["text-generation"],
        "tags": ["midtrain", "tool-calling", "function-calling", "agentic", "mid-training"],
        "size_categories": [_size_category(rows)],
    }
    front = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True).strip()
    blocks = [
        f"---\n{front}\n---",
        *_summary(manifest),
        *_usage(),
        *_columns(),
        *_mix(manifest),
        *_licenses(manifest),
        *_rebuild(manifest),
    ]
    return "\n\n".join(blocks) + "\n"


def _size_category(rows: int) -> str:
    for bound, label in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if rows < bound:
            return label
    return "1M<n<10M" if rows < 10_000_000 else "10M<n<100M"


def _summary(manifest: dict[str, Any]) -> list[str]:
    mix, splits, tok = manifest["mix"], manifest["splits"], manifest.get("tokenizer", {})
    split_text = ", ".join(
        f"{s['rows']:,} {name} rows ({s['tokens']:,} tokens)" for name, s in splits.items()
    )
    return [
        f"# {manifest['recipe'].get('name')}",
        f"A mid-training mix built by [midtrain](https://pypi.org/project/midtrain/) `data build`: "
        f"{mix['total_tokens']:,} tokens (target {mix['total_tokens_target']:,}), mixed by **tokens** after "
        f"rendering with the chat template of `{tok.get('id', manifest['build']['tokenizer'])}` and the "
        f"`{manifest['build']['thought_schema']}` thought schema; deduplicated (exact and MinHash) and "
        f"decontaminated against eval sets. {split_text}. `manifest.json` is the lockfile: every source's "
        "revision, the tokenizer and template hashes, seeds, library versions and each file's sha256.",
    ]


def _usage() -> list[str]:
    return [
        "## Use",
        "```python\n"
        "from datasets import load_dataset\n\n"
        'mix = load_dataset("parquet", data_dir="path/to/this/folder")  # or load_dataset("<this repo id>")\n'
        'conversations = mix["train"].filter(lambda row: row["kind"] == "tool")\n'
        'documents = mix["train"].filter(lambda row: row["kind"] != "tool")\n'
        "```",
        "`messages` + `tools` are TRL's conversational format: `SFTTrainer` tokenizes them with any model's "
        "chat template. Drop `input_ids`/`assistant_masks` first (TRL treats a dataset that has `input_ids` "
        "as already tokenized: those ids are this mix's tokenizer's):",
        "```python\n"
        "from trl import SFTConfig, SFTTrainer\n\n"
        'train = conversations.select_columns(["messages", "tools"])\n'
        'trainer = SFTTrainer(model="<your model>", train_dataset=train, args=SFTConfig(output_dir="out"))\n'
        "```",
    ]


def _columns() -> list[str]:
    rows = [f"| `{name}` | {kind} | {what} |" for name, kind, what in COLUMNS]
    return ["## Columns", "\n".join(["| column | type | content |", "| --- | --- | --- |", *rows])]


def _mix(manifest: dict[str, Any]) -> list[str]:
    mix = manifest["mix"]
    categories = [
        f"| {name} | {_share(c.get('target_share'))} | {_share(c['share'])} | {c['tokens']:,} |"
        for name, c in mix["categories"].items()
    ]
    sources = [
        f"| {s['name']} | {s['type']} | {s['category']} | {s['rows_out']:,} | {s['tokens_out']:,} | "
        f"{s['epochs_used']} | {s['rejects_total']:,} | {_pin(s.get('revision') or {})} |"
        for s in manifest["sources"]
    ]
    splits = [
        f"| {name} | {s['rows']:,} | {s['unique_ids']:,} | {s['tokens']:,} | {s['loss_tokens']:,} |"
        for name, s in manifest["splits"].items()
    ]
    rejects = manifest["rejects"]
    reasons = sorted(rejects["by_reason"].items(), key=lambda kv: (-kv[1], kv[0]))
    blocks = [
        "## Mix",
        "\n".join(
            [
                "| category | target share | achieved share | tokens |",
                "| --- | --- | --- | --- |",
                *categories,
            ]
        ),
        "\n".join(
            [
                "| source | type | category | rows out | tokens out | epochs used | rejects | pinned by |",
                "| --- | --- | --- | --- | --- | --- | --- | --- |",
                *sources,
            ]
        ),
        "\n".join(
            [
                "| split | rows | unique ids | tokens | loss tokens |",
                "| --- | --- | --- | --- | --- |",
                *splits,
            ]
        ),
        f"{rejects['total']:,} rows were rejected, each with its reason in `rejects.jsonl`"
        + (": " + ", ".join(f"{reason} {n:,}" for reason, n in reasons[:8]) + "." if reasons else "."),
    ]
    if mix.get("notes"):
        blocks.append("Notes: " + "; ".join(mix["notes"]))
    return blocks


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _pin(revision: dict[str, Any]) -> str:
    """What fixes a source's bytes: a Hub commit, a file hash, or a generator's seed (with the rows' hash)."""
    if revision.get("commit"):
        return f"`{revision.get('dataset')}` @ `{revision['commit'][:12]}`"
    if "seed" in revision:
        return f"seed {revision['seed']}, rows sha256 `{str(revision.get('sha256', ''))[:12]}`"
    if "python" in revision:
        return f"Python {revision['python']}, rows sha256 `{str(revision.get('sha256', ''))[:12]}`"
    return f"sha256 `{str(revision.get('sha256', ''))[:12]}`" if revision.get("sha256") else "–"


def _licenses(manifest: dict[str, Any]) -> list[str]:
    """Each source's license as far as the build knows it; a Hub dataset's is on its own card."""
    lines = []
    for source in manifest["sources"]:
        revision = source.get("revision") or {}
        kind = source["type"]
        if kind == "hf":
            what = f"`{revision.get('dataset')}`: the license on that dataset's card"
        elif kind == "python_code":
            found = {"stdlib": "PSF-2.0"} if "stdlib" in _roots(manifest, source["name"]) else {}
            found |= revision.get("licenses") or {}
            what = ", ".join(f"{root}: {name}" for root, name in found.items()) or "see its files"
        elif kind == "pydoc_text":
            what = "the Python documentation (PSF-2.0)"
        elif kind == "generated":
            what = "generated by midtrain's built-in tool environments"
        else:
            what = "the license of its files (local files or teacher outputs: not known to midtrain)"
        lines.append(f"- {source['name']} ({kind}): {what}")
    return ["## Licenses", "Rows keep the license of their source:\n" + "\n".join(lines)]


def _roots(manifest: dict[str, Any], name: str) -> list[str]:
    for category in manifest["recipe"].get("categories", {}).values():
        for source in category.get("sources", []):
            if source.get("name") == name:
                return list(source.get("roots") or [])
    return []


def _rebuild(manifest: dict[str, Any]) -> list[str]:
    libraries = ", ".join(f"{k} {v}" for k, v in manifest.get("libraries", {}).items())
    recipe = yaml.safe_dump(manifest["recipe"], sort_keys=False, allow_unicode=True).strip()
    return [
        "## Recipe",
        f"```yaml\n{recipe}\n```",
        "## Rebuild",
        "Rebuild byte for byte from the lockfile and compare every file (exit 1 naming each one that differs):",
        "```bash\n"
        "midtrain data build --from-hub <this repo id> --out mix   # from the Hub copy\n"
        "midtrain data verify path/to/this/folder                 # from a local copy\n"
        "```",
        f"Built with {libraries}. The same bytes need the same versions of these libraries and the same "
        "sources (Hub datasets are read at the commits `manifest.json` records).",
    ]
