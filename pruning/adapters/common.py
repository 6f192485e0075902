"""Surgery shared by encoder families whose attention reshapes with `-1` heads.

BERT, DistilBERT and ViT (transformers 5.x) all view q/k/v as `(*input_shape, -1, head_dim)` and
flatten the context back with `reshape(*input_shape, -1)`, so a layer runs with however many heads
its q/k/v/o linears hold. Per-module head-count attributes are still updated so that anything
reading them sees the truth. Subclasses say where the linears live (`handles`) and which
attributes hold head counts (`_set_num_heads`).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

from torch import nn

from ..surgery import head_columns, slice_linear_
from .base import ArchAdapter, UnsupportedArchitectureError

__all__ = ["EncoderAdapter", "STRUCTURE_KEY", "check_keep"]

STRUCTURE_KEY = "tierserve_layers"  # config attribute: [{"heads": n, "intermediate": f}, ...]


def check_keep(what: str, keep: Sequence[int], width: int, i: int) -> list[int]:
    keep = [int(k) for k in keep]
    if keep != sorted(set(keep)):
        raise ValueError(f"layer {i}: {what} to keep must be sorted and unique, got {keep}")
    if keep and (keep[0] < 0 or keep[-1] >= width):
        raise ValueError(f"layer {i}: {what} index out of range [0, {width}): {keep}")
    return keep


class EncoderAdapter(ArchAdapter):
    """An encoder whose layers live in one `nn.ModuleList` on the backbone."""

    model_types: tuple[str, ...] = ()
    layer_list_path: tuple[str, ...] = ()  # attribute path from the backbone to the ModuleList

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.backbone: nn.Module = getattr(model, "base_model", model)
        owner = self.backbone
        for name in self.layer_list_path:
            owner = getattr(owner, name, None)
        if not isinstance(owner, nn.ModuleList) or len(owner) == 0:
            raise UnsupportedArchitectureError(
                f"{type(model).__name__}: expected layers at "
                f"{'.'.join(self.layer_list_path)} for the {self.family} adapter; "
                "this transformers version lays the model out differently")
        try:
            self.handles(0)  # fail early if the per-layer layout differs
        except AttributeError as exc:
            raise UnsupportedArchitectureError(
                f"{type(model).__name__}: layer layout differs from the {self.family} adapter's "
                f"({exc})") from exc

    # -- inspection ---------------------------------------------------------------------------
    @property
    def config(self):  # noqa: ANN201 - a transformers PretrainedConfig
        return self.model.config

    @property
    def layers(self) -> nn.ModuleList:
        owner = self.backbone
        for name in self.layer_list_path:
            owner = getattr(owner, name)
        return owner

    @property
    def embeddings(self) -> nn.Module:
        """The backbone's input embeddings module (token/position/patch embeddings)."""
        return self.backbone.embeddings

    @property
    def hidden_size(self) -> int:
        return self.handles(0).o.out_features

    def num_heads(self, i: int) -> int:
        return self.handles(i).q.out_features // self.head_dim

    def intermediate_size(self, i: int) -> int:
        return self.handles(i).ffn_out.in_features

    # -- surgery ------------------------------------------------------------------------------
    @abstractmethod
    def _set_num_heads(self, i: int, n: int) -> None:
        """Update the attention module's head-count attributes of layer i to `n`."""

    def keep_heads(self, i: int, keep: list[int]) -> None:
        keep = check_keep("heads", keep, self.num_heads(i), i)
        if not keep:
            raise ValueError(f"layer {i}: cannot keep 0 heads; remove the layer instead")
        h = self.handles(i)
        rows = head_columns(keep, self.head_dim)
        for lin in (h.q, h.k, h.v):
            slice_linear_(lin, rows=rows)
        slice_linear_(h.o, cols=rows)
        self._set_num_heads(i, len(keep))

    def keep_neurons(self, i: int, keep: list[int]) -> None:
        keep = check_keep("neurons", keep, self.intermediate_size(i), i)
        h = self.handles(i)
        for lin in h.ffn_in:
            slice_linear_(lin, rows=keep)
        slice_linear_(h.ffn_out, cols=keep)

    def keep_layers(self, keep: list[int]) -> None:
        keep = check_keep("layers", keep, self.num_layers, -1)
        if not keep:
            raise ValueError("cannot remove every layer")
        owner = self.backbone
        for name in self.layer_list_path[:-1]:
            owner = getattr(owner, name)
        old = self.layers
        setattr(owner, self.layer_list_path[-1], nn.ModuleList([old[j] for j in keep]))
        self._renumber()

    def _renumber(self) -> None:
        """Fix per-layer indices after layer removal (KV-cache slots); default: none kept."""

    def layer_shapes(self) -> list[dict[str, int]]:
        return [{"heads": self.num_heads(i), "intermediate": self.intermediate_size(i)}
                for i in range(self.num_layers)]

    def write_config(self) -> None:
        """Set num_hidden_layers and `config.tierserve_layers` (per-layer heads / FFN width).

        The config's global head count and intermediate size stay at their original values
        (HF constructors check hidden % heads); `tierserve_layers` says what each layer holds.
        """
        self.config.num_hidden_layers = self.num_layers
        setattr(self.config, STRUCTURE_KEY, self.layer_shapes())
