"""Reading eval results (`EvalResults`): the column order, one cell, the Markdown table and the plot.

Shared by the eval stage (which writes them), the report and publish (which read them), so none of those
imports the stage that runs models.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pipelines.artifacts import EvalResults

HELDOUT_METRICS = ("outcome", "format_rate", "call_accuracy", "recovery_rate", "irrelevance_accuracy")
# Keys of a suite's dict that are not metric columns: its size, and each metric's 95% interval.
NOT_METRICS = ("n", "ci95")
Z95 = 1.959964


def wilson_interval(values: list[float] | list[bool], z: float = Z95) -> list[float] | None:
    """[low, high, n]: the Wilson score 95% interval of the mean of per-example scores in [0, 1].

    Wilson, not mean ± 1.96·sd/√n: at the sizes a CPU eval affords (n = 20-100) and scores near 0 or 1 the
    normal interval collapses to a point (0/20 → [0, 0]) or leaves [0, 1]; Wilson's stays honest. Scores that
    are not 0/1 (partial rewards) enter through their mean, as a proportion of n.
    """
    n = len(values)
    if n == 0:
        return None
    p = sum(float(v) for v in values) / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4), n]


def change_verdict(interval: list[float]) -> str:
    """What a paired change's 95% interval `[low, high, ...]` says, in the words the report and the cards share."""
    return (
        "excludes 0" if interval[0] > 0 or interval[1] < 0 else "includes 0: not distinguishable from noise"
    )


def metric_columns(results: EvalResults) -> list[str]:
    """`suite/metric` columns in a stable order: BFCL categories then overall, then the held-out metrics."""
    columns: list[str] = []
    for suites in results.targets.values():
        for suite, metrics in suites.items():
            columns += [
                f"{suite}/{m}" for m in metrics if m not in NOT_METRICS and f"{suite}/{m}" not in columns
            ]
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


def metric_interval(suites: dict[str, Any], column: str) -> list[float] | None:
    """[low, high, n] of a column's 95% interval, when the eval recorded one."""
    suite, metric = column.split("/", 1)
    return (suites.get(suite, {}).get("ci95") or {}).get(metric)


def bfcl_subset(results: EvalResults) -> str:
    """Which BFCL examples were scored: `eval.limit` is per category and does not bound the held-out tasks
    (`eval.heldout_limit` does), so it is not called a "limit" of the whole eval."""
    return f"first {results.limit} examples per category" if results.limit else "every example"


def results_table(results: EvalResults) -> str:
    """results.md: one row per target, one column per metric, then n, timings and skipped targets."""
    columns = metric_columns(results)
    labels = [column_label(c, bfcl_categories(results)) for c in columns]
    lines = [
        f"# Eval: {results.model} (BFCL: {bfcl_subset(results)}; held-out tasks: the n below)",
        "",
        "| target | " + " | ".join(labels) + " | seconds |",
        "|---" * (len(columns) + 2) + "|",
    ]
    for key, suites in results.targets.items():
        cells = [_cell(metric_value(suites, c), metric_interval(suites, c)) for c in columns]
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {results.seconds.get(key, 0):.1f} |")
    first = next(iter(results.targets.values()), {})
    sizes = ", ".join(f"{suite} n={metrics.get('n')}" for suite, metrics in first.items())
    lines += [
        "",
        f"Examples per target: {sizes}. `–`: undefined (no such case occurred). In brackets: the Wilson 95% "
        "interval and its n (a BFCL category's examples; the held-out tasks a metric applies to).",
    ]
    sampling = next(
        (m.get("samples") for m in (s.get("heldout", {}) for s in results.targets.values())), None
    )
    if sampling:
        lines += [
            "",
            f"Held-out episodes were sampled, {sampling} a task: a task's score is its samples' mean and each "
            "held-out interval is over tasks.",
        ]
    if results.changes:
        lines += ["", "Held-out outcome change after RL, paired per task (95% interval, n tasks):"]
        lines += [
            f"- {key} − {c['from']}: {c['change']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}] "
            f"n={int(c['ci95'][2])}" + (" (excludes 0)" if c["ci95"][0] > 0 or c["ci95"][1] < 0 else "")
            for key, c in results.changes.items()
        ]
    if results.skipped:
        lines += ["", "Skipped:", *[f"- {k}: {v}" for k, v in results.skipped.items()]]
    return "\n".join(lines) + "\n"


def _cell(value: float | None, interval: list[float] | None = None) -> str:
    if value is None:
        return "–"
    if interval is None:
        return f"{value:.3f}"
    low, high, n = interval
    return f"{value:.3f} [{low:.2f}, {high:.2f}] n={int(n)}"


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
        intervals = [metric_interval(results.targets[key], c) for c in columns]
        present = [(x, v, ci) for x, v, ci in zip(xs, values, intervals, strict=True) if v is not None]
        # Error bars: each score's Wilson 95% interval, so a gap that is noise at this n looks like noise.
        errors = [
            [v - ci[0] if ci else 0.0 for _, v, ci in present],
            [ci[1] - v if ci else 0.0 for _, v, ci in present],
        ]
        bars = ax.bar(
            [x for x, _, _ in present], [v for _, v, _ in present], width, label=key,
            yerr=errors, error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "#333333"},
        )  # fmt: skip
        # Labels tell a real 0 (a bar too short to see) from an undefined metric (no bar, "n/a").
        ax.bar_label(bars, fmt="%.2f", fontsize=6, padding=1)
        for x, v in zip(xs, values, strict=True):
            if v is None:
                ax.text(x, 0.01, "n/a", ha="center", va="bottom", fontsize=6, rotation=90, color="grey")
    labels = [column_label(c, bfcl_categories(results)) for c in columns]
    ax.set_xticks(range(len(columns)), labels, rotation=35, ha="right", fontsize=8)
    # Every column, not the bars' extent: that alone left a last column's "n/a" outside the axes.
    ax.set_xlim(-0.5, len(columns) - 0.5)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("score (higher is better)")
    ax.set_title(
        # Two lines: with few metric columns the figure is narrow and one line was cut at its right edge.
        f"{results.model}: base vs adapters\n(BFCL: {bfcl_subset(results)}; bars: Wilson 95% intervals)",
        fontsize=10,
    )
    ax.legend(fontsize=8, ncols=min(4, max(1, len(targets))))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
