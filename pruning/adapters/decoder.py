"""What decoder LMs (Llama family, GPT-2) add to the encoder adapters' surgery.

- `causal = True`: cost.py counts FLOPs per generated token (KV cache), and the LM head's 2·d·V.
- `embeddings`: the token (and position) embeddings, for parameter counts.
- `keep_layers` also renumbers each attention's `layer_idx` (its KV-cache slot) and slices
  per-layer config lists such as `layer_types`, so `generate()` builds a cache of the new depth.
"""

from __future__ import annotations

from torch import nn

from .common import EncoderAdapter

__all__ = ["DecoderAdapter"]

_PER_LAYER_CONFIG = ("layer_types",)  # config lists with one entry per layer


class DecoderAdapter(EncoderAdapter):
    """A causal LM whose blocks live in one `nn.ModuleList` on the backbone."""

    causal = True
    embedding_names: tuple[str, ...] = ()  # backbone attributes holding the input embeddings
    attention_name: str = ""  # each block's attribute holding its attention module

    @property
    def embeddings(self) -> nn.Module:
        mods = [getattr(self.backbone, n) for n in self.embedding_names]
        return mods[0] if len(mods) == 1 else nn.ModuleList(mods)

    @property
    def head_dim(self) -> int:
        return int(self.attention(0).head_dim)

    def attention(self, i: int) -> nn.Module:
        """Layer i's attention module (holds `layer_idx` and `head_dim`)."""
        return getattr(self.layers[i], self.attention_name)

    def keep_layers(self, keep: list[int]) -> None:
        before = self.num_layers
        super().keep_layers(keep)
        for name in _PER_LAYER_CONFIG:
            values = getattr(self.config, name, None)
            if isinstance(values, list) and len(values) == before:
                setattr(self.config, name, [values[j] for j in sorted(keep)])

    def _renumber(self) -> None:
        for j in range(self.num_layers):
            self.attention(j).layer_idx = j
