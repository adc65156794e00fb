"""``benzarr demo``: synth -> ingest -> split -> train -> report, offline, in minutes."""

from __future__ import annotations

from typing import Any, Optional

import typer

from benzarr.demo import MODEL, SPLIT_NAME, DemoConfig, run_demo
from benzarr_cli._common import console, count
from benzarr_cli.train import _Progress


def command(
    out: str = typer.Option("benzarr-demo", "--out", help="Folder for the archive, store, run and report."),
    patches: int = typer.Option(1000, "--patches", help="Synthetic patches to make."),
    epochs: int = typer.Option(4, "--epochs", help="Training epochs."),
    batch_size: int = typer.Option(32, "--batch-size", help="Patches per batch."),
    lr: float = typer.Option(1e-3, "--lr", help="Learning rate (Adam)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the archive, split and training."),
    workers: int = typer.Option(2, "--workers", help="Processes for synth and ingest."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Cap on optimisation steps (smoke tests)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier demo in --out."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors and warnings."),
) -> None:
    """Run the whole pipeline on a synthetic archive: synth, ingest, stratified split, train shortcnn-all, report."""
    say = (lambda text: None) if quiet else (lambda text: console.print(text))

    def stage(name: str, info: dict[str, Any]) -> None:
        s = f"({info['seconds']:.1f} s)"
        if name == "synth":
            say(f"[1/5] synth   {info['n_patches']:,} synthetic BigEarthNet-S2 patches -> {info['path']} {s}")
        elif name == "ingest":
            say(f"[2/5] ingest  -> {info['path']} (sharded Zarr v3, lz4) {s}")
        elif name == "split":
            c = info["counts"]
            say(f"[3/5] split   {info['name']!r}: iterative stratification, train {c['train']} / val {c['val']} / "
                f"test {c['test']} {s}")
            say(f"[4/5] train   {MODEL} for {count(epochs, 'epoch')}")
        elif name == "train":
            r = info["result"]
            t = r.test
            say(f"      test (best epoch {r.best_epoch}): micro-F1 {t['micro_f1']:.3f}  macro-F1 {t['macro_f1']:.3f}  "
                f"micro-mAP {t['micro_map']:.3f}  -> {info['path']} {s}")
        elif name == "report":
            say(f"[5/5] report  -> {info['path']} {s}")

    result = run_demo(
        DemoConfig(out=out, n_patches=patches, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                   workers=workers, max_steps=max_steps, overwrite=overwrite),
        on_stage=stage, on_train_event=_Progress(epochs, quiet, prefix="      "),
    )
    say(f"done in {result.seconds['total']:.0f} s. Everything is in {result.out}/:")
    say(f"  archive  {result.archive}      (benzarr ingest's input)")
    say(f"  store    {result.store}   (benzarr info {result.store})")
    say(f"  run      {result.run_dir}   (config.json, checkpoints/, metrics.json, scores.csv; "
        f"tensorboard --logdir {result.run_dir})")
    for name, path in result.report_files.items():
        say(f"  report   {path}")
    say(f"next: benzarr train {result.store} --split {SPLIT_NAME} --model shortcnn-rgb --epochs 3 --seeds 0,1 --out {result.out}/runs/rgb; "
        f"benzarr report {result.run_dir} {result.out}/runs/rgb --out {result.out}/report-cmp")
