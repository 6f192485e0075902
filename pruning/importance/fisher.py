"""Diagonal Fisher information of head and neuron masks (Kwon et al. 2022, "A Fast Post-Training
Pruning Framework for Transformers").

For every calibration batch the masks sit at 1 and are given one row per example, head mask
(B, H) and neuron mask (B, F) per layer. Example b's loss depends only on row b, so one
`torch.autograd.grad` of the summed per-example loss yields the per-example gradients
g_b = d loss_b / d m. The score is the diagonal of the empirical Fisher of the masks:
F_u = sum_b g_b[u]^2, summed over all batches; heads (L, H), neurons (L, F).

The loss comes from `targets` (see targets.py): cross-entropy against labels, or label-free
against labels sampled from the full model's softmax (the true Fisher), or in-batch InfoNCE
against the full model's own embeddings. Model parameters never require grad here; only the
masks do, and their gradients are returned by autograd.grad, never stored on the model.
`Scores.layers` is Block Influence from the same forwards.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tierserve.pruning.adapters.base import ArchAdapter
from tierserve.pruning.importance.block_influence import BlockInfluence
from tierserve.pruning.importance.common import check_batches, grad_only, stack_layers
from tierserve.pruning.importance.targets import Targets, batch_size, per_example_loss
from tierserve.pruning.masks import unit_masks
from tierserve.pruning.structure import Scores
from tierserve.pruning.tasks import TaskModel

__all__ = ["mask_gradients", "score"]


def _ones(adapter: ArchAdapter, rows: int, width, device: torch.device) -> list[torch.Tensor]:
    """One (rows, U_i) all-ones mask per layer that requires grad."""
    return [torch.ones(rows, width(i), device=device, requires_grad=True)
            for i in range(adapter.num_layers)]


def mask_gradients(task_model: TaskModel, adapter: ArchAdapter, batch: dict[str, torch.Tensor],
                   targets: Targets, index: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-example mask gradients of one batch: per layer (B, H_i) and (B, F_i)."""
    rows, device = batch_size(batch), next(task_model.model.parameters()).device
    heads = _ones(adapter, rows, adapter.num_heads, device)
    neurons = _ones(adapter, rows, adapter.intermediate_size, device)
    with unit_masks(adapter, head_mask=heads, neuron_mask=neurons):
        out = task_model.outputs(batch)  # (B, d) or (B, C)
    loss = per_example_loss(task_model, targets, index, out).sum()
    grads = torch.autograd.grad(loss, heads + neurons)
    return list(grads[:len(heads)]), list(grads[len(heads):])


def score(task_model: TaskModel, adapter: ArchAdapter, batches: Sequence[dict[str, torch.Tensor]],
          *, targets: Targets | None = None) -> Scores:
    targets = targets or Targets.self_()
    check_batches(batches, targets)
    bi = BlockInfluence(adapter)
    head_f = [torch.zeros(adapter.num_heads(i), dtype=torch.float64)
              for i in range(adapter.num_layers)]
    neuron_f = [torch.zeros(adapter.intermediate_size(i), dtype=torch.float64)
                for i in range(adapter.num_layers)]
    with grad_only(task_model.model):
        for k, batch in enumerate(batches):
            with bi.collecting(batch):
                g_heads, g_neurons = mask_gradients(task_model, adapter, batch, targets, k)
            for i in range(adapter.num_layers):
                head_f[i] += g_heads[i].double().pow(2).sum(0).cpu()  # (H,)
                neuron_f[i] += g_neurons[i].double().pow(2).sum(0).cpu()  # (F,)
    return Scores(heads=stack_layers([f.float() for f in head_f]),
                  neurons=stack_layers([f.float() for f in neuron_f]),
                  criterion="fisher", layers=bi.result(),
                  meta={"target": targets.kind, "batches": len(batches)})
