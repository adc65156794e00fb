"""``benzarr ingest``: a BigEarthNet archive into a store."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from benzarr.errors import IngestFailedPatchesError
from benzarr.ingest import ingest
from benzarr.store import DEFAULT_COMPRESSION, DEFAULT_SHARD_SIZE
from benzarr_cli._common import console, err_console, progress_bar, show_progress


def command(
    archive: Path = typer.Argument(..., help="Folder of patch folders, or the folder holding BigEarthNet-v1.0/."),
    store: str = typer.Argument(..., help="Where to write the Zarr store (e.g. bigearthnet.zarr)."),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", help="Reader processes (default: all cores)."),
    shard_size: int = typer.Option(DEFAULT_SHARD_SIZE, "--shard-size", help="Patches per shard (power of two)."),
    compression: str = typer.Option(DEFAULT_COMPRESSION, "--compression", help="none | lz4 | zstd (band arrays)."),
    exclude: list[str] = typer.Option([], "--exclude", help="File of patch names to leave out, or an official list: cloud-shadow, seasonal-snow. Repeatable."),
    patches: Optional[Path] = typer.Option(None, "--patches", help="File of patch names: ingest only these."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first bad patch (exit 1)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a store already at STORE."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
) -> None:
    """Ingest GeoTIFF bands and JSON labels into a sharded Zarr v3 store (parallel, resumable).

    Bad patches are named on stderr and in the store, and the exit code is 2; run the same
    command again after an interruption to resume.
    """
    def bad_patch(name: str, reason: str) -> None:
        err_console.print(f"bad patch {name}: {reason}", markup=False, highlight=False)

    with progress_bar("ingest", None, quiet) as advance:
        result = ingest(
            archive, store, workers=workers, shard_size=shard_size, compression=compression,
            exclude=exclude, patches=patches, strict=strict, overwrite=overwrite,
            on_start=lambda total: advance(0, total=total), on_progress=advance, on_bad_patch=bad_patch,
        )
    if not quiet:
        rate = (result.shards_written and result.n_patches / result.seconds) or 0.0
        verb = "resumed" if result.resumed else "wrote"
        console.print(
            f"{verb} {result.store}: {result.n_patches:,} patches in {result.shards_total} shards "
            f"({result.shards_written} written this run) in {result.seconds:.1f} s ({rate:,.0f} patches/s); "
            f"{len(result.failed)} bad, {result.excluded} excluded",
            markup=False,
        )
        if result.not_in_archive:
            console.print(f"{len(result.not_in_archive)} names in --patches are not in the archive", markup=False)
    if result.failed:
        raise IngestFailedPatchesError(result.failed)
