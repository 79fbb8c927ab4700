"""Progress bars for the long loops (data build, eval), on stderr, and only where someone watches them.

A bar shows when stderr is a terminal, and not under `midtrain --quiet` (or `MIDTRAIN_QUIET=1`) or in CI (the `CI`
variable every CI service sets):
in a log file a bar is noise, and the stages log their own summary line anyway. `MIDTRAIN_PROGRESS` overrides the
terminal and CI checks (not `--quiet`): `always` (a terminal-style bar even into a pipe, as the tests use) or
`never`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

QUIET_ENV = "MIDTRAIN_QUIET"
PROGRESS_ENV = "MIDTRAIN_PROGRESS"

Update = Callable[..., None]
_quiet = False  # `midtrain --quiet`, set for each command by the CLI


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def enabled() -> bool:
    if _quiet or os.environ.get(QUIET_ENV):
        return False  # asked for by name: wins over everything
    choice = os.environ.get(PROGRESS_ENV, "auto")
    if choice in ("always", "never"):
        return choice == "always"
    return not os.environ.get("CI") and sys.stderr.isatty()


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True, force_terminal=os.environ.get(PROGRESS_ENV) == "always")


@contextmanager
def progress_bar(description: str, total: int | None = None, unit: str = "rows") -> Iterator[Update]:
    """Yields `update(completed=None, advance=0, note="")`; a no-op when bars are off. `total` None: a count
    without a bar (rows of a source whose length is unknown until read)."""
    if not enabled():
        yield lambda *args, **kwargs: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    count = MofNCompleteColumn() if total is not None else TextColumn("{task.completed:,.0f}")
    columns = (TextColumn(description), BarColumn(), count, TextColumn(unit), TextColumn("{task.fields[note]}"),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=_console(), transient=True) as bar:
        task = bar.add_task(description, total=total, note="")

        def update(completed: int | None = None, advance: int = 0, note: str | None = None) -> None:
            fields: dict[str, Any] = {} if note is None else {"note": note}
            if completed is not None:
                fields["completed"] = completed
            bar.update(task, advance=advance or None, **fields)

        yield update
        bar.refresh()  # the final count, for a console that keeps what was drawn
