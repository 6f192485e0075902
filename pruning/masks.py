"""Soft unit masks: scale attention heads, FFN neurons and whole layers without editing weights.

`unit_masks` installs hooks through an `ArchAdapter` for the duration of a `with` block:

- head mask, layer i: forward pre-hook on the o-proj; its input (B, T, H * dh) is multiplied per
  head by `head_mask[i]`, shape (H,) or (B, H) (one mask row per example, which gives
  per-example gradients from a single backward pass).
- neuron mask, layer i: forward pre-hook on ffn_out; its input (B, T, F) is multiplied per neuron
  by `neuron_mask[i]`, shape (F,) or (B, F).
- layer mask, layer i: forward hook on the layer; output becomes `m * layer(x) + (1 - m) * x`,
  so m = 0 skips the layer exactly (identity) and m = 1 leaves it unchanged. Shape () or (B,).

Masks may require grad: the hooks are plain differentiable multiplications, so
`torch.autograd.grad(loss, masks)` gives d loss / d mask (Fisher, Taylor). Non-binary values are
per-unit scales (Kwon et al. 2022 mask tuning). `None` for a layer (or for a whole argument)
leaves it alone. Hooks are removed on exit, also when the block raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from tierserve.pruning.adapters.base import ArchAdapter

__all__ = ["MaskSeq", "unit_masks"]

MaskSeq = Sequence[torch.Tensor | None] | torch.Tensor  # indexed by layer: (L, H) or list of (H,)


def _check(name: str, masks: MaskSeq | None, adapter: ArchAdapter,
           width: Callable[[int], int] | None) -> None:
    if masks is None:
        return
    if len(masks) != adapter.num_layers:
        raise ValueError(f"{name}: {len(masks)} layers given, model has {adapter.num_layers}")
    for i, m in enumerate(masks):
        if m is None:
            continue
        if not isinstance(m, torch.Tensor) or m.dim() > (2 if width else 1):
            raise ValueError(f"{name}[{i}]: expected a tensor of at most {2 if width else 1} dims")
        if width is not None and m.shape[-1] != width(i):
            raise ValueError(f"{name}[{i}]: last dim {m.shape[-1]} != {width(i)} units in layer {i}")


def _scale_last_dim(x: torch.Tensor, mask: torch.Tensor, repeat: int) -> torch.Tensor:
    """x (B, ..., U * repeat) times mask (U,) or (B, U), each unit repeated over its columns."""
    m = mask.to(device=x.device, dtype=x.dtype)
    if repeat > 1:
        m = m.repeat_interleave(repeat, dim=-1)  # (..., U * repeat)
    if m.dim() == 2:  # (B, U * repeat) -> (B, 1, ..., 1, U * repeat)
        m = m.view(m.shape[0], *([1] * (x.dim() - 2)), m.shape[-1])
    return x * m


def _unit_pre_hook(mask: torch.Tensor, repeat: int) -> Callable:
    def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (_scale_last_dim(args[0], mask, repeat), *args[1:])

    return hook


def _layer_hook(mask: torch.Tensor) -> Callable:
    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        x = args[0] if args else kwargs["hidden_states"]  # (B, T, d)
        y = output[0] if isinstance(output, tuple) else output  # (B, T, d)
        m = mask.to(device=y.device, dtype=y.dtype)
        if m.dim() == 1:  # (B,) -> (B, 1, 1)
            m = m.view(-1, *([1] * (y.dim() - 1)))
        mixed = y * m + x * (1 - m)  # exact y at m = 1, exact x at m = 0
        return (mixed, *output[1:]) if isinstance(output, tuple) else mixed

    return hook


def _install(adapter: ArchAdapter, head_mask: MaskSeq | None, neuron_mask: MaskSeq | None,
             layer_mask: MaskSeq | None) -> list[RemovableHandle]:
    installed: list[RemovableHandle] = []
    try:
        for i in range(adapter.num_layers):
            h = adapter.handles(i)
            if head_mask is not None and head_mask[i] is not None:
                hook = _unit_pre_hook(head_mask[i], adapter.head_dim)
                installed.append(h.o.register_forward_pre_hook(hook))
            if neuron_mask is not None and neuron_mask[i] is not None:
                installed.append(h.ffn_out.register_forward_pre_hook(_unit_pre_hook(neuron_mask[i], 1)))
            if layer_mask is not None and layer_mask[i] is not None:
                layer = adapter.layers[i]
                installed.append(layer.register_forward_hook(_layer_hook(layer_mask[i]),
                                                             with_kwargs=True))
    except BaseException:
        for handle in installed:
            handle.remove()
        raise
    return installed


@contextmanager
def unit_masks(adapter: ArchAdapter, head_mask: MaskSeq | None = None,
               neuron_mask: MaskSeq | None = None,
               layer_mask: MaskSeq | None = None) -> Iterator[None]:
    """Scale heads / neurons / layers of `adapter.model` inside the block (see module doc)."""
    _check("head_mask", head_mask, adapter, adapter.num_heads)
    _check("neuron_mask", neuron_mask, adapter, adapter.intermediate_size)
    _check("layer_mask", layer_mask, adapter, None)
    installed = _install(adapter, head_mask, neuron_mask, layer_mask)
    try:
        yield
    finally:
        for handle in installed:
            handle.remove()
