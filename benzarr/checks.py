"""Argument checks shared by the library's entry points: whole numbers, seeds, finite numbers.

Torch-free: ``benzarr train`` checks ``--seeds`` with it before torch is imported. Each check
raises :class:`InvalidArgumentError` naming the argument (``what``) and the value.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from benzarr.errors import InvalidArgumentError

#: The largest seed: ``numpy.random.RandomState`` accepts 0 .. 2**32 - 1.
MAX_SEED = 2**32 - 1


def is_whole(value: Any) -> bool:
    """True for an int (numpy's included), False for bools, floats (2.0 too), strings and the rest."""
    return not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, np.integer))


def whole(what: str, value: Any, least: int, most: int | None = None) -> int:
    """``value`` as an int of at least ``least`` (and at most ``most``), else InvalidArgumentError
    naming ``what`` (numpy integers pass; floats, strings, None and bools do not)."""
    if not is_whole(value):
        raise InvalidArgumentError(f"{what} must be a whole number, got {value!r}")
    if value < least or (most is not None and value > most):
        bound = f"from {least} to {most:,}" if most is not None else f"{least} or more"
        raise InvalidArgumentError(f"{what} must be {bound}, got {value}")
    return int(value)


def boolean(what: str, value: Any) -> bool:
    """``value`` as a bool (numpy's pass), else InvalidArgumentError naming ``what``: a string
    such as ``"no"`` is true, so it would quietly mean the opposite."""
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidArgumentError(f"{what} must be True or False, got {value!r}")
    return bool(value)


def check_resample(resample: Any) -> str:
    """``resample`` if it is one of :data:`benzarr.train_config.RESAMPLE_MODES`, else
    InvalidArgumentError naming it and the modes (the dataset, the batch transform, the
    Lightning DataModule and a run's config.json are checked the same way)."""
    from benzarr.train_config import RESAMPLE_MODES  # stdlib-only: this module stays torch-free

    if resample not in RESAMPLE_MODES:
        raise InvalidArgumentError(f"unknown resampling {resample!r}: choose one of {', '.join(RESAMPLE_MODES)}")
    return resample


def check_seed(seed: Any, what: str = "seed") -> int:
    """``seed`` as an int in 0 .. 2**32 - 1 (what ``RandomState`` accepts); ``what`` names it
    in the message (``"--seed"`` for the CLI's options)."""
    if not is_whole(seed):
        # 1.9 used to be stored as 1, True as 1 and "5" as 5
        raise InvalidArgumentError(f"{what} must be a whole number, got {seed!r}")
    if not 0 <= seed <= MAX_SEED:
        raise InvalidArgumentError(f"{what} must be between 0 and {MAX_SEED}, got {seed}")
    return int(seed)


def is_number(value: Any) -> bool:
    """True for an int or float (numpy's included), False for bools, strings and the rest."""
    return not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, float, np.integer, np.floating))


def finite(what: str, value: Any, *, positive: bool = False) -> float:
    """``value`` as a finite float that is 0 or more (more than 0 if ``positive``), else
    InvalidArgumentError naming ``what``: NaN and infinity would reach torch, which words them
    as a bare ValueError (or not at all)."""
    if not is_number(value) or not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise InvalidArgumentError(f"{what} must be a {'positive' if positive else 'non-negative'}, "
                                   f"finite number, got {value!r}")
    return float(value)
