"""ViT image classifiers and encoders.

Layout in transformers 5.x: `<backbone>.layers[i]` with `attention.{q_proj,k_proj,v_proj,o_proj}`
and `mlp.{fc1,fc2}` (older releases nested `encoder.layer[i].attention.attention.query`; that
layout is rejected with a clear error). Attention views q/k/v as `(B, T, -1, head_dim)`.
"""

from __future__ import annotations

from .base import LayerHandles
from .common import EncoderAdapter

__all__ = ["ViTAdapter"]


class ViTAdapter(EncoderAdapter):
    family = "vit"
    model_types = ("vit",)
    layer_list_path = ("layers",)

    @property
    def head_dim(self) -> int:
        return int(self.layers[0].attention.head_dim)

    def handles(self, i: int) -> LayerHandles:
        layer = self.layers[i]
        att = layer.attention
        return LayerHandles(q=att.q_proj, k=att.k_proj, v=att.v_proj, o=att.o_proj,
                            ffn_in=(layer.mlp.fc1,), ffn_out=layer.mlp.fc2)

    def _set_num_heads(self, i: int, n: int) -> None:
        self.layers[i].attention.num_attention_heads = n
