"""``benzarr verify``: read every chunk of a store and check it."""

from __future__ import annotations

import json
from typing import Optional

import typer

from benzarr.errors import StoreIncompleteError, StoreVerifyError, some_of
from benzarr.verify import verify_store
from benzarr_cli._common import console, progress_bar, warn_line

#: Patch names listed per problem, and in the summary, before "... and N more" (--json lists all).
_NAMES_SHOWN = 10
_BAD_SHOWN = 50


def command(
    store: str = typer.Argument(..., help="Path of a local benzarr store."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON (every corrupt patch named)."),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", help="Reader processes (default: one per core for stores of 512 MB of shards or more, else none; 0 or 1: none)."),
    no_record: bool = typer.Option(False, "--no-record", help="Do not write the result into the store's attributes."),
    decode: bool = typer.Option(False, "--decode", help="Also decode every compressed chunk (format 1 chunks, which "
                                "have no crc32c, always are)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Read every chunk of every array and check shard indexes, chunk checksums (crc32c), shapes and
    metadata; name the corrupt patches.

    Exit 0 when the store is sound, 4 when anything is corrupt
    (its root zarr.json included), 1 when no store opens at STORE (none there, a newer format
    version) or when what is written is sound but the ingest did not finish.

    The result is recorded in the store (`benzarr info` shows "last verified").
    """
    with progress_bar("verifying", None, quiet or as_json, unit="chunks") as advance:
        report = verify_store(store, workers=workers, progress=advance, record=not no_record,
                              decode=True if decode else None)
    if as_json:
        console.print_json(json.dumps(report.to_dict()), ensure_ascii=True)  # JSON whatever the output encoding
    else:
        out = console.print
        sums = {True: "crc32c on every band chunk", False: "without chunk checksums",
                None: "no band arrays"}[report.checksums]
        out(f"store           {report.path}")
        out(f"format          benzarr store v{report.format_version}, {sums}"
            + ("" if report.complete else " (INCOMPLETE ingest: unwritten shards not checked)"))
        rate = report.bytes / report.seconds / 1e6 if report.seconds else 0.0
        out(f"checked         {report.arrays} arrays, {report.chunks:,} chunks, {report.bytes / 1e6:,.1f} MB of band "
            f"data in {report.seconds:.1f} s ({rate:,.0f} MB/s, {report.workers} worker{'s' if report.workers != 1 else ''})")
        if report.ok and not report.complete:
            out("result          OK SO FAR: what is written is sound, but the ingest did not finish")
        elif report.ok:
            out("result          OK: every index, checksum, shape and metadata file is sound")
        else:
            bad = report.bad_patches
            out(f"result          CORRUPT: {len(report.problems)} problem(s), {len(bad)} patch(es)")
            for problem in report.problems:
                out(f"  {problem.message}")
                if len(problem.rows) > 1:
                    out(f"    rows {problem.rows[0]}-{problem.rows[-1]}: {some_of(problem.patches, _NAMES_SHOWN)}")
            if bad:
                out(f"corrupt patches ({len(bad)}{'; --json lists them all' if len(bad) > _BAD_SHOWN else ''})")
                for name in bad[:_BAD_SHOWN]:
                    out(f"  {name}")
                if len(bad) > _BAD_SHOWN:
                    out(f"  ... and {len(bad) - _BAD_SHOWN} more")
    if report.not_recorded and not no_record:
        warn_line(f"result not recorded in the store: {report.not_recorded}")
    if report.ok and not report.complete:  # sound so far, but not a store to use: not exit 0
        raise StoreIncompleteError(
            f"{report.path}: the ingest did not finish (what is written is sound); run the same "
            "`benzarr ingest` command again to finish it"
        )
    if not report.ok:
        bad = report.bad_patches
        splits = sorted({p.array.removeprefix("splits/") for p in report.problems})
        if all(p.array.startswith("splits/") for p in report.problems):  # the patches are sound: no re-ingest
            fix = f"make the split{'s' if len(splits) > 1 else ''} again (benzarr split STORE --name " \
                  f"{'|'.join(splits)} ... --overwrite)"
        else:
            fix = "re-ingest the store (or restore the files named above)"
        raise StoreVerifyError(f"{report.path}: {len(report.problems)} problem(s) found, {len(bad)} corrupt patch(es); {fix}")
