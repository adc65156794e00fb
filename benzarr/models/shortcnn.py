"""ShortCNN: the small baseline CNN of the balanced-bigearthnet study.

Layers (C input bands, 120x120 input)::

    Conv(C->32, 5x5, pad 2) - ReLU - MaxPool(2)      -> (B, 32, 60, 60)
    Conv(32->32, 5x5, pad 2) - ReLU - MaxPool(2)     -> (B, 32, 30, 30)
    Conv(32->64, 3x3, pad 1) - ReLU                  -> (B, 64, 30, 30)
    Flatten - Linear(64*30*30 -> classes)            -> (B, classes) logits

With 3 bands and 43 classes it has 2,523,403 parameters, almost all in the head. The head
fixes the input side to 120 pixels. Initialisation follows Keras defaults, as the study
used: Glorot (Xavier) uniform weights, zero biases.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from benzarr.bigearthnet import PATCH_SIDE
from benzarr.models._registry import register_model


class ShortCNN(nn.Module):
    """ShortCNN for float32 (B, in_channels, 120, 120) input; returns (B, num_classes) logits."""

    def __init__(self, in_channels: int = 3, num_classes: int = 43, side: int = PATCH_SIDE) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(32, 32, kernel_size=5, padding=2)
        self.conv3 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU(inplace=True)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(64 * (side // 4) * (side // 4), num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, 120, 120) float32 -> (B, num_classes) logits."""
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        x = self.relu(self.conv3(x))
        return self.classifier(self.flatten(x))


_LAYOUT: dict[str, Any] = dict(last_block=("conv3",), head=("classifier",))


@register_model("shortcnn-rgb", default_bands="rgb", **_LAYOUT)
def shortcnn_rgb(in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """ShortCNN (balanced-bigearthnet), 3 conv layers + linear head."""
    return ShortCNN(in_channels, num_classes, **kwargs)


@register_model("shortcnn-all", default_bands="all", **_LAYOUT)
def shortcnn_all(in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """ShortCNN (balanced-bigearthnet), 3 conv layers + linear head."""
    return ShortCNN(in_channels, num_classes, **kwargs)
