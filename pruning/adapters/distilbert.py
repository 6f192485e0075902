"""DistilBERT: `<backbone>.transformer.layer[i]` with `attention.{q_lin,k_lin,v_lin,out_lin}` and
`ffn.{lin1,lin2}`. Attention views q/k/v as `(B, T, -1, head_dim)`; `n_heads` is kept in step.
"""

from __future__ import annotations

from .base import LayerHandles
from .common import EncoderAdapter

__all__ = ["DistilBertAdapter"]


class DistilBertAdapter(EncoderAdapter):
    family = "distilbert"
    model_types = ("distilbert",)
    layer_list_path = ("transformer", "layer")

    @property
    def head_dim(self) -> int:
        return int(self.layers[0].attention.attention_head_size)

    def handles(self, i: int) -> LayerHandles:
        layer = self.layers[i]
        att = layer.attention
        return LayerHandles(q=att.q_lin, k=att.k_lin, v=att.v_lin, o=att.out_lin,
                            ffn_in=(layer.ffn.lin1,), ffn_out=layer.ffn.lin2)

    def _set_num_heads(self, i: int, n: int) -> None:
        self.layers[i].attention.n_heads = n

    def _renumber(self) -> None:
        self.backbone.transformer.n_layers = len(self.layers)
