"""ResNet-18 and ResNet-50 from torchvision with a stem for any band count (12 by default).

The stem keeps torchvision's 7x7 stride-2 convolution and max pooling; only its input
channel count changes. At 120x120 the last feature map is 4x4 before global pooling.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from benzarr.models._registry import register_model, replace_conv_in_channels

_LAYOUT: dict[str, Any] = dict(last_block=("layer4",), head=("fc",))


def _with_stem(model: nn.Module, in_channels: int) -> nn.Module:
    conv = replace_conv_in_channels(model.conv1, in_channels)
    # torchvision's ResNet init for convolutions.
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    model.conv1 = conv
    return model


@register_model("resnet18", default_bands="all", **_LAYOUT)
def resnet18(in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """ResNet-18 (torchvision), stem for any band count."""
    from torchvision.models import resnet18 as tv_resnet18  # here: torchvision takes 2 s to import (benzarr.models)

    # weights=None: torchvision builds with random weights and never downloads.
    return _with_stem(tv_resnet18(weights=None, num_classes=num_classes, **kwargs), in_channels)


@register_model("resnet50", default_bands="all", **_LAYOUT)
def resnet50(in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """ResNet-50 (torchvision), stem for any band count."""
    from torchvision.models import resnet50 as tv_resnet50

    return _with_stem(tv_resnet50(weights=None, num_classes=num_classes, **kwargs), in_channels)
