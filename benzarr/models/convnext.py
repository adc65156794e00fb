"""ConvNeXt-Tiny from torchvision with a stem for any band count (12 by default).

The stem keeps ConvNeXt's 4x4 stride-4 "patchify" convolution; only its input channel count
changes. At 120x120 the stages see 30, 15, 7 and 3 pixels before global pooling (Liu et al.
2022, "A ConvNet for the 2020s": the V1 architecture torchvision builds).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from benzarr.models._registry import register_model, replace_conv_in_channels


@register_model("convnext-tiny", default_bands="all", last_block=("features.7",), head=("classifier",))
def convnext_tiny(in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """ConvNeXt-Tiny (torchvision), stem for any band count."""
    from torchvision.models import convnext_tiny as tv_convnext_tiny  # here: torchvision takes 2 s to import

    # weights=None: torchvision builds with random weights and never downloads.
    model = tv_convnext_tiny(weights=None, num_classes=num_classes, **kwargs)
    conv = replace_conv_in_channels(model.features[0][0], in_channels)
    # torchvision's ConvNeXt init for convolutions: truncated normal, std 0.02, zero bias.
    nn.init.trunc_normal_(conv.weight, std=0.02)
    nn.init.zeros_(conv.bias)
    model.features[0][0] = conv
    return model
