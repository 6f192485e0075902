"""One adapter per architecture family: where the q/k/v/o and FFN linears live, and how to slice them.

Everything architecture-specific stays behind this interface, so criteria, masks, planning,
recovery and artifacts are written once. Adding a family (GPT-2, Llama with GQA) means adding
one subclass and registering it in `tierserve.pruning.adapters`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from torch import nn

__all__ = ["ArchAdapter", "LayerHandles", "UnsupportedArchitectureError"]


class UnsupportedArchitectureError(ValueError):
    """The model's architecture has no pruning adapter."""


@dataclass(frozen=True)
class LayerHandles:
    """The linears of one transformer layer that structured pruning touches."""

    q: nn.Linear  # output rows grouped by head: (H * head_dim, d)
    k: nn.Linear  # (H_kv * head_dim, d)
    v: nn.Linear  # (H_kv * head_dim, d)
    o: nn.Linear  # input columns grouped by head: (d, H * head_dim)
    ffn_in: tuple[nn.Linear, ...]  # output rows are FFN neurons: (F, d); Llama: (gate, up)
    ffn_out: nn.Linear  # input columns are FFN neurons: (d, F)


class ArchAdapter(ABC):
    """Knows one architecture family. Holds the (possibly task-wrapped) HF model it edits in place."""

    family: str = ""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    # -- inspection ---------------------------------------------------------------------------
    @property
    @abstractmethod
    def layers(self) -> nn.ModuleList:
        """The transformer layers, in order."""

    @property
    @abstractmethod
    def hidden_size(self) -> int: ...

    @property
    @abstractmethod
    def head_dim(self) -> int: ...

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @abstractmethod
    def num_heads(self, i: int) -> int:
        """Current number of query heads in layer i."""

    @abstractmethod
    def intermediate_size(self, i: int) -> int:
        """Current number of FFN neurons in layer i."""

    @abstractmethod
    def handles(self, i: int) -> LayerHandles: ...

    # -- surgery (in place; indices are *current* positions in layer i) ------------------------
    @abstractmethod
    def keep_heads(self, i: int, keep: list[int]) -> None:
        """Physically slice q/k/v rows and o columns so only `keep` heads remain in layer i."""

    @abstractmethod
    def keep_neurons(self, i: int, keep: list[int]) -> None:
        """Physically slice FFN rows/columns so only `keep` neurons remain in layer i."""

    @abstractmethod
    def keep_layers(self, keep: list[int]) -> None:
        """Remove every layer not in `keep` and renumber the rest."""

    @abstractmethod
    def write_config(self) -> None:
        """Record the per-layer shapes in `model.config` so a reloaded config describes the model."""
