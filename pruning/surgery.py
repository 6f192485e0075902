"""Physical surgery: apply a `Structure` to a model in place, through its `ArchAdapter`.

Heads, FFN neurons and layers are *removed* (weights sliced, modules dropped), never masked, so
the pruned model does less arithmetic. Indices in a `Structure` refer to the original model, so
`apply_structure` expects the adapter's model to still have its original shape.

Optional LS-rescale factors (Kwon et al. 2022 mask tuning) are folded into the weights: a kept
head's scale multiplies its o-proj input columns, a kept neuron's scale its ffn_out input column.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from .structure import Structure

if TYPE_CHECKING:  # adapters import this module's slicing helpers
    from .adapters.base import ArchAdapter

__all__ = ["apply_structure", "head_columns", "slice_linear_", "StructureMismatchError"]


class StructureMismatchError(ValueError):
    """A `Structure` (or scale vector) does not fit the model it is applied to."""


def head_columns(heads: Sequence[int], head_dim: int) -> list[int]:
    """Row (q/k/v) or column (o) positions of `heads`, each head spanning `head_dim` features."""
    return [h * head_dim + j for h in heads for j in range(head_dim)]


@torch.no_grad()
def slice_linear_(linear: nn.Linear, *, rows: Sequence[int] | None = None,
                  cols: Sequence[int] | None = None) -> nn.Linear:
    """Keep only output `rows` and/or input `cols` of `linear`, in place (same module object).

    dtype, device, requires_grad and hooks are kept; the bias follows the rows. Returns `linear`.
    """
    weight = linear.weight  # (out, in)
    new_w = weight
    if rows is not None:
        idx = torch.as_tensor(list(rows), dtype=torch.long, device=weight.device)
        new_w = new_w.index_select(0, idx)  # (len(rows), in)
        if linear.bias is not None:
            bias = linear.bias.index_select(0, idx)  # (len(rows),)
            linear.bias = nn.Parameter(bias.contiguous(), requires_grad=linear.bias.requires_grad)
        linear.out_features = len(idx)
    if cols is not None:
        idx = torch.as_tensor(list(cols), dtype=torch.long, device=weight.device)
        new_w = new_w.index_select(1, idx)  # (out, len(cols))
        linear.in_features = len(idx)
    linear.weight = nn.Parameter(new_w.contiguous(), requires_grad=weight.requires_grad)
    return linear


@torch.no_grad()
def _scale_columns_(linear: nn.Linear, scale: torch.Tensor, repeat: int) -> None:
    """Multiply input columns of `linear` by `scale` (U,), each unit spanning `repeat` columns."""
    s = scale.detach().to(device=linear.weight.device, dtype=torch.float32)
    s = s.repeat_interleave(repeat)  # (U * repeat,)
    w = linear.weight.float() * s.unsqueeze(0)  # (out, U * repeat)
    linear.weight.copy_(w.to(linear.weight.dtype))


def _check(adapter: ArchAdapter, structure: Structure) -> None:
    if len(structure.layers) != adapter.num_layers:
        raise StructureMismatchError(
            f"structure has {len(structure.layers)} layers, model has {adapter.num_layers}; "
            "apply_structure needs the original (unpruned) model")
    if not structure.kept_layers:
        raise StructureMismatchError("structure removes every layer; keep at least one")
    for i in structure.kept_layers:
        layer = structure.layers[i]
        for name, units, width in (("heads", layer.heads, adapter.num_heads(i)),
                                   ("neurons", layer.neurons, adapter.intermediate_size(i))):
            if list(units) != sorted(set(units)):
                raise StructureMismatchError(f"layer {i} {name}: indices must be sorted and unique")
            if units and (units[0] < 0 or units[-1] >= width):
                raise StructureMismatchError(
                    f"layer {i} {name}: index {units[-1]} out of range for {width} {name}")
        if not layer.heads:
            raise StructureMismatchError(f"layer {i} keeps no heads; remove the whole layer instead")


def _scale_row(scale: torch.Tensor | Sequence | None, i: int, name: str,
               width: int) -> torch.Tensor | None:
    if scale is None or scale[i] is None:
        return None
    row = torch.as_tensor(scale[i])
    if row.shape != (width,):
        raise StructureMismatchError(f"{name}[{i}] has shape {tuple(row.shape)}, expected ({width},)")
    return row


def apply_structure(adapter: ArchAdapter, structure: Structure, *,
                    head_scale: torch.Tensor | Sequence | None = None,
                    neuron_scale: torch.Tensor | Sequence | None = None) -> None:
    """Prune `adapter.model` in place to `structure`, then record the shapes in its config.

    head_scale: (L, H) tensor (or per-layer sequence of (H,) / None) indexed by ORIGINAL head;
    only kept heads' entries are used (a recovery mask with zeros at removed units fits).
    neuron_scale: (L, F) likewise for FFN neurons.
    """
    _check(adapter, structure)
    for i in structure.kept_layers:
        layer = structure.layers[i]
        h_scale = _scale_row(head_scale, i, "head_scale", adapter.num_heads(i))
        n_scale = _scale_row(neuron_scale, i, "neuron_scale", adapter.intermediate_size(i))
        if len(layer.heads) < adapter.num_heads(i):
            adapter.keep_heads(i, list(layer.heads))
        if len(layer.neurons) < adapter.intermediate_size(i):
            adapter.keep_neurons(i, list(layer.neurons))
        handles = adapter.handles(i)
        if h_scale is not None:
            _scale_columns_(handles.o, h_scale[list(layer.heads)], adapter.head_dim)
        if n_scale is not None:
            _scale_columns_(handles.ffn_out, n_scale[list(layer.neurons)], 1)
    if len(structure.kept_layers) < adapter.num_layers:
        adapter.keep_layers(structure.kept_layers)
    adapter.write_config()
