"""GPT-2: `<backbone>.h[i]` with a fused `attn.c_attn` (q|k|v), `attn.c_proj`, `mlp.c_fc` and
`mlp.c_proj`, all `Conv1D` (weight stored as (in, out)).

The adapter makes the block prunable with the same surgery as every other family, once, in place:
each `Conv1D` becomes an `nn.Linear` with the transposed weight (the same function), and the fused
`c_attn` becomes `FusedQKV`, three Linears whose outputs are concatenated exactly as `c_attn`'s
were. Attention splits that output by `attn.split_size` and views heads as `(..., -1, head_dim)`,
so `split_size` is kept equal to the kept heads' width. A converted model's state dict names
`attn.c_attn.{q,k,v}.weight`; `load_pruned` converts a fresh model the same way before loading,
so artifacts round-trip (they are not loadable by a plain `GPT2LMHeadModel`).
Cross-attention (encoder-decoder GPT-2) is rejected.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import LayerHandles, UnsupportedArchitectureError
from .decoder import DecoderAdapter

__all__ = ["FusedQKV", "GPT2Adapter", "conv1d_to_linear"]


class FusedQKV(nn.Module):
    """GPT-2's c_attn as separate q, k, v Linears; output (..., 3 * width) like c_attn."""

    def __init__(self, q: nn.Linear, k: nn.Linear, v: nn.Linear) -> None:
        super().__init__()
        self.q, self.k, self.v = q, k, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)


def _linear(weight_in_out: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """An nn.Linear computing x @ weight_in_out + bias (the Conv1D convention)."""
    d_in, d_out = weight_in_out.shape
    lin = nn.Linear(d_in, d_out, bias=bias is not None, device=weight_in_out.device,
                    dtype=weight_in_out.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight_in_out.T)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin


def conv1d_to_linear(conv: nn.Module) -> nn.Linear:
    return _linear(conv.weight.detach(), None if conv.bias is None else conv.bias.detach())


def _convert_block(block: nn.Module) -> None:
    attn, mlp = block.attn, block.mlp
    if not isinstance(attn.c_attn, FusedQKV):
        w, b = attn.c_attn.weight.detach(), attn.c_attn.bias.detach()  # (d, 3d), (3d,)
        width = w.shape[1] // 3
        parts = [_linear(w[:, k * width:(k + 1) * width], b[k * width:(k + 1) * width])
                 for k in range(3)]
        attn.c_attn = FusedQKV(*parts)
    for owner, name in ((attn, "c_proj"), (mlp, "c_fc"), (mlp, "c_proj")):
        mod = getattr(owner, name)
        if not isinstance(mod, nn.Linear):
            setattr(owner, name, conv1d_to_linear(mod))


class GPT2Adapter(DecoderAdapter):
    family = "gpt2"
    model_types = ("gpt2",)
    layer_list_path = ("h",)
    embedding_names = ("wte", "wpe")
    attention_name = "attn"

    def __init__(self, model: nn.Module) -> None:
        if getattr(model.config, "add_cross_attention", False):
            raise UnsupportedArchitectureError(
                f"{type(model).__name__}: cross-attention GPT-2 models are not supported")
        blocks = getattr(getattr(model, "base_model", model), "h", None)
        if isinstance(blocks, nn.ModuleList):
            for block in blocks:
                _convert_block(block)
        super().__init__(model)

    def handles(self, i: int) -> LayerHandles:
        layer = self.layers[i]
        qkv = layer.attn.c_attn
        return LayerHandles(q=qkv.q, k=qkv.k, v=qkv.v, o=layer.attn.c_proj,
                            ffn_in=(layer.mlp.c_fc,), ffn_out=layer.mlp.c_proj)

    def _set_num_heads(self, i: int, n: int) -> None:
        att = self.attention(i)
        att.num_heads = n
        att.split_size = n * att.head_dim
