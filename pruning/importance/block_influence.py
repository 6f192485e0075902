"""Block Influence of whole layers (ShortGPT, Men et al. 2024): BI_i = 1 - cos(x_i, x_{i+1}).

x_i is layer i's input hidden state and x_{i+1} its output, per token; the cosine is averaged
over the real (non-padding) tokens of the calibration batches. A layer that barely rotates the
residual stream has low influence and is the first to drop. Higher = more important, like every
other score.

Every data-driven criterion (taylor, fisher, activation) fills `Scores.layers` with BI collected
in the same forward passes it already runs at the full model, so layer scores cost nothing extra.
Magnitude needs no data and leaves `Scores.layers` as None; call `layer_scores` for it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tierserve.pruning.adapters.base import ArchAdapter
from tierserve.pruning.importance.common import grad_only, token_weights
from tierserve.pruning.tasks import TaskModel

__all__ = ["BlockInfluence", "layer_scores"]


class BlockInfluence:
    """Accumulates token-averaged 1 - cos(layer input, layer output) for every layer."""

    def __init__(self, adapter: ArchAdapter) -> None:
        self.adapter = adapter
        self.total = torch.zeros(adapter.num_layers, dtype=torch.float64)  # (L,)
        self.tokens = torch.zeros(adapter.num_layers, dtype=torch.float64)  # (L,)
        self.batch: dict[str, torch.Tensor] = {}

    def _hook(self, i: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            x = args[0] if args else kwargs["hidden_states"]  # (B, T, d)
            y = output[0] if isinstance(output, tuple) else output  # (B, T, d)
            w = token_weights(self.batch, y)  # (B, T)
            cos = F.cosine_similarity(x.detach().float(), y.detach().float(), dim=-1)  # (B, T)
            self.total[i] += ((1 - cos) * w).sum().double().cpu()
            self.tokens[i] += w.sum().double().cpu()

        return hook

    @contextmanager
    def collecting(self, batch: dict[str, torch.Tensor]) -> Iterator[None]:
        """Hooks on every layer for one forward of `batch`; removed on exit."""
        self.batch = batch
        handles = [layer.register_forward_hook(self._hook(i), with_kwargs=True)
                   for i, layer in enumerate(self.adapter.layers)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def result(self) -> torch.Tensor:
        """(L,) float32 block influence."""
        return (self.total / self.tokens.clamp(min=1)).float()


@torch.no_grad()
def layer_scores(task_model: TaskModel, adapter: ArchAdapter,
                 batches: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
    """(L,) Block Influence of every layer over `batches` (one no-grad forward each)."""
    bi = BlockInfluence(adapter)
    with grad_only(task_model.model):
        for batch in batches:
            with bi.collecting(batch):
                task_model.outputs(batch)
    return bi.result()
