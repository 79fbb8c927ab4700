"""`midtrain data inspect DIR`: the mix at a glance, from manifest.json and the shards.

Prints rich tables (shares by category/source/cluster, per-source rows/tokens/epochs/rejects, splits,
rejects by reason) and writes `mix.png`: target vs achieved token shares by category, source and cluster,
the tool-calls-per-trace histogram and the token-length histogram per category.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table
from rich.text import Text

from pipelines.data.manifest import read_manifest

PNG = "mix.png"
_SINGULAR = {"categories": "category", "sources": "source", "clusters": "cluster"}


def inspect_dir(data_dir: str | Path, console: Console | None = None) -> Path:
    """Print the tables and (re)write mix.png; returns the PNG path."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    console = console or Console()
    for table in tables(manifest):
        console.print(table)
    return plot_mix(data_dir, manifest)


def tables(manifest: dict[str, Any]) -> list[Table]:
    mix = manifest["mix"]
    out = [
        _share_table("categories", mix["categories"]),
        _share_table("sources", mix["sources"]),
        _share_table("clusters", mix["clusters"]),
        _sources_table(manifest["sources"]),
    ]
    splits = Table(title="splits")
    for col in ("split", "rows", "unique ids", "tokens", "loss tokens"):
        splits.add_column(col, justify="right" if col != "split" else "left")
    for name, s in manifest["splits"].items():
        splits.add_row(
            name, f"{s['rows']:,}", f"{s['unique_ids']:,}", f"{s['tokens']:,}", f"{s['loss_tokens']:,}"
        )
    out.append(splits)
    rejects = Table(title=f"rejects ({manifest['rejects']['total']:,})")
    rejects.add_column("stage/reason")
    rejects.add_column("rows", justify="right")
    for reason, count in manifest["rejects"]["by_reason"].items():
        rejects.add_row(Text(reason), f"{count:,}")
    out.append(rejects)
    return out


def _share_table(title: str, entries: dict[str, Any]) -> Table:
    table = Table(title=f"token shares by {_SINGULAR[title]}")
    for col in ("name", "target share", "achieved share", "Δ", "target tokens", "tokens"):
        table.add_column(col, justify="left" if col == "name" else "right")
    for name, e in entries.items():
        delta = e["share"] - e.get("target_share", e["share"])
        table.add_row(
            Text(name),  # recipe names are user text, never Rich markup
            f"{e.get('target_share', 0):.4f}",
            f"{e['share']:.4f}",
            f"{delta:+.4f}",
            f"{e.get('target_tokens', 0):,}",
            f"{e['tokens']:,}",
        )
    return table


def _sources_table(sources: list[dict[str, Any]]) -> Table:
    table = Table(title="sources")
    cols = ("source", "category", "rows in", "clean", "out", "tokens in", "tokens out", "epochs", "rejects")
    for col in cols:
        table.add_column(col, justify="left" if col in ("source", "category") else "right")
    for s in sources:
        table.add_row(
            Text(s["name"]),
            s["category"],
            f"{s['rows_in']:,}",
            f"{s['rows_clean']:,}",
            f"{s['rows_out']:,}",
            f"{s['tokens_in']:,}",
            f"{s['tokens_out']:,}",
            f"{s['epochs_used']:.2f}",
            f"{s['rejects_total']:,}",
        )
    return table


def _shard_columns(data_dir: Path, manifest: dict[str, Any]) -> dict[str, list[Any]]:
    """Only the small columns the histograms need, shard by shard (never the token lists)."""
    cols: dict[str, list[Any]] = {"kind": [], "category": [], "difficulty": [], "n_tokens": [], "epoch": []}
    for name in sorted(manifest["files"]):
        if name.endswith(".parquet"):
            table = pq.read_table(data_dir / name, columns=list(cols))
            for key in cols:
                cols[key].extend(table[key].to_pylist())
    return cols


def plot_mix(data_dir: Path, manifest: dict[str, Any]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = _shard_columns(data_dir, manifest)
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    for ax, key in zip(axes[0], ("categories", "sources", "clusters"), strict=True):
        _share_bars(ax, key, manifest["mix"][key])
    first_use = [i for i, e in enumerate(cols["epoch"]) if e == 0]
    calls = [cols["difficulty"][i] for i in first_use if cols["kind"][i] == "tool"]
    ax = axes[1][0]
    if calls:
        ax.hist(calls, bins=range(0, max(calls) + 2), align="left", rwidth=0.8, color="tab:blue")
        ax.set_xticks(range(0, max(calls) + 1))
    ax.set(title="tool calls per trace (unique tool rows)", xlabel="tool calls", ylabel="traces")
    ax = axes[1][1]
    lengths = [cols["n_tokens"][i] for i in first_use]
    bins = list(range(0, max(lengths, default=0) + 64, max(1, (max(lengths, default=0) + 63) // 40)))
    for cat in sorted(set(cols["category"])):
        ax.hist(
            [n for i, n in zip(first_use, lengths, strict=True) if cols["category"][i] == cat],
            bins=bins,
            alpha=0.5,
            label=cat,
        )
    ax.set(title="tokens per row (unique rows)", xlabel="tokens", ylabel="rows")
    ax.legend()
    _summary_text(axes[1][2], manifest)
    fig.suptitle(f"mix {manifest['recipe']['name']}: {manifest['mix']['total_tokens']:,} tokens")
    fig.tight_layout()
    path = data_dir / PNG
    fig.savefig(path, dpi=80, metadata={"Software": None})
    plt.close(fig)
    return path


def _share_bars(ax: Any, title: str, entries: dict[str, Any]) -> None:
    names = list(entries)
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [entries[n].get("target_share", 0) for n in names], 0.4, label="target")
    ax.bar([i + 0.2 for i in x], [entries[n]["share"] for n in names], 0.4, label="achieved")
    ax.set_xticks(list(x), names, rotation=30, ha="right", fontsize=8)
    ax.set(title=f"token share by {_SINGULAR[title]}: target vs achieved", ylabel="share of tokens")
    ax.legend(fontsize=8)


def _summary_text(ax: Any, manifest: dict[str, Any]) -> None:
    ax.axis("off")
    splits = manifest["splits"]
    width = max(map(len, splits), default=0) + 1
    lines = [
        *[f"{name + ':':<{width}} {s['rows']:,} rows, {s['tokens']:,} tokens" for name, s in splits.items()],
        f"rejects: {manifest['rejects']['total']:,}",
        *[f"  {k}: {v:,}" for k, v in list(manifest["rejects"]["by_reason"].items())[:12]],
    ]
    if manifest["mix"]["rebalanced"]:
        lines += ["rebalanced (allow_shortfall):", *[f"  {n}" for n in manifest["mix"]["notes"]]]
    ax.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=9)
