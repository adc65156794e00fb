"""Multi-label losses on logits, built from a name: ``create_loss("focal:gamma=1")``.

Every loss maps (B, L) logits (any float dtype; computed in float32, or float64 when given
float64) and (B, L) {0, 1} float targets to the mean over all B x L terms, so the learning
rates that suit ``bce`` are the right order of magnitude for the others too.

- ``bce``: binary cross-entropy on the logits (``F.binary_cross_entropy_with_logits``), one
  independent sigmoid per class. The default, and what the balanced-bigearthnet study uses.
- ``focal``: Lin et al. 2017, "Focal Loss for Dense Object Detection": BCE weighted by
  ``(1 - p_t) ** gamma`` (and ``alpha`` for positives, ``1 - alpha`` for negatives), so
  the many easy negatives of a 43-class multi-label task weigh less. Defaults: ``gamma=2``,
  ``alpha=0.25`` (``alpha=-1`` turns the class weighting off; the same convention as
  torchvision's ``sigmoid_focal_loss``). The value is torchvision's
  ``sigmoid_focal_loss(..., reduction="mean")``: the mean over all B x L terms, not the
  paper's sum divided by the number of positives. With ``0 < gamma < 1`` the weight is
  ``exp(gamma * logsigmoid(+-x))``, so a saturated logit (|x| > ~17 in float32) has a finite
  gradient (torchvision's is NaN there); other gammas give torchvision's bits.
- ``asl``: Ridnik et al. 2021, "Asymmetric Loss for Multi-Label Classification": focusing
  with ``gamma_pos`` on positives and a stronger ``gamma_neg`` on negatives, whose
  probability is first shifted down by ``clip`` (``p_m = max(p - clip, 0)``: negatives with
  p < clip cost nothing). Defaults: the paper's recommended ``gamma_neg=4``,
  ``gamma_pos=0``, ``clip=0.05``. Against the paper's code (Alibaba-MIIL/ASL
  ``AsymmetricLoss``): the mean, not the sum, over classes and batch; ``log p`` and
  ``log(1 - p)`` exact (log-sigmoids) where the code takes ``log(max(., eps=1e-8))``, so a
  term differs only where the code caps it at ``-log(1e-8)`` = 18.42 (a positive with a
  logit below about -18.4; a negative above +18.4 with ``clip=0``); gradients flow through
  the focusing weights, as in that code, whose ``disable_torch_grad_focal_loss`` switch is
  commented out in ``AsymmetricLoss`` and off by default in ``AsymmetricLossOptimized``.

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


def _wide(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, or float64 if it is float64 (bf16 and fp16 logits are widened)."""
    return x if x.dtype == torch.float64 else x.float()


def _focusing(q: torch.Tensor, log_q: torch.Tensor, gamma: float) -> torch.Tensor:
    """``q ** gamma``. For ``0 < gamma < 1`` from ``log q``: ``pow``'s gradient ``gamma * q **
    (gamma - 1)`` is infinite where ``q`` rounds to 0 (a saturated logit), and ``inf * 0`` made
    the logit's gradient NaN. Other exponents keep ``pow`` (finite there), bit for bit as before."""
    return torch.exp(gamma * log_q) if 0 < gamma < 1 else q.pow(gamma)


class BinaryCrossEntropy(nn.BCEWithLogitsLoss):
    """``BCEWithLogitsLoss`` computed in float32 (float64 stays float64) whatever the logits' dtype."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = _wide(logits)
        return super().forward(x, target.to(x.dtype))


class FocalLoss(nn.Module):
    """Sigmoid focal loss (torchvision's ``sigmoid_focal_loss``, reduction ``mean``), mean over the (B, L) terms."""

    def __init__(self, gamma: float = 2.0, alpha: float = 0.25) -> None:
        super().__init__()
        self.gamma, self.alpha = gamma, alpha

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = _wide(logits)
        y = target.to(x.dtype)
        # torchvision's sigmoid_focal_loss, step for step (the same bits), but for the weight
        # with 0 < gamma < 1, where log(1 - p_t) = logsigmoid(-x) (positive) or logsigmoid(x)
        # (negative), {0, 1} targets
        p = torch.sigmoid(x)
        ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
        p_t = p * y + (1 - p) * (1 - y)
        loss = ce * _focusing(1 - p_t, F.logsigmoid(torch.where(y > 0.5, -x, x)), self.gamma)
        if self.alpha >= 0:
            loss = (self.alpha * y + (1 - self.alpha) * (1 - y)) * loss
        return loss.mean()

    def extra_repr(self) -> str:
        return f"gamma={self.gamma:g}, alpha={self.alpha:g}"


class AsymmetricLoss(nn.Module):
    """Asymmetric loss (ASL), mean over the (B, L) terms; gradients flow through the focusing weights."""

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05) -> None:
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip = gamma_neg, gamma_pos, clip

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = _wide(logits)
        y = target.to(x.dtype)
        p = torch.sigmoid(x)
        log_p = F.logsigmoid(x)  # log p, stable for large |x|
        if self.clip > 0:  # probability shifting: p_m = max(p - clip, 0)
            p_neg = (p - self.clip).clamp(min=0)
            log_not_p = torch.log1p(-p_neg.clamp(max=1 - 1e-7))  # a clip below 1e-7 could leave p_m = 1
            weight_neg = p_neg.pow(self.gamma_neg)  # clamp's gradient masks the pow's at p_m = 0
        else:
            log_not_p = F.logsigmoid(-x)  # log(1 - p), stable
            weight_neg = _focusing(p, log_p, self.gamma_neg)
        pos = y * _focusing(1 - p, F.logsigmoid(-x), self.gamma_pos) * log_p  # (1 - p) ** gamma_pos
        neg = (1 - y) * weight_neg * log_not_p
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
    return BinaryCrossEntropy()
