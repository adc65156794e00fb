"""``benzarr ingest``: a BigEarthNet archive into a store."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from benzarr.errors import IngestFailedPatchesError, some_of
from benzarr.dask_ingest import dask_runner
from benzarr.ingest import ingest, parse_part, part_shards
from benzarr.store import DEFAULT_COMPRESSION, DEFAULT_SHARD_SIZE
from benzarr_cli._common import (console, count, err_console, on_interrupt, progress_bar, storage_options_for,
                                 warn_line)


def command(
    archive: Path = typer.Argument(..., help="v1 folder of patch folders (or the folder holding BigEarthNet-v1.0/ "
                                   "and BigEarthNet-S1-v1.0/), or a v2 root with metadata.parquet; folders may be "
                                   "uncompressed .tar files, read in place (BigEarthNet-S2-v1.0.tar)."),
    store: str = typer.Argument(..., help="Where to write the Zarr store: a path or an s3:// URL."),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", help="Reader processes (default: all cores)."),
    shard_size: int = typer.Option(DEFAULT_SHARD_SIZE, "--shard-size", help="Patches per shard (power of two)."),
    compression: str = typer.Option(DEFAULT_COMPRESSION, "--compression", help="none | lz4 | zstd (band arrays)."),
    exclude: list[str] = typer.Option([], "--exclude", help="File of patch names to leave out, or an official list: cloud-shadow, seasonal-snow, no-clc19. Repeatable."),
    patches: Optional[Path] = typer.Option(None, "--patches", help="File of patch names: ingest only these."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first bad patch (exit 1)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a store already at STORE."),
    source: Optional[str] = typer.Option(None, "--source", help="v1 | v2: force the archive layout (default: detected)."),
    modalities: Optional[str] = typer.Option(None, "--modalities", help="Comma list of s2, s1, reference-map (default: what the archive has; s2 is always written, the others sit beside it)."),
    plan: bool = typer.Option(False, "--plan", help="Only create the store layout, for --part runs on other machines."),
    parts: Optional[int] = typer.Option(None, "--parts", help="With --plan: how many parts will run (lets `info` name missing ones)."),
    part: Optional[str] = typer.Option(None, "--part", help="I/N: ingest shard group I of N of a planned store."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Run each shard as a task on a Dask cluster: 'local' (a LocalCluster of --workers processes) or tcp://HOST:PORT, or a scheduler file (dask scheduler --scheduler-file FILE) (workers must see ARCHIVE and STORE at the same paths, or STORE on s3://). Needs benzarr\\[dask]."),
    endpoint_url: Optional[str] = typer.Option(None, "--endpoint-url", help="S3 endpoint for s3:// stores (default: $AWS_ENDPOINT_URL)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors and warnings."),
) -> None:
    """Ingest GeoTIFF bands and labels into a sharded Zarr v3 store (parallel, resumable).

    Bad patches are named on stderr and in the store, and the exit code is 3; run the same
    command again after an interruption to resume (or after it finished: "already complete,
    nothing to do"). --overwrite replaces only a benzarr store.
    """
    storage_options = storage_options_for(store, endpoint_url)

    def bad_patch(name: str, reason: str) -> None:
        err_console.print(f"bad patch {name}: {reason}")

    # with --overwrite, the same command would start over: resuming means leaving it out
    again = "run it again without --overwrite to resume" if overwrite else "run the same command again to resume"
    on_interrupt(lambda: f"{store}: the shards written so far are kept; {again}")

    which = parse_part(part) if part else None  # (i, n)
    with progress_bar("ingest", None, quiet or plan) as advance:
        result = ingest(
            archive, store, workers=workers, shard_size=shard_size, compression=compression,
            exclude=exclude, patches=patches, strict=strict, overwrite=overwrite, source=source,
            modalities=modalities.split(",") if modalities else None, plan=plan, parts=parts,
            part=which, storage_options=storage_options,
            on_start=lambda total: advance(0, total=total), on_progress=advance, on_bad_patch=bad_patch,
            runner=dask_runner(scheduler, workers, on_wait=warn_line) if scheduler else None,  # a warning: shown with --quiet too
        )
    if result.not_in_archive:  # on stderr, also with --quiet: the user asked for these patches
        warn_line(f"{len(result.not_in_archive):,} names in --patches are not in the archive: "
                  f"{some_of(result.not_in_archive, 10)}")
    if result.already_complete:
        if not quiet:
            bad = f" ({len(result.failed):,} bad patches, listed by `benzarr info`)" if result.failed else ""
            console.print(f"{result.store}: already complete, nothing to do{bad}")
        return
    if not quiet:
        what = f"BigEarthNet v{result.version} ({'+'.join(result.modalities)})"
        if plan:
            console.print(f"planned {result.store}: {count(result.n_patches, 'patch', 'patches')} of {what} in "
                          f"{count(result.shards_total, 'shard')}; now run `benzarr ingest ... --part I/N` for each part")
        else:
            rate = result.patches_written / result.seconds if result.shards_written else 0.0  # this run's own
            verb = "resumed" if result.resumed else "wrote"
            scope = f"part {part}: " if part else ""
            if which and not part_shards(*which, result.shards_total):
                # more parts than shards: this part has nothing to write (and did not "resume")
                console.print(f"{scope}no shard of {result.store} falls to this part "
                              f"({count(result.shards_total, 'shard')} over {which[1]} parts); nothing to do")
            elif which and not result.shards_written:
                console.print(f"{scope}already written to {result.store}; nothing to do")
            else:
                console.print(
                    f"{scope}{verb} {result.store}: {count(result.n_patches, 'patch', 'patches')} of {what} in "
                    f"{count(result.shards_total, 'shard')} ({result.shards_written} written this run) in "
                    f"{result.seconds:.1f} s ({rate:,.0f} patches/s); {len(result.failed)} bad, {result.excluded} excluded",
                )
            if not result.complete:
                missing = f" (parts still missing: {', '.join(map(str, result.missing_parts))})" if result.missing_parts else ""
                console.print(f"store not complete yet{missing}")
    if result.failed:
        raise IngestFailedPatchesError(result.failed)
