"""`midtrain` command line. Exit codes: 0 ok, 2 bad input (message names file/key/row), 1 internal failure.

Stage modules are imported inside each command so `midtrain config show` stays fast and torch-free.
"""

from __future__ import annotations

import json
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


def main() -> None:
    """Console-script entry: map our exceptions to exit codes, with one clear message on stderr."""
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
