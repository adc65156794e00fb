"""Inception v1 (GoogLeNet) and Inception v3 from torchvision, for any band count.

Both are built without auxiliary heads and without torchvision's ImageNet input transform,
with the first convolution rebuilt for ``in_channels`` bands. Both end in adaptive average
pooling, so they accept BigEarthNet's 120x120 patches (Inception v3 needs at least 75x75:
at 120x120 its last feature map is 2x2; GoogLeNet's is 4x4).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from benzarr.models._registry import register_model, replace_conv_in_channels


@register_model(
    "inception-v1",
    default_bands="all",
    last_block=("inception5b",),
    head=("fc",),
)
def inception_v1(in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """GoogLeNet / Inception v1 (torchvision), no auxiliary heads."""
    from torchvision.models import GoogLeNet  # here: torchvision takes 2 s to import (benzarr.models)

    model = GoogLeNet(
        num_classes=num_classes, aux_logits=False, transform_input=False, init_weights=True, **kwargs
    )
    conv = replace_conv_in_channels(model.conv1.conv, in_channels)
    # torchvision's GoogLeNet init: truncated normal, std 0.01, for every conv and linear.
    torch.nn.init.trunc_normal_(conv.weight, mean=0.0, std=0.01, a=-2, b=2)
    model.conv1.conv = conv
    return model


@register_model(
    "inception-v3",
    default_bands="all",
    last_block=("Mixed_7c",),
    head=("fc",),
)
def inception_v3(in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """Inception v3 (torchvision), no auxiliary head."""
    from torchvision.models import Inception3

    model = Inception3(
        num_classes=num_classes, aux_logits=False, transform_input=False, init_weights=True, **kwargs
    )
    conv = replace_conv_in_channels(model.Conv2d_1a_3x3.conv, in_channels)
    # torchvision's Inception3 init: truncated normal, std 0.1, for every conv and linear.
    torch.nn.init.trunc_normal_(conv.weight, mean=0.0, std=0.1, a=-2, b=2)
    model.Conv2d_1a_3x3.conv = conv
    return model
