"""The model zoo: ``create_model(name, ...)`` builds any registered model (timm style).

Models take float32 (B, C, 120, 120) inputs (C = 3 for ``*-rgb`` names by default, else 12,
bands in ``benzarr.bigearthnet`` order) and return (B, num_classes) logits. Adding a model is
one decorated builder in a family module imported here; nothing outside this package knows
model names.
"""

from __future__ import annotations

from benzarr.models._registry import (
    FINETUNE_LEVELS,
    ModelInfo,
    ModelSpec,
    WeightsMismatchWarning,
    WeightsReport,
    create_model,
    default_bands,
    get_spec,
    list_models,
    load_weights,
    model_info,
    register_model,
    set_finetune,
)

# Imported for their registrations.
from benzarr.models import convnext, efficientnet, inception, resnet, shortcnn, vit  # noqa: E402,F401  isort: skip

__all__ = [
    "FINETUNE_LEVELS",
    "ModelInfo",
    "ModelSpec",
    "WeightsMismatchWarning",
    "WeightsReport",
    "create_model",
    "default_bands",
    "get_spec",
    "list_models",
    "load_weights",
    "model_info",
    "register_model",
    "set_finetune",
]
