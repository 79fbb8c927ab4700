"""Artifacts of a finished run, shaped exactly as the stages write them, for tests of what reads them."""

from __future__ import annotations

from typing import Any

from pipelines.data.manifest import FORMAT


def share(tokens: int, value: float, target: float | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"tokens": tokens, "share": value}
    if target is not None:
        entry |= {"target_tokens": tokens, "target_share": target}
    return entry


def source(name: str, type_: str, revision: dict[str, Any], tokens_out: int, **fields: Any) -> dict[str, Any]:
    record = {
        "name": name,
        "type": type_,
        "category": "tool",
        "revision": revision,
        "rows_in": 3,
        "rows_clean": 3,
        "rows_out": 3,
        "unique_rows_out": 3,
        "eval_rows": 0,
        "tokens_in": tokens_out,
        "tokens_out": tokens_out,
        "target_tokens": tokens_out,
        "max_epochs": 4.0,
        "epochs_touched": 1,
        "epochs_used": 1.0,
        "rejects": {},
        "rejects_total": 0,
    }
    return record | fields


def manifest(
    sources: list[dict[str, Any]],
    categories: dict[str, dict[str, Any]],
    total_tokens: int,
    by_reason: dict[str, int] | None = None,
    recipe_name: str = "agentic-v1",
) -> dict[str, Any]:
    """A `midtrain data build` manifest.json with every section its readers check."""
    by_reason = by_reason or {}
    split = {"rows": 3, "unique_ids": 3, "tokens": total_tokens, "loss_tokens": total_tokens}
    return {
        "format": FORMAT,
        "recipe": {"name": recipe_name},
        "recipe_sha256": "0" * 64,
        "build": {
            "tokenizer": "embedded:smollm2-135m-instruct",
            "tokenizer_revision": None,
            "chat_template": "auto",
            "thought_schema": "think-plan-reflect",
        },
        "sources": sources,
        "mix": {
            "total_tokens_target": total_tokens,
            "total_tokens": total_tokens,
            "rebalanced": False,
            "notes": [],
            "categories": categories,
            "sources": {s["name"]: share(s["tokens_out"], 1.0) for s in sources},
            "clusters": {"tool": share(total_tokens, 1.0)},
        },
        "splits": {
            "train": split,
            "eval": split | {"rows": 0, "unique_ids": 0, "tokens": 0, "loss_tokens": 0},
        },
        "rejects": {"total": sum(by_reason.values()), "by_reason": by_reason},
        "files": {},
    }
