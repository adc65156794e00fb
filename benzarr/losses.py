"""Multi-label losses on logits, built from a name: ``create_loss("focal:gamma=1")``.

Every loss maps (B, L) logits (any float dtype; computed in float32) and (B, L) {0, 1}
float targets to the mean over all B x L terms, so the learning rates that suit ``bce``
are the right order of magnitude for the others too.

- ``bce``: binary cross-entropy on the logits (``torch.nn.BCEWithLogitsLoss``), one
  independent sigmoid per class. The default, and what the balanced-bigearthnet study uses.
- ``focal``: Lin et al. 2017, "Focal Loss for Dense Object Detection": BCE weighted by
  ``(1 - p_t) ** gamma`` (and ``alpha`` for positives, ``1 - alpha`` for negatives), so
  the many easy negatives of a 43-class multi-label task weigh less. torchvision's
  ``sigmoid_focal_loss`` computes it. Defaults: ``gamma=2``, ``alpha=0.25``
  (``alpha=-1`` turns the class weighting off).
- ``asl``: Ridnik et al. 2021, "Asymmetric Loss for Multi-Label Classification": focusing
  with ``gamma_pos`` on positives and a stronger ``gamma_neg`` on negatives, whose
  probability is first shifted down by ``clip`` (negatives with p < clip cost nothing).
  Defaults: the paper's recommended ``gamma_neg=4``, ``gamma_pos=0``, ``clip=0.05``. The
  paper's code sums over classes and batch; here it is the mean, as for the others.

With ``gamma=0, alpha=-1`` (focal) or ``gamma_neg=gamma_pos=0, clip=0`` (asl) both equal
``bce`` (tested).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from benzarr.errors import InvalidArgumentError

#: Loss names and their parameters with defaults (``--loss NAME[:KEY=VALUE,...]``).
LOSSES: dict[str, dict[str, float]] = {
    "bce": {},
    "focal": {"gamma": 2.0, "alpha": 0.25},
    "asl": {"gamma_neg": 4.0, "gamma_pos": 0.0, "clip": 0.05},
}
#: Names of softmax cross-entropy, refused: the classes would compete for one probability mass.
CROSS_ENTROPY_NAMES = {"ce", "crossentropy", "cross-entropy", "cross_entropy", "categorical_crossentropy", "softmax"}


@dataclass(frozen=True)
class LossSpec:
    """A parsed loss: its name and every parameter (defaults filled in)."""

    name: str
    params: Mapping[str, float]

    def as_dict(self) -> dict[str, object]:
        """``{"name": ..., **params}``: what ``config.json`` records under ``loss``."""
        return {"name": self.name, **self.params}


def parse_loss(text: str) -> LossSpec:
    """``"focal"`` or ``"focal:gamma=1.5,alpha=0.5"`` -> :class:`LossSpec`, checked.

    Raises:
        InvalidArgumentError: an unknown name or parameter, a parameter given twice, a value
            that is no number, or one out of range (gamma >= 0; alpha in [0, 1] or -1; clip in [0, 1)).
    """
    name, _, rest = text.strip().partition(":")
    name = name.strip().lower()
    if name in CROSS_ENTROPY_NAMES:
        raise InvalidArgumentError(
            f"--loss {text} is refused: BigEarthNet is multi-label (a patch has 1 to 12 classes), "
            "and softmax cross-entropy makes the classes compete for one probability mass, so it "
            "cannot predict several classes at once. Use --loss bce (a sigmoid and binary "
            "cross-entropy per class), focal or asl."
        )
    if name not in LOSSES:
        raise InvalidArgumentError(f"unknown --loss {text!r}: choose one of {', '.join(LOSSES)} "
                                   "(multi-label losses on logits)")
    params = dict(LOSSES[name])
    given: set[str] = set()
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = (s.strip() for s in item.partition("="))
        if key not in params:
            known = ", ".join(params) or "none"
            raise InvalidArgumentError(f"--loss {text}: {name} has no parameter {key!r} (its parameters: {known})")
        if key in given:  # focal:gamma=2,gamma=3 trained with gamma 3, the 2 dropped in silence
            raise InvalidArgumentError(f"--loss {text}: {key} is given twice; give each parameter once")
        given.add(key)
        try:
            number = float(value) if eq else math.nan
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise InvalidArgumentError(f"--loss {text}: {key} needs a number, as in {name}:{key}={params[key]:g}")
        params[key] = number
    _check_ranges(text, params)
    return LossSpec(name, params)


def _check_ranges(text: str, params: Mapping[str, float]) -> None:
    for key, value in params.items():
        if key.startswith("gamma") and value < 0:
            raise InvalidArgumentError(f"--loss {text}: {key} must be >= 0, got {value:g}")
        if key == "alpha" and not (0 <= value <= 1 or value == -1):
            raise InvalidArgumentError(f"--loss {text}: alpha must be in [0, 1] (or -1: no weighting), got {value:g}")
        if key == "clip" and not 0 <= value < 1:
            raise InvalidArgumentError(f"--loss {text}: clip must be in [0, 1), got {value:g}")


class FocalLoss(nn.Module):
    """Sigmoid focal loss (torchvision's), mean over the (B, L) terms."""

    def __init__(self, gamma: float = 2.0, alpha: float = 0.25) -> None:
        super().__init__()
        self.gamma, self.alpha = gamma, alpha

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from torchvision.ops import sigmoid_focal_loss

        return sigmoid_focal_loss(logits.float(), target.float(), alpha=self.alpha, gamma=self.gamma, reduction="mean")

    def extra_repr(self) -> str:
        return f"gamma={self.gamma:g}, alpha={self.alpha:g}"


class AsymmetricLoss(nn.Module):
    """Asymmetric loss (ASL), mean over the (B, L) terms; gradients flow through the focusing weights."""

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05) -> None:
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip = gamma_neg, gamma_pos, clip

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x, y = logits.float(), target.float()
        p = torch.sigmoid(x)
        log_p = F.logsigmoid(x)  # log p, stable for large |x|
        if self.clip > 0:  # probability shifting: p_m = max(p - clip, 0)
            p_neg = (p - self.clip).clamp(min=0)
            log_not_p = torch.log1p(-p_neg.clamp(max=1 - 1e-7))
        else:
            p_neg, log_not_p = p, F.logsigmoid(-x)  # log(1 - p), stable
        pos = y * (1 - p).pow(self.gamma_pos) * log_p
        neg = (1 - y) * p_neg.pow(self.gamma_neg) * log_not_p
        return -(pos + neg).mean()

    def extra_repr(self) -> str:
        return f"gamma_neg={self.gamma_neg:g}, gamma_pos={self.gamma_pos:g}, clip={self.clip:g}"


def create_loss(spec: str | LossSpec | Mapping[str, object]) -> nn.Module:
    """The loss module for ``spec``: a ``--loss`` string, a :class:`LossSpec`, or the
    ``{"name": ..., **params}`` dict a run's ``config.json`` records (``None``-free).

    Raises:
        InvalidArgumentError: as :func:`parse_loss`.
    """
    if isinstance(spec, Mapping):
        params = {k: v for k, v in spec.items() if k != "name"}
        text = str(spec["name"]) + (":" + ",".join(f"{k}={v}" for k, v in params.items()) if params else "")
        spec = parse_loss(text)
    elif isinstance(spec, str):
        spec = parse_loss(spec)
    if spec.name == "focal":
        return FocalLoss(**spec.params)
    if spec.name == "asl":
        return AsymmetricLoss(**spec.params)
    return nn.BCEWithLogitsLoss()
