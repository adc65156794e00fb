"""Evaluate a training run's checkpoint on any subset of any store: ``benzarr evaluate``.

A run folder (written by :func:`benzarr.train.train`) says everything needed to read patches
as the run read them: ``config.json`` holds the model, the input bands and their order, the
label set and its class names, the modalities, the resampling, and (runs from this version
on) the per-band mean and std the run normalised with, which are its split's train
statistics. Older runs get those statistics recomputed from the run's own store and split.
So a model trained on one split can be scored on the test subset of another split (say, a
spatially grouped one: how much did leakage inflate the first score?) or on another store
with the same bands and label set.

Scores match training's own test pass bit for bit on the run's split (same batches, same
autocast and memory layout), so ``evaluate(run)`` reproduces ``metrics.json``'s test block.

On the run's own store, the evaluated patches that the run trained on are counted
(``seen_in_training``): scores on them are optimistic, and the CLI says so. That needs the
run's split as the run saw it (``config.json`` records its codes' SHA-256): the run's own
split rewritten since (``benzarr split --overwrite``) is refused, as ``train --resume``
refuses it; on another split the count is then unknown (None), with a warning.
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benzarr.checks import boolean, check_resample, is_whole
from benzarr.errors import InvalidArgumentError, SplitNotFoundError, StoreNotFoundError, UnsafeOverwriteError, some_of
from benzarr.fsutil import check_not_a_file, check_outside_datasets, check_replaceable_file, is_benzarr_store, os_error
from benzarr.lock import write_lock

#: Checkpoints a run folder holds, by the name ``--checkpoint`` takes.
CHECKPOINTS = ("best", "last")
#: What ``subset`` takes: a subset of the split, or ``all``, every valid patch of the store.
SUBSETS = ("train", "val", "test", "all")


@dataclass(frozen=True)
class EvaluationResult:
    """What :func:`evaluate_run` measured and wrote.

    Attributes:
        run_dir: the run folder.
        checkpoint: the weights evaluated (``checkpoints/best.pt`` or ``last.pt``).
        store: the evaluated store's path.
        split, subset: the evaluated split and subset of ``store`` (``None`` and ``"all"``: every
            valid patch).
        n_patches: patches evaluated.
        metrics: :mod:`benzarr.metrics` at threshold 0.5 (``per_class`` included), plus
            ``loss``, the mean BCE-with-logits.
        seen_in_training: evaluated patches that were in the run's train subset; None when
            ``store`` is not the run's store (or the run's split is no longer there).
        normalization: where the per-band mean and std came from.
        out_dir: the folder written: ``metrics.json``, ``scores.csv`` and, when asked,
            ``predictions.parquet``.
        files: the files written.
        intervals: with ``bootstrap``, 95% percentile bootstrap intervals (resampling
            patches) of :data:`benzarr.metrics.BOOTSTRAP_KEYS`, as ``{metric: (low, high)}``.
        warnings: what the caller should tell the user, one line each (the CLI prints them).
    """

    run_dir: Path
    checkpoint: Path
    store: str
    split: str | None
    subset: str
    n_patches: int
    metrics: dict[str, Any]
    seen_in_training: int | None
    normalization: str
    out_dir: Path
    files: list[Path] = field(default_factory=list)
    intervals: dict[str, tuple[float, float]] | None = None
    warnings: list[str] = field(default_factory=list)


def _natural(path: Path) -> tuple:
    # seed-10 after seed-2
    name = path.name
    digits = "".join(c for c in name if c.isdigit())
    return (name.rstrip("0123456789"), int(digits) if digits else -1, name)


#: How deep below a folder that is no run folder its runs are found (``report``): ``runs/rgb/seed-0``.
RUN_SEARCH_DEPTH = 2


def runs_under(path: Path, depth: int = RUN_SEARCH_DEPTH) -> list[Path]:
    """``path`` if it is a run folder (it holds ``config.json``), else the run folders below it down
    to ``depth`` levels, in natural order (``seed-2`` before ``seed-10``). Never looks inside a run
    folder, a store (``zarr.json``) or a folder it cannot list; the depth bound keeps ``report``
    from walking an archive of 590,326 patch folders given by mistake. No run: ``[]``."""
    if (path / "config.json").is_file():
        return [path]
    if depth == 0 or (path / "zarr.json").is_file():
        return []
    try:
        children = sorted((d for d in path.iterdir() if d.is_dir()), key=_natural)
    except OSError:
        return []
    return [run for child in children for run in runs_under(child, depth - 1)]


def check_run_folder(run_dir: str | Path) -> None:
    """Refuse a ``run_dir`` that is no folder, saying what it is: missing, a file, or a symbolic
    link that loops or leads nowhere (both were "no such run folder", of a name that is there;
    ``report`` said so of a file too).

    Raises:
        InvalidArgumentError: missing, a file, a link to nothing, not a folder.
        FileSystemError: a symbolic link loop.
    """
    path = Path(run_dir)
    if path.is_dir():
        return
    if path.is_symlink():
        try:
            path.stat()
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise os_error(exc, path, "reading") from None
        raise InvalidArgumentError(f"{run_dir}: a symbolic link to {os.readlink(path)}, which is not there")
    if not path.exists():
        raise InvalidArgumentError(f"{run_dir}: no such run folder")
    what = "a file" if path.is_file() else "not a folder"
    raise InvalidArgumentError(f"{run_dir}: is {what}; give the run folder that `benzarr train --out` wrote")


def read_run_config(run_dir: str | Path, values: bool = True) -> dict[str, Any]:
    """The ``config.json`` of a run folder (its model name lower-cased, as model names are);
    ``values=False`` checks only that it is a run's configuration, not each value in it (a run
    folder whose config.json was edited is still a run's, which ``train`` will not replace).

    Raises:
        InvalidArgumentError: no readable config.json with the settings of a run, or one holding a
            value benzarr train never writes there (a setting of another type, unknown labels,
            statistics that are not one finite number per band); the message names the value.
    """
    path = Path(run_dir) / "config.json"
    check_run_folder(run_dir)
    if not path.is_file():
        below = [p.relative_to(run_dir).as_posix() for p in runs_under(Path(run_dir))]
        if below:  # a folder of runs (a --seeds job's is run_folders')
            raise InvalidArgumentError(f"{run_dir} holds {len(below)} runs ({some_of(below, 4)}): give one of them")
        if is_benzarr_store(run_dir):  # `evaluate s.zarr`: the line named only the missing config.json
            raise InvalidArgumentError(f"{run_dir}: is a benzarr store, not a run folder; give a run folder "
                                       "(the --out of `benzarr train`)")
        raise InvalidArgumentError(f"{run_dir}: no config.json here (a folder written by `benzarr train`)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        config["settings"]["model"], config["settings"]["bands"]  # noqa: B018 - what every run has
    except ValueError as exc:
        raise InvalidArgumentError(f"{path}: not a benzarr run configuration (not JSON: {exc})") from None
    except (KeyError, TypeError) as exc:
        missing = f"no {exc.args[0]!r} in it" if isinstance(exc, KeyError) else "not the layout benzarr train writes"
        raise InvalidArgumentError(f"{path}: not a benzarr run configuration ({missing})") from None
    damage = _damage(config) if values else None
    if damage:
        raise InvalidArgumentError(f"{path}: {damage}: the file is damaged or was edited by hand")
    if isinstance(config["settings"]["model"], str):  # runs before TrainConfig lower-cased it kept it as typed
        config["settings"]["model"] = config["settings"]["model"].lower()
    return config


def _damage(config: dict[str, Any]) -> str | None:
    """What in a parsed ``config.json`` is not as benzarr train writes it, or None. A value of
    another type was used as it came: ``"amp": "no"`` scored with autocast on (a non-empty
    string is true), ``"bands": 5`` or ``"batch_size": "x"`` ended evaluate with a bare
    TypeError, report tabulated ``"epochs": "3"``, and bad statistics were named without the file."""
    import math
    from dataclasses import fields

    from benzarr.bigearthnet import NOMENCLATURES
    from benzarr.train_config import TrainConfig, wrong_type

    settings = config["settings"]
    bands = settings["bands"]
    if not (isinstance(bands, list) and bands and all(isinstance(b, str) for b in bands)):  # the run's, resolved
        return f"'settings.bands' is {bands!r}, not a list of band names"
    for spec in fields(TrainConfig):  # settings a run predates are absent; a newer benzarr's are not checked
        want = wrong_type(spec.name, settings[spec.name]) if spec.name in settings else None
        if want is not None:
            return f"'settings.{spec.name}' is {settings[spec.name]!r}, not {want}"
    labels = config.get("labels", settings.get("labels", "clc43"))  # as dataset_options reads it
    if labels is not None and labels not in NOMENCLATURES:
        return f"'labels' is {labels!r}, not one of {', '.join(NOMENCLATURES)}"
    classes = config.get("classes")
    named = isinstance(classes, list) and all(isinstance(c, str) for c in classes)
    if classes is not None and labels is not None and not (named and len(classes) == len(NOMENCLATURES[labels])):
        return f"'classes' is not a list of the {len(NOMENCLATURES[labels])} class names of {labels}"
    for name, kind in (("store", dict), ("normalization", dict), ("loss", (dict, str))):
        if config.get(name) is not None and not isinstance(config[name], kind):
            return f"'{name}' is {config[name]!r}, not {'a string or ' if name == 'loss' else ''}a JSON object"
    stats = config.get("normalization") or {}
    for name in ("mean", "std"):  # one finite number per band, or none recorded (then recomputed)
        values = stats.get(name)
        if values is None:
            continue
        if not isinstance(values, list) or len(values) != len(bands):
            held = f"holds {len(values)} values" if isinstance(values, list) else f"is {values!r}"
            return f"'normalization.{name}' {held}, not one per band of 'settings.bands' ({len(bands)})"
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)]
        if bad:
            return f"'normalization.{name}' holds {bad[0]!r}, not a finite number"
    return None


def run_folders(path: str | Path) -> list[Path]:
    """``[path]`` for a run folder; for the folder of a ``train --seeds`` job, its ``seed-<s>/``
    runs in seed order.

    Raises:
        InvalidArgumentError: neither (no config.json in ``path`` or its seed folders).
    """
    path = Path(path)
    if (path / "config.json").is_file():
        return [path]
    seeds = [p for p in path.glob("seed-*") if (p / "config.json").is_file() and p.name[5:].lstrip("-").isdigit()]
    if seeds:
        return sorted(seeds, key=lambda p: int(p.name[5:]))
    read_run_config(path)  # raises the one error of a folder that holds no run
    return [path]


def checkpoint_path(run_dir: str | Path, checkpoint: str) -> Path:
    """``checkpoints/<checkpoint>.pt`` of a run, which must exist.

    Raises:
        InvalidArgumentError: an unknown ``checkpoint``, or its file is missing (the message
            names the run's other checkpoint when it has one).
    """
    if checkpoint not in CHECKPOINTS:
        raise InvalidArgumentError(f"unknown checkpoint {checkpoint!r}: choose {' or '.join(CHECKPOINTS)}")
    path = Path(run_dir) / "checkpoints" / f"{checkpoint}.pt"
    if not path.is_file():  # the line said only what was missing
        others = [c for c in CHECKPOINTS if c != checkpoint and (path.parent / f"{c}.pt").is_file()]
        fix = (f"the run has checkpoints/{others[0]}.pt: evaluate that one (--checkpoint {others[0]})" if others
               else "the run holds no checkpoint: train it (again), or give another run folder")
        raise InvalidArgumentError(f"{run_dir}: no checkpoints/{checkpoint}.pt; {fix}")
    return path


def _same_path(a: str | Path, b: str | Path) -> bool:
    if "://" in str(a) or "://" in str(b):
        return str(a).rstrip("/") == str(b).rstrip("/")
    return Path(a).resolve() == Path(b).resolve()


def _resolved(store: str | Path) -> str:
    """``store`` as an absolute path (a URL as given): what an evaluation folder records."""
    return str(store).rstrip("/") if "://" in str(store) else str(Path(store).resolve())


def _check_same_question(out: Path, store: str | Path) -> None:
    """Refuse to replace, in the default folder ``out``, an evaluation of another store whose
    name is the same (``a/v2.zarr`` and ``b/v2.zarr`` both give ``...-v2``): one folder per
    question, and no evaluation replaces another's."""
    try:
        earlier = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    other = earlier.get("store_resolved")  # older evaluations recorded a path relative to their cwd: not comparable
    if isinstance(other, str) and not _same_path(other, _resolved(store)):
        raise InvalidArgumentError(f"{out} holds the evaluation on {other}, another store of the same name; "
                                   "pass --out to write this one elsewhere")


def _is_evaluation(summary: Any) -> bool:
    """Whether a parsed ``metrics.json`` is one that ``benzarr evaluate`` wrote: every version
    of it writes these keys, and ``benzarr train``'s has none of them (its metrics are under
    ``test`` and ``val``)."""
    return isinstance(summary, dict) and {"run", "n_patches", "metrics"} <= summary.keys()


def _check_output(out: Path, predictions: bool) -> dict[str, Any] | None:
    """Refuse an output folder where the evaluation would replace what it did not write: a
    folder where it writes a file, a training run's folder (its own metrics.json and scores.csv
    are the run's test result), a ``metrics.json`` of anything but an evaluation. Returns the
    earlier evaluation's ``metrics.json`` found in ``out`` (None: none).

    Raises:
        InvalidArgumentError: a folder in a file's place, or ``out`` is a run folder.
        UnsafeOverwriteError: ``out/metrics.json`` is not an evaluation's.
    """
    for name in ("metrics.json", "scores.csv", *(["predictions.parquet"] if predictions else [])):
        if (out / name).is_dir():  # before scoring: nothing of the old evaluation is replaced then
            raise InvalidArgumentError(f"{out / name}: is a folder where the evaluation writes a file; "
                                       "remove it or pass another --out")
    if (out / "config.json").is_file() and (out / "checkpoints").is_dir():
        raise InvalidArgumentError(f"{out}: is a training run's folder (config.json, checkpoints/): the evaluation "
                                   "would replace the run's own metrics.json and scores.csv; pass another --out, "
                                   "or none for RUN/evaluations/<split>-<subset>")
    path = out / "metrics.json"
    if not path.exists():  # no earlier evaluation here: what it writes beside metrics.json must be new, or its own
        check_replaceable_file(out / "scores.csv", owned=_is_scores_table, what="a scores table", command="evaluate")
        if predictions:
            check_replaceable_file(out / "predictions.parquet", owned=_is_predictions_table,
                                   what="a predictions table", command="evaluate")
        return None
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        earlier = None
    if not _is_evaluation(earlier):
        raise UnsafeOverwriteError(f"{path}: not the metrics.json of an evaluation (benzarr evaluate did not write "
                                   "it), and the evaluation replaces nothing else; pass another --out")
    return earlier


def _is_scores_table(path: Path) -> bool:
    """A per-class scores table as ``benzarr train`` and ``evaluate`` write it (by its header)."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        return fh.readline().startswith("class,index,support,predicted,")


def _is_predictions_table(path: Path) -> bool:
    """A predictions table as ``evaluate --predictions`` writes it (``patch`` ... ``labels``)."""
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except (OSError, ValueError):  # not a parquet file
        return False
    return len(names) >= 2 and names[0] == "patch" and names[-1] == "labels"


def _stale_predictions(out: Path, earlier: dict[str, Any] | None) -> bool:
    """Whether ``out/predictions.parquet`` is the earlier evaluation's in ``out`` (which an
    evaluation without predictions removes: left, it would pass for this one's). Its
    ``metrics.json`` says so; one from before that record counts it when the file has the
    columns evaluate writes (``patch``, the class scores, ``labels``). A file the user put
    there is never taken for it."""
    path = out / "predictions.parquet"
    if earlier is None or not path.is_file():
        return False
    if "predictions" in earlier:
        return earlier["predictions"] == path.name
    return _is_predictions_table(path)


def _run_store(config: dict[str, Any]) -> str:
    """The run's store: as it was given to ``train`` when that still names the same place
    (a relative path reads better), else the absolute path the run recorded."""
    given, recorded = config["settings"].get("store"), (config.get("store") or {}).get("path")
    if given and (not recorded or (Path(given).exists() and _same_path(given, recorded))):
        return str(given)
    return str(recorded or given)


def run_normalization(config: dict[str, Any], options: dict[str, Any]) -> tuple[list[float], list[float], str]:
    """The per-band (mean, std) the run normalised its inputs with, and where they come from
    (``options``: :func:`dataset_options` of the run, used when they must be recomputed).

    Raises:
        InvalidArgumentError: the run records none and its store or split is gone.
    """
    recorded = config.get("normalization")
    if recorded and recorded.get("mean") is not None:
        return list(recorded["mean"]), list(recorded["std"]), f"the run's ({recorded.get('source', 'recorded')})"
    from benzarr.data import BigEarthNetDataset

    settings = config["settings"]
    store = _run_store(config)
    try:
        ds = BigEarthNetDataset(store, split=settings["split"], subset="train", normalize=True, **options)
    except Exception as exc:  # the run's store or split is gone: the statistics cannot be rebuilt
        raise InvalidArgumentError(
            f"the run records no normalisation statistics, and they cannot be recomputed from its store "
            f"{store} and split {settings.get('split')!r}: {exc}") from None
    assert ds.mean is not None and ds.std is not None
    return ds.mean, ds.std, f"recomputed: {ds.stats_source} of {store}"


def _run_split_fingerprints(config: dict[str, Any], store_path: str) -> tuple[str, str | None] | None:
    """The SHA-256 of the run's split codes as the run recorded it and as ``store_path`` holds
    it now (None when the split is gone), when ``store_path`` is the run's store; None for
    another store or a run that recorded no store identity."""
    from benzarr.store import open_store
    from benzarr.train import store_identity

    identity = config.get("store") or {}
    if not identity.get("path") or not identity.get("split") or not _same_path(identity["path"], store_path):
        return None
    try:
        now = store_identity(open_store(store_path), identity["split"])  # the fingerprint the run recorded, taken again
    except SplitNotFoundError:
        return str(identity.get("split_sha256")), None
    return str(identity.get("split_sha256")), now["split_sha256"]


def _check_split_unchanged(config: dict[str, Any], store_path: str, split: str | None,
                           fingerprints: tuple[str, str | None] | None) -> None:
    """Refuse to score the run's own split of its own store when its codes are no longer those
    the run trained with (``benzarr split --overwrite`` since): its val and test patches may
    then be patches the run trained on, and which ones cannot be told from a fingerprint."""
    if fingerprints is None or split is None or split != (config.get("store") or {}).get("split"):
        return
    recorded, now = fingerprints
    if now is not None and now != recorded:
        raise InvalidArgumentError(
            f"split {split!r} of {store_path} was rewritten since the run trained on it (split codes: "
            f"{recorded[:12]!r} -> {now[:12]!r}): its patches may be ones the run trained on, so the scores "
            "would mean nothing; evaluate on another split (--split), or train again on this one")


def _seen_in_training(config: dict[str, Any], store_path: str, rows: np.ndarray,
                      fingerprints: tuple[str, str | None] | None) -> int | None:
    """How many of ``rows`` the run trained on, when ``store_path`` is the run's store and its
    split still has the codes the run recorded (``fingerprints`` of :func:`_run_split_fingerprints`
    equal); None otherwise."""
    from benzarr.store import open_store

    if fingerprints is None or fingerprints[1] != fingerprints[0]:
        return None
    split = config["store"]["split"]
    trained = open_store(store_path).subset_rows(split, "train")
    return int(np.isin(rows, trained).sum())


def check_run_names(config: dict[str, Any], run_dir: str | Path) -> None:
    """Refuse, naming the run's ``config.json``, a model, loss, modality, band or resampling in
    it that this benzarr does not know (an edited file, or a run of a newer benzarr): before,
    each was refused as if the user had typed it (``unknown --loss 'x'``, ``unknown model``)
    or, a loss without its name, ended with a bare KeyError. ``evaluate`` and ``show --run``."""
    from benzarr.bands import IMAGE_MODALITIES, parse_modalities, resolve_bands
    from benzarr.losses import create_loss
    from benzarr.models import get_spec
    settings = config["settings"]

    modalities = settings.get("modalities", "s2")
    for key, check in (("settings.model", lambda: get_spec(settings["model"])),
                       ("settings.modalities", lambda: parse_modalities(modalities, IMAGE_MODALITIES)),
                       ("settings.bands", lambda: resolve_bands(settings["bands"], modalities)),
                       ("settings.resample", lambda: check_resample(settings.get("resample", "bilinear"))),
                       ("loss", lambda: create_loss(config.get("loss") or settings.get("loss", "bce")))):
        try:
            check()
        except (InvalidArgumentError, KeyError) as exc:
            why = f"no {exc.args[0]!r} in it" if isinstance(exc, KeyError) else str(exc)
            raise InvalidArgumentError(f"{Path(run_dir) / 'config.json'}: '{key}': {why}") from None


def check_runs_checkpoint(weights: Path, config: dict[str, Any]) -> None:
    """Refuse a checkpoint that another run wrote (``evaluate`` and ``show --run``): one of the
    same model and bands fits exactly, and another seed's ``best.pt`` copied into the run was
    scored as this run's. A checkpoint records its run's configuration: its settings (but the
    ones a ``--resume`` may change) and start time must be the ``config.json``'s. A file that
    records none (a plain state dict) is not compared; an unreadable one is left to the loader.

    Raises:
        InvalidArgumentError: naming the checkpoint and the settings that differ.
    """
    import torch

    from benzarr.train_config import RESUMABLE

    try:  # mmap: the settings, without reading the tensors
        payload = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # create_model says why it cannot be read
        return
    recorded = payload.get("config") if isinstance(payload, dict) else None
    if not isinstance(recorded, dict) or not isinstance(recorded.get("settings"), dict):
        return
    ours, theirs = config["settings"], recorded["settings"]
    shared = [k for k in ours if k in theirs and k not in RESUMABLE]  # a newer benzarr's resume may add settings
    differ = [f"{k} {theirs[k]!r} against {ours[k]!r}" for k in shared
              if (theirs[k].lower() if k == "model" and isinstance(theirs[k], str) else theirs[k]) != ours[k]]
    if not differ and config.get("created") and recorded.get("created") and config["created"] != recorded["created"]:
        differ.append(f"started {recorded['created']} against {config['created']}")  # the same settings: a run again
    if differ:
        raise InvalidArgumentError(f"{weights}: written by another run than the config.json beside it "
                                   f"({'; '.join(differ[:3])}): its scores would pass for this run's; put the run's "
                                   "own checkpoint back, or evaluate the run it came from")


def dataset_options(config: dict[str, Any]) -> dict[str, Any]:
    """The :class:`~benzarr.data.BigEarthNetDataset` keywords that read patches as the run did:
    bands (in the run's order), label set, modalities, resampling."""
    from benzarr.train import parse_modalities

    settings = config["settings"]
    return dict(bands=list(settings["bands"]), labels=config.get("labels", settings.get("labels", "clc43")),
                # a run trained before s2,s2 was refused read it as s2
                modalities=parse_modalities(settings.get("modalities", "s2"), once=False),
                resample=settings.get("resample", "bilinear"), align_corners=bool(settings.get("align_corners", False)))


class RowBuffer:
    """Batches of rows written one after another into one tensor, allocated once (grown by
    doubling where the number of rows is not known), instead of a list of per-batch tensors
    joined at the end: those small tensors, each allocated between a batch's large temporary
    ones, pinned the C heap, which could not give the batches' memory back, so a scoring
    pass grew by about 10 MB of resident memory a batch (2.1 GB after 6,000 patches of 12
    bands, batch size 32, on the CPU)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.data: Any = None
        self.n = 0

    def add(self, part: Any) -> None:
        """Append ``part`` (k, ...) after the rows so far (same dtype, device and trailing shape)."""
        n = part.shape[0]
        if self.data is None:
            self.data = part.new_empty((max(self.capacity, n), *part.shape[1:]))
        elif self.n + n > self.data.shape[0]:
            grown = part.new_empty((max(2 * self.data.shape[0], self.n + n), *part.shape[1:]))
            grown[: self.n] = self.data[: self.n]
            self.data = grown
        self.data[self.n : self.n + n] = part
        self.n += n

    def result(self) -> Any:
        """The (n, ...) rows added so far, a view of the buffer (None before the first)."""
        return None if self.data is None else self.data[: self.n]


def _rows_expected(batches: Any) -> int:
    """Rows ``batches`` will yield at most (batches x batch size, for a :class:`DeviceLoader`), or 0."""
    size = getattr(getattr(batches, "batch_sampler", None), "batch_size", None)
    try:
        return len(batches) * int(size) if size else 0
    except (TypeError, ValueError):
        return 0


def score_batches(net: Any, batches: Any, device: Any, memory_format: Any, amp: bool, criterion: Any,
                  progress: Callable[[int], None] | None = None) -> tuple[Any, Any, Any, Any]:
    """Run ``net`` (in eval mode) over device batches: ``(logits (N, L) float32, labels (N, L)
    bool, store rows (N,) int64 on the CPU, summed BCE loss)``, all but the rows left on the
    device. The one scoring pass of training's validation and test and of ``benzarr evaluate``,
    so both give the same scores bit for bit. ``progress(n)`` is called with each batch's size.
    No batch's tensors outlive it: the outputs are written into tensors allocated once
    (:class:`RowBuffer`)."""
    import torch

    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp)
    loss_sum = torch.zeros((), device=device)
    expected = _rows_expected(batches)
    logits_all, labels_all, rows = RowBuffer(expected), RowBuffer(expected), RowBuffer(expected)
    with torch.no_grad():
        for batch in batches:
            x, y = batch["image"].contiguous(memory_format=memory_format), batch["label"]
            with autocast:
                logits = net(x).float()
            loss_sum += criterion(logits, y) * len(y)
            logits_all.add(logits)
            labels_all.add(y.bool())
            rows.add(batch["index"])  # copied: no view keeps the batch's buffer
            n = len(y)
            del x, y, logits, batch  # nothing of this batch is held while the next one is made
            if progress is not None:
                progress(n)
    if not logits_all.n:
        return None, None, None, loss_sum
    return logits_all.result(), labels_all.result(), rows.result(), loss_sum


def default_out_dir(run_dir: Path, store: str, split: str | None, subset: str, own_store: bool,
                    checkpoint: str = "best") -> Path:
    """``RUN/evaluations/<split>-<subset>`` or ``RUN/evaluations/all`` (``-<store name>``
    appended for another store, ``-last`` for the last checkpoint: one folder per question)."""
    name = "all" if split is None else f"{split}-{subset}"
    if not own_store:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(str(store).rstrip("/")).name.removesuffix(".zarr"))
        name += f"-{stem}"
    if checkpoint != "best":
        name += f"-{checkpoint}"
    return run_dir / "evaluations" / name


def evaluate_run(
    run_dir: str | Path,
    store: str | None = None,
    split: str | None = None,
    subset: str = "test",
    checkpoint: str = "best",
    batch_size: int | None = None,
    workers: int = 0,
    device: str = "auto",
    out_dir: str | Path | None = None,
    predictions: bool = False,
    progress: Callable[[int, int], None] | None = None,
    bootstrap: int = 0,
) -> EvaluationResult:
    """Score a run's checkpoint on ``subset`` of ``split`` of ``store`` and write the results.

    Args:
        run_dir: a folder written by ``benzarr train``.
        store: the store to read (default: the run's own).
        split: a split of ``store`` (default: the run's).
        subset: ``train``, ``val`` or ``test``; ``all``: every valid patch of ``store``,
            whatever its split (``split`` must then be None).
        checkpoint: ``best`` or ``last``.
        batch_size: patches per batch (default: the run's).
        workers: loader worker processes.
        device: ``auto``, ``cpu``, ``cuda``...
        out_dir: where to write (default ``RUN/evaluations/<split>-<subset>[-<store>]``): a new
            folder or an earlier evaluation's, never a run folder.
        predictions: also write ``predictions.parquet``: ``patch``, one float32 sigmoid
            score column per class (the class names, in the store's order) and
            ``labels``, the true class names joined by ``"; "``. Without, an earlier
            evaluation's ``predictions.parquet`` in ``out_dir`` is removed.
        progress: called as ``progress(patches_done, patches_total)`` after each batch.
        bootstrap: with N > 0, 95% intervals from N bootstrap resamples of the evaluated
            patches (seed 0; :func:`benzarr.metrics.bootstrap_intervals`), in ``metrics.json``
            as ``ci95``.

    Raises:
        InvalidArgumentError: not a run folder, a missing checkpoint, an unknown subset, a
            ``split`` with subset ``all``, a batch size, worker or resample count that is not a
            whole number in range, a
            ``predictions`` that is not True or False, a ``progress`` that is not callable, a
            store whose class names differ from the run's, an ``out_dir`` that is a run
            folder, or the run's own split rewritten since it trained on it.
        UnsafeOverwriteError: ``out_dir`` holds a ``metrics.json`` that is not an evaluation's.
        PathConflictError: ``out_dir`` is, or lies inside, a benzarr store or an archive.
        SplitNotFoundError, StoreNotFoundError: as :class:`~benzarr.data.BigEarthNetDataset`.
    """
    if out_dir is not None:  # (an old run's default folder inside a store is not this user's choice)
        check_outside_datasets(out_dir, "--out", "the evaluation")
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    settings = config["settings"]
    weights = checkpoint_path(run_dir, checkpoint)
    if subset not in SUBSETS:
        raise InvalidArgumentError(f"unknown subset {subset!r}: choose one of {', '.join(SUBSETS)}")
    if subset == "all" and split is not None:  # was dropped in silence, a mistyped or missing split too
        raise InvalidArgumentError(f"--split {split} with --subset all: all scores every valid patch of the store, "
                                   "whatever its split; drop --split, or give --subset train, val or test of it")
    size = settings.get("batch_size", 64) if batch_size is None else batch_size
    # batch_size=2.5 ran with 2, predictions="no" wrote them, workers="2" and bootstrap=2.5 were
    # TypeErrors (the latter after scoring), progress=5 one at the first batch
    for name, value in (("--batch-size", size), ("--workers", workers), ("--bootstrap", bootstrap)):
        if not is_whole(value):
            raise InvalidArgumentError(f"{name} must be a whole number, got {value!r}")
    boolean("--predictions", predictions)
    if progress is not None and not callable(progress):
        raise InvalidArgumentError(f"progress must be a function taking (patches done, patches in all), got {progress!r}")
    if size < 1:
        raise InvalidArgumentError(f"--batch-size must be at least 1, got {size}")
    if workers < 0:
        raise InvalidArgumentError(f"--workers must be 0 or more, got {workers}")
    if bootstrap < 0 or bootstrap == 1:
        raise InvalidArgumentError(f"--bootstrap must be 0 (no intervals) or at least 2 resamples, got {bootstrap}")
    run_store = _run_store(config)
    if store is None and "://" not in run_store and not Path(run_store).exists():
        raise StoreNotFoundError(f"{run_store}: the run's store is not there (moved or deleted?); "
                                 "give its new path with --store")
    store = str(store or run_store)
    split = None if subset == "all" else split or settings["split"]
    if split is not None:  # a mistyped split answered before torch loads (seconds)
        from benzarr.store import open_store

        open_store(store).read_split(split)
    import torch

    from benzarr.data import BigEarthNetDataset, make_loader
    from benzarr.losses import create_loss
    from benzarr.metrics import MultilabelMetrics, json_friendly
    from benzarr.models import create_model
    from benzarr.train import resolve_device, write_scores_csv

    check_run_names(config, run_dir)
    check_runs_checkpoint(weights, config)
    options = dataset_options(config)
    labels = options["labels"]
    ds = BigEarthNetDataset(store, split=split, subset=None if split is None else subset, **options)
    classes = list(config.get("classes") or ds.classes)
    if ds.classes != classes:
        raise InvalidArgumentError(f"{store}: its {labels} class names differ from the run's "
                                   f"({len(ds.classes)} against {len(classes)}); the model's outputs would not line up")
    if len(ds) == 0:
        raise InvalidArgumentError(f"{store}: split {split!r} has no {subset} patches" if split is not None
                                   else f"{store}: no valid patches")
    mean, std, source = run_normalization(config, options)
    ds.set_normalization(mean, std, source)

    own_store = bool(run_store) and _same_path(run_store, store)
    out = Path(out_dir) if out_dir is not None else default_out_dir(run_dir, store, split, subset, own_store, checkpoint)
    check_not_a_file(out, "the evaluation (--out)")  # before scoring, not at the mkdir after it
    if out_dir is None and not own_store:  # the folder's name holds the store's: two stores may share it
        _check_same_question(out, store)
    earlier = _check_output(out, predictions)  # before scoring: nothing is replaced after a refusal
    fingerprints = _run_split_fingerprints(config, store)
    _check_split_unchanged(config, store, split, fingerprints)
    seen = _seen_in_training(config, store, ds.rows, fingerprints)
    warnings: list[str] = []
    if fingerprints is not None and seen is None:
        warnings.append(f"the run's split {config['store']['split']!r} of {store} was rewritten or deleted since "
                        "the run trained on it: the evaluated patches it trained on, whose scores are optimistic, "
                        "cannot be counted")

    target = resolve_device(device)
    memory_format = torch.channels_last if settings.get("channels_last", True) else torch.contiguous_format
    net = create_model(settings["model"], in_channels=len(options["bands"]), num_classes=len(classes), weights=weights,
                       strict=True)
    net = net.to(target, memory_format=memory_format).eval()
    criterion = create_loss(config.get("loss") or settings.get("loss", "bce"))  # the run's own loss
    loader = make_loader(ds, size, shuffle=False, num_workers=workers, seed=0, device=target)
    done = [0]

    def advance(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress(done[0], len(ds))

    try:  # the batches, autocast and layout of training's own test pass: the same scores, bit for bit
        logits, truth, rows, loss_sum = score_batches(net, loader, target, memory_format, bool(settings.get("amp")),
                                                      criterion, advance)
    finally:
        loader.close()  # its workers stop now, also after an error
    meter = MultilabelMetrics(class_names=classes)
    meter.update(logits, truth)
    metrics = meter.compute()
    metrics["loss"] = float(loss_sum) / metrics["n_samples"]
    intervals = None
    if bootstrap:
        from benzarr.metrics import bootstrap_intervals

        # on the logits with threshold logit(0.5) = 0, as the point metrics: the float32 sigmoid
        # of a logit in (0, 3e-8] is exactly 0.5, a positive there and a negative here
        intervals = bootstrap_intervals(truth.cpu().numpy(), logits.cpu().numpy(), bootstrap, seed=0, threshold=0.0)

    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "run": str(run_dir), "checkpoint": str(weights.relative_to(run_dir)), "model": settings["model"],
        "store": store, "store_resolved": _resolved(store), "own_store": own_store, "split": split, "subset": subset,
        "labels": labels,
        "n_patches": len(ds),
        "seen_in_training": seen, "normalization": source,
        "predictions": "predictions.parquet" if predictions else None,  # which predictions file is this one's
        "metrics": json_friendly(metrics),
    }
    if intervals is not None:
        summary["ci95"] = {k: [None if v != v else v for v in pair] for k, pair in intervals.items()}
        summary["bootstrap"] = {"resamples": bootstrap, "seed": 0, "unit": "patch", "method": "percentile"}
    # Two evaluations into one folder at once (two jobs of a sweep) wrote their files in turn:
    # one's scores.csv beside the other's metrics.json. The folder is written under its write
    # lock, and what it holds is checked again there: the other may have written meanwhile.
    with write_lock(out):
        earlier = _check_output(out, predictions)
        files = [out / "metrics.json", out / "scores.csv"]
        if predictions:
            files.append(_write_predictions(out / "predictions.parquet", ds, rows.numpy(),
                                            logits.cpu().numpy(), truth.cpu().numpy(), classes))
        elif _stale_predictions(out, earlier):
            (out / "predictions.parquet").unlink()
        elif (out / "predictions.parquet").exists():
            warnings.append(f"{out / 'predictions.parquet'}: left as it was (benzarr evaluate did not write it); "
                            "it holds no predictions of this evaluation")
        write_scores_csv(files[1], metrics)
        files[0].write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")  # last: it says what the folder holds
    return EvaluationResult(run_dir, weights, store, split, subset, len(ds), metrics, seen, source, out, files,
                            intervals, warnings)


def _write_predictions(path: Path, ds: Any, rows: np.ndarray, logits: np.ndarray, truth: np.ndarray,
                       classes: list[str]) -> Path:
    """``patch``, one float32 sigmoid score column per class, the float32 logits (one
    ``<class> (logit)`` column per class), ``labels`` (true class names joined by "; ").

    The logits are what the metrics rank (:class:`benzarr.metrics.MultilabelMetrics`): the
    float32 sigmoid ties at 0 or 1 beyond |logit| ~ 17, so mAP recomputed from the scores
    alone could differ from the one reported; from the logits it is the same."""
    import pandas as pd

    from benzarr.store import open_store

    names = open_store(ds.path, storage_options=ds.storage_options).patch_names()[rows]
    logits = np.asarray(logits, dtype=np.float32)
    scores = pd.DataFrame(1.0 / (1.0 + np.exp(-logits.astype(np.float64))), columns=classes).astype(np.float32)
    frame = pd.concat([scores, pd.DataFrame(logits, columns=[f"{c} (logit)" for c in classes])], axis=1)
    frame.insert(0, "patch", names)
    frame["labels"] = ["; ".join(np.asarray(classes)[t]) for t in truth]
    frame.to_parquet(path, index=False)
    return path
