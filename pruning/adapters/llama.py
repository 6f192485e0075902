"""Llama family (Llama, Mistral, Qwen2, SmolLM2): pre-RMSNorm decoders with RoPE, gated FFN and
grouped-query attention.

Layout (transformers 5.x): `<backbone>.layers[i]` with `self_attn.{q,k,v,o}_proj` and
`mlp.{gate,up,down}_proj`. Attention views q/k/v as `(B, T, -1, head_dim)` and repeats each KV
head `self_attn.num_key_value_groups` times, so a layer runs with any number of KV heads as long
as every KV head keeps the same number of query heads. RoPE is applied per head over head_dim,
which pruning never changes, so positions and the KV cache work after surgery.

GQA surgery (`keep_heads`): query head h belongs to KV group h // g (g = query heads per KV head
in that layer). The kept query heads decide the kept KV heads: a KV head stays iff at least one
of its query heads stays, and every kept group must keep the same number r of query heads
(r = g: whole groups, the planner's default; r < g: query pruning inside groups, see gqa.py).
q rows and o columns are sliced per query head, k and v rows per KV head, and
`num_key_value_groups` becomes r.
"""

from __future__ import annotations

from collections import Counter

from ..surgery import head_columns, slice_linear_
from .base import LayerHandles
from .common import check_keep
from .decoder import DecoderAdapter

__all__ = ["LlamaAdapter", "kv_groups"]


def kv_groups(keep: list[int], group: int, i: int = -1) -> tuple[list[int], int]:
    """(kept KV heads, query heads kept per KV head) for kept query heads `keep`.

    Raises ValueError when the kept groups keep different numbers of query heads.
    """
    counts = Counter(h // group for h in keep)
    per = set(counts.values())
    if len(per) > 1:
        raise ValueError(f"layer {i}: GQA needs the same number of query heads in every kept KV "
                         f"group; got {dict(sorted(counts.items()))} (group size {group})")
    return sorted(counts), per.pop() if per else 0


class LlamaAdapter(DecoderAdapter):
    family = "llama"
    model_types = ("llama", "mistral", "qwen2")
    layer_list_path = ("layers",)
    embedding_names = ("embed_tokens",)
    attention_name = "self_attn"

    def handles(self, i: int) -> LayerHandles:
        layer = self.layers[i]
        att, mlp = layer.self_attn, layer.mlp
        return LayerHandles(q=att.q_proj, k=att.k_proj, v=att.v_proj, o=att.o_proj,
                            ffn_in=(mlp.gate_proj, mlp.up_proj), ffn_out=mlp.down_proj)

    def num_kv_heads(self, i: int) -> int:
        return self.handles(i).k.out_features // self.head_dim

    def group_size(self, i: int) -> int:
        """Query heads per KV head in layer i now."""
        return self.num_heads(i) // self.num_kv_heads(i)

    def keep_heads(self, i: int, keep: list[int]) -> None:
        keep = check_keep("heads", keep, self.num_heads(i), i)
        if not keep:
            raise ValueError(f"layer {i}: cannot keep 0 heads; remove the layer instead")
        kv, per_group = kv_groups(keep, self.group_size(i), i)
        h = self.handles(i)
        rows = head_columns(keep, self.head_dim)
        slice_linear_(h.q, rows=rows)
        slice_linear_(h.o, cols=rows)
        kv_rows = head_columns(kv, self.head_dim)
        for lin in (h.k, h.v):
            slice_linear_(lin, rows=kv_rows)
        self._set_num_heads(i, len(keep))
        self.attention(i).num_key_value_groups = per_group

    def _set_num_heads(self, i: int, n: int) -> None:
        att = self.attention(i)  # Llama's attention reads no head count; keep any in step
        for name in ("num_heads", "num_attention_heads"):
            if hasattr(att, name):
                setattr(att, name, n)

    def kv_shapes(self) -> list[int]:
        """KV heads per layer (recorded in config as `tierserve_kv_heads`)."""
        return [self.num_kv_heads(i) for i in range(self.num_layers)]

    def write_config(self) -> None:
        super().write_config()
        self.config.tierserve_kv_heads = self.kv_shapes()
