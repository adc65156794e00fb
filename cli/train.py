"""``benzarr train``: train a model on a store's split (also under ``torchrun``)."""

from __future__ import annotations

import math
import os
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from benzarr.checks import check_seed
from benzarr.errors import InvalidArgumentError
from benzarr.store import open_store
from benzarr.train_config import (  # torch-free
    AUGMENTS,
    OPTIMIZERS,
    RESAMPLE_MODES,
    SCHEDULERS,
    TrainConfig,
    default_out,
    read_settings_file,
    unused_setting,
)
from benzarr_cli._common import console, count, err_console, fmt_value, metrics_line, on_interrupt, show_progress

if TYPE_CHECKING:
    from benzarr.train import TrainEvent, TrainResult

#: Option defaults are TrainConfig's: every default lives there once.
D = TrainConfig


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
                f"train loss {fmt_value(v.get('train/loss'), 4)}  val loss {fmt_value(v.get('val/loss'), 4)}  "
                f"val micro-F1 {fmt_value(v.get('val/micro_f1'))}  macro-F1 {fmt_value(v.get('val/macro_f1'))}  "
                f"lr {v.get('lr', 0):.2e}  {v.get('throughput/patches_per_s', 0):,.0f} patches/s{mark}",
            )


def _resume_advice(out: str, seeds: list[int] | None) -> str:
    """What to run after an interrupted ``train`` into ``out``: ``--resume`` where a checkpoint was written."""
    folders = [os.path.join(out, f"seed-{s}") for s in seeds] if seeds else [out]
    if any(os.path.exists(os.path.join(f, "checkpoints", "last.pt")) for f in folders):
        return f"{out}: run the same command with --resume to go on from checkpoints/last.pt"
    return f"{out}: no checkpoint was written yet; run the same command again to start over"


def _seed_list(seeds: str) -> list[int]:
    """``--seeds 0,1,2`` as distinct integers; anything else is one line."""
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise InvalidArgumentError(f"--seeds {seeds!r}: give integers separated by commas, e.g. 0,1,2") from None
    if not seed_list or len(set(seed_list)) != len(seed_list):
        raise InvalidArgumentError(f"--seeds {seeds!r}: give distinct integers, e.g. 0,1,2")
    for s in seed_list:
        check_seed(s, "--seeds")  # --seed's range, before torch is imported
    return seed_list


def _summary(result: TrainResult, monitor: str) -> None:
    t = result.test
    stop = " (early stop)" if result.stopped_early else ""
    console.print(f"best epoch {result.best_epoch} of {result.epochs}{stop}: {monitor} {fmt_value(result.best_score, 4)}; "
                  f"{count(result.steps, 'step')} in {result.seconds:.1f} s")
    if t:
        console.print(
            f"test ({t['n_samples']} patches, best.pt): {metrics_line(t)}")
    else:
        console.print("test: the split has no test patches")
    if result.emissions_kg is not None:
        console.print(f"emissions: {result.emissions_kg * 1000:.3f} g CO2eq (codecarbon, offline)")
    d = result.run_dir
    console.print(f"run folder {d}: config.json, checkpoints/best.pt + last.pt, metrics.json, scores.csv, "
                  f"TensorBoard events (tensorboard --logdir {d})")


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was typed on the command line (not its default, nor --config's)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


def command(
    ctx: typer.Context,
    store: Optional[str] = typer.Argument(None, help="Path of a benzarr store (may come from --config).",
                                          show_default=False),
    split: Optional[str] = typer.Option(None, "--split", help="Split name in the store (benzarr split); "
                                        "required unless --config gives it.", show_default=False),
    config: Optional[Path] = typer.Option(None, "--config", metavar="FILE",
                                          help="Settings from FILE: a run's config.json (a new run with that run's "
                                               "settings, not its --out) or a JSON or TOML table of these options "
                                               "(batch-size = 32, ...). Options given here win over the file's."),
    model: str = typer.Option(D.model, "--model", help="Model name (benzarr models)."),
    labels: Optional[str] = typer.Option(D.labels, "--labels", help="clc43 | clc19 (default: the store's own, clc43 "
                                         "when it has it; a v2 store without reference maps has clc19 alone).",
                                         show_default=False),
    bands: Optional[str] = typer.Option(D.bands, "--bands", help="rgb | all | a preset (2, 3, 4, 10, 12, 14, S1, S2, ALL, ...; see `benzarr models`) | comma-separated names, VV/VH included (default: the model's)."),
    modalities: str = typer.Option(D.modalities, "--modalities", help="s2 | s1 | s2,s1: image channels (S1 adds VV, VH; the store must hold S1)."),
    epochs: int = typer.Option(D.epochs, "--epochs", help="Epochs."),
    batch_size: int = typer.Option(D.batch_size, "--batch-size", help="Patches per batch (per process under torchrun)."),
    lr: float = typer.Option(D.lr, "--lr", help="Learning rate."),
    optim: str = typer.Option(D.optim, "--optim", help=" | ".join(OPTIMIZERS) + "."),
    momentum: float = typer.Option(D.momentum, "--momentum", help="SGD momentum."),
    weight_decay: float = typer.Option(D.weight_decay, "--weight-decay", help="Weight decay: L2 in the gradient with sgd and adam, decoupled with adamw."),
    scheduler: str = typer.Option(D.scheduler, "--scheduler", help=" | ".join(SCHEDULERS) + " (cosine: to 0 over --epochs; step: x0.1 every max(1, epochs // 3) epochs)."),
    loss: str = typer.Option(D.loss, "--loss", help="bce | focal | asl: multi-label losses on logits, optionally with parameters "
                                "(focal:gamma=2,alpha=0.25; asl:gamma_neg=4,gamma_pos=0,clip=0.05 are the defaults)."),
    augment: str = typer.Option(D.augment, "--augment", help=" | ".join(AUGMENTS) + ": random flips (and 90-degree "
                                "rotations) of the training batches, on the device."),
    resample: str = typer.Option(D.resample, "--resample", help=" | ".join(RESAMPLE_MODES) + ": how the 20 m and 60 m "
                                 "bands reach 120x120 (the official reBEN models: nearest)."),
    align_corners: bool = typer.Option(D.align_corners, "--align-corners/--no-align-corners",
                                       help="F.interpolate's align_corners for bilinear and bicubic (ConfigILM's: --align-corners)."),
    seed: int = typer.Option(D.seed, "--seed", help="Seed of weights and data order."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Several seeds, e.g. 0,1,2: runs into OUT/seed-<s>/."),
    workers: int = typer.Option(D.workers, "--workers", help="Loader worker processes, the batch ring's (per process under torchrun)."),
    loader_timeout: float = typer.Option(D.loader_timeout, "--loader-timeout", metavar="SECONDS",
                                         help="Fail when the workers deliver no batch for this long (a worker stuck "
                                              "on a hung file system); 0 waits for ever."),
    device: str = typer.Option(D.device, "--device", help="auto | cpu | cuda."),
    amp: bool = typer.Option(D.amp, "--amp/--no-amp",
                             help="bfloat16 mixed precision (--no-amp: off where --config turns it on)."),
    deterministic: bool = typer.Option(D.deterministic, "--deterministic/--no-deterministic",
                                       help="Deterministic kernels (default); --no-deterministic: cudnn.benchmark and the fastest kernels."),
    compile_transform: bool = typer.Option(D.compile_transform, "--compile-transform/--no-compile-transform",
                                           help="CUDA: make each batch's model-ready image with one torch.compile'd "
                                                "function (fewer kernels; the first batch waits for the compilation; "
                                                "needs Triton and a C compiler)."),
    patience: Optional[int] = typer.Option(D.patience, "--patience", help="Stop after this many epochs without improvement."),
    monitor: str = typer.Option(D.monitor, "--monitor", "--eval-metric",
                                help="val_loss or val_<metric> (val_micro_f1, val_macro_map, ...). Under torchrun write "
                                     "--eval-metric (timm's name): torchrun takes --monitor for its --monitor-interval."),
    out: Optional[str] = typer.Option(D.out, "--out", help="Run folder (default runs/<model>-<split>)."),
    resume: bool = typer.Option(D.resume, "--resume", help="Continue the run in --out from checkpoints/last.pt (mid-epoch too)."),
    checkpoint_every: Optional[int] = typer.Option(D.checkpoint_every, "--checkpoint-every", metavar="STEPS",
                                                   help="Also write checkpoints/last.pt every STEPS steps, so --resume goes on mid-epoch (default: after each epoch)."),
    max_steps: Optional[int] = typer.Option(D.max_steps, "--max-steps", help="Stop after N optimisation steps (smoke tests)."),
    weights: Optional[str] = typer.Option(D.weights, "--weights", help="Local .pt/.pth weights to start from."),
    finetune: int = typer.Option(D.finetune, "--finetune", help="0 train all | 1 head only | 2 last block + head."),
    track_emissions: bool = typer.Option(D.track_emissions, "--track-emissions/--no-track-emissions",
                                         help="Energy and CO2 with codecarbon (offline)."),
    emissions_country: str = typer.Option(D.emissions_country, "--emissions-country", help="ISO 3166 alpha-3 country for --track-emissions."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors and warnings."),
) -> None:
    """Train a model on a split: validation every epoch, best/last checkpoints, test metrics of the best.

    Multi-process data parallel: torchrun --nproc-per-node 2 -m benzarr_cli train ...
    """
    if _given(ctx, "seed") and seeds is not None:
        raise InvalidArgumentError(f"give --seed or --seeds, not both (--seed {seed} --seeds {seeds})")
    settings: dict[str, Any] = dict(
        store=store, split=split, model=model, labels=labels, bands=bands, modalities=modalities,
        epochs=epochs, batch_size=batch_size, lr=lr, optim=optim, momentum=momentum, weight_decay=weight_decay,
        scheduler=scheduler, loss=loss, augment=augment, resample=resample, align_corners=align_corners,
        seed=seed, workers=workers, loader_timeout=loader_timeout, device=device, amp=amp,
        deterministic=deterministic, compile_transform=compile_transform, patience=patience,
        monitor=monitor, out=out, resume=resume, checkpoint_every=checkpoint_every, max_steps=max_steps,
        weights=weights, finetune=finetune, track_emissions=track_emissions, emissions_country=emissions_country,
    )
    if config is not None:  # the file's settings, but for the options typed on this command line
        settings.update({k: v for k, v in read_settings_file(config).items() if not _given(ctx, k)})
        if _given(ctx, "track_emissions") and not track_emissions and not _given(ctx, "emissions_country"):
            # --config of a tracked run's config.json with --no-track-emissions: its country goes with it
            settings["emissions_country"] = D.emissions_country
    for name, flag in (("store", "STORE"), ("split", "--split")):
        if settings[name] is None:  # required, unless --config names it
            where = f"{config} has no {name}" if config is not None else f"or a --config FILE that holds a {name}"
            raise typer.BadParameter(f"missing; give it ({where})", param_hint=flag)
    cfg = TrainConfig(**settings)
    # check_config sees values alone: a default typed where it changes nothing (--optim adam
    # --momentum 0.9, --emissions-country DEU without tracking) passed it in silence
    unused = unused_setting(cfg, [name for name in ("momentum", "emissions_country") if _given(ctx, name)])
    if unused:
        raise InvalidArgumentError(unused)
    store, split, epochs, monitor, out = cfg.store, cfg.split, cfg.epochs, cfg.monitor, cfg.out
    quiet = quiet or int(os.environ.get("RANK", "0")) != 0  # under torchrun, rank 0 speaks
    seed_list = _seed_list(seeds) if seeds is not None else None
    on_interrupt(lambda: _resume_advice(out or default_out(cfg), seed_list))
    # torch only once the arguments are known good: a usage error answers in a second, not four.
    # The commonest, a store path or split name mistyped, is checked here without torch.
    open_store(store).read_split(split)
    from benzarr.train import train, train_seeds
    if seed_list is None:
        result = train(cfg, _Progress(epochs, quiet))
        if not quiet:
            _summary(result, monitor)
        return
    bars = {s: _Progress(epochs, quiet, prefix=f"seed {s} ") for s in seed_list}
    results = train_seeds(cfg, seed_list, lambda s, event: bars[s](event))
    if not quiet:
        for s, result in zip(seed_list, results):
            console.print(f"-- seed {s}")
            _summary(result, monitor)
        console.print(f"summarise the seeds with: benzarr report {out or default_out(cfg)}")
