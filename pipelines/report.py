"""The run report: `runs/<name>/report.md` and `report.html`, built from what each stage left on disk.

The report is a list of blocks (heading, paragraph, table, image, code, link) rendered twice, so the Markdown
and the HTML never disagree. Images and raw JSON files are linked relative to the run dir, so the folder can be
copied whole; raw JSON is linked, never inlined: a reader gets tables and a few example replies per adapter,
and the files hold the rest.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

from pipelines.artifacts import EvalResults, ReportIndex, RLSummary, RouterAccuracy, SFTSummary, StageMarker
from pipelines.config import load_json
from pipelines.data.manifest import read_manifest
from pipelines.eval.results import (
    bfcl_categories,
    change_verdict,
    column_label,
    metric_columns,
    metric_interval,
    metric_value,
)
from pipelines.run_config import RunConfig
from pipelines.stages import STAGES

Block = tuple[str, Any]


def _read(path: Path) -> dict[str, Any] | None:
    return load_json(path, f"midtrain's {path.name}") if path.is_file() else None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "—" if value is None else str(value)


def _scored(value: Any, interval: list[float] | None) -> str:
    if interval is None or not isinstance(value, float):
        return _fmt(value)
    low, high, n = interval
    return f"{value:.3f} [{low:.2f}, {high:.2f}] n={int(n)}"


def stages_section(config: RunConfig) -> list[Block]:
    rows = []
    for stage in STAGES:
        record = StageMarker.read_if_present(stage.out_dir(config))
        if record:
            rows.append(
                [
                    stage.name,
                    f"{record.wall_s:.1f}",
                    f"{record.peak_rss_mb:.0f}",
                    "yes" if record.resumed else "no",
                ]
            )
    return (
        [("h2", "Stages"), ("table", (["stage", "wall (s)", "peak RSS (MB)", "resumed"], rows))]
        if rows
        else []
    )


def data_section(run_dir: Path) -> list[Block]:
    manifest = read_manifest(run_dir / "data") if (run_dir / "data" / "manifest.json").is_file() else None
    if not manifest:
        return []
    mix = manifest["mix"]
    rows = [
        [k, c["tokens"], _fmt(c.get("target_share")), _fmt(c["share"])] for k, c in mix["categories"].items()
    ]
    sources = [
        [
            s["name"],
            s["type"],
            s.get("rows_out"),
            s.get("tokens_out"),
            _fmt(s.get("epochs_used")),
            s.get("rejects_total"),
        ]
        for s in manifest["sources"]
    ]
    blocks: list[Block] = [
        ("h2", "Data mix"),
        (
            "p",
            f"{mix['total_tokens']:,} tokens (target {mix['total_tokens_target']:,}); "
            f"{manifest['rejects']['total']} rows rejected (see `data/rejects.jsonl`).",
        ),
        ("table", (["category", "tokens", "target share", "achieved share"], rows)),
        ("table", (["source", "type", "rows out", "tokens out", "epochs used", "rejects"], sources)),
    ]
    if manifest["rejects"]["by_reason"]:
        blocks.append(
            ("table", (["reject reason", "rows"], sorted(manifest["rejects"]["by_reason"].items())))
        )
    if (run_dir / "data" / "mix.png").is_file():
        blocks.append(("img", ("data/mix.png", "mix by category, source and cluster")))
    return blocks


def training_section(run_dir: Path, stage: str, title: str, plot: str) -> list[Block]:
    summary_type = SFTSummary if stage == "sft" else RLSummary
    folders = sorted(p.parent for p in (run_dir / stage).glob(f"*/{summary_type.FILE}"))
    if not folders:
        return []
    rows: list[list[Any]] = []
    blocks: list[Block] = [("h2", title)]
    for folder in folders:
        summary = summary_type.read(folder)
        rows.append(
            [
                folder.name,
                summary.steps,
                getattr(summary, "tokens_seen", None),
                _fmt(getattr(summary, "final_train_loss", None)),
                _fmt(getattr(summary, "final_eval_loss", None)),
                _fmt(summary.wall_time_s),
            ]
        )
    blocks.append(
        ("table", (["adapter", "steps", "tokens", "final train loss", "final eval loss", "wall (s)"], rows))
    )
    for folder in folders:
        if (folder / plot).is_file():
            blocks.append(("img", (f"{stage}/{folder.name}/{plot}", f"{stage} {folder.name}")))
        before_after = _read(folder / "eval_before_after.json")
        if before_after:
            blocks += before_after_blocks(f"{stage}/{folder.name}", before_after)
    return blocks


def before_after_blocks(where: str, payload: dict[str, Any]) -> list[Block]:
    """RL's held-out evaluation before and after training: a table of the headline metrics, the file linked."""
    before, after = payload.get("before") or {}, payload.get("after") or {}
    n = len((payload.get("heldout") or {}).get("task_ids") or [])
    rows = [
        [key, _fmt(before.get(key)), _fmt(after.get(key)), _signed(after.get(key), before.get(key))]
        for key in ("outcome", "format_rate", "call_accuracy", "mean_tool_calls")
        if key in before or key in after
    ]
    rewards = sorted(set(before.get("rewards") or {}) | set(after.get("rewards") or {}))
    rows += [
        [f"reward/{name}", _fmt(before["rewards"].get(name)), _fmt(after["rewards"].get(name)),
         _signed(after["rewards"].get(name), before["rewards"].get(name))]
        for name in rewards if "rewards" in before and "rewards" in after
    ]  # fmt: skip
    change = (payload.get("delta") or {}).get("outcome_ci95")
    interval = (
        f" Outcome change per task, 95% interval (paired): [{change[0]:+.3f}, {change[1]:+.3f}] — "
        f"{change_verdict(change)}."
        if change
        else ""
    )
    sampling = after.get("sampling")
    decoded = (
        f", {sampling['samples']} samples a task at temperature {sampling['temperature']}: a task's outcome is "
        "their mean"
        if sampling
        else ", greedy"
    )
    return [
        ("p", f"{where}: held-out tasks before and after GRPO (n = {n} tasks{decoded}).{interval}"),
        ("table", (["metric", "before", "after", "change"], rows)),
        ("link", (f"{where}/eval_before_after.json", "every rollout, before and after (JSON)")),
    ]


def _signed(after: Any, before: Any) -> str:
    if not isinstance(after, (int, float)) or not isinstance(before, (int, float)):
        return "—"
    return f"{after - before:+.3f}"


def router_section(run_dir: Path) -> list[Block]:
    accuracy = RouterAccuracy.read_if_present(run_dir / "router")
    if not accuracy:
        return []
    rows = [
        [c, _fmt(m.precision), _fmt(m.recall), _fmt(m.f1), int(m.support)]
        for c, m in accuracy.per_cluster.items()
    ]
    blocks: list[Block] = [
        ("h2", "Router"),
        ("p", f"Held-out routing accuracy {accuracy.accuracy:.3f} on {accuracy.n} requests."),
        ("table", (["cluster", "precision", "recall", "F1", "support"], rows)),
    ]
    if (run_dir / "router" / "confusion.png").is_file():
        blocks.append(("img", ("router/confusion.png", "router confusion matrix")))
    return blocks


def eval_section(run_dir: Path) -> list[Block]:
    results = EvalResults.read_if_present(run_dir / "eval")
    if not results:
        return []
    metrics = metric_columns(results)
    rows = [
        [target, *(_scored(metric_value(values, m), metric_interval(values, m)) for m in metrics)]
        for target, values in results.targets.items()
    ]
    blocks: list[Block] = [
        ("h2", "Evaluation"),
        ("table", (["target", *(column_label(m, bfcl_categories(results)) for m in metrics)], rows)),
        ("p", "Each score with its Wilson 95% interval and n (examples of a BFCL category; held-out tasks a "
              "metric applies to): two targets differ beyond noise where their intervals do not overlap."),
    ]  # fmt: skip
    for target, change in results.changes.items():
        low, high, n = change["ci95"]
        verdict = change_verdict(change["ci95"])
        blocks.append(
            ("p", f"{target} against {change['from']}, the adapter GRPO started from: held-out outcome change "
                  f"{change['change']:+.3f}, 95% interval paired per task [{low:+.3f}, {high:+.3f}] (n = {int(n)} "
                  f"tasks) — {verdict}.")
        )  # fmt: skip
    for target, reason in results.skipped.items():
        blocks.append(("p", f"Skipped {target}: {reason}"))
    for warning in results.warnings:
        blocks.append(("p", f"Warning: {warning}"))
    if (run_dir / "eval" / "results.png").is_file():
        blocks.append(("img", ("eval/results.png", "base vs adapters")))
    blocks.append(("link", ("eval/results.json", "all scores (JSON)")))
    predictions = run_dir / "eval" / "predictions.jsonl"
    if predictions.is_file():
        blocks += example_blocks(predictions)
        blocks.append(("link", ("eval/predictions.jsonl", "every prediction (JSON lines)")))
    return blocks


EXAMPLES_PER_TARGET = 3
REPLY_CHARS = 700


def example_blocks(predictions: Path) -> list[Block]:
    """A few predictions per target, chosen to show different things: a held-out success, a failure with its
    reason, a BFCL reply. Calls are written as calls, replies truncated."""
    by_target: dict[str, list[dict[str, Any]]] = {}
    for line in predictions.read_text(encoding="utf-8").splitlines():
        row = json.loads(line) if line.strip() else None
        if isinstance(row, dict) and "target" in row:
            by_target.setdefault(str(row["target"]), []).append(row)
    if not by_target:
        return []
    blocks: list[Block] = [("h3", "Example replies")]
    for target, rows in by_target.items():
        blocks.append(("h4", target))
        for row in pick_examples(rows):
            where = row.get("domain") or row.get("category") or ""
            verdict = "passed" if row.get("ok") else f"failed: {row.get('error') or 'wrong'}"
            calls = "; ".join(_call_text(c) for c in row.get("calls") or []) or "no tool call"
            blocks.append(
                ("p", f"{row.get('suite')} · {where} · `{row.get('id')}` — {verdict}. Calls: {calls}")
            )
            blocks.append(("code", conversation_text(row.get("raw"))))
    return blocks


TURN_CHARS = 300


def conversation_text(raw: Any) -> str:
    """A reply as a reader wants it: a BFCL reply as written; a held-out episode (its messages) one turn per
    paragraph, tool results as their own turns under the tool's name, each turn truncated."""
    if not isinstance(raw, list):
        return _truncate(str(raw or ""), REPLY_CHARS)
    turns = []
    for message in raw:
        if not isinstance(message, dict):
            continue
        role = str(message.get("role") or "?")
        label = f"tool result ({message['name']})" if role == "tool" and message.get("name") else role
        turns.append(f"[{label}]\n{_truncate(str(message.get('content') or '').strip(), TURN_CHARS)}")
    return _truncate("\n\n".join(turns), 4 * REPLY_CHARS)


def pick_examples(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    wanted = [
        lambda r: r.get("suite") == "heldout" and r.get("ok") and r.get("calls"),
        lambda r: r.get("suite") == "heldout" and not r.get("ok"),
        lambda r: r.get("suite") == "bfcl",
        lambda r: True,
    ]
    chosen: list[dict[str, Any]] = []
    for test in wanted:
        found = next((r for r in rows if test(r) and r not in chosen), None)
        if found is not None and len(chosen) < EXAMPLES_PER_TARGET:
            chosen.append(found)
    return chosen


def _call_text(call: Any) -> str:
    if not isinstance(call, dict):
        return str(call)
    args = call.get("arguments")
    if isinstance(args, dict):
        inner = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in args.items())
    else:
        inner = json.dumps(args, ensure_ascii=False)
    return _truncate(f"{call.get('name')}({inner})", 200)


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"… [{len(text) - limit:,} more characters]"


def reproduce_section(config: RunConfig, config_path: str) -> list[Block]:
    run_dir = config.run_dir
    commands = [
        "make setup",
        f"midtrain run {config_path}",
        "",
        "# or stage by stage:",
        f"midtrain data build {config_path}",
        f"midtrain data verify {run_dir / 'data'}",
        f"midtrain sft {config_path}",
        f"midtrain rl {config_path}",
        f"midtrain router train {config_path}",
        f"midtrain eval {config_path}",
        f"midtrain publish {config_path} --dry-run {run_dir / 'publish'}",
    ]
    return [("h2", "Reproduce"), ("code", "\n".join(commands))]


def build_blocks(config: RunConfig, config_path: str) -> list[Block]:
    run_dir = config.run_dir
    return [
        ("h1", f"midtrain run `{config.name}`"),
        ("p", f"Base model `{config.model.name_or_path}`, thought schema `{config.model.thought_schema}`."),
        *stages_section(config),
        *data_section(run_dir),
        *training_section(run_dir, "sft", "SFT: thought-cluster adapters", "loss.png"),
        *training_section(run_dir, "rl", "RL: GRPO on tool-use rewards", "rewards.png"),
        *router_section(run_dir),
        *eval_section(run_dir),
        *reproduce_section(config, config_path),
    ]


def to_markdown(blocks: list[Block]) -> str:
    out = []
    for kind, value in blocks:
        if kind in ("h1", "h2", "h3", "h4"):
            out.append(f"{'#' * int(kind[1])} {value}")
        elif kind == "p":
            out.append(value)
        elif kind == "table":
            headers, rows = value
            out.append(
                "\n".join(
                    [
                        "| " + " | ".join(map(str, headers)) + " |",
                        "|" + " --- |" * len(headers),
                        *("| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows),
                    ]
                )
            )
        elif kind == "img":
            out.append(f"![{value[1]}]({value[0]})")
        elif kind == "code":
            out.append(f"```\n{value}\n```")
        elif kind == "link":
            out.append(f"Raw: [{value[1]}]({value[0]})")
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    """Escaped text with Markdown's `code` spans as <code>: the blocks' text is written for both formats."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def to_html(blocks: list[Block], title: str) -> str:
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px}"
        "img{max-width:100%}pre{background:#f5f5f5;padding:1em;overflow:auto;white-space:pre-wrap;"
        "overflow-wrap:anywhere;max-height:20em}code{background:#f0f0f0;padding:0 3px}.wide{overflow-x:auto}"
        "</style></head><body>",
    ]
    for kind, value in blocks:
        if kind in ("h1", "h2", "h3", "h4"):
            parts.append(f"<{kind}>{_inline(value)}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{_inline(value)}</p>")
        elif kind == "table":
            headers, rows = value
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
            body = "".join(
                "<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows
            )
            # Wide tables (the eval table has a column per metric) scroll inside the page instead of running off it.
            parts.append(f"<div class='wide'><table><tr>{head}</tr>{body}</table></div>")
        elif kind == "img":
            parts.append(f"<img src='{html.escape(value[0])}' alt='{html.escape(value[1])}'>")
        elif kind == "code":
            parts.append(f"<pre>{html.escape(value)}</pre>")
        elif kind == "link":
            parts.append(f"<p>Raw: <a href='{html.escape(value[0])}'>{html.escape(value[1])}</a></p>")
    return "".join(parts) + "</body></html>\n"


def run(config: RunConfig) -> ReportIndex:
    """The report stage: `report.md` + `report.html` (+ `report.json`, their index) in the run folder."""
    blocks = build_blocks(config, config.source_path)
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "report.md").write_text(to_markdown(blocks))
    (run_dir / "report.html").write_text(to_html(blocks, f"midtrain {config.name}"))
    images = [value[0] for kind, value in blocks if kind == "img"]
    index = ReportIndex(report=str(run_dir / "report.md"), html=str(run_dir / "report.html"), images=images)
    index.write(run_dir)
    return index
