"""Weight-magnitude importance: the L2 norm of every weight that belongs to a unit. No data.

- head h of layer i: sqrt(|q rows|^2 + |k rows|^2 + |v rows|^2 + |o columns|^2) over the head's
  head_dim rows / columns. Under GQA (fewer k/v heads than q heads) the shared k/v rows belong to
  a whole group, so only q rows and o columns count.
- neuron n: sqrt(sum over ffn_in linears of |row n|^2 + |ffn_out column n|^2).

`batches` and `targets` are accepted for the common signature and ignored; `Scores.layers` is
None (see block_influence.layer_scores).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tierserve.pruning.adapters.base import ArchAdapter, LayerHandles
from tierserve.pruning.importance.common import stack_layers
from tierserve.pruning.importance.targets import Targets
from tierserve.pruning.structure import Scores
from tierserve.pruning.tasks import TaskModel

__all__ = ["head_norms", "neuron_norms", "score"]


def head_norms(h: LayerHandles, num_heads: int, head_dim: int) -> torch.Tensor:
    """(H,) L2 norm of each head's q/k/v rows and o columns."""
    def rows_sq(w: torch.Tensor) -> torch.Tensor:  # (H * dh, d) -> (H,)
        return w.float().pow(2).view(num_heads, head_dim, -1).sum((1, 2))

    total = rows_sq(h.q.weight) + rows_sq(h.o.weight.T)
    if h.k.out_features == h.q.out_features:  # no GQA: k/v rows belong to one head
        total = total + rows_sq(h.k.weight) + rows_sq(h.v.weight)
    return total.sqrt()


def neuron_norms(h: LayerHandles) -> torch.Tensor:
    """(F,) L2 norm of each neuron's ffn_in rows and ffn_out column."""
    total = h.ffn_out.weight.float().pow(2).sum(0)  # (F,)
    for lin in h.ffn_in:
        total = total + lin.weight.float().pow(2).sum(1)  # (F,)
    return total.sqrt()


@torch.no_grad()
def score(task_model: TaskModel, adapter: ArchAdapter,
          batches: Sequence[dict[str, torch.Tensor]] = (), *,
          targets: Targets | None = None) -> Scores:
    heads, neurons = [], []
    for i in range(adapter.num_layers):
        h = adapter.handles(i)
        heads.append(head_norms(h, adapter.num_heads(i), adapter.head_dim))
        neurons.append(neuron_norms(h))
    return Scores(heads=stack_layers(heads), neurons=stack_layers(neurons), criterion="magnitude",
                  meta={"data": False})
