"""The ``benzarr`` Typer app: registers one command per module and maps errors to exit codes.

Exit codes: 0 success; 1 a fatal error (one ``error:`` line on stderr naming the path and the
cause: benzarr's own errors, OS errors such as a full disk or a read-only file system, and
any unexpected exception, whose traceback ``BENZARR_DEBUG=1`` shows); 2 a usage error of the
command line (click's: unknown option, missing argument); 3 the work finished but some inputs
were bad (patches that could not be ingested, named on stderr and in the store); 130
interrupted (Ctrl-C).
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from benzarr.errors import EXTRAS, BenzarrError, missing_extra
from benzarr.fsutil import os_error
from benzarr_cli._common import error_line

app = typer.Typer(
    name="benzarr",
    help="BigEarthNet in a sharded Zarr v3 store: ingest, split, load, train, evaluate, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# command name -> module under benzarr_cli defining ``command``; order is the help order.
COMMANDS: dict[str, str] = {
    "synth": "synth",
    "examples": "examples",
    "ingest": "ingest",
    "info": "info",
    "verify": "verify",
    "split": "split",
    "show": "show",
    "bench": "bench",
    "models": "models",
    "train": "train",
    "evaluate": "evaluate",
    "report": "report",
    "demo": "demo",
}

for _name, _module in COMMANDS.items():
    _mod = importlib.import_module(f"benzarr_cli.{_module}")
    app.command(_name, help=_mod.command.__doc__)(_mod.command)



@app.callback()
def _root() -> None:
    """BigEarthNet in a sharded Zarr v3 store: ingest, split, load, train, evaluate, report."""


def main() -> None:
    """Console-script entry point: run the app, turning benzarr errors into one line + exit code."""
    try:
        code = app(standalone_mode=False)
    except BenzarrError as exc:
        error_line(str(exc))
        sys.exit(exc.exit_code)
    except ModuleNotFoundError as exc:  # a package of an optional extra: the same line as missing_extra's
        if (exc.name or "").split(".")[0] not in EXTRAS:
            raise
        error_line(str(missing_extra(exc.name)))
        sys.exit(1)
    except KeyboardInterrupt:
        error_line("interrupted")
        sys.exit(130)
    except Exception as exc:  # usage errors of click (or typer's vendored copy of it)
        if _is_click(exc, "ClickException"):
            exc.show()  # type: ignore[attr-defined]
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        if _is_click(exc, "Abort"):
            error_line("aborted")
            sys.exit(1)
        if debug():
            raise
        if isinstance(exc, OSError):  # full disk, read-only file system, ... where no path was known
            error_line(str(os_error(exc, action="running")))
        else:
            error_line(f"unexpected {_describe(exc)}; run with BENZARR_DEBUG=1 for the traceback")
        sys.exit(1)
    # Without standalone mode, click returns (not raises) the code of an Exit, and typer turns
    # Ctrl-C into Exit(130): the code must reach the shell, or an interrupted run reads as a success.
    if isinstance(code, int) and not isinstance(code, bool) and code != 0:
        if code == 130:
            error_line("interrupted")
        sys.exit(code)


def debug() -> bool:
    """True when ``BENZARR_DEBUG`` is set to anything but empty or ``0``: show tracebacks."""
    return os.environ.get("BENZARR_DEBUG", "") not in ("", "0")


def _describe(exc: BaseException) -> str:
    """``TypeName: first line of the message`` (the message alone can be empty or many lines)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _is_click(exc: BaseException, name: str) -> bool:
    """True if ``exc`` is click's ``name`` exception, from click or from ``typer._click``."""
    classes = []
    for module in ("click.exceptions", "typer._click.exceptions"):
        try:
            classes.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return isinstance(exc, tuple(classes))


if __name__ == "__main__":
    main()
