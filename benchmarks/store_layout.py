"""Creating an empty store's layout (every array's zarr.json), node by node against in one pass.

``create_store`` used to call ``create_array`` on the target store for each of the ~45 arrays of
an S2 store; each call checks, one request after another, that no node is in its way and that
every parent group exists. It now lays the arrays out in an in-memory group
(:func:`benzarr.store.lay_out`) and writes every node once, concurrently
(:func:`benzarr.store.write_layout`, ``zarr.create_hierarchy``). Both methods run here, in the
same process, on:

* ``local``: a folder on this disk;
* ``s3``: a moto S3 server on 127.0.0.1 (its own process; loopback, so requests cost moto's
  time only);
* ``s3+<N>ms``: the same server behind ``latency_proxy.py``, which delays every request by N ms,
  as a first byte from real S3 does.

Usage::

    python benchmarks/store_layout.py [--patches 1000] [--latency-ms 20] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, latency_proxy, machine_info, print_table, s3_copy, versions, write_json  # noqa: E402

import zarr  # noqa: E402

from benzarr.store import lay_out, write_layout  # noqa: E402

NAMES = "S2A_MSIL2A_20170613T101031_{i}_{j}"
SHARD_SIZE = 256


def node_by_node(group: zarr.Group, names: list[str]) -> None:
    """The layout as create_store wrote it before: ``create_array`` on the store, array by array."""
    lay_out(group, names, shard_size=SHARD_SIZE, compression="lz4", modalities=("s2",))


def one_pass(group: zarr.Group, names: list[str]) -> None:
    """benzarr's way: laid out in memory, then ``write_layout``."""
    layout = zarr.open_group(zarr.storage.MemoryStore(), mode="w", zarr_format=3)
    lay_out(layout, names, shard_size=SHARD_SIZE, compression="lz4", modalities=("s2",))
    write_layout(group, layout)


METHODS: dict[str, Callable[[zarr.Group, list[str]], None]] = {"create_array-node-by-node": node_by_node,
                                                                "create_hierarchy-one-pass": one_pass}


@contextlib.contextmanager
def s3_bucket(latency_ms: float, log: Callable[[str], None]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(URL prefix, storage options) of an empty bucket on moto, behind the latency proxy when
    ``latency_ms``."""
    with tempfile.TemporaryDirectory() as empty, s3_copy(Path(empty), log) as s3:
        proxy = latency_proxy(s3["endpoint"], latency_ms) if latency_ms else contextlib.nullcontext(s3["endpoint"])
        with proxy as endpoint:
            yield "s3://bench", {**s3["options"], "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}


def time_layout(method: Callable[[zarr.Group, list[str]], None], url: str, names: list[str],
                options: dict[str, Any] | None, repeats: int) -> dict[str, Any]:
    """Best of ``repeats`` layouts, each of a fresh store under ``url`` (seconds)."""
    times = []
    for r in range(repeats):
        target = f"{url}/{method.__name__}-{r}.zarr"
        group = zarr.open_group(target, mode="w", zarr_format=3,
                                **({"storage_options": options} if options else {}))
        start = time.perf_counter()
        method(group, names)
        times.append(time.perf_counter() - start)
    return {"seconds": min(times), "all_seconds": [round(t, 4) for t in times]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patches", type=int, default=1000, help="patches the store is laid out for")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="delay per request of the s3+latency row; 0 leaves it out")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="local and loopback S3 only, one repeat")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "store_layout.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.latency_ms, args.repeats = 0.0, 1
    names = sorted(NAMES.format(i=i // 100, j=i % 100) for i in range(args.patches))

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    rows: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="benzarr-layout-"))
    try:
        targets: list[tuple[str, float]] = [("local", 0.0), ("s3", 0.0)]
        if args.latency_ms:
            targets.append((f"s3+{args.latency_ms:g}ms", args.latency_ms))
        for target, latency in targets:
            if target == "local":
                context: Any = contextlib.nullcontext((str(work), None))
            else:
                context = s3_bucket(latency, log)
            with context as (url, options):
                for name, method in METHODS.items():
                    log(f"{target}: {name}")
                    rows.append({"target": target, "method": name, **time_layout(method, url, names, options, args.repeats)})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for row in rows:  # ratio: the node-by-node time of the same target over this method's
        base = next(r for r in rows if r["target"] == row["target"] and r["method"] == "create_array-node-by-node")
        row["speedup"] = base["seconds"] / row["seconds"]
    print_table(rows, [("target", "target", "s"), ("method", "method", "s"), ("seconds", "seconds", ".3f"),
                       ("speedup", "x node-by-node", ".2f")])
    path = write_json(args.out, {"benchmark": "store_layout", "machine": machine_info(),
                                 "versions": versions(["zarr", "s3fs", "moto"]),
                                 "parameters": {"patches": args.patches, "shard_size": SHARD_SIZE,
                                                "latency_ms": args.latency_ms, "repeats": args.repeats},
                                 "results": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
