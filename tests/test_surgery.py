"""Physical surgery on the real all-MiniLM-L6-v2, checked against masked references on Lee news text.

The reference for a structure is an UNPRUNED copy whose removed heads' o-proj input columns and
removed neurons' ffn_out input columns are zeroed and whose removed layers are replaced by an
identity: if slicing were wrong anywhere, the outputs would differ.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tierserve.pruning.adapters import adapter_for
from tierserve.pruning.cost import ModelShape, whole_params
from tierserve.pruning.sparse import dense_speedup_note, magnitude_prune_, nm_prune_, sparsity
from tierserve.pruning.structure import LayerStructure, Structure
from tierserve.pruning.surgery import StructureMismatchError, apply_structure, slice_linear_
from tierserve.pruning.tasks import TaskModel, load_task_model

L, H, DH, D, FF = 6, 12, 32, 384, 1536


class _Skip(nn.Module):
    """Stands in for a removed layer in the reference: returns its input unchanged."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return hidden_states


def masked_reference(model: nn.Module, structure: Structure,
                     head_scale: torch.Tensor | None = None,
                     neuron_scale: torch.Tensor | None = None) -> nn.Module:
    """An unpruned copy computing what `structure` (and optional scales) should compute."""
    ref = copy.deepcopy(model)
    ad = adapter_for(ref)
    dh = ad.head_dim
    with torch.no_grad():
        for i, layer in enumerate(structure.layers):
            if layer is None:
                continue
            h = ad.handles(i)
            hmask = torch.zeros(ad.num_heads(i))
            hmask[list(layer.heads)] = 1 if head_scale is None else head_scale[i, list(layer.heads)]
            nmask = torch.zeros(ad.intermediate_size(i))
            nmask[list(layer.neurons)] = (1 if neuron_scale is None
                                          else neuron_scale[i, list(layer.neurons)])
            h.o.weight.mul_(hmask.repeat_interleave(dh))  # (d, H * dh) columns
            h.ffn_out.weight.mul_(nmask)  # (d, F) columns
    for i in (i for i, layer in enumerate(structure.layers) if layer is None):
        ad.layers[i] = _Skip()
    return ref


def uneven_structure(num_layers: int, heads: int, ffn: int, removed: tuple[int, ...],
                     seed: int = 0) -> Structure:
    """Different random head / neuron subsets per layer, some layers removed."""
    g = torch.Generator().manual_seed(seed)
    layers: list[LayerStructure | None] = []
    for i in range(num_layers):
        if i in removed:
            layers.append(None)
            continue
        nh = 1 + (i * 5) % heads
        nf = 8 * (1 + (i * 37) % (ffn // 8))
        hk = sorted(torch.randperm(heads, generator=g)[:nh].tolist())
        nk = sorted(torch.randperm(ffn, generator=g)[:nf].tolist())
        layers.append(LayerStructure(tuple(hk), tuple(nk)))
    return Structure(tuple(layers))


@pytest.fixture()
def tm(minilm_path) -> TaskModel:
    """A fresh MiniLM per test: surgery edits it in place."""
    torch.set_num_threads(2)
    return load_task_model(minilm_path, "embedding", max_length=64)


@pytest.fixture(scope="module")
def texts(lee_corpus) -> list[str]:
    return lee_corpus[:8]


def _embed(tm: TaskModel, model: nn.Module, texts: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return TaskModel(tm.task, model, tm.processor, max_length=64).outputs(tm.batch(texts))


def test_full_structure_changes_nothing(tm, texts):
    before = _embed(tm, tm.model, texts)
    ad = adapter_for(tm.model)
    apply_structure(ad, Structure.full(L, H, FF))
    assert torch.equal(_embed(tm, tm.model, texts), before)
    for i in range(L):  # slicing every unit (a real index_select copy) is exact too
        ad.keep_heads(i, list(range(H)))
        ad.keep_neurons(i, list(range(FF)))
    assert torch.equal(_embed(tm, tm.model, texts), before)


def test_uneven_structure_matches_masked_reference(tm, texts):
    st = uneven_structure(L, H, FF, removed=(1, 4))
    shape = ModelShape.from_adapter(adapter_for(tm.model))
    ref = masked_reference(tm.model, st)
    before = _embed(tm, tm.model, texts)
    apply_structure(adapter_for(tm.model), st)
    after = _embed(tm, tm.model, texts)
    assert torch.allclose(after, _embed(tm, ref, texts), atol=1e-5)
    assert (after - before).abs().max() > 1e-2  # the structure really changed the model
    ad = adapter_for(tm.model)
    assert ad.num_layers == 4
    for j, i in enumerate(st.kept_layers):
        kept = st.layers[i]
        h = ad.handles(j)
        assert h.q.weight.shape == (len(kept.heads) * DH, D)
        assert h.o.weight.shape == (D, len(kept.heads) * DH)
        assert h.ffn_in[0].weight.shape == (len(kept.neurons), D)
        assert h.ffn_out.weight.shape == (D, len(kept.neurons))
        assert ad.layers[j].attention.self.num_attention_heads == len(kept.heads)
    assert sum(p.numel() for p in tm.model.parameters()) == whole_params(shape, st)
    assert tm.model.config.num_hidden_layers == 4
    assert [s["heads"] for s in tm.model.config.tierserve_layers] == [
        len(st.layers[i].heads) for i in st.kept_layers]


def test_layer_removal_equals_skipping_the_layer(tm, texts):
    st = Structure(tuple(None if i in (0, 3) else LayerStructure(tuple(range(H)), tuple(range(FF)))
                         for i in range(L)))
    ref = masked_reference(tm.model, st)
    apply_structure(adapter_for(tm.model), st)
    assert torch.allclose(_embed(tm, tm.model, texts), _embed(tm, ref, texts), atol=1e-6)
    assert [layer.attention.self.layer_idx for layer in adapter_for(tm.model).layers] == [0, 1, 2, 3]


def test_scales_are_folded_into_the_weights(tm, texts):
    st = uneven_structure(L, H, FF, removed=(2,), seed=1)
    g = torch.Generator().manual_seed(3)
    hs, ns = 0.5 + torch.rand(L, H, generator=g), 0.5 + torch.rand(L, FF, generator=g)
    ref = masked_reference(tm.model, st, head_scale=hs, neuron_scale=ns)
    apply_structure(adapter_for(tm.model), st, head_scale=hs, neuron_scale=ns)
    assert torch.allclose(_embed(tm, tm.model, texts), _embed(tm, ref, texts), atol=1e-5)


def test_bad_structures_are_rejected_clearly(tm):
    ad = adapter_for(tm.model)
    full = LayerStructure(tuple(range(H)), tuple(range(FF)))
    with pytest.raises(StructureMismatchError, match="5 layers, model has 6"):
        apply_structure(ad, Structure((full,) * 5))
    with pytest.raises(StructureMismatchError, match="out of range"):
        apply_structure(ad, Structure((LayerStructure((0, 12), (0,)),) + (full,) * 5))
    with pytest.raises(StructureMismatchError, match="keeps no heads"):
        apply_structure(ad, Structure((LayerStructure((), (0,)),) + (full,) * 5))
    with pytest.raises(StructureMismatchError, match="every layer"):
        apply_structure(ad, Structure((None,) * 6))
    with pytest.raises(StructureMismatchError, match="head_scale"):
        apply_structure(ad, Structure((full,) * 6), head_scale=torch.ones(L, H + 1))
    apply_structure(ad, Structure((None,) + (full,) * 5))
    with pytest.raises(StructureMismatchError, match="original"):  # already pruned
        apply_structure(ad, Structure((full,) * 6))


def test_slice_linear_keeps_dtype_bias_and_identity():
    lin = nn.Linear(6, 5).to(torch.float64)
    w, b = lin.weight.detach().clone(), lin.bias.detach().clone()
    same = slice_linear_(lin, rows=[0, 3], cols=[1, 2, 5])
    assert same is lin and lin.weight.dtype == torch.float64
    assert (lin.out_features, lin.in_features) == (2, 3)
    assert torch.equal(lin.weight, w[[0, 3]][:, [1, 2, 5]]) and torch.equal(lin.bias, b[[0, 3]])


@pytest.mark.slow
def test_sparse_pruning_zeroes_weights_but_keeps_shapes(tm, texts):
    ad = adapter_for(tm.model)
    n_params = sum(p.numel() for p in tm.model.parameters())
    before = _embed(tm, tm.model, texts)
    assert sparsity(ad) < 0.01
    assert abs(magnitude_prune_(ad, 0.3) - 0.3) < 0.01
    assert sum(p.numel() for p in tm.model.parameters()) == n_params  # nothing removed
    assert nm_prune_(ad, 2, 4) >= 0.5
    groups = ad.handles(0).q.weight.view(D, -1, 4)  # (out, in / 4, 4)
    assert bool(((groups == 0).sum(-1) >= 2).all())
    assert not torch.allclose(_embed(tm, tm.model, texts), before, atol=1e-3)
    assert "no" in dense_speedup_note.lower() or "exactly as fast" in dense_speedup_note
