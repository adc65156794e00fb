"""Training checkpoints: everything a resumed run needs to continue bit for bit.

A checkpoint is one ``torch.save`` dict (``checkpoints/last.pt``, ``checkpoints/best.pt``)::

    format       1
    model        state dict of the unwrapped model (no ``module.`` prefix), loadable by
                 ``benzarr.models.create_model(..., weights=path)``
    optimizer    optimizer state dict
    scheduler    LR scheduler state dict, or None
    rng          {"torch", "cuda" (list, one per device, or None), "numpy", "python"}
    state        the trainer's counters (``benzarr.train.RunState``): {"epoch": epochs
                 completed, "step": optimisation steps, "best_score", "best_epoch",
                 "bad_epochs", "stopped", "stopped_early", "seconds"}
    config       the run's configuration (a plain dict)
    partial      None at an epoch's end; written in the middle of an epoch
                 (``--checkpoint-every``): {"loader": {"epoch", "served"} (the loader's
                 ``state_dict``), "loss_sum" (tensor), "seen", "scores" (n, L) float32
                 logits and "targets" (n, L) bool of the epoch so far, or None}

Files are written to a temporary name, flushed to disk and renamed (``os.replace``), so a
crash or a SIGKILL at any moment leaves the previous checkpoint or the new one, never half of one.
Only tensors, numbers, strings, lists and dicts are stored, so ``torch.load(weights_only=True)``
reads them: loading a checkpoint cannot run code.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benzarr.errors import InvalidArgumentError
from benzarr.fsutil import interrupts_deferred

FORMAT = 1


def rng_state() -> dict[str, Any]:
    """The state of every random generator the trainer touches (torch CPU and CUDA, NumPy, random)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        # NumPy's legacy state as plain values (weights_only cannot read numpy arrays).
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": _python_state_to_plain(random.getstate()),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _python_state_to_plain(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    state: dict[str, Any],
    config: dict[str, Any],
    partial: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically (temporary file, fsync, then rename).

    Args:
        model: the model, unwrapped (not the DistributedDataParallel wrapper).
        state: trainer counters: epoch, step, best_score, best_epoch, bad_epochs, stopped, ...
        config: the run configuration as JSON-friendly values.
        partial: the position and running sums of an epoch in progress (see the module
            docstring), or None at an epoch's end.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_state(),
        "state": dict(state),
        "config": dict(config),
        "partial": partial,
    }
    tmp = path.with_name(path.name + ".tmp")
    with interrupts_deferred(), open(tmp, "wb") as f:  # Ctrl-C lands after the checkpoint, not inside it
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        f.close()
        os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (safely: ``weights_only=True``).

    Raises:
        InvalidArgumentError: the file is missing or is not a benzarr checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidArgumentError(f"{path}: no checkpoint here; start the run without --resume")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle and zip errors: not a checkpoint we can read
        raise InvalidArgumentError(f"{path}: cannot read the checkpoint ({why_unreadable(path, exc)})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "model" not in payload:
        raise InvalidArgumentError(f"{path}: not a benzarr checkpoint (format {FORMAT})")
    return payload


def why_unreadable(path: Path, exc: BaseException) -> str:
    """Why ``torch.load(path, weights_only=True)`` raised ``exc``, in a few words: torch's own
    message can be empty (a 0-byte file), an errno (a file cut short) or twelve lines of advice
    to load without ``weights_only`` (any file that is no torch file at all)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
        size = os.path.getsize(path)
    except OSError as error:
        return f"{error.strerror or error}"
    if size == 0:
        return "an empty file (0 bytes): a copy or a save cut short?"
    zipped = head[:4] == b"PK\x03\x04"  # torch.save's format (legacy files are a pickle: 0x80)
    if not zipped and head[:1] != b"\x80":
        return "not a file written by torch.save"
    if "Weights only load failed" in str(exc):
        return "it holds Python objects besides tensors, which are never unpickled here (they could run code)"
    if zipped:
        return f"a torch.save file that is damaged or cut short ({size:,} bytes)"
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def restore(
    payload: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    rng: bool = True,
) -> dict[str, Any]:
    """Load a checkpoint's model, optimizer, scheduler and RNG states in place; return its counters."""
    model.load_state_dict(payload["model"])
    if optimizer is not None:
        optimizer.load_state_dict(payload["optimizer"])
    if scheduler is not None and payload.get("scheduler") is not None:
        scheduler.load_state_dict(payload["scheduler"])
    if rng:
        set_rng_state(payload["rng"])
    return dict(payload["state"])
