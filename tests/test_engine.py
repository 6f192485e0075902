"""The engine on real MiniLM weights and real text: budgets, rounds, latency targets, no side effects."""

import pytest
import torch

from tierserve.pruning.engine import PruneConfig, prune, prune_with_scores
from tierserve.pruning.evaluate import encode
from tierserve.pruning.structure import Budget, Scores

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def texts(lee_corpus):
    return [d[:400] for d in lee_corpus]


def _cos(a, b):
    return float(torch.nn.functional.cosine_similarity(a, b).mean())


def test_full_model_is_never_modified(minilm, texts):
    before = {k: v.clone() for k, v in minilm.model.state_dict().items()}
    prune(minilm, texts[:16], PruneConfig(criterion="fisher", budget=Budget(target=0.4)))
    after = minilm.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_iterative_rounds_meet_the_budget_and_keep_quality(minilm, texts):
    calib, held_out = texts[:24], texts[24:]
    result = prune(minilm, calib, PruneConfig(criterion="activation", rounds=2, rescale=False,
                                              budget=Budget(target=0.4)))
    plan = result.report["plan"]
    assert abs(plan["encoder"]["flops_removed_fraction"] - 0.4) <= 0.01
    assert {"score_round_1", "score_round_2"} <= set(result.report["seconds"])
    # physically smaller: parameter count matches the plan
    assert sum(p.numel() for p in result.model.model.parameters()) == plan["whole"]["params_after"]
    # Better than pruning the same amount at random: importance, not luck, picks the units.
    g = torch.Generator().manual_seed(0)
    rand = Scores(heads=torch.rand(6, 12, generator=g), neurons=torch.rand(6, 1536, generator=g),
                  criterion="random")
    baseline = prune_with_scores(minilm, rand, minilm.batches(calib), PruneConfig(
        rescale=False, budget=Budget(target=0.4)))
    full = encode(minilm, held_out)
    assert _cos(full, encode(result.model, held_out)) > _cos(full, encode(baseline.model, held_out)) + 0.03


def test_layers_structure_removes_whole_layers(minilm, texts):
    result = prune(minilm, texts[:16], PruneConfig(
        criterion="magnitude", rescale=False,
        budget=Budget(target=1 / 3, structures=("layers",), tolerance=0.01)))
    assert result.report["plan"]["layers_kept"] == result.structure.kept_layers
    assert len(result.structure.kept_layers) == 4
    assert result.model.model.config.num_hidden_layers == 4


def test_latency_budget_is_converted_on_this_hardware(minilm, texts):
    budget = Budget(kind="latency", target=0.6, batch=4, seq_len=64)
    result = prune(minilm, texts[:16], PruneConfig(criterion="magnitude", rescale=False,
                                                   budget=budget))
    lat = result.report["latency_budget"]
    assert 0.0 < lat["flops_target"] <= 0.9 and len(lat["trace"]) == 6
    achieved = result.report["plan"]["encoder"]["flops_removed_fraction"]
    assert abs(achieved - lat["flops_target"]) <= 0.01
    # every bisection point at least as aggressive as the chosen one measured as fast enough
    assert all(p["flops_removed"] >= lat["flops_target"] or p["latency_ratio"] > 0.6
               for p in lat["trace"])


def _classifier(minilm_path, num_labels, task):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tierserve.pruning.tasks import TaskModel

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=num_labels)
    return TaskModel(task=task, model=model.eval(), processor=AutoTokenizer.from_pretrained(minilm_path),
                     cross_encoder=task.value == "rerank")


@pytest.mark.parametrize("target", ["labels", "self"])
def test_sequence_classifier_prunes_with_or_without_labels(minilm_path, polarity, tmp_path, target):
    from tierserve.pruning.artifact import load_pruned, save_pruned
    from tierserve.pruning.tasks import Task

    tm = _classifier(minilm_path, 2, Task.sequence_classification)
    texts, labels = [t for t, _ in polarity[:32]], [y for _, y in polarity[:32]]
    result = prune(tm, texts, PruneConfig(criterion="fisher", target=target, batch_size=16,
                                          budget=Budget(target=0.5)), labels=labels)
    assert abs(result.report["plan"]["encoder"]["flops_removed_fraction"] - 0.5) <= 0.01
    save_pruned(result.model, tmp_path, structure=result.structure, source=str(minilm_path),
                criterion="fisher", budget=result.config.budget)
    again = load_pruned(tmp_path, Task.sequence_classification)
    held_out = [t for t, _ in polarity[32:48]]
    assert torch.equal(encode(result.model, held_out), encode(again, held_out))


def test_cross_encoder_reranker_prunes_label_free(minilm_path, debian_retrieval):
    from tierserve.pruning.tasks import Task

    tm = _classifier(minilm_path, 1, Task.rerank)
    cal = debian_retrieval["calibration"]
    pairs = [(q, d) for q, d in zip(cal.queries[:16], cal.corpus[:16], strict=True)]
    result = prune(tm, pairs, PruneConfig(criterion="taylor", batch_size=8, budget=Budget(target=0.3)))
    scores = encode(result.model, pairs)
    assert scores.shape == (16, 1) and bool(torch.isfinite(scores).all())
    assert abs(result.report["plan"]["encoder"]["flops_removed_fraction"] - 0.3) <= 0.01
