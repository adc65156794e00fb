"""``benzarr evaluate``: score a run's checkpoint on any split and subset of a store."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from benzarr_cli._common import console, fmt_value, metrics_line, progress_bar, warn_line


def command(
    run: Path = typer.Argument(..., help="A run folder written by `benzarr train` (a `--seeds` folder: each seed-<s>/)."),
    store: Optional[str] = typer.Option(None, "--store", help="Store to evaluate on (default: the run's own)."),
    split: Optional[str] = typer.Option(None, "--split", help="Split of the store (default: the run's)."),
    subset: str = typer.Option("test", "--subset", help="train | val | test of --split; all: every valid patch "
                               "of the store, whatever its split."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best | last: checkpoints/<name>.pt of the run."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Patches per batch (default: the run's)."),
    workers: int = typer.Option(0, "--workers", help="Loader worker processes."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder to write metrics.json and scores.csv to "
                                       "(default RUN/evaluations/<split>-<subset>[-<store>]; OUT/seed-<s> "
                                       "for a --seeds folder)."),
    predictions: bool = typer.Option(False, "--predictions", help="Also write predictions.parquet: each patch's "
                                     "name, its sigmoid score and logit per class and its true labels."),
    bootstrap: int = typer.Option(0, "--bootstrap", metavar="N", help="95% intervals of P/R/F1/F2 from N bootstrap "
                                  "resamples of the evaluated patches (e.g. 1000; seed 0)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors and warnings."),
) -> None:
    """Score a run's checkpoint on a split's subset (of its own store or another with the same bands and
    labels), read as the run read its data: micro and macro P/R/F1/F2/mAP, per-class scores."""
    from benzarr.evaluate import evaluate_run, run_folders  # torch: only when evaluating

    folders = run_folders(run)  # RUNDIR itself, or each seed-<s>/ of a `train --seeds` folder
    for folder in folders:
        prefix = f"{folder.name}: " if len(folders) > 1 else ""
        with progress_bar(f"evaluate {prefix}".strip(), None, quiet) as advance:
            last = [0]

            def progress(done: int, total: int) -> None:
                advance(done - last[0], total=total)
                last[0] = done

            result = evaluate_run(folder, store=store, split=split, subset=subset, checkpoint=checkpoint,
                                  batch_size=batch_size, workers=workers, device=device,
                                  out_dir=None if out is None else out / folder.name if len(folders) > 1 else out,
                                  predictions=predictions, progress=progress, bootstrap=bootstrap)
        for line in result.warnings:
            warn_line(f"{prefix}{line}")
        if result.seen_in_training:
            warn_line(f"{prefix}{result.seen_in_training:,} of the {result.n_patches:,} patches evaluated were in "
                      f"the run's training subset: their scores are optimistic")
        if quiet:
            continue
        what = f"all patches of {result.store}" if result.split is None else \
            f"{result.subset} of split {result.split} in {result.store}"
        console.print(f"{prefix}{what} ({result.n_patches:,} patches, {result.checkpoint.name}): "
                      f"{metrics_line(result.metrics)}")
        if result.intervals:
            ci = result.intervals
            console.print(f"{prefix}95% bootstrap intervals ({bootstrap:,} resamples of the patches): " + "  ".join(
                f"{name} [{fmt_value(ci[key][0])}, {fmt_value(ci[key][1])}]" for key, name in
                (("micro_f1", "micro F1"), ("macro_f1", "macro F1"), ("micro_f2", "micro F2"), ("macro_f2", "macro F2"))))
        console.print(f"{prefix}inputs normalised with {result.normalization}")
        console.print(f"{prefix}wrote {', '.join(str(p) for p in result.files)}")
