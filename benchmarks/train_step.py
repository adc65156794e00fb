"""Training-step benchmark: patches/s per model on the CPU, on random batches and through the loader.

1. *Random device batches*: one optimisation step (forward, BCE, backward, Adam step) on a
   ready float32 (B, C, 120, 120) batch, for every registered model with its default bands,
   in NCHW and channels-last layouts; plus forward-only (evaluation) throughput.
2. *Through the loader*: ``benzarr.train.train`` on a synthetic store (synth + ingest + a
   60/20/20 split, cached under --workdir) with 0 and 2 DataLoader workers; the trainer's own
   ``throughput/patches_per_s`` of the epoch, beside the random-batch figure of the same model.
   Their ratio shows what the data path costs.

Usage::

    python benchmarks/train_step.py [--quick] [--models shortcnn-all,resnet18] [--out FILE]

Writes ``benchmarks/results/train_step.json``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, machine_info, print_table, rate, versions, write_json  # noqa: E402

import torch  # noqa: E402

from benzarr.models import create_model, list_models, model_info  # noqa: E402


def step_rate(name: str, batch_size: int, channels_last: bool, seconds: float, repeats: int) -> dict[str, Any]:
    """Patches/s of full training steps and of forward passes on random batches."""
    torch.manual_seed(0)
    info = model_info(name)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = create_model(name, num_classes=43).to(memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    x = torch.randn(batch_size, info.in_channels, 120, 120).contiguous(memory_format=fmt)
    y = (torch.rand(batch_size, 43) < 0.07).float()

    def step() -> int:
        out = model(x)
        if isinstance(out, tuple):  # auxiliary heads in training mode
            out = out[0]
        loss = loss_fn(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return batch_size

    def forward() -> int:
        with torch.no_grad():
            model(x)
        return batch_size

    model.train()
    step()  # warm-up: allocations, kernel selection
    train = rate(step, seconds, repeats)
    model.eval()
    forward()
    evaluate = rate(forward, seconds, repeats)
    return {"model": name, "bands": info.in_channels, "channels_last": channels_last, "batch_size": batch_size,
            "train_patches_per_s": round(train["per_s"], 1), "train_runs": train["runs"],
            "eval_patches_per_s": round(evaluate["per_s"], 1)}


def store_for_loader(workdir: Path, n_patches: int) -> Path:
    """A synthetic store with split ``strat`` (60/20/20), built once under ``workdir``."""
    from benzarr.ingest import ingest
    from benzarr.split import make_split
    from benzarr.store import open_store, store_exists
    from benzarr.synth import synth_archive

    store = workdir / f"train-step-{n_patches}.zarr"
    if store_exists(store):
        try:
            if "strat" in open_store(store).split_names():
                return store
        except Exception:  # an interrupted build: start over
            pass
        shutil.rmtree(store)
    archive = workdir / f"train-step-archive-{n_patches}"
    if not archive.exists():
        synth_archive(archive, n_patches, seed=0, workers=2)
    ingest(archive, store, workers=2, shard_size=256, overwrite=True)
    make_split(open_store(store, mode="r+"), "strat", "iterative", fractions=(0.6, 0.2, 0.2), seed=0)
    return store


def loader_rate(store: Path, name: str, batch_size: int, workers: int, epochs: int, workdir: Path) -> dict[str, Any]:
    """The trainer's patches/s (last epoch) with ``workers`` DataLoader workers."""
    from benzarr.train import TrainConfig, train

    out = workdir / f"train-step-run-{name}-{workers}"
    shutil.rmtree(out, ignore_errors=True)
    rates: list[float] = []
    started = time.perf_counter()
    train(TrainConfig(store=str(store), split="strat", model=name, epochs=epochs, batch_size=batch_size,
                      workers=workers, device="cpu", out=str(out)),
          lambda e: rates.append(e.values["throughput/patches_per_s"]) if e.kind == "epoch_end" else None)
    shutil.rmtree(out, ignore_errors=True)
    return {"model": name, "workers": workers, "batch_size": batch_size, "epochs": epochs,
            "loader_patches_per_s": round(max(rates), 1), "epoch_rates": [round(r, 1) for r in rates],
            "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(list_models()), help="comma-separated model names")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=4.0, help="minimum timing per repeat")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--patches", type=int, default=512, help="patches of the loader benchmark's store")
    parser.add_argument("--loader-model", default="shortcnn-all")
    parser.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parent / "_work")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "train_step.json")
    parser.add_argument("--quick", action="store_true", help="ShortCNN only, short timings, 256 patches")
    args = parser.parse_args()
    models = args.models.split(",")
    if args.quick:
        models = [m for m in models if m.startswith("shortcnn")]
        args.seconds, args.repeats, args.patches = 2.0, 1, 256
    args.workdir.mkdir(parents=True, exist_ok=True)

    steps = []
    for name in models:
        for channels_last in (False, True):
            steps.append(step_rate(name, args.batch_size, channels_last, args.seconds, args.repeats))
            print(f"{name} channels_last={channels_last}: {steps[-1]['train_patches_per_s']} patches/s", flush=True)
    print()
    print_table(steps, [("model", "model", ""), ("bands", "bands", "d"), ("channels_last", "NHWC", ""),
                        ("train_patches_per_s", "train patches/s", ".1f"), ("eval_patches_per_s", "eval patches/s", ".1f")])

    store = store_for_loader(args.workdir, args.patches)
    random_rate = max(s["train_patches_per_s"] for s in steps if s["model"] == args.loader_model and s["channels_last"]) \
        if args.loader_model in models else step_rate(args.loader_model, args.batch_size, True, args.seconds, 1)["train_patches_per_s"]
    loaders = []
    for workers in (0, 2):
        row = loader_rate(store, args.loader_model, args.batch_size, workers, 2, args.workdir)
        row["random_batch_patches_per_s"] = random_rate
        row["ratio_to_random_batches"] = round(row["loader_patches_per_s"] / random_rate, 3)
        loaders.append(row)
    print()
    print_table(loaders, [("model", "model", ""), ("workers", "workers", "d"),
                          ("loader_patches_per_s", "trainer patches/s", ".1f"),
                          ("random_batch_patches_per_s", "random batches", ".1f"),
                          ("ratio_to_random_batches", "ratio", ".2f")])
    path = write_json(args.out, {
        "benchmark": "train_step", "machine": machine_info(), "torch_threads": torch.get_num_threads(),
        "versions": versions(["benzarr", "torch", "numpy", "zarr"]),
        "random_batches": steps, "through_loader": loaders,
        "notes": "best of repeats; one optimisation step = forward + BCE + backward + Adam step, float32, CPU",
    })
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
