"""Activation importance: how much each unit actually writes into the residual stream.

Collected with forward pre-hooks at the full model, no gradients:
- head h: mean over real tokens of |W_o[:, h] c_h|, the L2 norm of the head's exact
  contribution to the o-proj output (c_h (dh,) is its context vector; computed through the
  (dh, dh) Gram matrix W_o[:, h]^T W_o[:, h], so no (B, T, H, d) tensor is built);
- neuron n: mean over real tokens of |a_n| * |W_out[:, n]|, likewise the exact norm of its
  (rank one) contribution to the ffn_out output.

Scores are mean norms (padding excluded). No loss is involved, so labels change nothing: the
`targets` argument is accepted for the common signature and recorded in meta only.
`Scores.layers` is Block Influence from the same forwards.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from tierserve.pruning.adapters.base import ArchAdapter
from tierserve.pruning.importance.block_influence import BlockInfluence
from tierserve.pruning.importance.common import (
    check_batches,
    grad_only,
    stack_layers,
    token_weights,
)
from tierserve.pruning.importance.targets import Targets
from tierserve.pruning.structure import Scores
from tierserve.pruning.tasks import TaskModel

__all__ = ["score"]


class _Collector:
    """Per-layer running sums of head / neuron contribution norms over real tokens."""

    def __init__(self, adapter: ArchAdapter) -> None:
        self.adapter = adapter
        L = adapter.num_layers
        self.heads = [torch.zeros(adapter.num_heads(i), dtype=torch.float64) for i in range(L)]
        self.neurons = [torch.zeros(adapter.intermediate_size(i), dtype=torch.float64)
                        for i in range(L)]
        self.tokens = torch.zeros(L, dtype=torch.float64)  # (L,) real tokens seen per layer
        self.batch: dict[str, torch.Tensor] = {}
        self.grams: list[torch.Tensor] = []  # per layer (H, dh, dh)
        self.col_norms: list[torch.Tensor] = []  # per layer (F,)

    def prepare(self) -> None:
        dh = self.adapter.head_dim
        for i in range(self.adapter.num_layers):
            h = self.adapter.handles(i)
            w = h.o.weight.detach().float().view(h.o.out_features, -1, dh)  # (d, H, dh)
            self.grams.append(torch.einsum("dhi,dhj->hij", w, w))  # (H, dh, dh)
            self.col_norms.append(h.ffn_out.weight.detach().float().norm(dim=0))  # (F,)

    def head_hook(self, i: int):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0].detach().float()  # (B, T, H * dh)
            w = token_weights(self.batch, x)  # (B, T)
            c = x.view(*x.shape[:2], -1, self.adapter.head_dim)  # (B, T, H, dh)
            sq = torch.einsum("bthi,hij,bthj->bth", c, self.grams[i].to(c.device), c)  # (B, T, H)
            norms = sq.clamp(min=0).sqrt() * w.unsqueeze(-1)  # (B, T, H)
            self.heads[i] += norms.sum((0, 1)).double().cpu()
            self.tokens[i] += float(w.sum())

        return hook

    def neuron_hook(self, i: int):
        def hook(module: nn.Module, args: tuple) -> None:
            a = args[0].detach().float()  # (B, T, F)
            w = token_weights(self.batch, a)  # (B, T)
            mean_abs = (a.abs() * w.unsqueeze(-1)).sum((0, 1))  # (F,)
            self.neurons[i] += (mean_abs * self.col_norms[i].to(a.device)).double().cpu()

        return hook

    def register(self) -> list:
        out = []
        for i in range(self.adapter.num_layers):
            h = self.adapter.handles(i)
            out.append(h.o.register_forward_pre_hook(self.head_hook(i)))
            out.append(h.ffn_out.register_forward_pre_hook(self.neuron_hook(i)))
        return out


@torch.no_grad()
def score(task_model: TaskModel, adapter: ArchAdapter, batches: Sequence[dict[str, torch.Tensor]],
          *, targets: Targets | None = None) -> Scores:
    check_batches(batches, None)
    col, bi = _Collector(adapter), BlockInfluence(adapter)
    col.prepare()
    handles = col.register()
    try:
        with grad_only(task_model.model):
            for batch in batches:
                col.batch = batch
                with bi.collecting(batch):
                    task_model.outputs(batch)
    finally:
        for h in handles:
            h.remove()
    n = col.tokens.clamp(min=1)  # (L,)
    return Scores(heads=stack_layers([(s / n[i]).float() for i, s in enumerate(col.heads)]),
                  neurons=stack_layers([(s / n[i]).float() for i, s in enumerate(col.neurons)]),
                  criterion="activation", layers=bi.result(),
                  meta={"target": targets.kind if targets else "none", "batches": len(batches)})
