"""``benzarr synth``: write a synthetic BigEarthNet archive (v1.0, v1.0 + S1, or v2.0 / reBEN)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from benzarr_cli._common import console, count, progress_bar


def command(
    out: Path = typer.Argument(..., help="Archive folder to write (created; must be empty unless --overwrite)."),
    patches: int = typer.Option(1000, "--patches", min=1, help="Number of patches."),  # 0: an archive ingest refuses
    seed: int = typer.Option(0, "--seed", help="Seed (0 .. 2**32-1); the same patches and seed give the same bytes."),
    version: int = typer.Option(
        1, "--version",
        help="1: BigEarthNet v1.0 (patch folders with JSON); 2: BigEarthNet v2.0 / reBEN "
        "(tile-product folders and metadata.parquet).",
    ),
    s1: bool = typer.Option(
        False, "--s1",
        help="Add Sentinel-1 VV/VH patches (v1: OUT/BigEarthNet-v1.0 + OUT/BigEarthNet-S1-v1.0; "
        "v2: OUT/BigEarthNet-S1).",
    ),
    reference_maps: bool = typer.Option(
        False, "--reference-maps", help="v2 only: add OUT/Reference_Maps (CORINE code per pixel)."
    ),
    workers: int | None = typer.Option(
        None, "--workers", min=1, help="Writer processes (default: all CPU cores)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace what synth wrote in OUT before."),
    labels_only: bool = typer.Option(
        False, "--labels-only",
        help="Write a labels-only benzarr store at OUT instead (real v1 patch names, synthetic "
        "skewed labels, no bands): split benchmarks at full scale (--patches 519284) in seconds.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar, no summary line."),
) -> None:
    """Write a synthetic BigEarthNet archive with skewed CLC43 multi-labels that the pixels show.

    --version 1 (default): OUT/<patch>/<patch>_B01.tif ... _B12.tif and
    <patch>_labels_metadata.json; with --s1, the v1.0 S2 + S1 download layout.

    --version 2: BigEarthNet v2.0 (reBEN): OUT/BigEarthNet-S2/<tile>/<patch>/..., optional
    OUT/BigEarthNet-S1 (--s1) and OUT/Reference_Maps (--reference-maps), metadata.parquet.

    Deterministic: the same --patches and --seed give the same bytes whatever --workers is.
    """
    from benzarr.checks import check_seed
    from benzarr.errors import InvalidArgumentError
    from benzarr.synth import (
        archive_footprint,
        synth_archive,
        synth_archive_v2,
        synth_labels_store,
        tree_footprint,
    )

    check_seed(seed, "--seed")  # every other command's range: 2**32 was accepted here alone
    if version not in (1, 2):
        raise InvalidArgumentError(f"--version must be 1 or 2, got {version}")
    if reference_maps and version != 2:
        raise InvalidArgumentError("--reference-maps needs --version 2 (v1.0 has no reference maps)")
    start = time.perf_counter()
    if labels_only:
        if version != 1 or s1:
            raise InvalidArgumentError("--labels-only writes a v1 labels store; drop --version 2 and --s1")
        names = synth_labels_store(out, patches, seed=seed, overwrite=overwrite)
        if not quiet:
            console.print(f"wrote a labels-only store of {count(len(names), 'patch', 'patches')} to {out} "
                          f"in {time.perf_counter() - start:.1f} s")
        return
    with progress_bar("synth", patches, quiet) as advance:
        if version == 2:
            names = synth_archive_v2(out, patches, seed=seed, s1=s1, reference_maps=reference_maps,
                                     workers=workers, progress=advance, overwrite=overwrite)
        else:
            names = synth_archive(out, patches, seed=seed, workers=workers, progress=advance,
                                  overwrite=overwrite, s1=s1)
    seconds = time.perf_counter() - start
    if quiet:
        return
    # v1 without S1: count the patch folders only (OUT may hold other files of the user's).
    files, size = tree_footprint(out) if version == 2 or s1 else archive_footprint(out, names)
    kind = {1: "v1.0", 2: "v2.0"}[version] + (" S2+S1" if s1 else " S2") + (" + reference maps" if reference_maps else "")
    console.print(
        f"wrote {count(len(names), 'patch', 'patches')} ({files:,} files, {size / 1e6:,.1f} MB) of a {kind} archive"
        f" to {out} in {seconds:.1f} s",
    )
