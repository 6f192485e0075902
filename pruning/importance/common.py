"""Small helpers shared by the criteria: model state guards, ragged stacking, token weights."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from tierserve.pruning.importance.targets import Targets

__all__ = ["check_batches", "grad_only", "stack_layers", "token_weights"]


@contextmanager
def grad_only(model: nn.Module, params: Iterable[nn.Parameter] = ()) -> Iterator[None]:
    """Eval mode; only `params` require grad inside the block. Flags and mode restored on exit."""
    wanted = {id(p) for p in params}
    saved = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    try:
        model.eval()
        for p, _ in saved:
            p.requires_grad_(id(p) in wanted)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
        model.train(was_training)


def stack_layers(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-layer (U_i,) scores -> (L, max U); a layer with fewer units is padded with NaN."""
    if len({r.numel() for r in rows}) == 1:
        return torch.stack(list(rows))
    return nn.utils.rnn.pad_sequence(list(rows), batch_first=True, padding_value=float("nan"))


def token_weights(batch: dict[str, torch.Tensor], hidden: torch.Tensor) -> torch.Tensor:
    """(B, T) weights: 1 for real tokens, 0 for padding; all ones when the batch has no mask."""
    mask = batch.get("attention_mask")
    if mask is None or mask.shape != hidden.shape[:2]:
        return torch.ones(hidden.shape[:2], dtype=hidden.dtype, device=hidden.device)
    return mask.to(device=hidden.device, dtype=hidden.dtype)


def check_batches(batches: Sequence[dict[str, torch.Tensor]], targets: Targets | None) -> None:
    if not batches:
        raise ValueError("batches: a data-driven criterion needs at least one calibration batch")
    if targets is not None and targets.labels is not None and len(targets.labels) != len(batches):
        raise ValueError(f"labels: {len(targets.labels)} label batches for {len(batches)} batches")
