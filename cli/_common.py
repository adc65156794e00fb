"""Output helpers shared by the CLI commands: error lines, progress bars, tables."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# Plain text: what the commands print (paths, band lists like [B04, B03]) is never read as
# Rich markup; error_line and warn_line alone ask for markup, and escape the message.
console = Console(highlight=False, soft_wrap=True, markup=False)
err_console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``"1 group"``, ``"2 groups"``, ``"1,024 classes"`` (``plural`` for irregular nouns)."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def fmt_value(value: Any, digits: int = 3) -> str:
    """A metric for a terminal line: ``digits`` decimals, ``-`` for None or NaN."""
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def metrics_line(m: dict[str, Any]) -> str:
    """``micro P .. R .. F1 .. F2 .. mAP .. | macro P ..``: the test line of ``train`` and ``evaluate``."""
    return (f"micro P {fmt_value(m['micro_precision'])} R {fmt_value(m['micro_recall'])} F1 {fmt_value(m['micro_f1'])} "
            f"F2 {fmt_value(m['micro_f2'])} mAP {fmt_value(m['micro_map'])} | macro P {fmt_value(m['macro_precision'])} "
            f"R {fmt_value(m['macro_recall'])} F1 {fmt_value(m['macro_f1'])} F2 {fmt_value(m['macro_f2'])} "
            f"mAP {fmt_value(m['macro_map'])}")


def error_line(message: str) -> None:
    """Print one ``error: ...`` line on stderr."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True)


#: The running command's advice after an interruption (``error: interrupted; <advice>``).
_interrupt_advice: list[Callable[[], str]] = []


def on_interrupt(advice: Callable[[], str]) -> None:
    """Word what the user can do if the running command is interrupted (Ctrl-C, SIGTERM):
    ``advice()`` is called then, so it can look at what was written by that time."""
    _interrupt_advice[:] = [advice]


def forget_interrupt_advice() -> None:
    """Drop the advice of an earlier command run in this process (``main`` called again)."""
    _interrupt_advice.clear()


def interrupt_advice() -> str:
    """The running command's advice after an interruption, or "" (never raises)."""
    try:
        return _interrupt_advice[0]() if _interrupt_advice else ""
    except Exception:  # advice is a courtesy: the interruption must still be reported
        return ""


def warn_line(message: str) -> None:
    """Print one ``warning: ...`` line on stderr."""
    err_console.print(f"[yellow]warning:[/] {escape(message)}", markup=True)


def storage_options_for(store: str, endpoint_url: str | None) -> dict | None:
    """fsspec options for an ``s3://`` store: the endpoint from ``--endpoint-url`` or
    ``$AWS_ENDPOINT_URL`` (credentials come from the usual AWS variables); None otherwise."""
    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
    return {"endpoint_url": endpoint} if store.startswith("s3://") and endpoint else None


def show_progress(quiet: bool) -> bool:
    """Progress bars only on a terminal and without ``--quiet``."""
    return not quiet and sys.stderr.isatty()


@contextmanager
def progress_bar(description: str, total: int | None, quiet: bool, unit: str = "patches") -> Iterator[Callable[..., None]]:
    """Yield ``advance(n=1, total=None)``; draws a bar with rate and ETA on a terminal.

    ``total`` may be given (or changed) by a later ``advance(0, total=...)`` call.
    """
    if not show_progress(quiet):
        yield lambda n=1, total=None: None
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=False) as progress:
        task = progress.add_task(description, total=total, rate="")

        def advance(n: int = 1, total: int | None = None) -> None:
            if total is not None:
                progress.update(task, total=total)
            progress.advance(task, n)
            speed = progress.tasks[task].speed
            if speed:
                progress.update(task, rate=f"{speed:,.0f} {unit}/s")

        yield advance
