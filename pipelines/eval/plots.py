"""results.png: one group of bars per metric, one bar per target, so base vs adapters reads at a glance."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_results(results: dict[str, Any], path: Path) -> None:
    """Grouped bar chart of every `suite/metric` column; an undefined metric (null) gets no bar, not a zero."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipelines.eval.stage import metric_columns, metric_value

    columns = metric_columns(results)
    targets = list(results["targets"])
    width = 0.8 / max(1, len(targets))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(columns) + 2), 4.2))
    for t, key in enumerate(targets):
        values = [metric_value(results["targets"][key], c) for c in columns]
        xs = [i + (t - (len(targets) - 1) / 2) * width for i in range(len(columns))]
        present = [(x, v) for x, v in zip(xs, values, strict=True) if v is not None]
        bars = ax.bar([x for x, _ in present], [v for _, v in present], width, label=key)
        # Labels tell a real 0 (a bar too short to see) from an undefined metric (no bar, "n/a").
        ax.bar_label(bars, fmt="%.2f", fontsize=6, padding=1)
        for x, v in zip(xs, values, strict=True):
            if v is None:
                ax.text(x, 0.01, "n/a", ha="center", va="bottom", fontsize=6, rotation=90, color="grey")
    ax.set_xticks(range(len(columns)), columns, rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("score (higher is better)")
    ax.set_title(f"{results['model']}: base vs adapters (limit {results['limit']})", fontsize=10)
    ax.legend(fontsize=8, ncols=min(4, max(1, len(targets))))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
