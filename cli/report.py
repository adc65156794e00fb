"""``benzarr report``: curves and tables from run folders."""

from __future__ import annotations

from pathlib import Path

import typer

from benzarr.report import write_report
from benzarr_cli._common import console


def command(
    rundirs: list[Path] = typer.Argument(..., help="Run folders (benzarr train --out), or folders of seed-<s>/ runs."),
    out: Path = typer.Option(Path("report"), "--out", help="Folder for curves.png and the tables."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
) -> None:
    """Plot loss and F1 curves and tabulate test metrics per run and per model/split (mean ± 95% CI over seeds)."""
    report = write_report(rundirs, out)
    if quiet:
        return
    console.print(f"{len(report.runs)} run(s); test metrics of the best checkpoints, mean ± 95% CI across seeds:")
    console.print(report.summary_md)
    for name, path in report.files.items():
        console.print(f"  {name:<12} {path}")
