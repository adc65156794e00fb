"""``benzarr report``: curves and tables from run folders."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from benzarr_cli._common import console, warn_line


def command(
    rundirs: list[Path] = typer.Argument(..., help="Run folders (benzarr train --out), or folders that hold runs up to two levels down (a folder of runs, seed-<s>/ folders of --seeds)."),
    out: Path = typer.Option(Path("report"), "--out", help="Folder for curves.png and the tables."),
    evaluation: Optional[list[str]] = typer.Option(None, "--evaluation", help="Tabulate RUN/evaluations/NAME "
                                                   "(written by benzarr evaluate, e.g. grouped-test) instead of "
                                                   "the runs' own test metrics; repeat to compare several."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors and warnings."),
) -> None:
    """Plot loss and F1 curves and tabulate test metrics per run and per model/split (mean ± 95% CI over seeds)."""
    from benzarr.report import write_report  # pandas and matplotlib: only when reporting

    report = write_report(rundirs, out, evaluations=evaluation or ())
    evaluation = report.evaluations  # each once: a repeat is read once, and this line named it twice
    for line in report.warnings:  # on stderr, also with --quiet: a row without metrics is easy to miss
        warn_line(line)
    if quiet:
        return
    what = f"metrics of the evaluations {', '.join(evaluation)}" if evaluation else "test metrics of the best checkpoints"
    count = f"{len(report.runs)} row(s) (runs x evaluations)" if evaluation else f"{len(report.runs)} run(s)"
    console.print(f"{count}; {what}, mean ± 95% CI across seeds:")
    console.print(report.summary_md)
    for name, path in report.files.items():
        console.print(f"  {name:<12} {path}")
