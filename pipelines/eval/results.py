"""Reading eval results (`EvalResults`): the column order, one cell, the Markdown table and the plot.

Shared by the eval stage (which writes them), the report and publish (which read them), so none of those
imports the stage that runs models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.artifacts import EvalResults

HELDOUT_METRICS = ("outcome", "format_rate", "call_accuracy", "recovery_rate", "irrelevance_accuracy")


def metric_columns(results: EvalResults) -> list[str]:
    """`suite/metric` columns in a stable order: BFCL categories then overall, then the held-out metrics."""
    columns: list[str] = []
    for suites in results.targets.values():
        for suite, metrics in suites.items():
            columns += [f"{suite}/{m}" for m in metrics if m != "n" and f"{suite}/{m}" not in columns]
    bfcl = [c for c in columns if c.startswith("bfcl/") and c != "bfcl/overall"]
    overall = ["bfcl/overall"] if "bfcl/overall" in columns else []
    heldout = [f"heldout/{m}" for m in HELDOUT_METRICS if f"heldout/{m}" in columns]
    return bfcl + overall + heldout


def bfcl_categories(results: EvalResults) -> list[str]:
    """The BFCL categories scored, in first-seen order."""
    columns = metric_columns(results)
    return [c.split("/", 1)[1] for c in columns if c.startswith("bfcl/") and c != "bfcl/overall"]


def bfcl_mean_label(categories: list[str]) -> str:
    """The name of our BFCL `overall`: the unweighted mean of the categories run. The leaderboard's Overall
    also weighs categories we do not run (multi-turn, agentic, …), so the name says which kind were averaged."""
    live = [c.startswith("live_") for c in categories]
    scope = "bfcl_live" if live and all(live) else "bfcl_nonlive" if not any(live) else "bfcl_mixed"
    return f"{scope}/mean"


def column_label(column: str, categories: list[str]) -> str:
    """A metric column as tables, plots, the report and model cards name it."""
    return bfcl_mean_label(categories) if column == "bfcl/overall" else column


def metric_value(suites: dict[str, Any], column: str) -> float | None:
    suite, metric = column.split("/", 1)
    return suites.get(suite, {}).get(metric)


def results_table(results: EvalResults) -> str:
    """results.md: one row per target, one column per metric, then n, timings and skipped targets."""
    columns = metric_columns(results)
    labels = [column_label(c, bfcl_categories(results)) for c in columns]
    lines = [
        f"# Eval: {results.model} (limit {results.limit})",
        "",
        "| target | " + " | ".join(labels) + " | seconds |",
        "|---" * (len(columns) + 2) + "|",
    ]
    for key, suites in results.targets.items():
        cells = [_cell(metric_value(suites, c)) for c in columns]
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {results.seconds.get(key, 0):.1f} |")
    first = next(iter(results.targets.values()), {})
    sizes = ", ".join(f"{suite} n={metrics.get('n')}" for suite, metrics in first.items())
    lines += ["", f"Examples per target: {sizes}. `–`: undefined (no such case occurred)."]
    if results.skipped:
        lines += ["", "Skipped:", *[f"- {k}: {v}" for k, v in results.skipped.items()]]
    return "\n".join(lines) + "\n"


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def plot_results(results: EvalResults, path: Path) -> None:
    """Grouped bar chart of every `suite/metric` column; an undefined metric (null) gets no bar, not a zero."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = metric_columns(results)
    targets = list(results.targets)
    width = 0.8 / max(1, len(targets))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(columns) + 2), 4.2))
    for t, key in enumerate(targets):
        values = [metric_value(results.targets[key], c) for c in columns]
        xs = [i + (t - (len(targets) - 1) / 2) * width for i in range(len(columns))]
        present = [(x, v) for x, v in zip(xs, values, strict=True) if v is not None]
        bars = ax.bar([x for x, _ in present], [v for _, v in present], width, label=key)
        # Labels tell a real 0 (a bar too short to see) from an undefined metric (no bar, "n/a").
        ax.bar_label(bars, fmt="%.2f", fontsize=6, padding=1)
        for x, v in zip(xs, values, strict=True):
            if v is None:
                ax.text(x, 0.01, "n/a", ha="center", va="bottom", fontsize=6, rotation=90, color="grey")
    labels = [column_label(c, bfcl_categories(results)) for c in columns]
    ax.set_xticks(range(len(columns)), labels, rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("score (higher is better)")
    ax.set_title(f"{results.model}: base vs adapters (limit {results.limit})", fontsize=10)
    ax.legend(fontsize=8, ncols=min(4, max(1, len(targets))))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
