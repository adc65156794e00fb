"""The model registry: one decorator adds a model, ``create_model`` builds it (timm style).

A family module registers one builder per model name::

    @register_model("shortcnn-rgb", default_bands="rgb", last_block=("conv3",), head=("classifier",))
    def shortcnn_rgb(in_channels: int, num_classes: int, **kwargs) -> nn.Module: ...

The builder receives the band count and class count and returns a module mapping float32
(B, in_channels, 120, 120) inputs to (B, num_classes) logits: it builds its first convolution
for ``in_channels`` bands itself, with its family's initialisation. The declared module names
(``last_block``, ``head``) are what makes fine-tuning generic: nothing outside
``benzarr.models`` needs to know model names or layer names.

Weights are never downloaded: ``weights`` is a local ``.pt``/``.pth`` file or nothing.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from benzarr.bigearthnet import BANDS, RGB_BANDS
from benzarr.checkpoint import why_unreadable
from benzarr.checks import whole
from benzarr.errors import DownloadRequiredError, InvalidArgumentError, some_of

BandSet = Literal["rgb", "all"]

#: Band count of each default band set ("rgb" = B04, B03, B02; "all" = the 12 bands in BANDS order).
BAND_COUNTS: dict[str, int] = {"rgb": len(RGB_BANDS), "all": len(BANDS)}

#: Fine-tuning levels, as in the balanced-bigearthnet study.
FINETUNE_LEVELS: dict[int, str] = {
    0: "train all parameters",
    1: "freeze the backbone: only the classification head trains",
    2: "freeze all but the last block and the head",
}

# Suffixes that mark a ``weights`` string as a file path rather than a named download.
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar")
# Prefixes added by wrappers (DataParallel / DistributedDataParallel, torch.compile).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about one model name.

    Attributes:
        name: registered name, e.g. ``"shortcnn-rgb"``.
        builder: ``builder(in_channels, num_classes, **kwargs) -> nn.Module``.
        default_bands: ``"rgb"`` (3 channels, B04, B03, B02) or ``"all"`` (12 channels, BANDS order).
        last_block: dotted module names of the last feature block (trainable at finetune=2).
        head: dotted module names of the classification head (trainable at finetune 1 and 2).
        family: family name (the module that registered it).
        description: one line for ``benzarr models``.
    """

    name: str
    builder: Builder
    default_bands: BandSet
    last_block: tuple[str, ...]
    head: tuple[str, ...]
    family: str = ""
    description: str = ""

    @property
    def default_in_channels(self) -> int:
        """Band count of ``default_bands`` (3 or 12)."""
        return BAND_COUNTS[self.default_bands]


@dataclass(frozen=True)
class ModelInfo:
    """A model's data sheet, as ``model_info`` returns it.

    Attributes:
        name: registered name.
        family: family name.
        description: one line.
        default_bands: ``"rgb"`` or ``"all"``.
        bands: the default input bands in input-channel order.
        in_channels: number of default input bands (3 or 12).
        num_params: parameter count for 43 classes and the default bands.
    """

    name: str
    family: str
    description: str
    default_bands: BandSet
    bands: tuple[str, ...]
    in_channels: int
    num_params: int


@dataclass
class WeightsReport:
    """What ``load_weights`` did.

    Attributes:
        path: the file read.
        loaded: parameter/buffer names copied into the model.
        skipped_shape: name -> (shape in file, shape in model) for tensors left at their
            initial values because the shapes differ (e.g. the first conv for another band
            count, the head for another class count).
        missing: model tensors the file does not have (left at their initial values).
        unexpected: file tensors the model does not have (ignored, e.g. auxiliary heads).
    """

    path: Path
    loaded: list[str] = field(default_factory=list)
    skipped_shape: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: counts and the skipped names."""
        parts = [f"loaded {len(self.loaded)} tensors from {self.path}"]
        if self.skipped_shape:
            names = ", ".join(
                f"{k} {list(f)}->{list(m)}" for k, (f, m) in self.skipped_shape.items()
            )
            parts.append(f"skipped {len(self.skipped_shape)} of another shape ({names})")
        if self.missing:
            parts.append(f"{len(self.missing)} missing from the file ({some_of(self.missing, 5)})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unused ({some_of(self.unexpected, 5)})")
        return "; ".join(parts)


class WeightsMismatchWarning(UserWarning):
    """Some tensors of a weights file were not loaded (other shape, missing or unused)."""


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    *,
    default_bands: BandSet,
    last_block: tuple[str, ...] | str,
    head: tuple[str, ...] | str,
    description: str = "",
) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder(in_channels, num_classes, **kwargs) -> nn.Module`` as ``name``.

    Args:
        name: the model name users type (lower case, e.g. ``"resnet18"``).
        default_bands: ``"rgb"`` or ``"all"``; used when ``in_channels`` is not given.
        last_block: dotted name(s) of the last feature block.
        head: dotted name(s) of the classification head.
        description: one line for listings; defaults to the builder's first docstring line.

    Raises:
        InvalidArgumentError: the name is taken or ``default_bands`` is unknown.
    """
    key = name.lower()
    if default_bands not in BAND_COUNTS:
        raise InvalidArgumentError(f"default_bands must be 'rgb' or 'all', not {default_bands!r}")

    def decorate(builder: Builder) -> Builder:
        if key in _REGISTRY:
            raise InvalidArgumentError(f"model {key!r} is already registered")
        doc = (builder.__doc__ or "").strip().splitlines()
        _REGISTRY[key] = ModelSpec(
            name=key,
            builder=builder,
            default_bands=default_bands,
            last_block=(last_block,) if isinstance(last_block, str) else tuple(last_block),
            head=(head,) if isinstance(head, str) else tuple(head),
            family=builder.__module__.rsplit(".", 1)[-1],
            description=description or (doc[0] if doc else ""),
        )
        return builder

    return decorate


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The registry entry for ``name`` (case-insensitive).

    Raises:
        InvalidArgumentError: unknown name; the message lists the known names.
    """
    spec = _REGISTRY.get(str(name).lower())
    if spec is None:
        raise InvalidArgumentError(
            f"unknown model {name!r}; known models: {', '.join(list_models())}"
        )
    return spec


def default_bands(name: str) -> BandSet:
    """``"rgb"`` (B04, B03, B02) or ``"all"`` (the 12 bands): the bands ``name`` takes by default."""
    return get_spec(name).default_bands


@lru_cache(maxsize=None)
def _count_params(name: str, in_channels: int, num_classes: int) -> int:
    spec = get_spec(name)
    # Build on the meta device: shapes only, no memory and no (slow) initialisation work.
    with torch.device("meta"):
        model = spec.builder(in_channels, num_classes)
    return sum(p.numel() for p in model.parameters())


def model_info(name: str) -> ModelInfo:
    """Name, family, default bands and parameter count (43 classes, default bands) of ``name``.

    Raises:
        InvalidArgumentError: unknown name.
    """
    spec = get_spec(name)
    bands = RGB_BANDS if spec.default_bands == "rgb" else BANDS
    return ModelInfo(
        name=spec.name,
        family=spec.family,
        description=spec.description,
        default_bands=spec.default_bands,
        bands=tuple(bands),
        in_channels=len(bands),
        num_params=_count_params(spec.name, len(bands), 43),
    )


def create_model(
    name: str,
    in_channels: int | None = None,
    num_classes: int = 43,
    weights: str | os.PathLike[str] | None = None,
    finetune: int = 0,
    strict: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model, optionally load local weights, and set what trains.

    Args:
        name: a name from ``list_models()`` (case-insensitive).
        in_channels: input bands; ``None`` = the model's default (3 for ``*-rgb``, else 12).
        num_classes: output logits per sample (43 or 19 for BigEarthNet).
        weights: ``None`` (random initialisation) or a local ``.pt``/``.pth`` file holding a
            state dict or a benzarr checkpoint dict with a ``"model"`` entry. Tensors whose
            shape differs from the model's are skipped and reported with a
            ``WeightsMismatchWarning``. Names (``"imagenet"``) are refused: benzarr never
            downloads.
        finetune: 0 train all; 1 only the head trains; 2 the last block and the head train.
            Frozen parameters get ``requires_grad=False`` and frozen batch-norm layers keep
            their running statistics (they run in inference mode, as a frozen Keras layer).
        strict: ``weights`` must fit exactly, every tensor of the model loaded and none of
            the file left over, or nothing is returned (``evaluate`` and ``show --run``: a
            run's own checkpoint; a model half random would be scored as if trained).
        **kwargs: passed to the family's builder (e.g. ``dropout``).

    Returns:
        A ``torch.nn.Module`` mapping float32 (B, in_channels, 120, 120) to (B, num_classes)
        logits, in training mode, with attributes ``benzarr_name``, ``benzarr_in_channels``,
        ``benzarr_num_classes``.

    Raises:
        InvalidArgumentError: unknown name, bad channel/class count or finetune level, a
            missing or unreadable weights file, a file with no tensor fitting the model, or
            (``strict``) one that does not fit it exactly.
        DownloadRequiredError: ``weights`` is a name rather than a file path.
    """
    spec = get_spec(name)
    if in_channels is None:
        in_channels = spec.default_in_channels
    # whole numbers only: int() made 2.7 channels 2, and True passed for finetune level 1
    in_channels = whole("in_channels", in_channels, 1)
    num_classes = whole("num_classes", num_classes, 1)
    if isinstance(finetune, (bool, np.bool_)) or finetune not in FINETUNE_LEVELS:
        raise InvalidArgumentError(
            f"finetune must be one of {sorted(FINETUNE_LEVELS)} "
            f"({'; '.join(f'{k}: {v}' for k, v in FINETUNE_LEVELS.items())}), not {finetune!r}"
        )
    path = _weights_path(weights) if weights is not None else None

    try:
        model = spec.builder(in_channels, num_classes, **kwargs)
    except TypeError as exc:
        if not kwargs or "keyword argument" not in str(exc):
            raise
        raise InvalidArgumentError(f"{spec.name} takes no such option: {exc}") from None
    model.benzarr_name = spec.name
    model.benzarr_in_channels = in_channels
    model.benzarr_num_classes = num_classes

    if path is not None:
        report = load_weights(model, path)
        if (report.skipped_shape or report.missing or report.unexpected) and strict:
            raise InvalidArgumentError(f"{path} does not fit {spec.name} with {in_channels} bands and {num_classes} "
                                       f"classes exactly ({report.summary().split('; ', 1)[-1]}): the weights of "
                                       "another model or run?")
        if report.skipped_shape or report.missing or report.unexpected:
            warnings.warn(report.summary(), WeightsMismatchWarning, stacklevel=2)
    set_finetune(model, finetune, spec)
    return model


def _weights_path(weights: str | os.PathLike[str]) -> Path:
    """Tell a file path from a named download; refuse the latter."""
    if isinstance(weights, os.PathLike):
        return Path(weights)
    text = str(weights)
    looks_like_path = (
        os.sep in text
        or "/" in text
        or text.lower().endswith(_WEIGHT_SUFFIXES)
        or Path(text).exists()
    )
    if not looks_like_path:
        raise DownloadRequiredError(
            f"weights={text!r} names weights to download; benzarr never downloads. "
            "Download them yourself and pass the local .pt/.pth file path (a state dict, "
            "e.g. torchvision's ImageNet file, or a benzarr checkpoint)."
        )
    return Path(text)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.is_dir():  # a run folder or a store given by mistake: "not found" sent users looking for a typo
        raise InvalidArgumentError(f"weights {path} is a folder; give the weights file itself (a .pt/.pth state dict, "
                                   "or a run's checkpoints/best.pt)")
    if not path.is_file():
        raise InvalidArgumentError(f"weights file not found: {path}")
    try:
        # weights_only: a weights file must not be able to run code when read.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and safety errors all mean "not a weights file we read"
        raise InvalidArgumentError(
            f"cannot read weights from {path}: {why_unreadable(path, exc)}; expected a file written by torch.save "
            "holding a state dict (or a dict with a 'model' state dict) of tensors"
        ) from exc
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "model_state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InvalidArgumentError(
            f"{path} holds no state dict: expected a dict of tensors or a checkpoint with 'model'"
        )
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        state[key] = value
    return state


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> WeightsReport:
    """Copy the tensors of a local weights file into ``model`` where names and shapes match.

    Accepts a plain state dict, a checkpoint dict holding one under ``"model"`` (benzarr's
    checkpoints) or ``"state_dict"``, and strips ``module.``/``_orig_mod.`` prefixes left by
    DataParallel and ``torch.compile``. Never downloads.

    Returns:
        A ``WeightsReport`` listing loaded, shape-skipped, missing and unused tensors.

    Raises:
        InvalidArgumentError: the file is missing, unreadable, or no tensor fits the model.
    """
    path = Path(path)
    state = _read_state_dict(path)
    own = model.state_dict()
    report = WeightsReport(path=path)
    usable: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(own[key].shape):
            report.skipped_shape[key] = (tuple(value.shape), tuple(own[key].shape))
        else:
            usable[key] = value
    report.missing = [k for k in own if k not in usable and k not in report.skipped_shape]
    if not usable:
        raise InvalidArgumentError(
            f"no tensor in {path} fits {getattr(model, 'benzarr_name', type(model).__name__)}: "
            f"{len(report.unexpected)} unknown names, {len(report.skipped_shape)} of another "
            "shape. Is it the weights of another architecture?"
        )
    model.load_state_dict(usable, strict=False)
    report.loaded = sorted(usable)
    return report


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _batchnorm_inference(module: nn.Module, args: tuple[Any, ...]) -> None:
    # A frozen batch-norm layer keeps its running statistics even when the model trains.
    module.training = False


def set_finetune(model: nn.Module, level: int, spec: ModelSpec | None = None) -> nn.Module:
    """Freeze ``model`` for fine-tuning level 0, 1 or 2 (see ``FINETUNE_LEVELS``), in place.

    ``spec`` defaults to the registry entry of ``model.benzarr_name``. Frozen parameters get
    ``requires_grad=False``; frozen batch-norm layers are held in inference mode. Level 0
    leaves everything trainable (it does not undo an earlier freeze's batch-norm hooks).

    Raises:
        InvalidArgumentError: unknown level, or the spec's module names are not in the model.
    """
    if level not in FINETUNE_LEVELS:
        raise InvalidArgumentError(f"finetune must be one of {sorted(FINETUNE_LEVELS)}, not {level!r}")
    if spec is None:
        spec = get_spec(getattr(model, "benzarr_name", ""))
    modules = dict(model.named_modules())
    for declared in spec.head + spec.last_block:
        if declared not in modules:
            raise InvalidArgumentError(f"{spec.name} declares module {declared!r}, which the model lacks")
    if level == 0:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    trainable = spec.head if level == 1 else spec.head + spec.last_block
    for pname, p in model.named_parameters():
        p.requires_grad_(_under(pname, trainable))
    for mname, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not _under(mname, trainable):
            module.register_forward_pre_hook(_batchnorm_inference)
    return model


def replace_conv_in_channels(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A new ``nn.Conv2d`` like ``conv`` (same kernel, stride, padding, bias, device) but with
    ``in_channels`` inputs; weights freshly initialised by the caller."""
    return nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
