"""First-order Taylor importance (Molchanov et al. 2019): |sum over a unit's weights of g * w|.

Zeroing a unit's weights w changes the loss by about -sum(g * w), g = d loss / d w. Per batch
and per unit we take |sum(g * w)| over
- head h: its q rows (weights and bias), its k / v rows when k / v are per head (no GQA) and its
  o-proj input columns;
- neuron n: its rows of every ffn_in linear (weights and bias) and its ffn_out column;
then sum the per-batch values over the calibration batches. The loss is the sum of per-example
losses from `targets` (targets.py), label-free by default; the full-model-as-target losses used
there have non-zero gradient at the full model, unlike KL / MSE to itself.

Gradients come from `torch.autograd.grad` on exactly these linears' parameters, which require
grad only inside this function (their previous flags are restored); nothing is left in `.grad`.
`Scores.layers` is Block Influence from the same forwards.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from tierserve.pruning.adapters.base import ArchAdapter, LayerHandles
from tierserve.pruning.importance.block_influence import BlockInfluence
from tierserve.pruning.importance.common import check_batches, grad_only, stack_layers
from tierserve.pruning.importance.targets import Targets, per_example_loss
from tierserve.pruning.structure import Scores
from tierserve.pruning.tasks import TaskModel

__all__ = ["score"]


def _row_linears(h: LayerHandles) -> tuple[nn.Linear, ...]:
    """Linears whose output rows are grouped per head."""
    return (h.q, h.k, h.v) if h.k.out_features == h.q.out_features else (h.q,)


def _params(h: LayerHandles) -> list[nn.Parameter]:
    mods = [*_row_linears(h), h.o, *h.ffn_in, h.ffn_out]
    return [p for m in mods for p in (m.weight, m.bias) if p is not None]


def _row_sum(lin: nn.Linear, grads: dict[int, torch.Tensor]) -> torch.Tensor:
    """(out_features,) sum over each output row of g * w (bias included)."""
    total = (grads[id(lin.weight)] * lin.weight).sum(1)
    if lin.bias is not None:
        total = total + grads[id(lin.bias)] * lin.bias
    return total.detach()


def _layer_taylor(h: LayerHandles, grads: dict[int, torch.Tensor], num_heads: int,
                  head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(H,), (F,) |sum g * w| per unit of one layer."""
    heads = (grads[id(h.o.weight)] * h.o.weight).sum(0).detach()  # (H * dh,)
    for lin in _row_linears(h):
        heads = heads + _row_sum(lin, grads)
    neurons = (grads[id(h.ffn_out.weight)] * h.ffn_out.weight).sum(0).detach()  # (F,)
    for lin in h.ffn_in:
        neurons = neurons + _row_sum(lin, grads)
    return heads.view(num_heads, head_dim).sum(1).abs(), neurons.abs()


def score(task_model: TaskModel, adapter: ArchAdapter, batches: Sequence[dict[str, torch.Tensor]],
          *, targets: Targets | None = None) -> Scores:
    targets = targets or Targets.self_()
    check_batches(batches, targets)
    handles = [adapter.handles(i) for i in range(adapter.num_layers)]
    params = [p for h in handles for p in _params(h)]
    heads = [torch.zeros(adapter.num_heads(i), dtype=torch.float64) for i in range(len(handles))]
    neurons = [torch.zeros(adapter.intermediate_size(i), dtype=torch.float64)
               for i in range(len(handles))]
    bi = BlockInfluence(adapter)
    with grad_only(task_model.model, params):
        for k, batch in enumerate(batches):
            with bi.collecting(batch):
                out = task_model.outputs(batch)  # (B, d) or (B, C)
            loss = per_example_loss(task_model, targets, k, out).sum()
            grads = dict(zip(map(id, params), torch.autograd.grad(loss, params), strict=True))
            for i, h in enumerate(handles):
                hs, ns = _layer_taylor(h, grads, adapter.num_heads(i), adapter.head_dim)
                heads[i] += hs.double().cpu()
                neurons[i] += ns.double().cpu()
    return Scores(heads=stack_layers([s.float() for s in heads]),
                  neurons=stack_layers([s.float() for s in neurons]),
                  criterion="taylor", layers=bi.result(),
                  meta={"target": targets.kind, "batches": len(batches)})
