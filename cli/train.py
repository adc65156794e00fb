"""``benzarr train``: train a model on a store's split (also under ``torchrun``)."""

from __future__ import annotations

import math
import os
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any, Optional

import typer

from benzarr.errors import InvalidArgumentError
if TYPE_CHECKING:
    from benzarr.train import TrainEvent, TrainResult

from benzarr_cli._common import console, err_console, show_progress


def _fmt(value: Any, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


class _Progress:
    """Per-epoch progress bar (a terminal) or one line per epoch (a pipe); nothing when quiet."""

    def __init__(self, epochs: int, quiet: bool, prefix: str = "") -> None:
        self.epochs, self.quiet, self.prefix = epochs, quiet, prefix
        self.bar = show_progress(quiet)
        self.progress: Any = None
        self.task: Any = None
        self.stack = ExitStack()

    def __call__(self, event: TrainEvent) -> None:
        if self.quiet:
            return
        if event.kind == "epoch_start" and self.bar:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.progress = self.stack.enter_context(Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} patches/s"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=True))
            self.task = self.progress.add_task(f"{self.prefix}epoch {event.epoch + 1}/{self.epochs}",
                                               total=event.n_batches, loss="-", rate="-")
        elif event.kind == "step" and self.progress is not None:
            fields = {} if math.isnan(event.loss) else {"loss": f"{event.loss:.4f}"}  # NaN: no new loss yet
            self.progress.update(self.task, advance=1, rate=f"{event.patches_per_s:,.0f}", **fields)
        elif event.kind == "epoch_end":
            self.stack.close()
            self.progress = None
            v = event.values
            mark = "  *best" if v.get("improved") else ""
            console.print(
                f"{self.prefix}epoch {event.epoch + 1}/{self.epochs}  step {event.step}  "
                f"train loss {_fmt(v.get('train/loss'), 4)}  val loss {_fmt(v.get('val/loss'), 4)}  "
                f"val micro-F1 {_fmt(v.get('val/micro_f1'))}  macro-F1 {_fmt(v.get('val/macro_f1'))}  "
                f"lr {v.get('lr', 0):.2e}  {v.get('throughput/patches_per_s', 0):,.0f} patches/s{mark}",
                markup=False,
            )


def _summary(result: TrainResult, monitor: str) -> None:
    t = result.test
    stop = " (early stop)" if result.stopped_early else ""
    console.print(f"best epoch {result.best_epoch} of {result.epochs}{stop}: {monitor} {_fmt(result.best_score, 4)}; "
                  f"{result.steps} steps in {result.seconds:.1f} s", markup=False)
    if t:
        console.print(
            f"test ({t['n_samples']} patches, best.pt): micro P {_fmt(t['micro_precision'])} R {_fmt(t['micro_recall'])} "
            f"F1 {_fmt(t['micro_f1'])} F2 {_fmt(t['micro_f2'])} mAP {_fmt(t['micro_map'])} | macro P "
            f"{_fmt(t['macro_precision'])} R {_fmt(t['macro_recall'])} F1 {_fmt(t['macro_f1'])} "
            f"F2 {_fmt(t['macro_f2'])} mAP {_fmt(t['macro_map'])}", markup=False)
    else:
        console.print("test: the split has no test patches", markup=False)
    if result.emissions_kg is not None:
        console.print(f"emissions: {result.emissions_kg * 1000:.3f} g CO2eq (codecarbon, offline)", markup=False)
    d = result.run_dir
    console.print(f"run folder {d}: config.json, checkpoints/best.pt + last.pt, metrics.json, scores.csv, "
                  f"TensorBoard events (tensorboard --logdir {d})", markup=False)


def command(
    store: str = typer.Argument(..., help="Path of a benzarr store."),
    split: str = typer.Option(..., "--split", help="Split name in the store (benzarr split)."),
    model: str = typer.Option("shortcnn-rgb", "--model", help="Model name (benzarr models)."),
    labels: str = typer.Option("clc43", "--labels", help="clc43 | clc19."),
    bands: Optional[str] = typer.Option(None, "--bands", help="rgb | all | comma-separated names, VV/VH included (default: the model's)."),
    modalities: str = typer.Option("s2", "--modalities", help="s2 | s1 | s2,s1: image channels (S1 adds VV, VH; the store must hold S1)."),
    epochs: int = typer.Option(10, "--epochs", help="Epochs."),
    batch_size: int = typer.Option(64, "--batch-size", help="Patches per batch (per process under torchrun)."),
    lr: float = typer.Option(1e-3, "--lr", help="Learning rate."),
    optim: str = typer.Option("adam", "--optim", help="sgd | adam | adamw."),
    momentum: float = typer.Option(0.9, "--momentum", help="SGD momentum."),
    weight_decay: float = typer.Option(0.0, "--weight-decay", help="Weight decay."),
    scheduler: str = typer.Option("none", "--scheduler", help="none | cosine | step (x0.1 every epochs/3)."),
    loss: str = typer.Option("bce", "--loss", help="bce (binary cross-entropy on logits; multi-label)."),
    seed: int = typer.Option(0, "--seed", help="Seed of weights and data order."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Several seeds, e.g. 0,1,2: runs into OUT/seed-<s>/."),
    workers: int = typer.Option(0, "--workers", help="DataLoader worker processes (per process)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    amp: bool = typer.Option(False, "--amp", help="bfloat16 mixed precision."),
    deterministic: bool = typer.Option(True, "--deterministic/--no-deterministic",
                                       help="Deterministic kernels (default); --no-deterministic: cudnn.benchmark and the fastest kernels."),
    patience: Optional[int] = typer.Option(None, "--patience", help="Stop after this many epochs without improvement."),
    monitor: str = typer.Option("val_macro_f1", "--monitor", help="val_loss or val_<metric> (val_micro_f1, val_macro_map, ...)."),
    out: Optional[str] = typer.Option(None, "--out", help="Run folder (default runs/<model>-<split>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from checkpoints/last.pt."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after N optimisation steps (smoke tests)."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Local .pt/.pth weights to start from."),
    finetune: int = typer.Option(0, "--finetune", help="0 train all | 1 head only | 2 last block + head."),
    track_emissions: bool = typer.Option(False, "--track-emissions", help="Energy and CO2 with codecarbon (offline)."),
    emissions_country: str = typer.Option("DEU", "--emissions-country", help="ISO 3166 alpha-3 country for --track-emissions."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
) -> None:
    """Train a model on a split: validation every epoch, best/last checkpoints, test metrics of the best.

    Multi-process data parallel: torchrun --nproc-per-node 2 -m benzarr_cli train ...
    """
    from benzarr.train import TrainConfig, default_out, train, train_seeds  # torch: only when training

    cfg = TrainConfig(
        store=store, split=split, model=model, labels=labels, bands=bands, modalities=modalities,
        epochs=epochs, batch_size=batch_size,
        lr=lr, optim=optim, momentum=momentum, weight_decay=weight_decay, scheduler=scheduler, loss=loss,
        seed=seed, workers=workers, device=device, amp=amp, deterministic=deterministic, patience=patience,
        monitor=monitor, out=out, resume=resume, max_steps=max_steps, weights=weights, finetune=finetune,
        track_emissions=track_emissions, emissions_country=emissions_country,
    )
    quiet = quiet or int(os.environ.get("RANK", "0")) != 0  # under torchrun, rank 0 speaks
    if seeds is None:
        result = train(cfg, _Progress(epochs, quiet))
        if not quiet:
            _summary(result, monitor)
        return
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise InvalidArgumentError(f"--seeds {seeds!r}: give integers separated by commas, e.g. 0,1,2") from None
    if not seed_list or len(set(seed_list)) != len(seed_list):
        raise InvalidArgumentError(f"--seeds {seeds!r}: give distinct integers, e.g. 0,1,2")
    bars = {s: _Progress(epochs, quiet, prefix=f"seed {s} ") for s in seed_list}
    results = train_seeds(cfg, seed_list, lambda s, event: bars[s](event))
    if not quiet:
        for s, result in zip(seed_list, results):
            console.print(f"-- seed {s}", markup=False)
            _summary(result, monitor)
        console.print(f"summarise the seeds with: benzarr report {out or default_out(cfg)}", markup=False)
