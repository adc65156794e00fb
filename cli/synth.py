"""``benzarr synth``: write a synthetic BigEarthNet-S2 v1.0 archive."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from benzarr_cli._common import console, progress_bar


def command(
    out: Path = typer.Argument(..., help="Archive folder to write (created; must be empty unless --overwrite)."),
    patches: int = typer.Option(1000, "--patches", min=0, help="Number of patches (13 files each)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed; the same patches and seed give the same bytes."),
    workers: int | None = typer.Option(
        None, "--workers", min=1, help="Writer processes (default: all CPU cores)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the patch folders already in OUT."),
    labels_only: bool = typer.Option(
        False, "--labels-only",
        help="Write a labels-only benzarr store at OUT instead (real v1 patch names, synthetic "
        "skewed labels, no bands): split benchmarks at full scale (--patches 519284) in seconds.",
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Write a synthetic BigEarthNet-S2 v1.0 archive: OUT/<patch>/<patch>_B01.tif ... _B12.tif
    and <patch>_labels_metadata.json, with skewed CLC43 multi-labels that the pixels show.

    Deterministic: the same --patches and --seed give the same bytes whatever --workers is.
    """
    from benzarr.synth import archive_footprint, synth_archive, synth_labels_store

    start = time.perf_counter()
    if labels_only:
        names = synth_labels_store(out, patches, seed=seed, overwrite=overwrite)
        if not quiet:
            console.print(f"wrote a labels-only store of {len(names):,} patches to {out} "
                          f"in {time.perf_counter() - start:.1f} s", markup=False)
        return
    with progress_bar("synth", patches, quiet) as advance:
        names = synth_archive(out, patches, seed=seed, workers=workers, progress=advance, overwrite=overwrite)
    seconds = time.perf_counter() - start
    files, size = archive_footprint(out, names)
    console.print(
        f"wrote {len(names):,} patches ({files:,} files, {size / 1e6:,.1f} MB) to {out}"
        f" in {seconds:.1f} s"
    )
