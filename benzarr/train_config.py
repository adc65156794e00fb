"""The settings of a training run, in one place and without torch.

``TrainConfig`` holds every setting with its default; ``benzarr train`` takes its option
defaults from here (the CLI imports this module on every start, so it must not import torch),
and :mod:`benzarr.train` checks and uses them. Adding a setting: a field here (and in
``RESUMABLE`` if a resumed run may change it), its use in :mod:`benzarr.train`, an option
in ``cli/train.py``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
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
    labels: str | None = None       # clc43 | clc19; None: the store's own (clc43 when it has it, else clc19)
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
    compile_transform: bool = False  # CUDA: the batch transform through torch.compile (make_loader's compile_transform)
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

    def __post_init__(self) -> None:
        # a pathlib.Path for a path is as good as a str (it reached json.dumps of config.json
        # as a bare TypeError); the rest is checked by benzarr.train.check_config
        for name in ("store", "out", "weights"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                setattr(self, name, os.fspath(value))
        # numpy's numbers (batch_size=np.int64(64) from a sweep's grid) pass the checks but reached
        # json.dumps of config.json as a bare TypeError: kept as the Python numbers they equal
        for spec in fields(self):
            value = getattr(self, spec.name)
            if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
                setattr(self, spec.name, value.item())
        # model names are case-insensitive, but `--model ShortCNN-RGB` was kept as typed: its run
        # went to runs/ShortCNN-RGB-<split> beside runs/shortcnn-rgb-<split> (two trains of one
        # model and split, neither refused), and report summarised it as another model
        if isinstance(self.model, str):
            self.model = self.model.lower()


#: Settings a resumed run may change; every other one must equal the checkpoint's.
RESUMABLE = {"store", "epochs", "patience", "max_steps", "workers", "device", "deterministic", "compile_transform",
             "resume", "out",
             "track_emissions", "emissions_country", "weights", "checkpoint_every", "loader_timeout"}


def unused_setting(cfg: TrainConfig, typed: Sequence[str] = ()) -> str | None:
    """Why a setting of ``cfg`` would change nothing in the run, or None: ``momentum`` without
    ``optim="sgd"`` (adam's and adamw's betas are torch's), ``emissions_country`` without
    ``track_emissions``. A setting counts when it differs from its default or is in ``typed``
    (the names typed on the command line: ``--optim adam --momentum 0.9`` types the default,
    which changes nothing either). Why refuse: the run trained as without it, and ``config.json``
    recorded a setting the run never used."""
    if cfg.optim != "sgd" and (cfg.momentum != TrainConfig.momentum or "momentum" in typed):
        return (f"--momentum {cfg.momentum:g} applies to --optim sgd only; --optim {cfg.optim} "
                "does not use it (its betas are torch's defaults)")
    if not cfg.track_emissions and (cfg.emissions_country != TrainConfig.emissions_country
                                    or "emissions_country" in typed):
        return (f"--emissions-country {cfg.emissions_country} applies to --track-emissions only; "
                "without it no emissions are tracked")
    return None


def default_out(cfg: TrainConfig) -> str:
    """The run folder when ``cfg.out`` is not given: ``runs/<model>-<split>``."""
    return str(Path("runs") / f"{cfg.model}-{cfg.split}")


#: Settings of a run's ``config.json`` that ``read_settings_file`` leaves out: where that run
#: went and whether it resumed. A file of settings starts a new run.
NOT_COPIED = ("out", "resume")
#: Options of ``benzarr train`` that are no ``TrainConfig`` setting, so no file gives them.
COMMAND_LINE_ONLY = {"seeds": "--seeds 0,1,2", "quiet": "--quiet", "config": "--config FILE"}
#: The JSON/TOML value types of each annotation part of ``TrainConfig``'s fields (a float takes an int too).
_KINDS: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,),
                                       "Sequence[str]": (list,), "None": (type(None),)}


def read_settings_file(path: str | Path) -> dict[str, object]:
    """``TrainConfig`` settings from a file, for ``benzarr train --config``.

    The file is either a run's ``config.json`` (its ``settings``: the run's every setting, less
    ``NOT_COPIED`` and what the run never used: an emissions country without tracking, a
    momentum without ``optim="sgd"``), or a JSON object or TOML table of settings, such as
    ``{"model": "shortcnn-all", "batch_size": 32}`` or ``batch-size = 32`` (a dash or an
    underscore, as the option or the field is written). Nothing is defaulted here: the caller
    fills in what the file leaves out.

    Returns:
        Field name -> value, each of the field's type (``bands``: a string or a list of band names).

    Raises:
        InvalidArgumentError: the file is missing or unreadable, is neither JSON nor TOML, is not a
            table of settings, names a setting ``TrainConfig`` does not have or one setting twice
            (``batch-size`` and ``batch_size``), or gives one a value of the wrong type; the message
            names the file and the setting.
    """
    import difflib
    import json
    import tomllib

    from benzarr.errors import InvalidArgumentError

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:  # the latter has no strerror
        raise InvalidArgumentError(f"--config {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except ValueError as exc:  # json's and tomllib's decode errors both are
        if path.suffix.lower() in (".yaml", ".yml"):  # was "not valid JSON": as if the file were meant as JSON
            raise InvalidArgumentError(f"--config {path}: YAML is not read; write the settings as JSON (a *.json "
                                       "object) or TOML (*.toml, `key = value` lines)") from None
        kind = "TOML" if path.suffix.lower() == ".toml" else "JSON (name a TOML file *.toml)"
        raise InvalidArgumentError(f"--config {path}: not valid {kind}: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidArgumentError(f"--config {path}: not a table of settings (a JSON object or TOML keys)")
    run = isinstance(data.get("settings"), dict)
    settings = {k: v for k, v in data["settings"].items() if k not in NOT_COPIED} if run else data
    if run:  # what the run recorded but never used (an older benzarr did): not copied, so not refused
        if settings.get("track_emissions") is False:
            settings.pop("emissions_country", None)
        if settings.get("optim", "sgd") != "sgd":
            settings.pop("momentum", None)
    known = {f.name: f for f in fields(TrainConfig)}
    out: dict[str, object] = {}
    spelled: dict[str, str] = {}  # field name -> the key the file gave it under
    for key, value in settings.items():
        name = str(key).replace("-", "_")
        if name in spelled:  # batch_size = 16 and batch-size = 8: one of them was dropped in silence
            raise InvalidArgumentError(f"--config {path}: {spelled[name]} and {key} are one setting, given twice; "
                                       "keep one")
        spelled[name] = str(key)
        if name in COMMAND_LINE_ONLY:  # was "unknown setting 'seeds' (did you mean 'seed'? the settings are the options ...)"
            raise InvalidArgumentError(f"--config {path}: {key} is no setting of a run but an option of the command "
                                       f"line alone: give {COMMAND_LINE_ONLY[name]} there")
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise InvalidArgumentError(f"--config {path}: unknown setting {key!r} ({hint}the settings are the "
                                       "options of `benzarr train --help`, written with - or _)")
        want = wrong_type(name, value)
        if want is not None:
            raise InvalidArgumentError(f"--config {path}: {key} = {value!r}: expected {want}")
        out[name] = float(value) if str(known[name].type) == "float" and isinstance(value, int) else value  # lr = 1: 1.0
    return out


def wrong_type(name: str, value: object) -> str | None:
    """None when ``value``, as JSON or TOML gives it, is of the type ``TrainConfig.<name>``
    declares (a float takes an int; ``bands`` a list of band names), else the type it should be
    (``"int or null"``), for a message. ``name`` must be a field of ``TrainConfig``."""
    declared = next(f.type for f in fields(TrainConfig) if f.name == name)
    kinds = tuple(k for part in str(declared).split("|") for k in _KINDS[part.strip()])  # "int | None", ...
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)  # true is no count
    if ok and isinstance(value, list):
        ok = all(isinstance(v, str) for v in value)
    if ok:
        return None
    return " or ".join({"NoneType": "null", "list": "a list of band names"}.get(k.__name__, k.__name__)
                       for k in dict.fromkeys(kinds))
