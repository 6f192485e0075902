"""FLOPs and parameter counts of a (pruned) model, for the encoder and for the whole model.

FLOPs count a multiply-add as 2 and are per sequence of T tokens. Per kept layer:

    per head:   2·T·(3·d·dh)  q/k/v projections     + 2·T·dh·d  o-proj
              + 2·T²·dh  scores (Q·Kᵀ)               + 2·T²·dh  context (P·V)
    per neuron: 2·T·d·(#ffn_in)  up (and gate)       + 2·T·d    down

Softmax, LayerNorm, activations and biases are left out (O(T·d), under 1% here). The encoder
count is the sum over kept layers; budgets are fractions of it. The whole-model count adds the
patch-embedding convolution (ViT, per token) and the linears outside the layers (pooler and
classifier, counted once per sequence); token-embedding lookups cost no FLOPs. Parameters are
exact: `whole_params(shape)` equals `sum(p.numel())` over the model's (deduplicated) parameters,
and embedding parameters are reported separately so a large vocabulary does not hide what pruning
changed.

Decoder LMs (`adapter.causal`): FLOPs are counted per *generated token* at a context of T tokens
held in the KV cache (`ModelShape.per_token`): per head 2·(3·d·dh) + 2·dh·d for the projections of
one token plus 4·T·dh for its scores and context over the cache; per neuron 2·d·(#ffn_in + 1);
the LM head adds 2·d·V per token (tied or not). Under grouped-query attention (`head_group` = g
query heads per KV head) a query head carries 1/g of its KV head's k/v projections, so removing a
whole KV group with its g query heads removes exactly g head costs.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .adapters.base import ArchAdapter
from .structure import LayerStructure, Structure

__all__ = [
    "ModelShape", "encoder_flops", "encoder_params", "head_flops", "layer_flops", "layer_params",
    "neuron_flops", "whole_flops", "whole_params",
]


@dataclass(frozen=True)
class ModelShape:
    """Everything cost counting needs about one model, read once from its adapter."""

    num_layers: int
    heads: tuple[int, ...]  # query heads per layer
    head_dim: int
    hidden: int
    intermediate: tuple[int, ...]  # FFN neurons per layer
    num_ffn_in: int  # linears producing the FFN activations: 1, or 2 for gated FFNs
    params_per_head: int  # q/k/v rows (+ biases) and o columns of one head
    params_per_neuron: int  # ffn_in rows (+ biases) and the ffn_out column of one neuron
    layer_fixed_params: int  # per layer, independent of heads/neurons (norms, o/ffn_out biases)
    embedding_params: int  # the backbone's embeddings module
    head_params: int  # everything else outside the layers: pooler, final norm, classifier
    embedding_flops_per_token: int = 0  # patch-embedding convolution (ViT)
    head_flops_per_seq: int = 0  # linears outside the layers, once per sequence (per token if per_token)
    head_group: int = 1  # query heads per KV head (GQA); k/v costs are shared by the group
    per_token: bool = False  # decoder: FLOPs per generated token at context seq_len (KV cache)

    @classmethod
    def from_adapter(cls, adapter: ArchAdapter) -> ModelShape:
        """Read the current shape of `adapter.model` (pruned or not)."""
        model = adapter.model
        n = adapter.num_layers
        h0 = adapter.handles(0)
        dh, d = adapter.head_dim, adapter.hidden_size
        group = max(1, h0.q.out_features // h0.k.out_features)  # GQA: k/v shared by `group` heads
        per_head = sum((lin.in_features * dh + (dh if lin.bias is not None else 0)) // g
                       for lin, g in ((h0.q, 1), (h0.k, group), (h0.v, group)))
        per_head += h0.o.out_features * dh
        per_neuron = sum(lin.in_features + (1 if lin.bias is not None else 0)
                         for lin in h0.ffn_in) + h0.ffn_out.out_features
        heads = tuple(adapter.num_heads(i) for i in range(n))
        inter = tuple(adapter.intermediate_size(i) for i in range(n))
        layer0 = _numel(adapter.layers[0])
        fixed = layer0 - heads[0] * per_head - inter[0] * per_neuron
        embeddings = getattr(adapter, "embeddings", None)
        in_layers = {id(p) for p in adapter.layers.parameters()}
        in_emb = {id(p) for p in embeddings.parameters()} if embeddings is not None else set()
        total = _numel(model)
        emb = _numel(embeddings) if embeddings is not None else 0
        return cls(
            num_layers=n, heads=heads, head_dim=dh, hidden=d, intermediate=inter,
            num_ffn_in=len(h0.ffn_in), params_per_head=per_head, params_per_neuron=per_neuron,
            layer_fixed_params=fixed, embedding_params=emb,
            head_params=total - emb - _numel(adapter.layers),
            embedding_flops_per_token=_conv_flops(embeddings),
            head_flops_per_seq=(_lm_head_flops(model) if getattr(adapter, "causal", False)
                                else _outside_linear_flops(model, in_layers | in_emb)),
            head_group=group, per_token=bool(getattr(adapter, "causal", False)),
        )

    def full_structure(self) -> Structure:
        """The structure that keeps everything this shape has."""
        return Structure(tuple(LayerStructure(tuple(range(h)), tuple(range(f)))
                               for h, f in zip(self.heads, self.intermediate, strict=True)))


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())  # parameters() skips shared duplicates


def _conv_flops(embeddings: nn.Module | None) -> int:
    if embeddings is None:
        return 0
    return sum(2 * m.weight.numel() for m in embeddings.modules() if isinstance(m, nn.Conv2d))


def _lm_head_flops(model: nn.Module) -> int:
    """2·d·V per token for a causal LM's output projection (counted even when tied)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return 2 * head.weight.numel() if head is not None else 0


def _outside_linear_flops(model: nn.Module, skip: set[int]) -> int:
    return sum(2 * m.weight.numel() for m in model.modules()
               if isinstance(m, nn.Linear) and id(m.weight) not in skip)


# -- per unit ---------------------------------------------------------------------------------
def head_flops(shape: ModelShape, seq_len: int) -> int:
    """FLOPs of one attention head at T = seq_len (projections + score/context matmuls)."""
    t, d, dh = seq_len, shape.hidden, shape.head_dim
    proj = 2 * d * dh * (2 + 2 / shape.head_group)  # q, o + this head's share of k, v; per token
    if shape.per_token:  # one generated token attending over a context of t cached tokens
        return round(proj + 4 * t * dh)
    return round(t * proj + 4 * t * t * dh)


def neuron_flops(shape: ModelShape, seq_len: int) -> int:
    """FLOPs of one FFN neuron at T = seq_len (per token for decoders)."""
    tokens = 1 if shape.per_token else seq_len
    return 2 * tokens * shape.hidden * (shape.num_ffn_in + 1)


def layer_flops(shape: ModelShape, heads: int, neurons: int, seq_len: int) -> int:
    return heads * head_flops(shape, seq_len) + neurons * neuron_flops(shape, seq_len)


def layer_params(shape: ModelShape, heads: int, neurons: int) -> int:
    return shape.layer_fixed_params + heads * shape.params_per_head + neurons * shape.params_per_neuron


# -- whole structures -------------------------------------------------------------------------
def _kept(shape: ModelShape, structure: Structure | None) -> list[tuple[int, int]]:
    if structure is None:
        return list(zip(shape.heads, shape.intermediate, strict=True))
    if len(structure.layers) != shape.num_layers:
        raise ValueError(f"structure has {len(structure.layers)} layers, "
                         f"shape has {shape.num_layers}")
    return [(len(s.heads), len(s.neurons)) for s in structure.layers if s is not None]


def encoder_flops(shape: ModelShape, structure: Structure | None = None, seq_len: int = 128) -> int:
    """Encoder FLOPs per sequence; `structure=None` means the shape as it is."""
    return sum(layer_flops(shape, h, f, seq_len) for h, f in _kept(shape, structure))


def encoder_params(shape: ModelShape, structure: Structure | None = None) -> int:
    return sum(layer_params(shape, h, f) for h, f in _kept(shape, structure))


def whole_flops(shape: ModelShape, structure: Structure | None = None, seq_len: int = 128) -> int:
    tokens = 1 if shape.per_token else seq_len
    return (encoder_flops(shape, structure, seq_len)
            + shape.embedding_flops_per_token * tokens + shape.head_flops_per_seq)


def whole_params(shape: ModelShape, structure: Structure | None = None) -> int:
    return encoder_params(shape, structure) + shape.embedding_params + shape.head_params
