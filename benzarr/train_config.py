"""The settings of a training run, in one place and without torch.

``TrainConfig`` holds every setting with its default; ``benzarr train`` takes its option
defaults from here (the CLI imports this module on every start, so it must not import torch),
and :mod:`benzarr.train` checks and uses them. Adding a setting: a field here (and in
``RESUMABLE`` if a resumed run may change it), its use in :mod:`benzarr.train`, an option
in ``cli/train.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "cosine", "step")
#: ``augment``: none, random flips, random flips and 90-degree rotations (on the training device).
AUGMENTS = ("none", "flip", "flip-rot90")
#: ``resample``: how the 20 m and 60 m bands are brought to 120x120 pixels.
RESAMPLE_MODES = ("bilinear", "nearest", "bicubic")


@dataclass
class TrainConfig:
    """Every setting of a run (``benzarr train`` options map one to one)."""

    store: str                      # path of a benzarr store
    split: str                      # splits/<name> in the store: train / val / test subsets
    model: str = "shortcnn-rgb"     # a name of benzarr.models.list_models()
    labels: str = "clc43"           # clc43 | clc19
    modalities: str = "s2"          # s2 | s1 | s2,s1: image channels (S1 adds VV, VH)
    bands: str | Sequence[str] | None = None  # None: the model's default; "rgb", "all" or names
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    optim: str = "adam"             # sgd | adam | adamw
    momentum: float = 0.9           # sgd only
    weight_decay: float = 0.0
    scheduler: str = "none"         # none | cosine (over `epochs`) | step (x0.1 every epochs//3)
    loss: str = "bce"               # bce | focal | asl, optionally with parameters: "focal:gamma=1" (benzarr.losses)
    augment: str = "none"           # none | flip | flip-rot90, training batches only
    resample: str = "bilinear"      # bilinear | nearest | bicubic: 20 m and 60 m bands to 10 m
    align_corners: bool = False     # F.interpolate's convention (True: ConfigILM's, the official weights')
    seed: int = 0
    workers: int = 0                # loader worker processes, the batch ring's (per process under torchrun)
    loader_timeout: float = 0       # seconds to wait for a batch from the workers before failing; 0: for ever
    device: str = "auto"            # auto | cpu | cuda | cuda:N
    amp: bool = False               # bfloat16 autocast (CPU and GPU; no loss scaling needed)
    channels_last: bool = True      # NHWC tensors: ~1.5-2x faster convolutions on the CPU
    deterministic: bool = True      # deterministic kernels; False: cudnn.benchmark and the fastest kernels
    patience: int | None = None     # early stopping: epochs without improvement; None: off
    monitor: str = "val_macro_f1"   # val_loss or val_<metric> (micro_f1, macro_map, ...)
    out: str | None = None          # run folder; default runs/<model>-<split>
    resume: bool = False            # continue from out/checkpoints/last.pt
    checkpoint_every: int | None = None  # also write last.pt every N steps (mid-epoch resume); None: per epoch
    max_steps: int | None = None    # stop after this many optimisation steps (smoke tests)
    weights: str | None = None      # local .pt/.pth file to start from
    finetune: int = 0               # 0 all, 1 head only, 2 last block + head
    track_emissions: bool = False   # codecarbon offline tracker (the `emissions` extra)
    emissions_country: str = "DEU"  # ISO 3166 alpha-3 code for codecarbon's offline mode


#: Settings a resumed run may change; every other one must equal the checkpoint's.
RESUMABLE = {"store", "epochs", "patience", "max_steps", "workers", "device", "deterministic", "resume", "out",
             "track_emissions", "emissions_country", "weights", "checkpoint_every", "loader_timeout"}


def default_out(cfg: TrainConfig) -> str:
    """The run folder when ``cfg.out`` is not given: ``runs/<model>-<split>``."""
    return str(Path("runs") / f"{cfg.model}-{cfg.split}")
