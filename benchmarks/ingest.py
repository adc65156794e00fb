"""Ingest throughput against the bare cost of reading the same GeoTIFFs with the same reader.

    python benchmarks/ingest.py            # 3,000 synthetic patches (about 3 minutes on 2 cores)
    python benchmarks/ingest.py --quick    # 400 patches, under a minute

Measures, in one process run, on one synthetic archive (page cache warm):
- ``read-only``: ``benzarr.archive.read_patch`` over every patch (12 rasterio reads + JSON),
  in 1 process and in 2 processes (the same spawn pool shape ingest uses): the floor;
- ``ingest-<compression>``: ``benzarr.ingest.ingest`` with 1 and 2 workers, for none, lz4
  and zstd, store created from scratch each time;
- ``ingest-lz4-tar``: the same ingest from the archive packed into one uncompressed .tar (as the
  downloads are once decompressed), read in place; ``tar_index`` times indexing that tar (what
  every ingest of a tar does first), per member, against the standard library's tarfile;
and bytes per patch of each store's band arrays against the source archive.
Target (DESIGN.md §5): ingest >= 90% of bare reading, scaling with workers.
Writes ``benchmarks/results/ingest.json`` and prints a table with ratios.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from importlib.metadata import version
from pathlib import Path

import tarfile

import rasterio

from benzarr.archive import GDAL_ENV, discover_patches, read_patch
from benzarr.ingest import ingest
from benzarr.sources import _files
from benzarr.synth import synth_archive, tree_footprint

HERE = Path(__file__).resolve().parent


def _read_chunk(root: str, names: list[str]) -> int:
    with rasterio.Env(**GDAL_ENV):
        for name in names:
            read_patch(root, name)
    return len(names)


def bare_read(root: Path, names: list[str], workers: int, chunk: int) -> float:
    """Seconds to read every patch with ``read_patch`` in ``workers`` processes."""
    started = time.perf_counter()
    if workers == 1:
        _read_chunk(str(root), names)
    else:
        chunks = [names[i:i + chunk] for i in range(0, len(names), chunk)]
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            assert sum(pool.map(_read_chunk, [str(root)] * len(chunks), chunks)) == len(names)
    return time.perf_counter() - started


def folder_bytes(path: Path) -> int:
    return tree_footprint(path)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=3000)
    parser.add_argument("--quick", action="store_true", help="400 patches")
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--work", type=Path, default=HERE / "_work")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "ingest.json")
    args = parser.parse_args()
    n = 400 if args.quick else args.patches
    shard = min(args.shard_size, 64) if args.quick else args.shard_size

    archive = args.work / f"ingest-archive-{n}"
    if not archive.exists():
        synth_archive(archive, n, seed=0, workers=os.cpu_count())
    names = discover_patches(archive)
    source_bytes = folder_bytes(archive)
    bare_read(archive, names, 1, shard)  # warm the page cache

    rows: list[dict] = []
    floor: dict[int, float] = {}
    for workers in (1, 2):
        seconds = bare_read(archive, names, workers, shard)
        floor[workers] = n / seconds
        rows.append({"method": "read-only", "compression": "-", "workers": workers,
                     "patches_per_s": n / seconds, "seconds": seconds, "bytes_per_patch": source_bytes / n})
    for compression in ("none", "lz4", "zstd"):
        for workers in (1, 2):
            store = args.work / f"ingest-{compression}.zarr"
            shutil.rmtree(store, ignore_errors=True)
            result = ingest(archive, store, workers=workers, shard_size=shard, compression=compression)
            band_bytes = sum(folder_bytes(store / "s2" / g) for g in ("10m", "20m", "60m"))
            rows.append({"method": f"ingest-{compression}", "compression": compression, "workers": workers,
                         "patches_per_s": n / result.seconds, "seconds": result.seconds,
                         "bytes_per_patch": band_bytes / n, "store_bytes_per_patch": folder_bytes(store) / n})
    tar = args.work / f"ingest-archive-{n}.tar"
    if not tar.exists():
        with tarfile.open(tar, "w", format=tarfile.GNU_FORMAT) as out:
            out.add(archive, arcname="BigEarthNet-v1.0")
    with open(tar, "rb") as handle:  # warm the page cache, as for the folder
        while handle.read(1 << 24):
            pass
    started = time.perf_counter()
    reference = _files.TarIndex.build(str(tar), _files.tarfile_members)
    tarfile_seconds = time.perf_counter() - started
    started = time.perf_counter()
    index = _files.TarIndex.build(str(tar))
    index_seconds = time.perf_counter() - started
    assert index.dirs == reference.dirs
    members = sum(len(listing) for listing in index.dirs.values())
    for workers in (1, 2):
        store = args.work / "ingest-lz4-tar.zarr"
        shutil.rmtree(store, ignore_errors=True)
        _files.unmount_all()  # each run indexes the tar itself, as a new process would
        result = ingest(tar, store, workers=workers, shard_size=shard, compression="lz4")
        rows.append({"method": "ingest-lz4-tar", "compression": "lz4", "workers": workers,
                     "patches_per_s": n / result.seconds, "seconds": result.seconds,
                     "bytes_per_patch": sum(folder_bytes(store / "s2" / g) for g in ("10m", "20m", "60m")) / n})
    for row in rows:
        row["ratio_to_read"] = row["patches_per_s"] / floor[row["workers"]]

    report = {
        "benchmark": "ingest",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                    "load_avg_1m": os.getloadavg()[0]},
        "versions": {p: version(p) for p in ("benzarr", "zarr", "numcodecs", "rasterio", "numpy")},
        "patches": n,
        "shard_size": shard,
        "source_archive_bytes_per_patch": source_bytes / n,
        "raw_uint16_bytes_per_patch": 2 * (4 * 120 * 120 + 6 * 60 * 60 + 2 * 20 * 20),
        "tar_index": {"members": members, "seconds": index_seconds, "us_per_member": 1e6 * index_seconds / members,
                      "tarfile_seconds": tarfile_seconds, "tar_bytes": tar.stat().st_size},
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"ingest of {n:,} synthetic patches, shard size {shard}, {os.cpu_count()} CPUs")
    print(f"source archive: {source_bytes / n / 1024:.1f} KiB/patch in {len(names) * 13:,} files")
    print(f"{'method':<14} {'workers':>7} {'patches/s':>10} {'vs read':>8} {'KiB/patch':>10}")
    for row in rows:
        print(f"{row['method']:<14} {row['workers']:>7} {row['patches_per_s']:>10,.0f} "
              f"{row['ratio_to_read']:>7.0%} {row['bytes_per_patch'] / 1024:>10.1f}")
    print(f"indexing the {tar.stat().st_size / 2**20:,.0f} MB tar: {members:,} members in {index_seconds:.2f} s "
          f"({1e6 * index_seconds / members:.1f} us a member; with tarfile {tarfile_seconds:.2f} s, "
          f"{tarfile_seconds / index_seconds:.1f}x)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
