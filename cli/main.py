"""The ``benzarr`` Typer app: registers one command per module and maps errors to exit codes.

Exit codes: 0 success; 1 a fatal error (one ``error:`` line on stderr naming the path and the
cause: benzarr's own errors, OS errors such as a full disk or a read-only file system, and
any unexpected exception, whose traceback ``BENZARR_DEBUG=1`` shows); 2 a usage error of the
command line (click's: unknown option, missing argument); 3 the work finished but some inputs
were bad (patches that could not be ingested, named on stderr and in the store); 130
interrupted (Ctrl-C); 141 the reader of stdout went away (``benzarr info STORE | head``:
nothing is printed, as for a tool killed by SIGPIPE); 143 terminated (SIGTERM, as a batch scheduler sends at its time
limit: the command stops as on Ctrl-C, cleaning up the same way). Either says what the
user can do next (``benzarr ingest``: run it again to resume; ``benzarr train``: ``--resume``).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import re
import signal
import sys
import threading
import warnings
from pathlib import Path

import typer
import typer.core

from benzarr.errors import EXTRAS, BenzarrError, missing_extra
from benzarr.fsutil import os_error
from benzarr_cli._common import error_line, forget_interrupt_advice, interrupt_advice, warn_line

def _conventional_help(params: list) -> list:
    """Show parameters as the help texts name them. typer 0.29 labels every option with its
    type, so ``--quiet`` read ``--quiet <bool>``, as if it took a value (a flag takes none), and
    writes arguments in lower case, ``{store}``, where every help text says ``STORE``."""
    for param in params:
        if param.metavar is not None:
            continue
        if getattr(param, "is_bool_flag", False):
            param.metavar = ""
        elif param.param_type_name == "argument" and param.name:
            param.metavar = param.name.upper()
    return params


class _Command(typer.core.TyperCommand):
    """A command whose help shows flags as flags (see ``_conventional_help``)."""

    def get_params(self, ctx):  # type: ignore[no-untyped-def]
        return _conventional_help(super().get_params(ctx))


class _Group(typer.core.TyperGroup):
    """The root group, whose ``--version`` and ``--help`` are flags too."""

    def get_params(self, ctx):  # type: ignore[no-untyped-def]
        return _conventional_help(super().get_params(ctx))


app = typer.Typer(
    cls=_Group,
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

def help_text(doc: str | None) -> str:
    """A command's docstring as its help: each paragraph on one line. Typer keeps a docstring's
    single line breaks after the first paragraph (and in the command list), and rich then wraps
    the source lines again: "run the same" / "command again" on lines of their own. Blank
    lines still separate paragraphs."""
    paragraphs = inspect.cleandoc(doc or "").split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines() if line.strip()) for p in paragraphs)


for _name, _module in COMMANDS.items():
    _mod = importlib.import_module(f"benzarr_cli.{_module}")
    app.command(_name, cls=_Command, help=help_text(_mod.command.__doc__))(_mod.command)



def version_line() -> str:
    """``benzarr X.Y.Z (Python ..., zarr ..., torch ...)``: what a bug report needs, read from the
    installed packages' metadata (no import of torch: ``--version`` answers at once)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from benzarr import __version__

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return (f"benzarr {__version__} (Python {platform.python_version()}, zarr {installed('zarr')}, "
            f"torch {installed('torch')})")


def _show_version(value: bool) -> None:
    if value:
        typer.echo(version_line())
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                 help="Show benzarr's version (and Python's, zarr's, torch's) and exit."),
) -> None:
    """BigEarthNet in a sharded Zarr v3 store: ingest, split, load, train, evaluate, report."""


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be, so that every clean-up path of Ctrl-C runs."""


_TERMINATED: list[bool] = []


def _on_sigterm(signum: int, frame: object) -> None:
    _TERMINATED.append(True)
    raise _Terminated


_STOPPING: list[bool] = []  # the interruption is being reported: a lost one is not delivered again
_RUN = [0]  # which main() call runs (counted at its start and end): a late delivery is for that one only


def _deliver_lost_interrupt(unraisable: sys.UnraisableHookArgs) -> None:
    """``sys.unraisablehook``: a Ctrl-C (or SIGTERM) whose handler ran inside a ``__del__`` or a
    weakref callback is printed by Python as "Exception ignored" and dropped, and the command
    would go on as if never interrupted. Deliver it again, from a timer thread a moment later,
    so that it is raised in the main thread's own code once this hook has returned (at once,
    it would land in the hook and be dropped again; should it land in another callback, this
    runs again). Any other unraisable exception is shown as Python shows it."""
    exc = unraisable.exc_value
    if not isinstance(exc, KeyboardInterrupt):
        sys.__unraisablehook__(unraisable)
        return
    if _STOPPING:
        return
    import _thread

    signum = signal.SIGTERM if isinstance(exc, _Terminated) else signal.SIGINT
    run = _RUN[0]

    def deliver() -> None:
        # not once the command is already stopping, nor after its main() returned: a late
        # interrupt would escape main() and end the process with SIGINT (exit -2) instead of 130
        if _RUN[0] == run and not _STOPPING:
            _thread.interrupt_main(signum)

    while True:
        try:
            timer = threading.Timer(0.01, deliver)
            timer.daemon = True
            timer.start()
            break
        except KeyboardInterrupt:
            # On a loaded machine the main thread may wake from start()'s wait for the new
            # thread only after the timer fired: the interrupt landed here, in the hook, where
            # Python drops it (seen on Python 3.12 under load). Deliver it again. Nothing after
            # the loop calls a function, so it can land nowhere else in the hook.
            continue


def _unraisable(unraisable: sys.UnraisableHookArgs) -> None:
    """``sys.unraisablehook`` of a CLI run: a dropped Ctrl-C is delivered again
    (:func:`_deliver_lost_interrupt`); torch's notice that a DataLoader worker was killed, raised
    by its SIGCHLD handler inside a weakref callback, is not shown: the loader stops with its
    own one line for that death (``LoaderWorkerError``), and Python would print the notice as an
    "Exception ignored" traceback above it. Anything else is shown as Python shows it."""
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and re.match(r"DataLoader worker \(pid [0-9]+\) is killed by signal", str(exc)):
        return
    _deliver_lost_interrupt(unraisable)


def _stopped() -> None:
    """Report an interruption (Ctrl-C or SIGTERM) with the command's advice, and exit 130 or 143."""
    _STOPPING.append(True)
    advice = interrupt_advice()
    what, code = ("terminated (SIGTERM)", 143) if _TERMINATED else ("interrupted", 130)
    error_line(f"{what}; {advice}" if advice else what)
    sys.exit(code)


def main() -> None:
    """Console-script entry point: run the app, turning benzarr errors into one line + exit code.

    It may be called again in one process (a test, a notebook, a script that drives benzarr):
    each call starts from a clean state (no interruption or advice left from the last one) and
    puts back the SIGTERM handler, warning display and unraisable hook it installs for its run."""
    _TERMINATED.clear(), _STOPPING.clear(), forget_interrupt_advice()
    _RUN[0] += 1
    saved = (signal.getsignal(signal.SIGTERM), warnings.showwarning, sys.unraisablehook)
    asyncio_logger = logging.getLogger("asyncio")
    asyncio_level = asyncio_logger.level
    if not debug():
        # zarr-python's event loop may drop a pending read after an error, and asyncio then logs
        # "Task was destroyed but it is pending!" after the one error line: while the command
        # runs, and when the interpreter exits after it (hence the atexit hook)
        asyncio_logger.setLevel(logging.CRITICAL)
        _quiet_asyncio_at_exit()
    # not under torchrun: it SIGTERMs the other ranks when one fails, and a rank blocked in a
    # collective would never run a Python handler (it would wait for torchrun's SIGKILL)
    torchrun = "LOCAL_RANK" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and not torchrun:  # not when embedded with a handler of its own
        signal.signal(signal.SIGTERM, _on_sigterm)
    warnings.showwarning = _show_warning
    sys.unraisablehook = _unraisable
    closed = _open_closed_streams()
    errors = _lenient_streams()
    matplotlib_logger = logging.getLogger("matplotlib")
    matplotlib_logger.addFilter(_matplotlib_config_dir)
    try:
        _run()
    finally:
        matplotlib_logger.removeFilter(_matplotlib_config_dir)
        for stream, handler in errors:  # put back the streams' own error handlers
            try:
                stream.reconfigure(errors=handler)
            except (ValueError, OSError):  # closed by now: nothing will be written to it
                pass
        for name, devnull in closed:  # put back the None this run found
            devnull.close()
            setattr(sys, name, None)
        _TERMINATED.clear(), _STOPPING.clear()  # this run's; a hook called later must not see them
        _RUN[0] += 1
        handler, warnings.showwarning, sys.unraisablehook = saved
        if threading.current_thread() is threading.main_thread():  # signal.signal's own rule
            signal.signal(signal.SIGTERM, handler)
        asyncio_logger.setLevel(asyncio_level)


def _open_closed_streams() -> list[tuple[str, object]]:
    """Point a stdout or stderr that was closed when Python started (``benzarr info S >&-``:
    ``sys.stdout`` is None) at /dev/null for this run; returns (name, stream) of each.
    Python's own ``print`` writes nothing to a closed stream, and the exit code still says how
    the command went; without this, the first look at stdout stopped in a traceback
    (``AttributeError: 'NoneType' object has no attribute 'fileno'``)."""
    opened: list[tuple[str, object]] = []
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            stream = open(os.devnull, "w")  # noqa: SIM115 - closed by main when the run ends
            setattr(sys, name, stream)
            opened.append((name, stream))
    return opened


#: Characters benzarr prints (mean ± CI, names cut with …, 64 x 64, °) and their ASCII stand-ins.
_ASCII = {"\u00b1": "+/-", "\u2026": "...", "\u00d7": "x", "\u00b5": "u", "\u00b0": " deg", "\u2014": "--",
          "\u2013": "-", "\u2192": "->", "\u2190": "<-", "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'}
_ERRORS = "benzarr-output"


def _output_errors(exc: UnicodeError) -> tuple[str | bytes, int]:
    """The encode error handler of stdout and stderr while a command runs: a character the
    stream's encoding lacks becomes its ASCII stand-in (``+/-`` for ``±``), the byte of a file
    name that is not UTF-8 (a surrogate escape: ``caf\\xe9``) is written back as it was, as
    ``ls`` writes it, and anything else as a ``\\u....`` escape: never a UnicodeEncodeError."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    text = exc.object[exc.start:exc.end]
    if all(0xDC80 <= ord(c) <= 0xDCFF for c in text):
        return bytes(ord(c) - 0xDC00 for c in text), exc.end
    out = []
    for char in text:
        stand_in = _ASCII.get(char)
        if stand_in is None:
            try:  # a character the encoding has, beside one it lacks (latin-1's é)
                stand_in = char.encode(exc.encoding).decode(exc.encoding)
            except UnicodeError:  # \u00e9 (a surrogate pair above U+FFFF): what JSON and Python both read
                units = char.encode("utf-16-be")
                stand_in = "".join(f"\\u{int.from_bytes(units[i:i + 2], 'big'):04x}" for i in range(0, len(units), 2))
        out.append(stand_in)
    return "".join(out), exc.end


def _lenient_streams() -> list[tuple[object, str]]:
    """Give stdout and stderr :func:`_output_errors` as their encode error handler for this
    run; returns (stream, its handler before) of each changed. Under an ASCII locale or
    ``PYTHONIOENCODING=ascii`` (a CI job, a cron mail), ``split``'s class names cut with ``…``
    and ``report``'s ``mean ± CI`` stopped the command with a UnicodeEncodeError after it had
    written its files, and under a UTF-8 locale so did any path with a byte that is not UTF-8
    (an archive unpacked from a Windows zip)."""
    import codecs

    try:
        codecs.lookup_error(_ERRORS)
    except LookupError:
        codecs.register_error(_ERRORS, _output_errors)
    changed: list[tuple[object, str]] = []
    for stream in (sys.stdout, sys.stderr):
        errors = getattr(stream, "errors", None)
        if not hasattr(stream, "reconfigure") or errors in (None, _ERRORS):
            continue  # not a text file of Python's (a test's StringIO), or already done
        try:
            stream.reconfigure(errors=_ERRORS)  # type: ignore[attr-defined]
        except (ValueError, OSError, AttributeError):
            continue
        changed.append((stream, errors))
    return changed


def _matplotlib_config_dir(record: logging.LogRecord) -> bool:
    """A filter of matplotlib's logger while a command runs: with HOME read-only or missing (a
    cluster's compute node, a container), ``show`` and ``report`` printed matplotlib's
    "mkdir -p failed for path ..." and a 300-character "Matplotlib created a temporary cache
    directory ..." above their output. Those become one ``warning:`` line; all else passes."""
    message = str(record.msg)
    if message.startswith(("mkdir -p failed for path", "%s is not a writable directory")):
        return False
    if message.startswith("Matplotlib created a temporary cache directory") and len(record.args or ()) == 2:
        where = record.args[1]  # type: ignore[index]
        warn_line(f"matplotlib cannot write its settings and cache folder, {where}: it used a temporary "
                  "one; set MPLCONFIGDIR to a writable folder")
        return False
    return True


_AT_EXIT: list[bool] = []


def _quiet_asyncio_at_exit() -> None:
    """Silence asyncio's logger when the interpreter exits (registered once a process)."""
    if not _AT_EXIT:
        import atexit

        atexit.register(logging.getLogger("asyncio").setLevel, logging.CRITICAL)
        _AT_EXIT.append(True)


def _unexpanded_tilde(args: list[str]) -> str | None:
    """The error line for the first argument that is a path starting with ``~`` that the shell
    left as it was (quoted, ``'~/s.zarr'``, or after ``=``, ``--out=~/runs``) and that names
    nothing here, else None. benzarr takes paths literally, as every program does: ``ingest
    arch '~/s.zarr'`` wrote ./~/s.zarr, a folder named ``~`` in the current one, and said it
    wrote ``~/s.zarr`` (a later ``rm -rf ~`` to tidy it deletes the home folder); a reading
    command said "no such store" of a store that is there. No benzarr value but a path starts
    with ``~``, so every command's arguments are checked here, before any is used."""
    for arg in args:
        value = arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg
        if not value.startswith("~") or os.path.lexists(value):
            continue
        expanded = os.path.expanduser(value)
        if expanded != value:  # ~ or ~user/...: the home folder the shell would have put there
            return (f"{value}: starts with '~', which the shell did not expand (it was quoted, or came after "
                    f"'='), and benzarr reads paths as written: write {expanded} (or leave the ~ unquoted, "
                    "as its own word)")
    return None


def _run() -> None:
    """Run the app as ``main`` set it up: benzarr errors become one line and an exit code."""
    redirected = _stdout_is_devnull()  # by the user; otherwise /dev/null later means rich met a broken pipe
    tilde = _unexpanded_tilde(sys.argv[1:])
    if tilde is not None:  # a usage error of the command line, before any command runs
        error_line(tilde)
        sys.exit(2)
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
        _stopped()
    except BrokenPipeError:  # `benzarr info STORE | head`: the reader left; end quietly, as SIGPIPE would
        _quiet_stdout()
        sys.exit(141)
    except SystemExit as exc:
        # rich answers a broken pipe by pointing stdout at /dev/null and exiting 1 (click, by
        # wrapping stdout in its _PacifyFlushWrapper): the reader left, which is no error
        pacified = type(sys.stdout).__name__ in ("_PacifyFlushWrapper", "PacifyFlushWrapper")  # click's, typer's copy
        broken = (not redirected and _stdout_is_devnull()) or pacified
        if exc.code == 1 and broken:
            _quiet_stdout()
            sys.exit(141)
        raise
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
        elif isinstance(exc, MemoryError):
            error_line(f"out of memory ({_describe(exc)}); a smaller --batch-size or fewer --workers needs less")
        else:
            error_line(f"unexpected {_describe(exc)}; run with BENZARR_DEBUG=1 for the traceback")
        sys.exit(1)
    # Without standalone mode, click returns (not raises) the code of an Exit, and typer turns
    # Ctrl-C into Exit(130): the code must reach the shell, or an interrupted run reads as a success.
    if isinstance(code, int) and not isinstance(code, bool) and code != 0:
        if code == 130:
            _stopped()
        sys.exit(code)


#: Folders of benzarr's library and CLI: a warning raised from a file there is benzarr's.
_OUR_FOLDERS = tuple(str(Path(module.__file__).resolve().parent) + os.sep for module in
                     (importlib.import_module("benzarr"), importlib.import_module("benzarr_cli")))


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: object = None, line: str | None = None) -> None:
    """benzarr's warnings (mismatched --weights, a cache not written, ...) as one ``warning:``
    line, as the CLI's own; any other package's as Python shows them (file, line, source)."""
    if str(Path(filename).resolve()).startswith(_OUR_FOLDERS):
        warn_line(str(message))
    else:  # what Python's own showwarning writes
        (file or sys.stderr).write(warnings.formatwarning(message, category, filename, lineno, line))  # type: ignore[attr-defined]


def _stdout_is_devnull() -> bool:
    try:
        here, null = os.fstat(sys.stdout.fileno()), os.stat(os.devnull)
    except (OSError, ValueError):
        return False
    return (here.st_dev, here.st_ino) == (null.st_dev, null.st_ino)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush meets no closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


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
