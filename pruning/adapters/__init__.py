"""Architecture adapters, looked up by `config.model_type`.

`adapter_for(model)` accepts a bare encoder (`BertModel`) or a task model
(`BertForSequenceClassification`, `ViTForImageClassification`, ...); the adapter finds the
backbone through `model.base_model`.
"""

from __future__ import annotations

from torch import nn

from .base import ArchAdapter, LayerHandles, UnsupportedArchitectureError
from .bert import BertAdapter
from .common import STRUCTURE_KEY, EncoderAdapter
from .distilbert import DistilBertAdapter
from .gpt2 import GPT2Adapter
from .llama import LlamaAdapter
from .vit import ViTAdapter

__all__ = [
    "ADAPTERS", "ArchAdapter", "EncoderAdapter", "LayerHandles", "STRUCTURE_KEY",
    "UnsupportedArchitectureError", "adapter_for", "supported_model_types",
]

ADAPTERS: dict[str, type[EncoderAdapter]] = {
    model_type: cls
    for cls in (BertAdapter, DistilBertAdapter, ViTAdapter, LlamaAdapter, GPT2Adapter)
    for model_type in cls.model_types
}


def supported_model_types() -> list[str]:
    return sorted(ADAPTERS)


def adapter_for(model: nn.Module) -> ArchAdapter:
    """The adapter for `model`'s architecture, holding `model` (edited in place by surgery)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__} has no `config.model_type`; pass a transformers model")
    cls = ADAPTERS.get(model_type)
    if cls is None:
        raise UnsupportedArchitectureError(
            f"model_type '{model_type}' ({type(model).__name__}) has no pruning adapter; "
            f"supported model types: {', '.join(supported_model_types())}")
    return cls(model)
