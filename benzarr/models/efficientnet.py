"""EfficientNet-B0 from torchvision with a stem for any band count (12 by default).

The stem keeps the 3x3 stride-2 convolution; only its input channel count changes. At
120x120 the last feature map is 4x4 before global pooling.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from benzarr.models._registry import register_model, replace_conv_in_channels


# the last MBConv stage and the 1x1 convolution to 1280 features that follows it
@register_model("efficientnet-b0", default_bands="all", last_block=("features.7", "features.8"), head=("classifier",))
def efficientnet_b0(in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """EfficientNet-B0 (torchvision), stem for any band count."""
    from torchvision.models import efficientnet_b0 as tv_efficientnet_b0  # here: torchvision takes 2 s to import

    model = tv_efficientnet_b0(weights=None, num_classes=num_classes, **kwargs)
    conv = replace_conv_in_channels(model.features[0][0], in_channels)
    # torchvision's EfficientNet init for convolutions.
    nn.init.kaiming_normal_(conv.weight, mode="fan_out")
    model.features[0][0] = conv
    return model
