"""What a pruned model keeps, per layer: the joint between scoring, planning, surgery and artifacts.

Indices always refer to the *original* (unpruned) model, so a structure can be recorded in
`pruning.json`, compared across runs, and re-applied to the source model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["Budget", "LayerStructure", "Structure", "Scores"]


@dataclass(frozen=True)
class LayerStructure:
    """Kept units of one transformer layer, as sorted original indices."""

    heads: tuple[int, ...]  # attention heads kept (query heads; under GQA, whole KV groups)
    neurons: tuple[int, ...]  # FFN intermediate neurons kept

    def to_dict(self) -> dict:
        return {"heads": list(self.heads), "neurons": list(self.neurons)}

    @classmethod
    def from_dict(cls, d: dict) -> LayerStructure:
        return cls(heads=tuple(int(h) for h in d["heads"]), neurons=tuple(int(n) for n in d["neurons"]))


@dataclass(frozen=True)
class Structure:
    """A whole model's kept structure. `layers[i] is None` means layer i is removed entirely."""

    layers: tuple[LayerStructure | None, ...]

    @classmethod
    def full(cls, num_layers: int, num_heads: int, intermediate_size: int) -> Structure:
        layer = LayerStructure(tuple(range(num_heads)), tuple(range(intermediate_size)))
        return cls(tuple(layer for _ in range(num_layers)))

    @property
    def kept_layers(self) -> list[int]:
        return [i for i, layer in enumerate(self.layers) if layer is not None]

    def to_dict(self) -> dict:
        return {"layers": [None if s is None else s.to_dict() for s in self.layers]}

    @classmethod
    def from_dict(cls, d: dict) -> Structure:
        return cls(tuple(None if s is None else LayerStructure.from_dict(s) for s in d["layers"]))


@dataclass(frozen=True)
class Scores:
    """Importance of every prunable unit; higher means more important. One criterion's output."""

    heads: torch.Tensor  # (L, H) one score per attention head
    neurons: torch.Tensor  # (L, F) one score per FFN neuron
    criterion: str
    layers: torch.Tensor | None = None  # (L,) optional whole-layer importance
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Budget:
    """One pruning target.

    kind="flops" or "params": `target` is the fraction of *encoder* FLOPs / parameters to remove
    (0.5 = remove half). kind="latency": `target` is the wanted pruned/full latency ratio at
    (`batch`, `seq_len`) measured on the current hardware (0.5 = twice as fast).
    """

    kind: str = "flops"  # "flops" | "params" | "latency"
    target: float = 0.5
    seq_len: int = 128  # sequence length FLOPs and latency are counted at
    batch: int = 32  # batch size latency is measured at
    multiple: int = 8  # kept neurons per layer rounded to this (ModelOpt uses 64)
    structures: tuple[str, ...] = ("heads", "neurons")  # any of "heads", "neurons", "layers"
    tolerance: float = 0.01  # achieved fraction must land within target ± tolerance
