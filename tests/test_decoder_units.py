"""Decoder-LM pruning on small random-init models (no weights needed): GQA planning and surgery
on a tiny Llama, GPT-2 conversion and surgery, per-token costs, and lower-is-better gates.

GPT-2 has no weights offline, so its adapter is tested on a random-init `GPT2Config`; the same
goes for the tiny Llama here (the real SmolLM2 runs in test_decoder_smollm2.py).
"""

from __future__ import annotations

import copy

import pytest
import torch

from tierserve.pruning.adapters import adapter_for
from tierserve.pruning.adapters.llama import kv_groups
from tierserve.pruning.cost import ModelShape, encoder_flops, encoder_params, whole_params
from tierserve.pruning.gates import Measured, check_gates
from tierserve.pruning.importance import magnitude
from tierserve.pruning.plan import plan, plan_gqa, plan_report
from tierserve.pruning.spec import GatesSpec, SpecError, parse_spec
from tierserve.pruning.structure import Budget, Scores
from tierserve.pruning.surgery import apply_structure


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=256, hidden_size=96, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=6, num_key_value_heads=2, head_dim=16,
                      max_position_embeddings=128, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def tiny_gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=256, n_embd=64, n_layer=3, n_head=4, n_positions=64)
    return GPT2LMHeadModel(cfg).eval()


def random_scores(adapter, seed: int = 0) -> Scores:
    g = torch.Generator().manual_seed(seed)
    L = adapter.num_layers
    return Scores(heads=torch.rand(L, adapter.num_heads(0), generator=g),
                  neurons=torch.rand(L, adapter.intermediate_size(0), generator=g),
                  criterion="random", layers=torch.rand(L, generator=g))


def ids(n: int = 2, t: int = 12) -> torch.Tensor:
    return torch.randint(3, 256, (n, t), generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def cached_equals_uncached(model) -> None:
    """Decoding token by token with the KV cache gives the same logits as one full forward
    (RoPE positions and cache slots line up after surgery)."""
    x = ids(1, 10)
    full = model(input_ids=x, use_cache=False).logits  # (1, T, V)
    out = model(input_ids=x[:, :6], use_cache=True)
    steps = [out.logits]
    for t in range(6, 10):
        out = model(input_ids=x[:, t:t + 1], past_key_values=out.past_key_values, use_cache=True)
        steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-4, rtol=1e-4)


def test_gqa_plan_keeps_whole_kv_groups():
    model = tiny_llama()
    adapter = adapter_for(model)
    shape = ModelShape.from_adapter(adapter)
    assert shape.head_group == 3 and shape.per_token
    assert whole_params(shape) == sum(p.numel() for p in model.parameters())
    budget = Budget(kind="flops", target=0.3, seq_len=64, multiple=8, tolerance=0.03)
    structure = plan(random_scores(adapter), budget, shape)
    for layer in structure.layers:
        if layer is None:
            continue
        groups, per = kv_groups(list(layer.heads), 3)
        assert per == 3 and len(layer.heads) == 3 * len(groups)
    removed = plan_report(structure, shape, 64)["encoder"]["flops_removed_fraction"]
    assert abs(removed - 0.3) <= 0.03


def test_gqa_in_group_query_pruning_is_consistent():
    adapter = adapter_for(tiny_llama())
    shape = ModelShape.from_adapter(adapter)
    budget = Budget(kind="params", target=0.5, multiple=8, tolerance=0.05)
    structure = plan_gqa(random_scores(adapter), budget, shape, queries_per_group=2)
    for layer in structure.layers:
        if layer is not None:
            assert kv_groups(list(layer.heads), 3)[1] == 2
    removed = 1 - encoder_params(shape, structure) / encoder_params(shape)
    assert abs(removed - 0.5) <= 0.05 + 0.02  # the kv share is amortised per query head


def test_llama_surgery_shapes_cache_and_generate():
    model = tiny_llama()
    adapter = adapter_for(model)
    adapter.keep_heads(0, [3, 4, 5])  # one whole KV group
    adapter.keep_heads(1, [0, 2, 3, 5])  # two query heads in each of both groups
    adapter.keep_neurons(2, list(range(0, 128, 2)))
    adapter.keep_layers([0, 1, 3])
    adapter.write_config()
    att0, att1 = model.model.layers[0].self_attn, model.model.layers[1].self_attn
    assert tuple(att0.q_proj.weight.shape) == (3 * 16, 96)
    assert tuple(att0.k_proj.weight.shape) == tuple(att0.v_proj.weight.shape) == (16, 96)
    assert att0.num_key_value_groups == 3 and att1.num_key_value_groups == 2
    assert tuple(att1.k_proj.weight.shape) == (32, 96)
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2]
    assert model.config.num_hidden_layers == 3 and model.config.tierserve_kv_heads == [1, 2, 2]
    cached_equals_uncached(model)
    out = model.generate(input_ids=ids(2, 5), max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 11)


def test_llama_rejects_inconsistent_groups():
    adapter = adapter_for(tiny_llama())
    with pytest.raises(ValueError, match="same number of query heads"):
        adapter.keep_heads(0, [0, 1, 3])


def test_llama_keep_everything_is_identity():
    model = tiny_llama()
    before = model(input_ids=ids()).logits
    adapter = adapter_for(model)
    shape = ModelShape.from_adapter(adapter)
    apply_structure(adapter, shape.full_structure())
    torch.testing.assert_close(model(input_ids=ids()).logits, before)


def test_gpt2_conversion_is_exact_and_prunable():
    model = tiny_gpt2()
    with torch.no_grad():
        before = model(input_ids=ids()).logits
    adapter = adapter_for(model)
    assert adapter.family == "gpt2" and adapter.causal
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids()).logits, before, atol=1e-5, rtol=1e-5)
    shape = ModelShape.from_adapter(adapter)
    assert whole_params(shape) == sum(p.numel() for p in model.parameters())
    structure = plan(magnitude.score(None, adapter), Budget(
        kind="flops", target=0.4, seq_len=32, multiple=16, tolerance=0.05), shape)
    pruned = copy.deepcopy(model)
    apply_structure(adapter_for(pruned), structure)
    p_shape = ModelShape.from_adapter(adapter_for(pruned))
    assert encoder_flops(p_shape, None, 32) == encoder_flops(shape, structure, 32)
    cached_equals_uncached(pruned)
    out = pruned.generate(input_ids=ids(2, 5), max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 9)


def test_gpt2_layer_removal_renumbers_cache_slots():
    model = tiny_gpt2()
    adapter = adapter_for(model)
    adapter.keep_layers([0, 2])
    adapter.write_config()
    assert [b.attn.layer_idx for b in model.transformer.h] == [0, 1]
    cached_equals_uncached(model)


def test_per_token_flops_count_decode_with_kv_cache():
    shape = ModelShape.from_adapter(adapter_for(tiny_llama()))
    d, dh, g = 96, 16, 3
    per_head = 2 * d * dh * (2 + 2 / g) + 4 * 64 * dh  # one token over a 64-token cache
    per_layer = 6 * per_head + 128 * 2 * d * 3
    assert encoder_flops(shape, None, 64) == pytest.approx(4 * per_layer)
    assert shape.head_flops_per_seq == 2 * 256 * d  # the (tied) LM head, per token


def test_perplexity_gate_is_lower_is_better():
    gates = GatesSpec.model_validate({"quality": [
        {"metric": "perplexity", "relative": 1.2}, {"metric": "perplexity", "max": 50},
        {"metric": "next_token_agreement", "min": 0.8}], "maxLatencyRatio": 0.9})
    m = Measured({"perplexity": 40.0, "next_token_agreement": 1.0},
                 {"perplexity": 47.0, "next_token_agreement": 0.85}, {}, {},
                 latency_ratio=0.8, latency_phases={"prefill": 0.7, "decode": 0.95})
    results = {g.name: g for g in check_gates(gates, m)}
    assert results["perplexity <= 1.2 x full"].passed  # 47 <= 48
    assert results["perplexity <= 1.2 x full"].comparison == "<="
    assert results["perplexity <= 50.0"].passed
    assert results["latency_ratio:prefill <= 0.9"].passed
    assert not results["latency_ratio:decode <= 0.9"].passed
    strict = GatesSpec.model_validate({"quality": [{"metric": "perplexity", "relative": 1.1}]})
    assert not check_gates(strict, m)[0].passed  # 47 > 44


def test_spec_rejects_min_for_perplexity():
    doc = {"model": {"uri": "x", "task": "text-generation"},
           "data": {"calibration": {"uri": "d"}, "evaluation": {"uri": "d"}},
           "gates": {"quality": [{"metric": "perplexity", "min": 0.5}]}}
    with pytest.raises(SpecError, match="use `max`"):
        parse_spec(doc)


def _lm_task_model(model):
    from tierserve.pruning.tasks import Task, TaskModel

    return TaskModel(task=Task.text_generation, model=model, processor=None)


def _lm_batches() -> list[dict[str, torch.Tensor]]:
    x = ids(4, 12)
    mask = torch.ones_like(x)
    mask[1, 9:] = 0  # one right-padded row
    return [{"input_ids": x, "attention_mask": mask}, {"input_ids": ids(4, 12) + 1,
                                                       "attention_mask": torch.ones_like(x)}]


@pytest.mark.parametrize("criterion", ["fisher", "taylor", "activation"])
def test_criteria_score_lm_heads_neurons_and_layers(criterion):
    from tierserve.pruning import importance

    tm = _lm_task_model(tiny_llama())
    out = tm.outputs(_lm_batches()[0])
    assert out.shape == (4 * 12 - 3, 256)  # one row per real position
    scores = importance.score(criterion, tm, adapter_for(tm.model), _lm_batches())
    assert scores.heads.shape == (4, 6) and scores.neurons.shape == (4, 128)
    assert scores.layers.shape == (4,) and bool((scores.layers > 0).all())  # Block Influence
    assert float(scores.heads.sum()) > 0 and float(scores.neurons.sum()) > 0


def test_rescale_and_distill_recover_a_pruned_lm():
    from tierserve.pruning.engine import PruneConfig, prune_with_scores
    from tierserve.pruning.recovery import distill

    full = _lm_task_model(tiny_llama())
    adapter = adapter_for(full.model)
    config = PruneConfig(criterion="magnitude", rescale=True, budget=Budget(
        kind="flops", target=0.4, seq_len=12, multiple=16, tolerance=0.05))
    result = prune_with_scores(full, random_scores(adapter), _lm_batches(), config)
    layers = result.report["rescale"]["layers"]
    assert all(r["neurons_after"] <= r["neurons_before"] for r in layers)
    stats = distill(result.model, full, _lm_batches(), steps=6, lr=1e-3)
    assert stats["objective"] == "kl" and stats["loss"][-1] < stats["loss"][0]


def test_llama_surgery_equals_masking_the_removed_units():
    """Removing KV groups, neurons and a layer gives exactly the masked full model's logits."""
    from tierserve.pruning.masks import unit_masks
    from tierserve.pruning.structure import LayerStructure, Structure

    model, x = tiny_llama(), ids(2, 10)
    structure = Structure((LayerStructure((3, 4, 5), tuple(range(0, 128, 2))),
                           LayerStructure(tuple(range(6)), tuple(range(64))), None,
                           LayerStructure((0, 1, 2), tuple(range(128)))))
    heads, neurons, layers = torch.zeros(4, 6), torch.zeros(4, 128), torch.ones(4)
    for i, ls in enumerate(structure.layers):
        if ls is None:
            layers[i] = 0
            continue
        heads[i, list(ls.heads)] = 1
        neurons[i, list(ls.neurons)] = 1
    with torch.no_grad(), unit_masks(adapter_for(model), head_mask=heads, neuron_mask=neurons,
                                     layer_mask=layers):
        reference = model(input_ids=x).logits
    pruned = copy.deepcopy(model)
    apply_structure(adapter_for(pruned), structure)
    with torch.no_grad():
        torch.testing.assert_close(pruned(input_ids=x).logits, reference, atol=1e-5, rtol=1e-5)


def test_task_accuracy_rejects_hedged_answers():
    from tierserve.pruning.lm import answer_correct, task_metrics

    choices = ["games", "science"]
    assert answer_correct("This package is about science.", "science", choices)
    assert answer_correct("It is a game.", "games", choices)  # singular/plural
    assert not answer_correct("This is a game or science.", "science", choices)  # a hedge
    assert not answer_correct("Scientific software", "science", choices)  # not the word
    m = task_metrics(["Science", "a game or science", "Games!"], ["science", "science", "games"])
    assert m == {"exact_match": 2 / 3, "accuracy": 2 / 3}


def test_generated_answers_agree_on_the_choice_they_name():
    from tierserve.pruning.lm import answer_choice, answers_agree, task_choices

    choices = task_choices(["Science", "games", "science."])
    assert choices == ["games", "science"]
    assert task_choices([f"answer {i}" for i in range(50)]) == []  # free-form: no choices
    assert answer_choice("This package is about science.", choices) == "science"
    assert answer_choice("This is a mix of games and science.", choices) is None  # a hedge
    assert answers_agree("This package is about science.", "Science", choices)
    assert not answers_agree("It is a game.", "Science", choices)
    assert not answers_agree("A mix of games and science.", "Science", choices)
    assert answers_agree("Paris.", "paris", [])  # no choices: the normalised first lines
    assert not answers_agree("Paris, France", "Paris", [])
