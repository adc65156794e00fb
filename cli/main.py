"""The ``benzarr`` Typer app: registers one command per module and maps errors to exit codes.

Exit codes: 0 success; 1 a fatal error (one ``error:`` line on stderr); 2 the work finished
but some inputs were bad (e.g. patches that could not be ingested, named on stderr).
"""

from __future__ import annotations

import importlib
import sys

import typer

from benzarr.errors import BenzarrError
from benzarr_cli._common import error_line

app = typer.Typer(
    name="benzarr",
    help="BigEarthNet in a sharded Zarr v3 store: ingest, split, load, train, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# command name -> module under benzarr_cli defining ``command``; order is the help order.
COMMANDS: dict[str, str] = {
    "synth": "synth",
    "ingest": "ingest",
    "info": "info",
    "split": "split",
    "bench": "bench",
    "models": "models",
    "train": "train",
    "report": "report",
    "demo": "demo",
}

for _name, _module in COMMANDS.items():
    try:
        _mod = importlib.import_module(f"benzarr_cli.{_module}")
    except ModuleNotFoundError as exc:  # a command not built yet in this checkout
        if exc.name != f"benzarr_cli.{_module}":
            raise
        continue
    app.command(_name, help=_mod.command.__doc__)(_mod.command)


@app.callback()
def _root() -> None:
    """BigEarthNet in a sharded Zarr v3 store: ingest, split, load, train, report."""


def main() -> None:
    """Console-script entry point: run the app, turning benzarr errors into one line + exit code."""
    try:
        app(standalone_mode=False)
    except BenzarrError as exc:
        error_line(str(exc))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        error_line("interrupted")
        sys.exit(130)
    except Exception as exc:  # click's own usage errors are handled below
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            error_line("aborted")
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
