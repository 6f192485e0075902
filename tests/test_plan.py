"""plan() on the real all-MiniLM-L6-v2 shape: budgets land, multiples hold, allocation follows scores."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import AutoConfig, AutoModel

from tierserve.pruning.adapters import adapter_for
from tierserve.pruning.cost import ModelShape, encoder_flops, encoder_params
from tierserve.pruning.plan import PlanError, plan, plan_report
from tierserve.pruning.structure import Budget, Scores

L, H, FF = 6, 12, 1536


@pytest.fixture(scope="module")
def shape(minilm_path) -> ModelShape:
    model = AutoModel.from_config(AutoConfig.from_pretrained(minilm_path))  # shapes only
    return ModelShape.from_adapter(adapter_for(model))


def tilted_scores(seed: int = 0, same_scale: bool = False) -> Scores:
    """Heads matter more in deep layers, neurons more in shallow ones: uneven on purpose."""
    g = torch.Generator().manual_seed(seed)
    head_tilt = torch.linspace(0.2, 2.0, L)[:, None]  # (L, 1)
    ffn_tilt = torch.linspace(2.0, 0.2, L)[:, None]
    return Scores(heads=torch.rand(L, H, generator=g) * head_tilt,
                  neurons=torch.rand(L, FF, generator=g) * ffn_tilt, criterion="synthetic",
                  meta={"same_scale": same_scale})


def _removed(structure, shape, budget) -> float:
    if budget.kind == "flops":
        return 1 - (encoder_flops(shape, structure, budget.seq_len)
                    / encoder_flops(shape, None, budget.seq_len))
    return 1 - encoder_params(shape, structure) / encoder_params(shape)


@pytest.mark.parametrize("kind", ["flops", "params"])
@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
def test_budget_lands_within_tolerance_with_multiples(shape, kind, target):
    budget = Budget(kind=kind, target=target)
    st = plan(tilted_scores(), budget, shape)
    assert abs(_removed(st, shape, budget) - target) <= budget.tolerance
    assert len(st.layers) == L
    for layer in st.layers:
        assert layer is not None  # layers are not in budget.structures
        assert len(layer.heads) >= 1 and len(layer.neurons) >= 8
        assert len(layer.neurons) % budget.multiple == 0
        assert list(layer.heads) == sorted(set(layer.heads))
        assert list(layer.neurons) == sorted(set(layer.neurons))
    report = plan_report(st, shape, budget.seq_len)
    assert abs(report["encoder"][f"{kind}_removed_fraction"] - _removed(st, shape, budget)) < 1e-12


def test_allocation_follows_uneven_scores(shape):
    st = plan(tilted_scores(), Budget(target=0.5), shape)
    heads = [len(s.heads) for s in st.layers]
    neurons = [len(s.neurons) for s in st.layers]
    assert len(set(heads)) > 2 and len(set(neurons)) > 2
    assert heads[-1] > heads[0] and neurons[0] > neurons[-1]
    # within a layer the best-scored units survive
    scores = tilted_scores()
    kept = set(st.layers[0].neurons)
    dropped = [n for n in range(FF) if n not in kept]
    assert scores.neurons[0, list(kept)].min() >= scores.neurons[0, dropped].max()


def test_plan_is_pure_and_deterministic(shape):
    scores = tilted_scores(seed=4)
    before = (scores.heads.clone(), scores.neurons.clone())
    budget = Budget(target=0.4, structures=("heads", "neurons", "layers"))
    assert plan(scores, budget, shape) == plan(scores, budget, shape)
    assert torch.equal(scores.heads, before[0]) and torch.equal(scores.neurons, before[1])


def test_per_type_normalisation_ignores_score_scale(shape):
    s = tilted_scores(seed=2)
    scaled = dataclasses.replace(s, heads=s.heads * 1e6, neurons=s.neurons * 1e-3)
    budget = Budget(target=0.5)
    assert plan(scaled, budget, shape) == plan(s, budget, shape)
    raw = dataclasses.replace(scaled, meta={"same_scale": True})  # raw: huge head scores win
    st = plan(raw, budget, shape)
    assert all(len(layer.heads) == H for layer in st.layers)


def test_multiple_is_respected(shape):
    st = plan(tilted_scores(), Budget(target=0.45, multiple=64), shape)
    assert all(len(layer.neurons) % 64 == 0 for layer in st.layers)


def test_depth_only_removes_the_least_important_layers(shape):
    scores = dataclasses.replace(tilted_scores(),
                                 layers=torch.tensor([5.0, 1.0, 4.0, 0.5, 3.0, 6.0]))
    budget = Budget(target=1 / 3, structures=("layers",))
    st = plan(scores, budget, shape)
    assert [i for i, s in enumerate(st.layers) if s is None] == [1, 3]
    assert all(len(s.heads) == H and len(s.neurons) == FF for s in st.layers if s is not None)
    with pytest.raises(PlanError, match=r"1: 0\.167, 2: 0\.333"):
        plan(scores, Budget(target=0.25, structures=("layers",)), shape)
    nearly_all = plan(scores, Budget(target=0.9, tolerance=0.1, structures=("layers",)), shape)
    assert nearly_all.kept_layers == [5]  # never every layer


def test_layers_compete_with_units_when_scored(shape):
    scores = dataclasses.replace(tilted_scores(),
                                 layers=torch.tensor([1.0, 1.0, 0.01, 1.0, 1.0, 1.0]))
    budget = Budget(target=0.4, structures=("heads", "neurons", "layers"))
    st = plan(scores, budget, shape)
    assert st.layers[2] is None and sum(s is None for s in st.layers) == 1
    assert abs(_removed(st, shape, budget) - 0.4) <= budget.tolerance
    unscored = plan(tilted_scores(), budget, shape)  # summed unit scores: units are cheaper
    assert all(s is not None for s in unscored.layers)


def test_bad_inputs_are_named(shape):
    s = tilted_scores()
    with pytest.raises(PlanError, match="latency"):
        plan(s, Budget(kind="latency", target=0.5), shape)
    with pytest.raises(PlanError, match="scores.heads has shape"):
        plan(dataclasses.replace(s, heads=s.heads[:4]), Budget(), shape)
    with pytest.raises(PlanError, match="NaN"):
        plan(dataclasses.replace(s, neurons=s.neurons * float("nan")), Budget(), shape)
    with pytest.raises(PlanError, match="target"):
        plan(s, Budget(target=1.0), shape)
    with pytest.raises(PlanError, match="structures"):
        plan(s, Budget(structures=("blocks",)), shape)
    with pytest.raises(PlanError, match="heads"):  # heads alone are ~34% of FLOPs at T=128
        plan(s, Budget(target=0.6, structures=("heads",)), shape)


def test_report_counts_whole_model_separately(shape):
    st = plan(tilted_scores(), Budget(target=0.5, structures=("heads", "neurons", "layers")),
              shape)
    r = plan_report(st, shape, 128)
    assert r["whole"]["params_before"] == r["encoder"]["params_before"] + shape.embedding_params \
        + shape.head_params
    assert r["whole"]["params_removed_fraction"] < r["encoder"]["params_removed_fraction"]
    assert r["heads_kept"] == sum(r["heads_per_layer"])
    assert len(r["neurons_per_layer"]) == L
