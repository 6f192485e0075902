"""unit_masks on the real all-MiniLM-L6-v2 with real Lee news text."""

from __future__ import annotations

import copy

import pytest
import torch

from tierserve.pruning.adapters import adapter_for
from tierserve.pruning.masks import unit_masks
from tierserve.pruning.tasks import TaskModel, load_task_model

L, H, DH, FF = 6, 12, 32, 1536


@pytest.fixture(scope="module")
def tm(minilm_path) -> TaskModel:
    return load_task_model(minilm_path, "embedding", max_length=64)


@pytest.fixture(scope="module")
def batch(tm, lee_corpus) -> dict[str, torch.Tensor]:
    return tm.batch(lee_corpus[:6])


def _hidden(tm: TaskModel, batch) -> torch.Tensor:
    with torch.no_grad():
        return tm.model(**batch).last_hidden_state  # (B, T, d)


def _hook_count(tm: TaskModel) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in tm.model.modules())


def test_all_ones_masks_change_nothing_exactly(tm, batch):
    ad = adapter_for(tm.model)
    ref = _hidden(tm, batch)
    with unit_masks(ad, head_mask=torch.ones(L, H), neuron_mask=torch.ones(L, FF),
                    layer_mask=torch.ones(L)):
        out = _hidden(tm, batch)
    assert torch.equal(out, ref)
    assert _hook_count(tm) == 0


def test_zero_head_mask_equals_zeroed_o_columns(tm, batch):
    layer, head = 2, 5
    mask = torch.ones(L, H)
    mask[layer, head] = 0
    with unit_masks(adapter_for(tm.model), head_mask=mask):
        masked = _hidden(tm, batch)
    edited = copy.deepcopy(tm.model)
    with torch.no_grad():
        adapter_for(edited).handles(layer).o.weight[:, head * DH:(head + 1) * DH] = 0
    zeroed = _hidden(TaskModel(tm.task, edited, tm.processor), batch)
    assert torch.allclose(masked, zeroed, atol=1e-5)
    assert (masked - _hidden(tm, batch)).abs().max() > 1e-3  # the head mattered


def test_zero_neuron_mask_equals_zeroed_ffn_out_columns(tm, batch):
    layer, neurons = 4, [0, 17, 900]
    mask = [None] * L
    mask[layer] = torch.ones(FF)
    mask[layer][neurons] = 0
    with unit_masks(adapter_for(tm.model), neuron_mask=mask):
        masked = _hidden(tm, batch)
    edited = copy.deepcopy(tm.model)
    with torch.no_grad():
        adapter_for(edited).handles(layer).ffn_out.weight[:, neurons] = 0
    zeroed = _hidden(TaskModel(tm.task, edited, tm.processor), batch)
    assert torch.allclose(masked, zeroed, atol=1e-5)
    assert (masked - _hidden(tm, batch)).abs().max() > 1e-4


def test_zero_layer_mask_equals_removed_layer(tm, batch):
    mask = torch.ones(L)
    mask[3] = 0
    with unit_masks(adapter_for(tm.model), layer_mask=mask):
        skipped = _hidden(tm, batch)
    edited = copy.deepcopy(tm.model)
    adapter_for(edited).keep_layers([0, 1, 2, 4, 5])
    removed = _hidden(TaskModel(tm.task, edited, tm.processor), batch)
    assert torch.allclose(skipped, removed, atol=1e-5)


def test_per_example_masks_and_gradients(tm, batch):
    """(B, H) masks act per example and give each example's own d loss / d mask."""
    ad = adapter_for(tm.model)
    rows = batch["input_ids"].shape[0]
    per_ex = [torch.ones(rows, H, requires_grad=True) for _ in range(L)]
    with unit_masks(ad, head_mask=per_ex):
        hidden = tm.model(**batch).last_hidden_state  # (B, T, d)
    (g,) = torch.autograd.grad(hidden[0].pow(2).sum(), [per_ex[1]])  # example 0 only
    assert g[0].abs().sum() > 0 and torch.all(g[1:] == 0)
    shared = torch.ones(L, H)
    shared[1, 3] = 0
    batched = torch.ones(L, rows, H)
    batched[1, :, 3] = 0
    with unit_masks(ad, head_mask=shared):
        a = _hidden(tm, batch)
    with unit_masks(ad, head_mask=batched):
        b = _hidden(tm, batch)
    assert torch.equal(a, b)


def test_hooks_removed_on_exception(tm, batch):
    ref = _hidden(tm, batch)
    with pytest.raises(RuntimeError, match="boom"), unit_masks(adapter_for(tm.model),
                                                               head_mask=torch.zeros(L, H)):
        raise RuntimeError("boom")
    assert _hook_count(tm) == 0
    assert torch.equal(_hidden(tm, batch), ref)


def test_bad_mask_shape_is_one_clear_error(tm):
    ad = adapter_for(tm.model)
    with pytest.raises(ValueError, match=r"neuron_mask\[0\]: last dim 100"), \
            unit_masks(ad, neuron_mask=torch.ones(L, 100)):
        pass
    with pytest.raises(ValueError, match="head_mask: 5 layers"), \
            unit_masks(ad, head_mask=torch.ones(5, H)):
        pass
    assert _hook_count(tm) == 0
