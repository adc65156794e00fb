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
    "examples": "examples",
    "ingest": "ingest",
    "info": "info",
    "verify": "verify",
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


#: Packages of the optional extras: a command that needs a missing one says which extra to install.
_OPTIONAL_PACKAGES = {
    "torch": "train", "torchvision": "train", "tensorboard": "train", "tbparse": "train",
    "h5py": "bench", "lmdb": "bench", "safetensors": "bench", "tfrecord": "bench", "tensorstore": "bench",
    "moto": "test", "s3fs": "test", "bigearthnet_common": "examples", "codecarbon": "emissions",
}


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
    except ModuleNotFoundError as exc:
        extra = _OPTIONAL_PACKAGES.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        error_line(f"this command needs {exc.name}, which comes with an extra: pip install 'benzarr[{extra}]'")
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
        raise


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
