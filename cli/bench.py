"""``benzarr bench``: how fast this store loads on this machine."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Optional

import typer

from benzarr_cli._common import console, storage_options_for


@contextmanager
def _environment(name: str, value: object | None) -> Iterator[None]:
    """``$name`` set to ``value`` (unless None) for the block, then as it was: the command may
    run inside a longer-lived process (``benzarr_cli.main.main`` called from Python)."""
    if value is None:
        yield
        return
    before = os.environ.get(name)
    os.environ[name] = str(value)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def command(
    store: str = typer.Argument(..., help="Path (or s3:// URL) of a benzarr store."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", help="Patches per batch."),
    workers: int = typer.Option(2, "--workers", "-w", help="Loader worker processes (the batch ring) for the parallel measurement."),
    seconds: float = typer.Option(2.0, "--seconds", help="Minimum time per measurement."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random read order."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N: where the loader rows deliver "
                               "model-ready batches (on CUDA, through the page-locked ring and the GPU transform)."),
    endpoint_url: Optional[str] = typer.Option(None, "--endpoint-url", help="S3 endpoint for s3:// stores (default: $AWS_ENDPOINT_URL)."),
    max_concurrency: Optional[int] = typer.Option(
        None, "--max-concurrency", min=1,
        help="Range requests in flight per process for URL stores (default 64, or $BENZARR_MAX_CONCURRENCY)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Measure loading throughput (patches/s, MB/s): single-sample and batched, with and without workers."""
    from benzarr.bench import bench_store  # torch: imported only when this command runs

    with _environment("BENZARR_MAX_CONCURRENCY", max_concurrency):  # read here and by the loader's spawned workers
        results = bench_store(store, batch_size=batch_size, workers=workers, min_seconds=seconds, seed=seed,
                              storage_options=storage_options_for(store, endpoint_url), device=device)
    if as_json:
        console.print_json(json.dumps([r.as_dict() for r in results]), ensure_ascii=True)  # JSON whatever the output encoding
        return
    stored = results[0].stored_bytes_per_patch
    console.print(f"store  {store}")
    console.print("random order, all 12 bands; MB/s of decoded uint16 native bytes "
                  f"({results[0].bytes_per_patch:,} a patch"
                  + (f", {stored:,.0f} on disk" if stored else "") + ")")
    used = min((r.extra.get("batch_size", batch_size) for r in results), default=batch_size)
    if used < batch_size:
        console.print(f"batches of {used:,} patches: the store holds no more than that")
    names = [r.name + (f" to {r.extra['device']}" if r.extra.get("device", "cpu") != "cpu" else "") for r in results]
    width = max(20, *map(len, names))  # "loader, 12 workers to cuda:0"
    console.print(f"  {'measurement':<{width}} {'patches/s':>11} {'MB/s':>9}")
    for name, r in zip(names, results):
        console.print(f"  {name:<{width}} {r.patches_per_s:>11,.0f} {r.mb_per_s:>9,.1f}")
    console.print("page cache as found: run twice to see warm-cache figures", style="dim")
