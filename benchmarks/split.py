"""Benchmark ``benzarr split`` at BigEarthNet v1 scale beside the bare iterative-stratification call.

A labels-only store of 519,284 patches (the official train/val/test names, so ``official``
matches every patch) with a synthetic 43-class label matrix of BigEarthNet's skew, made by
``benzarr synth --labels-only`` (:func:`benzarr.synth.synth_labels_store`): 1 to 6 labels a patch.
A labels-only store has no geometry, so the benchmark gives it plausible footprints
(:func:`add_geometry`): each of the 125 acquisitions (the name's stamp) is its own Sentinel-2
tile, laid out with its country's other tiles in a grid of touching tiles in that country's
UTM zone; a patch's row and column (the name's last two numbers) place it on its tile's grid
of 1200 m cells. ``meta/country`` and ``meta/season`` come from BigEarthNet's own table.
Deterministic: it depends on the names only.

Measured, each in a fresh process (so imports and peak memory count), in one run:

* ``package``: the bare ``MultilabelStratifiedKFold(5, shuffle=True, random_state=0)`` on the
  label matrix already in memory (the call alone, and with its scikit-learn import);
* ``benzarr split --method iterative|random|official`` end to end: start, open the store,
  read labels and names, split, write, measure quality beside a random split (and the
  spatial leakage);
* ``benzarr split --method iterative --group-by block:10`` end to end (also measures the
  plain iterative split beside it), and step by step;
* ``quality``: LD, ED and the spatial leakage at 1.2 km of the random, plain iterative and
  grouped splits just made;
* ``stratify``: :func:`benzarr.stratify.kfold_assignment` alone, and a check that it returns the
  package's folds.

Prints a table with ratios to the package call and writes ``benchmarks/results/split.json``.

Usage::

    python benchmarks/split.py            # full size (519,284 x 43)
    python benchmarks/split.py --quick    # 50,000 patches
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benzarr.store import open_store
from benzarr.synth import synth_labels_store

FULL_SIZE = 519_284
QUICK_SIZE = 50_000
RESULTS = Path(__file__).resolve().parent / "results" / "split.json"

# Runs one thing in a child process and prints its JSON result; peak RSS from getrusage.
_CHILD = r"""
import json, resource, sys, time
what, store, labels_file = sys.argv[1], sys.argv[2], sys.argv[3]
out = {}
if what == "package":
    import numpy as np
    y = np.load(labels_file)
    t = time.perf_counter()
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold
    out["import_s"] = time.perf_counter() - t
    t = time.perf_counter()
    folds = np.full(y.shape[0], -1, np.int8)
    for i, (_, test) in enumerate(MultilabelStratifiedKFold(n_splits=5, shuffle=True, random_state=0).split(np.zeros(y.shape[0]), y)):
        folds[test] = i
    out["call_s"] = time.perf_counter() - t
    np.save(labels_file + ".package_folds.npy", folds)
elif what == "stratify":
    import numpy as np
    y = np.load(labels_file)
    from benzarr.stratify import kfold_assignment
    t = time.perf_counter()
    folds = kfold_assignment(y, 5, 0)
    out["call_s"] = time.perf_counter() - t
    out["equal_to_package"] = bool((folds == np.load(labels_file + ".package_folds.npy")).all())
elif what == "stages":  # where the time of an iterative split goes, step by step
    from benzarr.store import open_store
    from benzarr.split import iterative_codes, split_quality
    steps = {}
    t = time.perf_counter(); store = open_store(store, mode="r+"); steps["open_store"] = time.perf_counter() - t
    t = time.perf_counter(); valid = store.valid_mask(); steps["read_valid_mask"] = time.perf_counter() - t
    t = time.perf_counter(); y = store.labels("clc43"); steps["read_labels"] = time.perf_counter() - t
    t = time.perf_counter(); names = store.patch_names(); steps["read_patch_names"] = time.perf_counter() - t
    t = time.perf_counter(); codes = iterative_codes(y, valid, seed=0); steps["stratify"] = time.perf_counter() - t
    t = time.perf_counter(); store.write_split("stages", codes, {}, overwrite=True); steps["write_split"] = time.perf_counter() - t
    t = time.perf_counter(); split_quality(y, codes, desired=(0.6, 0.2, 0.2)); steps["quality_with_random"] = time.perf_counter() - t
    out["steps_s"] = steps
    out["call_s"] = sum(steps.values())
elif what == "grouped_stages":  # where the time of a grouped split goes
    import numpy as np
    from benzarr.store import open_store
    from benzarr.groups import group_ids
    from benzarr.split import iterative_group_codes, split_quality, store_geometry
    steps = {}
    t = time.perf_counter(); store = open_store(store, mode="r+"); valid = store.valid_mask(); steps["open_store"] = time.perf_counter() - t
    t = time.perf_counter(); y = store.labels("clc43"); steps["read_labels"] = time.perf_counter() - t
    t = time.perf_counter(); ids, n_groups = group_ids(store, "block:10", np.flatnonzero(valid)); steps["group_ids"] = time.perf_counter() - t
    groups = np.full(valid.shape[0], -1); groups[valid] = ids
    t = time.perf_counter(); codes = iterative_group_codes(y, groups, valid, seed=0); steps["stratify_groups"] = time.perf_counter() - t
    t = time.perf_counter(); geometry = store_geometry(store); steps["read_geometry"] = time.perf_counter() - t
    t = time.perf_counter(); split_quality(y, codes, desired=(0.6, 0.2, 0.2), geometry=geometry); steps["quality_with_random_and_leakage"] = time.perf_counter() - t
    out["steps_s"] = steps
    out["n_groups"] = n_groups
    out["call_s"] = sum(steps.values())
elif what == "quality":  # LD, ED and leakage of the splits the runs above made
    from benzarr.store import open_store
    from benzarr.split import store_split_quality
    store = open_store(store)
    t = time.perf_counter()
    out["splits"] = {}
    for name in ("random", "iterative", "grouped"):
        q = store_split_quality(store, name)
        attrs = store.read_split(name)[1]
        out["splits"][name] = {"label_distribution": q.label_distribution, "examples_distribution": q.examples_distribution,
                               "labels_missing": q.labels_missing,
                               "mean_max_rel_deviation": float(q.per_label["max_rel_deviation"].mean()),
                               "leakage_val": q.leakage["val"], "leakage_test": q.leakage["test"],
                               "sizes": q.sizes["count"].tolist(),
                               "n_groups": attrs["parameters"].get("n_groups"),
                               "largest_group": attrs["parameters"].get("largest_group")}
    out["call_s"] = time.perf_counter() - t
else:
    method, _, alone = what.partition(":")
    extra = ["--method", method]
    if method == "grouped":
        extra = ["--method", "iterative", "--group-by", "block:10"]
    t = time.perf_counter()
    if alone:  # only the split command: what `benzarr split` costs without the other commands' imports
        import typer
        from benzarr_cli.split import command
        app = typer.Typer()
        app.command("split")(command)
        args = [store]
    else:  # the real console script's app, every command registered
        from benzarr_cli.main import app
        args = ["split", store]
    out["import_s"] = time.perf_counter() - t
    t = time.perf_counter()
    app(args + ["--name", method, *extra, "--overwrite", "--quiet"], standalone_mode=False)
    out["call_s"] = time.perf_counter() - t
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")]
out["peak_rss_mb"] = int(hwm[0].split()[1]) / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


# Where each country's tiles start: EPSG, upper-left x, y of its first tile (metres). Tiles go
# in rows of four, west to east then south; the origins keep countries of one zone apart.
_COUNTRY_ORIGINS: dict[str, tuple[int, int, int]] = {
    "Portugal": (32629, 499_980, 4_600_020), "Ireland": (32629, 499_980, 6_000_000),
    "Belgium": (32631, 499_980, 5_700_000), "Luxembourg": (32631, 499_980, 5_400_000),
    "Switzerland": (32632, 399_960, 5_300_040), "Austria": (32633, 399_960, 5_500_020),
    "Kosovo": (32634, 399_960, 4_700_040), "Serbia": (32634, 399_960, 5_300_040),
    "Lithuania": (32634, 399_960, 6_200_040), "Finland": (32635, 399_960, 7_700_040),
}
_CELL = 1200  # metres, one patch
_TILE = 91 * _CELL  # a tile's grid of 91 x 91 cells; neighbouring tiles' grids touch
_TILES_A_ROW = 4


def add_geometry(path: Path) -> dict[str, int]:
    """Give a labels-only store of real v1 names plausible, deterministic footprints, and
    BigEarthNet's country and season of each patch (see the module docstring).

    Returns:
        counts: tiles, countries.
    """
    import pandas as pd
    from importlib import resources

    store = open_store(path, mode="r+")
    names = pd.Series(store.patch_names())
    parts = names.str.rsplit("_", n=2, expand=True)
    stamp, row, col = parts[0], parts[1].astype(np.int64).to_numpy(), parts[2].astype(np.int64).to_numpy()
    with resources.as_file(resources.files("benzarr.resources").joinpath("s1_s2_name_country_season.parquet")) as table:
        place = pd.read_parquet(table, columns=["s2_name", "country", "season"]).set_index("s2_name")
    place = place.reindex(names)
    country = place["country"].fillna("").to_numpy(dtype=object)
    season = place["season"].fillna("").to_numpy(dtype=object)
    # each stamp's tile belongs to the country most of its patches lie in
    frame = pd.DataFrame({"stamp": stamp, "country": country})
    tile_country = frame.groupby("stamp")["country"].agg(lambda c: c.value_counts().index[0]).sort_index()
    tile_ulx, tile_uly, tile_epsg = {}, {}, {}
    for c, stamps in tile_country.groupby(tile_country):
        epsg, ulx, uly = _COUNTRY_ORIGINS[c]
        for j, s in enumerate(stamps.index):
            r, k = divmod(j, _TILES_A_ROW)
            tile_ulx[s], tile_uly[s], tile_epsg[s] = ulx + k * _TILE, uly - r * _TILE, epsg
    ulx = stamp.map(tile_ulx).to_numpy(dtype=np.float64) + col * _CELL
    uly = stamp.map(tile_uly).to_numpy(dtype=np.float64) - row * _CELL
    bounds = np.stack([ulx, uly, ulx + _CELL, uly - _CELL], axis=1)
    store.array("meta/bounds")[:] = bounds
    store.array("meta/epsg")[:] = stamp.map(tile_epsg).to_numpy(dtype=np.int32)
    store.array("meta/country")[:] = country
    store.array("meta/season")[:] = season
    return {"tiles": int(tile_country.shape[0]), "countries": int(tile_country.nunique())}


def build_store(path: Path, n: int) -> tuple[np.ndarray, dict[str, int]]:
    """The labels-only store of ``benzarr synth --labels-only`` (real v1 names, BigEarthNet's
    label skew) with :func:`add_geometry`; returns its (n, 43) label matrix and the tile counts."""
    synth_labels_store(path, n, seed=0)
    layout = add_geometry(path)
    return open_store(path).labels("clc43"), layout


def child(what: str, store: Path, labels_file: Path) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD, what, str(store), str(labels_file)],
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = wall
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SIZE:,} patches instead of {FULL_SIZE:,}")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each measurement (best is kept)")
    parser.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/split.json")
    args = parser.parse_args()
    n = QUICK_SIZE if args.quick else FULL_SIZE

    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="benzarr-split-bench-"))
    try:
        store = work / "store.zarr"
        t = time.perf_counter()
        labels, layout = build_store(store, n)
        build_s = time.perf_counter() - t
        labels_file = work / "labels.npy"
        np.save(labels_file, labels)

        runs: dict[str, dict] = {}
        for what in ("package", "stratify", "iterative", "random", "official", "grouped", "iterative:alone", "stages",
                     "grouped_stages", "quality"):
            best = None
            for _ in range(args.repeat):
                result = child(what, store, labels_file)
                if best is None or result["call_s"] < best["call_s"]:
                    best = result
            runs[what] = best
    finally:
        shutil.rmtree(work, ignore_errors=True)

    bare = runs["package"]["call_s"]
    rows = [
        ("package MultilabelStratifiedKFold call", "package"),
        ("benzarr.stratify.kfold_assignment", "stratify"),
        ("benzarr split --method iterative", "iterative"),
        ("  same, split command alone", "iterative:alone"),
        ("benzarr split --method random", "random"),
        ("benzarr split --method official", "official"),
        ("benzarr split --group-by block:10", "grouped"),
    ]
    print(f"split benchmark: {n:,} x 43 labels, {labels.sum(axis=1).mean():.2f} labels a patch, "
          f"store built in {build_s:.1f} s")
    print("call: the work after imports; process: the whole child process, start to exit")
    print(f"{'what':<40} {'call s':>7} {'x pkg':>6} {'imports s':>9} {'process s':>9} {'x pkg':>6} {'peak MB':>8}")
    bare_process = runs["package"]["process_s"]
    for label, what in rows:
        run = runs[what]
        imports = f"{run['import_s']:.2f}" if "import_s" in run else "-"
        print(f"{label:<40} {run['call_s']:>7.2f} {run['call_s'] / bare:>6.2f} {imports:>9} "
              f"{run['process_s']:>9.2f} {run['process_s'] / bare_process:>6.2f} {run['peak_rss_mb']:>8.0f}")
    print(f"benzarr.stratify folds equal to the package's: {runs['stratify']['equal_to_package']}")
    print("iterative split step by step: " + ", ".join(f"{k} {v:.2f} s" for k, v in runs["stages"]["steps_s"].items()))
    print(f"grouped split step by step ({runs['grouped_stages']['n_groups']:,} block:10 groups on {layout['tiles']} "
          "synthetic tiles): " + ", ".join(f"{k} {v:.2f} s" for k, v in runs["grouped_stages"]["steps_s"].items()))
    print()
    print(f"{'split':<10} {'LD':>10} {'ED':>8} {'missing':>8} {'mean max rel dev':>17} {'val leak':>9} {'test leak':>10}"
          f" {'LD / iterative':>15}")
    measured = runs["quality"]["splits"]
    for name, q in measured.items():
        print(f"{name:<10} {q['label_distribution']:>10.3e} {q['examples_distribution']:>8.1f} {q['labels_missing']:>8} "
              f"{q['mean_max_rel_deviation']:>17.2%} {q['leakage_val']:>9.1%} {q['leakage_test']:>10.1%} "
              f"{q['label_distribution'] / measured['iterative']['label_distribution']:>15.2f}")
    print("leak: share of val/test patches with a train patch within 1.2 km (edge and corner neighbours)")
    print(f"load average before/after: {load_before[0]:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    if not args.no_save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "benchmark": "split",
            "n_patches": n,
            "n_labels": int(labels.shape[1]),
            "mean_labels_per_patch": float(labels.sum(axis=1).mean()),
            "quick": args.quick,
            "machine": {"platform": platform.platform(), "python": platform.python_version(),
                        "cpus": os.cpu_count(), "load_average_before": load_before[0],
                        "load_average_after": os.getloadavg()[0]},
            "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "note": "call_s: inside the process (imports excluded except for CLI runs, which time the "
                    "whole app call); process_s: the child process start to exit; peak_rss_mb: child's "
                    "maximum resident set (VmHWM)",
            "runs": runs,
            "ratios_to_package_call": {what: runs[what]["call_s"] / bare for what in runs},
            "ratios_to_package_process": {what: runs[what]["process_s"] / bare_process for what in runs},
            "targets": {"whole_split_under_s": 10, "ratio_to_package_at_most": 1.3, "memory_under_mb": 1024,
                        "grouped_split_under_s": 30},
            "geometry": {"note": "synthetic footprints from the names (benchmarks/split.py add_geometry)", **layout},
        }
        RESULTS.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
