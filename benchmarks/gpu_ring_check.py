"""The batch ring's contract on the training device: the same batches, bit for bit, as the
DataLoader path (issue 10 §2), on every modality, band selection and label set, with
augmentation and every resampling mode, with a distributed sampler, delivered to CUDA
(page-locked slots, side-stream copies, events; the ring's loader transforms one batch ahead
on a side stream, the reference on the consumer's stream); that batches made by CUDA graph
replays (``DeviceLoader.graphs``) equal eager ones, a consumer keeping every batch included
(the ``graphs:`` cases; the JSON is written once they are done, and again at the end); and,
on CUDA, that no training step of ``benzarr.train`` synchronises with the GPU (torch's sync
debug mode: issue 10 §3; with ``BENZARR_CUDA_GRAPHS=1`` the trainer's loaders use graphs).

tests/test_ring.py checks the same on the CPU in the suite; this script is what a GPU node
runs (no pytest there), and it runs on the CPU too. One JSON row per case.

Usage::

    python benchmarks/gpu_ring_check.py [--device cuda] [--workdir DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, machine_info, write_json  # noqa: E402

import torch  # noqa: E402
from torch.utils.data import BatchSampler, DistributedSampler  # noqa: E402

from benzarr.data import BigEarthNetDataset, make_loader  # noqa: E402
from benzarr.ring import RingLoader  # noqa: E402
from benzarr.streams import device_index, on_stream  # noqa: E402


def stores(workdir: Path) -> tuple[Path, Path]:
    """A 200-patch v1 store (lz4) and a 96-patch v2 store with S1 and reference maps."""
    from benzarr.ingest import ingest
    from benzarr.synth import synth_archive, synth_archive_v2

    v1, v2 = workdir / "v1.zarr", workdir / "v2.zarr"
    if not v1.exists():
        synth_archive(workdir / "v1", 200, seed=0, workers=2)
        ingest(workdir / "v1", v1, workers=2, shard_size=32, compression="lz4")
    if not v2.exists():
        synth_archive_v2(workdir / "v2", 96, seed=0, s1=True, reference_maps=True, workers=2)
        ingest(workdir / "v2", v2, workers=2, shard_size=16)
    return v1, v2


def on_host(loader: Any) -> list[dict[str, torch.Tensor]]:
    return [{k: v.detach().cpu().clone() for k, v in batch.items()} for batch in loader]


def compare(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    if len(a) != len(b):
        return {"equal": False, "why": f"{len(a)} batches against {len(b)}"}
    for i, (x, y) in enumerate(zip(a, b)):
        if x.keys() != y.keys():
            return {"equal": False, "why": f"batch {i}: keys {sorted(x)} against {sorted(y)}"}
        for key in x:
            if x[key].dtype != y[key].dtype or not torch.equal(x[key], y[key]):
                diff = (x[key].double() - y[key].double()).abs().max().item() if x[key].shape == y[key].shape else None
                return {"equal": False, "why": f"batch {i} {key}: max diff {diff}"}
    return {"equal": True, "batches": len(a)}


# torch's words for a synchronising call under set_sync_debug_mode("warn") (c10/cuda), and the
# notice set_sync_debug_mode itself gives once a process. Sessions 2 and 6 counted that notice
# ("... does not yet detect all synchronizing operations", raised at the _cuda_set_sync_debug_mode
# line of torch/cuda/__init__.py) as the trainer's "one remaining sync": it never was one.
SYNC_WARNING = "called a synchronizing CUDA operation"
SYNC_NOTICE = "Synchronization debug mode is a prototype feature"


def sync_warning_kind(message: str) -> str | None:
    """"sync" for torch's warning about a synchronising call, "notice" for the prototype notice
    of ``set_sync_debug_mode``, None for any other warning."""
    if SYNC_NOTICE in message:
        return "notice"
    if SYNC_WARNING in message:
        return "sync"
    return None


def trainer_syncs(store: Path, workdir: Path, device: torch.device) -> dict[str, Any]:
    """``benzarr.train.train`` on CUDA with torch's sync debug mode on from the second step of
    the epoch to its last: no training step may wait for the GPU (the loader's own files
    aside). On the CPU there is nothing to synchronise with: reported as equal."""
    import warnings

    from benzarr.split import make_split
    from benzarr.store import open_store
    from benzarr.train import TrainConfig, TrainEvent, train

    row: dict[str, Any] = {"case": "trainer steps make no host synchronisation", "device": str(device)}
    if device.type != "cuda":
        return {**row, "equal": True, "note": "not applicable on the CPU"}
    try:
        opened = open_store(store, mode="r+")
        if "sync" not in opened.split_names():
            make_split(opened, "sync", "random", fractions=(0.6, 0.2, 0.2))
        n_batches = [0]

        def watch(event: TrainEvent) -> None:
            if event.kind == "epoch_start":
                n_batches[0] = event.n_batches
            elif event.kind == "step":
                torch.cuda.set_sync_debug_mode("warn" if event.step < n_batches[0] else "default")

        # where a synchronisation comes from: every sync warning keeps the Python stack of the
        # thread that raised it (the warning itself names only the innermost frame)
        import threading

        found: list[dict[str, Any]] = []
        notices: list[str] = []

        def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
            kind = sync_warning_kind(str(message))
            if kind == "notice":
                notices.append(str(message)[:200])
            elif kind == "sync":
                found.append({"at": f"{Path(filename).name}:{lineno}", "thread": threading.current_thread().name,
                              "message": str(message)[:200],
                              "stack": [f"{Path(f.filename).parent.name}/{Path(f.filename).name}:{f.lineno} {f.name}"
                                        for f in traceback.extract_stack()[-14:-1]]})

        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = show
            try:
                train(TrainConfig(store=str(store), split="sync", model="shortcnn-rgb", epochs=1, batch_size=8,
                                  device="cuda", amp=True, out=str(workdir / "sync-run")), watch)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        # a loader's first batches capture the transform's CUDA graphs, and torch.cuda.graph
        # synchronises the device and empties the caches before each capture (benzarr.graphs,
        # once per loader): any sync with benzarr/graphs.py on its stack is that
        loader_files = ("data.py", "transform.py", "ring.py", "graphs.py")
        syncs = [f["at"] for f in found if f["at"].split(":")[0] not in loader_files
                 and not any(frame.split(":")[0] == "benzarr/graphs.py" for frame in f["stack"])]
        return {**row, "equal": n_batches[0] >= 3 and not syncs, "syncs": syncs, "batches": n_batches[0],
                "sync_stacks": found[:4], "notices": notices}
    except Exception as exc:
        return {**row, "equal": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=5)}


def graph_cases(v1: Path, v2: Path, device: torch.device) -> list[dict[str, Any]]:
    """The loader's CUDA-graph transform (``DeviceLoader.graphs``, session 9) against the same
    loader with graphs off, over three epochs of full batches and a short last one: the same
    bits, with graphs really replayed (on CUDA); then a consumer that keeps every batch on
    the device (no image may be overwritten while held) against batches cloned at once."""
    rows: list[dict[str, Any]] = []
    cuda = device.type == "cuda"
    for name, store, kwargs, batch, engine, workers in [
        ("graphs: s2 all normalized", v1, {"normalize": True}, 32, "ring", 2),
        ("graphs: s2 list, bicubic", v1, {"bands": ["B09", "B03", "B8A", "B02"], "resample": "bicubic"}, 24, "ring", 2),
        ("graphs: s2+s1+mask normalized", v2, {"modalities": ("s2", "s1", "reference-map"), "normalize": True}, 8,
         "ring", 2),
        # the trainer's default (0 workers): DataLoader batches arrive on the host, pinned
        ("graphs: s2 all, DataLoader engine, 0 workers", v1, {"normalize": True}, 32, "dataloader", 0),
    ]:
        row: dict[str, Any] = {"case": name + " (against eager batches)", "device": str(device), "batch_size": batch}
        try:
            ds = BigEarthNetDataset(store, **kwargs)
            with make_loader(ds, batch, True, workers, seed=4, device=device, engine=engine) as graphed, \
                    make_loader(ds, batch, True, workers, seed=4, device=device, engine=engine) as eager:
                graphed.graphs, eager.graphs = True, False  # whatever the process default
                results = []
                for epoch in (0, 1, 5):
                    graphed.set_epoch(epoch)
                    eager.set_epoch(epoch)
                    results.append(compare(on_host(eager), on_host(graphed)))
                graphed.set_epoch(2)
                eager.set_epoch(2)
                kept = list(graphed)  # held on the device: graphs must not overwrite them
                kept_host = on_host(eager)
                results.append({"kept": True, **compare(kept_host, [{k: v.cpu() for k, v in b.items()} for b in kept])})
                stats = graphed.graph_stats()
            row.update(equal=all(r["equal"] for r in results) and (not cuda or bool(stats and stats["replayed"] > 0
                                                                               and not stats["disabled"])),
                       epochs=results, graphs=stats)
        except Exception as exc:
            row.update(equal=False, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=5))
        rows.append(row)
        print(f"{row['case']}: {'equal' if row['equal'] else 'DIFFERENT ' + str(row.get('error') or row)}"
              f" graphs {row.get('graphs')}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "benzarr-ring-check")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "gpu_ring_check.json")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    started = time.perf_counter()
    v1, v2 = stores(args.workdir)
    cases = [
        ("s2 all", v1, {}, 32, 4),
        ("s2 rgb clc19", v1, {"bands": "rgb", "labels": "clc19"}, 32, 2),
        ("s2 list normalized", v1, {"bands": ["B09", "B03", "B8A"], "normalize": True}, 17, 3),
        ("s2+s1+mask normalized", v2, {"modalities": ("s2", "s1", "reference-map"), "normalize": True}, 8, 2),
        ("s1 only", v2, {"modalities": ("s1",), "bands": "all"}, 8, 1),
        ("s2 all, flip-rot90, align_corners", v1, {"augment": "flip-rot90", "align_corners": True,
                                                   "normalize": True}, 32, 3),
        ("s2+mask, flip, bicubic", v2, {"modalities": ("s2", "reference-map"), "augment": "flip",
                                        "resample": "bicubic"}, 8, 2),
    ]
    rows: list[dict[str, Any]] = []

    def save(complete: bool) -> bool:
        ok = all(r["equal"] for r in rows)
        write_json(args.out, {"machine": machine_info(), "device": torch.cuda.get_device_name(device)
                              if device.type == "cuda" else "cpu", "all_equal": ok, "complete": complete,
                              "cases": rows, "seconds": round(time.perf_counter() - started, 1)})
        return ok

    for name, store, kwargs, batch, workers in cases:
        row: dict[str, Any] = {"case": name, "device": str(device), "workers": workers, "batch_size": batch}
        try:
            ds = BigEarthNetDataset(store, **kwargs)
            reference = make_loader(ds, batch, True, 0, seed=4, device=device, engine="dataloader")
            reference.overlap = False  # the transform on the consumer's stream; the ring's overlaps (default)
            with make_loader(ds, batch, True, workers, seed=4, device=device, engine="ring") as ring:
                results = []
                for epoch in (0, 1, 5):
                    reference.set_epoch(epoch)
                    ring.set_epoch(epoch)
                    results.append(compare(on_host(reference), on_host(ring)))
            row.update(equal=all(r["equal"] for r in results), epochs=results)
        except Exception as exc:
            row.update(equal=False, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=5))
        rows.append(row)
        print(f"{name}: {'equal' if row['equal'] else 'DIFFERENT ' + str(row.get('error') or row.get('epochs'))}")
    # the consumer on a stream of its own, of high priority (gpu_feed's variant 'priority'): the
    # ring's copies and the transform's side stream hand their batches to the stream current at
    # next(), so a loop on another stream gets the same batches
    row = {"case": "s2 all normalized, consumer on a high-priority stream", "device": str(device), "workers": 4}
    try:
        ds = BigEarthNetDataset(v1, normalize=True)
        reference = make_loader(ds, 32, True, 0, seed=4, device=device, engine="dataloader")
        reference.overlap = False
        stream = torch.cuda.Stream(device=device, priority=-1) if device.type == "cuda" else None
        with make_loader(ds, 32, True, 4, seed=4, device=device, engine="ring") as ring:
            with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                got = on_host(ring)
        row.update(compare(on_host(reference), got))
    except Exception as exc:
        row.update(equal=False, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=5))
    rows.append(row)
    print(f"{row['case']}: {'equal' if row['equal'] else 'DIFFERENT ' + str(row.get('error') or row.get('why'))}")
    # benzarr.streams.on_stream, the loader's cheap torch.cuda.stream (session 22): work inside on
    # the stream, the stream current before current again after, also after an exception
    if device.type == "cuda":
        row = {"case": "on_stream: the stream inside, the previous one after", "device": str(device)}
        try:
            side, index = torch.cuda.Stream(device=device), device_index(device)
            before = torch.cuda.current_stream(index)
            with on_stream(side):
                inside = torch.cuda.current_stream(index)
            after = torch.cuda.current_stream(index)
            with contextlib.suppress(KeyError), on_stream(side):
                raise KeyError("inside")
            row.update(equal=inside == side and after == before and torch.cuda.current_stream(index) == before
                       and torch.cuda.current_device() == index)
        except Exception as exc:
            row.update(equal=False, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=5))
        rows.append(row)
        print(f"{row['case']}: {'equal' if row['equal'] else 'DIFFERENT ' + str(row.get('error'))}")
    # deterministic algorithms on (benzarr train's default): torch fills new tensors with NaN,
    # which the loader skips for its own buffers (transform.unfilled_allocations) since it
    # writes them whole; a region it did not write would show here as a difference
    row = {"case": "s2+s1 normalized, deterministic algorithms on (no NaN fill) against off", "device": str(device),
           "workers": 2}
    flags = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        ds = BigEarthNetDataset(v2, modalities=("s2", "s1"), normalize=True)
        reference = make_loader(ds, 8, True, 0, seed=4, device=device, engine="dataloader")
        reference.overlap = False
        expected = on_host(reference)
        torch.use_deterministic_algorithms(True, warn_only=True)
        with make_loader(ds, 8, True, 2, seed=4, device=device, engine="ring") as ring:
            row.update(compare(expected, on_host(ring)))
    except Exception as exc:
        row.update(equal=False, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=5))
    finally:
        torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
    rows.append(row)
    print(f"{row['case']}: {'equal' if row['equal'] else 'DIFFERENT ' + str(row.get('error') or row.get('why'))}")
    # raw slots under a distributed sampler (rank 1 of 2), copied to the device
    row = {"case": "raw ring, DistributedSampler rank 1 of 2", "device": str(device), "workers": 2}
    try:
        ds = BigEarthNetDataset(v2, modalities=("s2", "s1", "reference-map"))
        sampler = DistributedSampler(ds, num_replicas=2, rank=1, shuffle=True, seed=3)
        batches = BatchSampler(sampler, batch_size=7, drop_last=False)
        with RingLoader(ds, batches, num_workers=2, device=device) as ring:
            ring.set_epoch(1)
            got = on_host(ring)
        sampler.set_epoch(1)
        row.update(compare([ds.read_batch(b) for b in batches], got))
    except Exception as exc:
        row.update(equal=False, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=5))
    rows.append(row)
    print(f"{row['case']}: {'equal' if row['equal'] else 'DIFFERENT ' + str(row.get('error') or row.get('why'))}")
    rows.extend(graph_cases(v1, v2, device))
    save(complete=False)  # gpu_session.sh reads the graph cases even if a later case hangs
    # the fused device transform (BatchTransform.fused, after session 6's last run) against
    # session 6's passes: the same float32 operations in the same order, so the same bits
    for name, store, kwargs in [
        ("fused: s2 all normalized", v1, {"normalize": True}),
        ("fused: s2 list, flip-rot90, align_corners", v1, {"bands": ["B09", "B03", "B8A", "B02", "B12"],
                                                          "normalize": True, "augment": "flip-rot90",
                                                          "align_corners": True}),
        ("fused: s2+s1 normalized, bicubic", v2, {"modalities": ("s2", "s1"), "normalize": True,
                                                  "resample": "bicubic"}),
        ("fused: s2 rgb, not normalized", v1, {"bands": "rgb"}),
    ]:
        row = {"case": name + " (against session 6's passes)", "device": str(device)}
        try:
            ds = BigEarthNetDataset(store, **kwargs)
            results = []
            for planes in (True, False):
                outputs = []
                for fused in (True, False):
                    transform = ds.batch_transform(device)
                    transform.planes, transform.fused = planes, fused
                    transform.set_epoch(3)
                    outputs.append([{k: v.cpu() for k, v in transform(ds.read_batch(rows)).items()}
                                    for rows in ([0, 5, 9, 2, 31, 17, 40], list(range(20, 52)))])
                results.append({"planes": planes, **compare(*outputs)})
            row.update(equal=all(r["equal"] for r in results), results=results)
        except Exception as exc:
            row.update(equal=False, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=5))
        rows.append(row)
        print(f"{row['case']}: {'equal' if row['equal'] else 'DIFFERENT ' + str(row.get('error') or row.get('results'))}")
    # informational (not part of the contract): CUDA's bilinear on the B*C planes (the loader's
    # since session 6) against the same kernel family on the NCHW batch
    row = {"case": "bilinear on the planes against the NCHW kernel (informational)", "device": str(device)}
    try:
        from benzarr.transform import _upsample_bilinear_planes

        x = (torch.rand(64, 6, 60, 60, device=device) * 10_000).float()
        for corners in (False, True):
            a = _upsample_bilinear_planes(x, corners)
            b = torch._C._nn.upsample_bilinear2d(x, (120, 120), corners, None)
            row[f"align_corners={corners}"] = {"equal": bool(torch.equal(a, b)),
                                                "max_abs_diff": float((a - b).abs().max())}
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"
    row["equal"] = True  # informational: never fails the check
    rows.append(row)
    print(f"{row['case']}: {row}")
    rows.append(trainer_syncs(v1, args.workdir, device))
    print(f"{rows[-1]['case']}: {'none' if rows[-1]['equal'] else rows[-1].get('syncs') or rows[-1].get('error')}")
    save(complete=False)
    # last, as its first compilations take the most time (a timeout loses only this row).
    # Informational (not part of the contract): BatchTransform.compiled (torch.compile of
    # model_ready_image, gpu_feed's variant 'compiled') against the eager transform; the same
    # float32 operations in another order, so the last bit may differ
    row = {"case": "compiled transform against eager (informational)", "device": str(device)}
    try:
        results = []
        for kwargs in ({"normalize": True},):  # one compilation: each takes tens of seconds on a GPU node
            ds = BigEarthNetDataset(v1, **kwargs)
            eager, compiled = ds.batch_transform(device), ds.batch_transform(device)
            compiled.compiled = True
            batch = ds.read_batch(list(range(32)))
            a, b = eager(batch)["image"].cpu(), compiled(batch)["image"].cpu()
            results.append({"kwargs": str(kwargs), "compiled_stayed_on": bool(compiled.compiled),
                            "bit_equal": torch.equal(a, b),
                            "max_abs_diff": (a.double() - b.double()).abs().max().item(),
                            "max_abs": a.abs().max().item()})
        row.update(results=results, equal=True)
    except Exception as exc:
        row.update(equal=True, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=5))
    rows.append(row)
    print(f"{row['case']}: {row.get('results') or row.get('error')}")
    ok = save(complete=True)
    print(f"{'all equal' if ok else 'SOME DIFFER'}; wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
