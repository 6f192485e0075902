"""LS rescale and distillation on the real all-MiniLM-L6-v2, pruned for real by surgery.

Calibration: the first half of the Lee news documents and the even Pang & Lee snippets;
evaluation: the other half of each (held out).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch

from tierserve.pruning import importance
from tierserve.pruning.adapters import adapter_for
from tierserve.pruning.masks import unit_masks
from tierserve.pruning.recovery import Rescale, distill, ls_rescale
from tierserve.pruning.structure import LayerStructure, Structure
from tierserve.pruning.surgery import apply_structure
from tierserve.pruning.tasks import TaskModel, load_task_model

L, H, FF = 6, 12, 1536


def _load(path, task: str = "embedding") -> TaskModel:
    return load_task_model(path, task, max_length=64)


def _agreement(tm: TaskModel, batches, ref) -> float:
    """Mean cosine between `tm`'s embeddings and the full model's (both unit norm)."""
    with torch.no_grad():
        cos = [(tm.outputs(b) * r).sum(-1) for b, r in zip(batches, ref, strict=True)]  # (B,)
    return float(torch.cat(cos).mean())


def _top(scores: torch.Tensor, k: int) -> tuple[int, ...]:
    return tuple(sorted(scores.argsort(descending=True)[:k].tolist()))


@dataclass
class Setup:
    full: TaskModel
    calib: list
    held: list
    ref: list  # full model's held-out embeddings
    structure: Structure
    pruned: TaskModel  # rescaled in place by the `rescaled` fixture
    before: float  # held-out agreement of the pruned model before rescale


@pytest.fixture(scope="module")
def setup(minilm_path, lee_corpus, polarity) -> Setup:
    """Keep the top half of heads and neurons in every layer (activation scores), via surgery."""
    full = _load(minilm_path)
    texts = [t for t, _ in polarity]
    calib = full.batches(lee_corpus[:16], 8) + full.batches(texts[0:64:2], 32)
    held = full.batches(lee_corpus[25:49], 8) + full.batches(texts[1:97:2], 24)
    with torch.no_grad():
        ref = [full.outputs(b) for b in held]
    s = importance.score("activation", full, adapter_for(full.model), calib)
    structure = Structure(tuple(LayerStructure(_top(s.heads[i], H // 2), _top(s.neurons[i], FF // 2))
                                for i in range(L)))
    pruned = _load(minilm_path)
    apply_structure(adapter_for(pruned.model), structure)
    return Setup(full, calib, held, ref, structure, pruned, _agreement(pruned, held, ref))


@pytest.fixture(scope="module")
def rescaled(setup) -> tuple[Rescale, float]:
    r = ls_rescale(setup.pruned, setup.full, setup.structure, setup.calib)
    return r, _agreement(setup.pruned, setup.held, setup.ref)


@pytest.mark.slow
def test_ls_rescale_improves_held_out_agreement(setup, rescaled):
    r, after = rescaled
    print(f"held-out agreement at 50% heads+neurons: {setup.before:.4f} -> {after:.4f}")
    assert after > setup.before + 0.02
    rows = r.errors["layers"]
    assert [row["layer"] for row in rows] == list(range(L))
    for row in rows:
        for kind in ("heads", "neurons"):
            assert row[f"{kind}_after"] <= row[f"{kind}_before"]
    assert sum(row["neurons_after"] < row["neurons_before"] - 1e-3 for row in rows) >= L // 2
    for scale, kept in ((r.head_scale, lambda ls: ls.heads), (r.neuron_scale, lambda ls: ls.neurons)):
        for i, ls in enumerate(setup.structure.layers):
            removed = sorted(set(range(scale.shape[1])) - set(kept(ls)))
            assert torch.all(scale[i, removed] == 0)
            assert torch.all(scale[i, list(kept(ls))].abs() <= 10)
    assert not torch.allclose(r.neuron_scale[r.neuron_scale != 0], torch.tensor(1.0))


@pytest.mark.slow
def test_scales_fit_surgery_and_masks(minilm_path, setup, rescaled):
    """The returned scales reproduce the rescaled model through surgery and through masks."""
    r, _ = rescaled
    batch = setup.held[0]
    with torch.no_grad():
        target = setup.pruned.outputs(batch)
        again = _load(minilm_path)
        apply_structure(adapter_for(again.model), setup.structure,
                        head_scale=r.head_scale, neuron_scale=r.neuron_scale)
        assert torch.allclose(again.outputs(batch), target, atol=1e-5)
        with unit_masks(adapter_for(setup.full.model), head_mask=r.head_scale,
                        neuron_mask=r.neuron_scale):
            masked = setup.full.outputs(batch)
    assert torch.allclose(masked, target, atol=1e-4)


@pytest.mark.slow
def test_ls_rescale_is_reentrant(setup, rescaled):
    _, after = rescaled
    pruned = TaskModel(setup.pruned.task, copy.deepcopy(setup.pruned.model), setup.pruned.processor,
                       max_length=64)
    r2 = ls_rescale(pruned, setup.full, setup.structure, setup.calib)
    kept_h, kept_n = r2.head_scale[r2.head_scale != 0], r2.neuron_scale[r2.neuron_scale != 0]
    assert (kept_h - 1).abs().max() < 0.05 and (kept_n - 1).abs().mean() < 0.01
    assert _agreement(pruned, setup.held, setup.ref) > after - 1e-3


@pytest.mark.slow
def test_ls_rescale_with_a_removed_layer(minilm_path, setup):
    """Pruned layer j maps to original layer kept_layers[j]; removing layer 2 shifts the rest.
    Without room to cache the full model's targets (cache_bytes=0) the result is the same."""
    layers = list(setup.structure.layers)
    layers[2] = None
    structure = Structure(tuple(layers))
    pruned, uncached = _load(minilm_path), _load(minilm_path)
    for tm in (pruned, uncached):
        apply_structure(adapter_for(tm.model), structure)
    before = _agreement(pruned, setup.held, setup.ref)
    r = ls_rescale(pruned, setup.full, structure, setup.calib)
    assert [row["layer"] for row in r.errors["layers"]] == [0, 1, 3, 4, 5]
    assert torch.all(r.head_scale[2] == 0) and torch.all(r.neuron_scale[2] == 0)
    after = _agreement(pruned, setup.held, setup.ref)
    print(f"held-out agreement, layer 2 removed too: {before:.4f} -> {after:.4f}")
    assert after > before + 0.02
    r0 = ls_rescale(uncached, setup.full, structure, setup.calib, cache_bytes=0)
    assert torch.allclose(r0.head_scale, r.head_scale, atol=1e-4)
    assert torch.allclose(r0.neuron_scale, r.neuron_scale, atol=1e-4)


@pytest.mark.slow
def test_distill_embeddings(setup, rescaled):
    _, after = rescaled
    pruned = TaskModel(setup.pruned.task, copy.deepcopy(setup.pruned.model), setup.pruned.processor,
                       max_length=64)
    flags = [p.requires_grad for p in pruned.model.parameters()]
    n = len(setup.calib)
    out = distill(pruned, setup.full, setup.calib, steps=2 * n, lr=1e-4)
    first, second = out["loss"][:n], out["loss"][n:]
    assert out["objective"] == "cosine" and len(out["loss"]) == 2 * n
    assert all(b < a for a, b in zip(first, second, strict=True))  # same batch, one epoch later
    distilled = _agreement(pruned, setup.held, setup.ref)
    print(f"held-out agreement after {2 * n} distillation steps: {after:.4f} -> {distilled:.4f}")
    assert distilled > after + 0.01
    assert [p.requires_grad for p in pruned.model.parameters()] == flags
    assert all(p.grad is None for p in pruned.model.parameters())


@pytest.mark.slow
def test_distill_classifier_kl(minilm_path, polarity):
    torch.manual_seed(0)
    full = _load(minilm_path, "sequence-classification")
    student = TaskModel(full.task, copy.deepcopy(full.model), full.processor, max_length=64)
    structure = Structure(tuple(LayerStructure(tuple(range(0, H, 2)), tuple(range(0, FF, 2)))
                                for _ in range(L)))
    apply_structure(adapter_for(student.model), structure)
    batches = full.batches([t for t, _ in polarity[:64]], 16)
    out = distill(student, full, batches, steps=8, lr=1e-4)
    assert out["objective"] == "kl"
    assert sum(out["loss"][4:]) < sum(out["loss"][:4])


def test_mismatched_structure_is_a_clear_error(minilm_path, lee_corpus):
    full = _load(minilm_path)
    pruned = _load(minilm_path)
    half = Structure(tuple(LayerStructure(tuple(range(6)), tuple(range(FF))) for _ in range(L)))
    with pytest.raises(ValueError, match="structure layer 0: keeps 6 heads"):
        ls_rescale(pruned, full, half, full.batches(lee_corpus[:2], 2))
    with pytest.raises(ValueError, match="at least one calibration batch"):
        ls_rescale(pruned, full, half, [])
