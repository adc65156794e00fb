"""Where the main process's time in ``next(loader)`` goes on a GPU (issue #10, resnet18's gap).

``gpu_feed.py`` measures ``next_ms``, the host time per fed step spent in ``next()``: 1.1-1.3
ms on the H200 node, against a resnet18 step of 14-16 ms whose host side is itself the
bottleneck (the main process at 100% of a core during the ceiling's slices, session 22), so
that millisecond comes off every step and resnet18 stays at 0.91-0.94 of its ceiling. This
script takes the loader alone, with the step replaced by a host sleep long enough for the
workers to stay ahead (so ``next()`` never waits for a decode), and reports:

* ``next()``'s host time per batch, graphs on and off, without a profiler (median and mean, ms);
* a cProfile of the same ``next()`` calls (only those: the profiler is enabled around each),
  the top functions by own time, per batch, in microseconds.

Run on a GPU node beside ``gpu_session.sh`` (same wheels), or on the CPU with ``--cpu`` (the
CPU path, for checking this script). Writes ``--out`` (JSON) and prints the tables.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_feed import build_store, dataset  # noqa: E402  (same store and dataset as the fed rows)


def next_times(batches: Any, steps: int, step_s: float, profiler: cProfile.Profile | None) -> list[float]:
    """Seconds of host time in each of ``steps`` calls of ``next(batches)``, a ``step_s`` sleep
    (the stand-in for a host-bound training step) after each."""
    out = []
    for _ in range(steps):
        if profiler is not None:
            profiler.enable()
        t = time.perf_counter()
        next(batches)
        out.append(time.perf_counter() - t)
        if profiler is not None:
            profiler.disable()
        time.sleep(step_s)
    return out


def top_functions(profiler: cProfile.Profile, calls: int, limit: int) -> list[dict[str, Any]]:
    """The ``limit`` functions with the most own time, per ``next()`` call (µs)."""
    stats = pstats.Stats(profiler, stream=io.StringIO())
    rows = []
    for (file, line, name), (_, ncalls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = name if file == "~" else f"{Path(file).name}:{line}({name})"
        rows.append({"function": where, "calls_per_next": round(ncalls / calls, 2),
                     "own_us_per_next": round(1e6 * tottime / calls, 1),
                     "cum_us_per_next": round(1e6 * cumtime / calls, 1)})
    rows.sort(key=lambda r: -r["own_us_per_next"])
    return rows[:limit]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=4000)
    parser.add_argument("--build-workers", type=int, default=16)
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=120, help="next() calls measured, each way")
    parser.add_argument("--step-ms", type=float, default=15.0, help="host sleep after each next() (ms)")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--cpu", action="store_true", help="CPU check of this script")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "benzarr-gpu-feed",
                        help="where the store is built (gpu_feed.py's default: the same store)")
    parser.add_argument("--out", type=Path, default=Path("gpu_next_profile.json"))
    args = parser.parse_args(argv)

    from benzarr.data import make_loader

    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")
    store = build_store(args.workdir, args.patches, args.build_workers, lambda s: print(s, flush=True))
    payload: dict[str, Any] = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
                               "torch": torch.__version__, "python": sys.version.split()[0],
                               "parameters": {k: v for k, v in vars(args).items() if k not in ("workdir", "out")},
                               "runs": []}
    for graphs in (True, False):
        loader = make_loader(dataset(store), args.batch_size, shuffle=True, num_workers=args.workers, seed=0,
                             device=device, drop_last=True)
        loader.graphs = graphs

        def endless(loader: Any = loader) -> Any:
            while True:
                yield from loader
        batches = endless()
        next_times(batches, 12, args.step_ms / 1e3, None)  # warm-up: graphs captured, workers ahead
        plain = next_times(batches, args.steps, args.step_ms / 1e3, None)
        profiler = cProfile.Profile()
        profiled = next_times(batches, args.steps, args.step_ms / 1e3, profiler)
        run = {"graphs": graphs, "graph_stats": loader.graph_stats(),
               "next_ms_median": round(1e3 * statistics.median(plain), 3),
               "next_ms_mean": round(1e3 * statistics.fmean(plain), 3),
               "next_ms_p90": round(1e3 * sorted(plain)[int(0.9 * len(plain))], 3),
               "profiled_next_ms_mean": round(1e3 * statistics.fmean(profiled), 3),
               "top": top_functions(profiler, args.steps, args.top)}
        loader.close()
        payload["runs"].append(run)
        print(f"\ngraphs {graphs}: next() median {run['next_ms_median']} ms, mean {run['next_ms_mean']} ms, "
              f"p90 {run['next_ms_p90']} ms; under cProfile {run['profiled_next_ms_mean']} ms; {run['graph_stats']}")
        print(f"{'own us':>8} {'cum us':>8} {'calls':>7}  function")
        for r in run["top"]:
            print(f"{r['own_us_per_next']:>8.1f} {r['cum_us_per_next']:>8.1f} {r['calls_per_next']:>7.2f}  {r['function']}")
        args.out.write_text(json.dumps(payload, indent=1))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
