"""Unstructured and N:M (2:4) magnitude pruning, for comparison with structured pruning only.

These zero individual weights inside the encoder's linears and leave every matrix its full
shape, so dense kernels do exactly the same work: see `dense_speedup_note`. They exist to put
structured pruning's quality next to the quality of removing the same fraction of weights
without the structure constraint.
"""

from __future__ import annotations

import torch
from torch import nn

from .adapters.base import ArchAdapter

__all__ = ["dense_speedup_note", "encoder_linears", "magnitude_prune_", "nm_prune_", "sparsity"]

dense_speedup_note = (
    "Unstructured and N:M sparsity zero weights but keep every matrix dense: on CPU (and on GPU "
    "without sparse kernels) a pruned model runs exactly as fast as the dense one and stores as "
    "many bytes. 2:4 sparsity can speed up matmuls only on GPUs with sparse tensor cores "
    "(Ampere and later) through semi-structured sparse kernels, which tierserve does not use. "
    "Use structured pruning (heads, neurons, layers) for real speedups."
)


def encoder_linears(adapter: ArchAdapter) -> list[nn.Linear]:
    """The q/k/v/o and FFN linears of every layer (embeddings and heads are left alone)."""
    out: list[nn.Linear] = []
    for i in range(adapter.num_layers):
        h = adapter.handles(i)
        out.extend([h.q, h.k, h.v, h.o, *h.ffn_in, h.ffn_out])
    return out


@torch.no_grad()
def magnitude_prune_(adapter: ArchAdapter, fraction: float) -> float:
    """Zero the `fraction` smallest-|w| weights of each encoder linear, in place.

    Per-matrix thresholds (each matrix loses the same fraction). Returns the achieved sparsity.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction {fraction} must be in [0, 1)")
    for lin in encoder_linears(adapter):
        w = lin.weight  # (out, in)
        k = int(round(fraction * w.numel()))
        if k == 0:
            continue
        threshold = w.abs().flatten().kthvalue(k).values  # k-th smallest magnitude
        w.masked_fill_(w.abs() <= threshold, 0.0)  # ties at the threshold go too
    return sparsity(adapter)


@torch.no_grad()
def nm_prune_(adapter: ArchAdapter, n: int = 2, m: int = 4) -> float:
    """Keep the `n` largest-|w| of every `m` consecutive input weights per output row (2:4)."""
    if not 0 < n < m:
        raise ValueError(f"need 0 < n < m, got {n}:{m}")
    for lin in encoder_linears(adapter):
        w = lin.weight  # (out, in)
        if w.shape[1] % m:
            raise ValueError(f"in_features {w.shape[1]} of a linear is not a multiple of {m}")
        groups = w.view(w.shape[0], -1, m)  # (out, in / m, m)
        drop = groups.abs().argsort(dim=-1)[..., : m - n]  # (out, in / m, m - n) smallest
        groups.scatter_(-1, drop, 0.0)
    return sparsity(adapter)


def sparsity(adapter: ArchAdapter) -> float:
    """Fraction of zero weights over the encoder linears."""
    linears = encoder_linears(adapter)
    zeros = sum(int((lin.weight == 0).sum()) for lin in linears)
    return zeros / sum(lin.weight.numel() for lin in linears)
