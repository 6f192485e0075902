"""Importance criteria for heads and FFN neurons (and, via Block Influence, whole layers).

Every family module exposes one function with one signature,

    score(task_model, adapter, batches, *, targets: Targets | None = None) -> Scores

(higher = more important; heads (L, H), neurons (L, F), layers (L,) or None). `targets` says
which loss gradient criteria differentiate (targets.py): label-free by default, with the
full model's own outputs as the target in a form whose gradient at the full model is non-zero.

`score(name, ...)` below is the front door: it turns `target="labels" | "self"` plus flat
`labels` into a `Targets` and dispatches through `CRITERIA`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from tierserve.pruning.adapters.base import ArchAdapter
from tierserve.pruning.importance import activation, fisher, magnitude, taylor
from tierserve.pruning.importance.block_influence import layer_scores
from tierserve.pruning.importance.targets import Targets
from tierserve.pruning.structure import Scores
from tierserve.pruning.tasks import TaskModel

__all__ = ["CRITERIA", "Criterion", "Targets", "layer_scores", "score"]

Criterion = Callable[..., Scores]

CRITERIA: dict[str, Criterion] = {
    "magnitude": magnitude.score,
    "taylor": taylor.score,
    "fisher": fisher.score,
    "activation": activation.score,
}


def score(name: str, task_model: TaskModel, adapter: ArchAdapter,
          batches: Sequence[dict[str, torch.Tensor]], *, target: str = "self",
          labels: Sequence[int | float] | torch.Tensor | None = None,
          pseudo: str = "sample", tau: float = 0.5, seed: int = 0) -> Scores:
    """Score every head and neuron of `adapter.model` with criterion `name`.

    target="self": label-free (see targets.py; `pseudo`, `tau`, `seed` tune it).
    target="labels": `labels` holds one label per example over all `batches`, in order.
    """
    if name not in CRITERIA:
        raise ValueError(f"criterion: unknown {name!r}; choose one of {sorted(CRITERIA)}")
    if target == "labels":
        if labels is None:
            raise ValueError("target='labels' needs `labels` (one per calibration example)")
        targets = Targets.from_labels(labels, batches, tau=tau)
    elif target == "self":
        targets = Targets.self_(pseudo=pseudo, tau=tau, seed=seed)
    else:
        raise ValueError(f"target: expected 'self' or 'labels', got {target!r}")
    return CRITERIA[name](task_model, adapter, batches, targets=targets)
