"""BERT family: BERT (incl. MiniLM checkpoints), RoBERTa, XLM-RoBERTa, ELECTRA.

Layout (transformers 5.x): `<backbone>.encoder.layer[i]` with
`attention.self.{query,key,value}`, `attention.output.dense`, `intermediate.dense`,
`output.dense`. Self-attention views q/k/v as `(B, T, -1, head_dim)`, so per-layer head counts
work; `num_attention_heads` / `all_head_size` on `attention.self` are kept in step anyway.
Cross-attention (decoder BERT) is not pruned: such models are rejected.
"""

from __future__ import annotations

from torch import nn

from .base import LayerHandles, UnsupportedArchitectureError
from .common import EncoderAdapter

__all__ = ["BertAdapter"]


class BertAdapter(EncoderAdapter):
    family = "bert"
    model_types = ("bert", "roberta", "xlm-roberta", "electra")
    layer_list_path = ("encoder", "layer")

    def __init__(self, model: nn.Module) -> None:
        if getattr(model.config, "add_cross_attention", False):
            raise UnsupportedArchitectureError(
                f"{type(model).__name__}: cross-attention (decoder) BERT models are not supported")
        super().__init__(model)

    @property
    def head_dim(self) -> int:
        return int(self.layers[0].attention.self.attention_head_size)

    def handles(self, i: int) -> LayerHandles:
        layer = self.layers[i]
        att = layer.attention
        return LayerHandles(q=att.self.query, k=att.self.key, v=att.self.value,
                            o=att.output.dense, ffn_in=(layer.intermediate.dense,),
                            ffn_out=layer.output.dense)

    def _set_num_heads(self, i: int, n: int) -> None:
        att = self.layers[i].attention.self
        att.num_attention_heads = n
        att.all_head_size = n * att.attention_head_size

    def _renumber(self) -> None:
        for j, layer in enumerate(self.layers):
            layer.attention.self.layer_idx = j
