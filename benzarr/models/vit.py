"""ViT-S/8 at 120x120: torchvision's VisionTransformer sized for BigEarthNet patches.

12 layers of width 384 with 6 heads (ViT-Small) over 8x8-pixel patches: a 120x120 patch is
15x15 = 225 tokens plus the class token (a 16-pixel patch, ViT's usual, would not divide 120).
The patch embedding takes any band count. It needs exactly 120x120 inputs (torchvision checks
the size).
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from benzarr.bands import PATCH_SIDE
from benzarr.models._registry import register_model, replace_conv_in_channels

#: Pixels per side of a token's patch.
PATCH = 8


@register_model("vit-s8", default_bands="all", head=("heads",),
                last_block=("encoder.layers.encoder_layer_11", "encoder.ln"))
def vit_s8(in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """ViT-S/8 (torchvision VisionTransformer), 225 tokens of 8x8 pixels."""
    from torchvision.models import VisionTransformer  # here: torchvision takes 2 s to import

    model = VisionTransformer(image_size=PATCH_SIDE, patch_size=PATCH, num_layers=12, num_heads=6,
                              hidden_dim=384, mlp_dim=1536, num_classes=num_classes, **kwargs)
    conv = replace_conv_in_channels(model.conv_proj, in_channels)
    # torchvision's ViT init of the patch embedding: truncated normal, std sqrt(1 / fan_in).
    nn.init.trunc_normal_(conv.weight, std=math.sqrt(1 / (in_channels * PATCH * PATCH)))
    nn.init.zeros_(conv.bias)
    model.conv_proj = conv
    return model
