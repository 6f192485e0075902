"""`tierserve run SPEC`: the whole product on one machine, no cluster.

local Ray -> pruning job (a finished artifact is reused) -> gates -> both tiers and the router on
local Serve -> the evaluation set replayed through the router over HTTP -> a table -> keep serving
(Ctrl-C stops; `--once` exits after the table).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

__all__ = ["run"]

EXIT_PASSED, EXIT_ERROR, EXIT_GATES_FAILED = 0, 1, 2


def _absolute_model_uri(doc: dict, base: Path) -> dict:
    """The spec as the Serve app gets it: a relative model path made absolute."""
    from tierserve.pruning.storage import scheme_of

    uri = doc["model"]["uri"]
    if scheme_of(uri) in ("", "file") and not Path(uri.removeprefix("file://")).is_absolute():
        doc["model"]["uri"] = str((base / uri.removeprefix("file://")).resolve())
    return doc


def _ensure_calibration(report: dict, spec, base: Path, out: Path) -> dict:
    """A report from before cascade calibration existed gets it now (validation set, else
    calibration set), and is rewritten."""
    if report.get("calibration"):
        return report
    import json

    from tierserve.pruning.artifact import load_pruned
    from tierserve.pruning.calibration import calibration_report
    from tierserve.pruning.inputs import load_inputs
    from tierserve.pruning.tasks import load_task_model

    print("report has no cascade calibration; calibrating now ...", file=sys.stderr)
    inputs = load_inputs(spec, base)
    m = spec.model
    full = load_task_model(inputs.model_path, m.task, max_length=m.max_length)
    pruned = load_pruned(report["artifact"]["path"] + "/model", m.task, max_length=m.max_length)
    report["calibration"] = calibration_report(spec, full, pruned, inputs)
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=str))
    return report


def _start_ray_serve(port: int) -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})


async def _replay(url: str, requests, concurrency: int):
    import httpx

    from .replay import Outcome

    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=120.0) as client:
        async def one(r):
            async with sem:
                t0 = time.perf_counter()
                resp = await client.post(f"{url}/v1/{r.endpoint}", json=r.body)
                if resp.status_code != 200:
                    raise RuntimeError(f"/v1/{r.endpoint} answered {resp.status_code}: "
                                       f"{resp.text[:500]}")
                return resp.json(), time.perf_counter() - t0
        done = await asyncio.gather(*(one(r) for r in requests))
    return [Outcome(body["tier"], body["reason"], secs, _answer(body), -1) for body, secs in done]


def _answer(body: dict) -> int | str:
    """Top-1 document, predicted class, or normalised generated answer."""
    import numpy as np

    from tierserve.pruning.lm import normalize_answer

    if "ranking" in body:
        return body["ranking"][0]
    if "text" in body:
        return normalize_answer(body["text"])
    return int(np.argmax(body["probabilities"][0]))


def _references(name: str, requests) -> list[int]:
    """What full alone answers, asked directly (not through the router, so not counted)."""
    import numpy as np
    from ray import serve

    from tierserve.pruning.lm import normalize_answer

    full = serve.get_deployment_handle("full", app_name=name)
    calls = []
    for r in requests:
        if r.endpoint == "generate":
            req = {"op": "generate", "texts": [r.body["prompt"]],
                   "max_new_tokens": r.body["max_new_tokens"]}
        else:
            texts = ([r.body["query"], *r.body["documents"]] if r.endpoint == "rerank"
                     else r.body["texts"])
            req = {"op": r.endpoint, "texts": texts}
        calls.append((r.endpoint, full.infer.remote(req)))
    out = []
    for op, call in calls:
        reply = call.result()
        if op == "generate":
            out.append(normalize_answer(reply["text"]))
        else:
            o = reply["outputs"]
            out.append(int(np.argmax(o if op == "rerank" else o[0])))
    return out


def run(spec_path: str, out: str | None = None, *, once: bool = False, requests: int = 200,
        metrics_port: int = 9464, port: int = 8000, concurrency: int = 4) -> int:
    from dataclasses import replace

    import yaml

    from tierserve.pruning.job import run_job
    from tierserve.pruning.report import summary_table
    from tierserve.pruning.spec import load_spec

    from .replay import replay_requests, summarize
    from .table import run_table

    spec, name = load_spec(spec_path)
    base = Path(spec_path).resolve().parent
    out_dir = Path(out or f"runs/{name}").resolve()
    print(f"[1/5] pruning job -> {out_dir} (a finished artifact is reused)")
    report, code = run_job(spec, out_dir, name=name, base_dir=base)
    print(summary_table(report))
    if code != EXIT_PASSED:
        print("[2/5] gates failed: the pruned tier is not deployable; nothing is served")
        return code
    print("[2/5] gates passed")
    report = _ensure_calibration(report, spec, base, out_dir)
    print(f"[3/5] local Ray + Serve: full, pruned, router on http://127.0.0.1:{port}/")
    _start_ray_serve(port)
    from ray import serve

    from .app import build_app

    doc = yaml.safe_load(Path(spec_path).read_text())
    spec_doc = _absolute_model_uri(doc.get("spec", doc), base)
    app = build_app({"name": name, "spec": spec_doc, "report": str(out_dir),
                     "metricsPort": metrics_port})
    serve.run(app, name=name, route_prefix="/")
    from tierserve.pruning.inputs import load_inputs

    evaluation = load_inputs(spec, base).evaluation
    reqs = replay_requests(evaluation, requests or None)
    print(f"[4/5] replaying {len(reqs)} evaluation requests through the router "
          f"({reqs[0].endpoint}, {concurrency} concurrent)")
    outcomes = asyncio.run(_replay(f"http://127.0.0.1:{port}", reqs, concurrency))
    refs = _references(name, reqs)
    outcomes = [replace(o, reference=r) for o, r in zip(outcomes, refs, strict=True)]
    time.sleep(1.0)  # one metrics push
    totals = _stats_totals(name)
    summary = summarize(outcomes, [r.label for r in reqs])
    print("[5/5] results")
    print(run_table(name, spec, report, summary, totals))
    print(f"metrics: http://127.0.0.1:{metrics_port}/metrics  (also http://127.0.0.1:{port}/metrics)")
    if not once:
        print("serving; Ctrl-C stops")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    serve.shutdown()
    return EXIT_PASSED


def _stats_totals(name: str) -> dict:
    import ray

    actor = ray.get_actor(f"tierserve-stats-{name}", namespace="tierserve")
    return ray.get(actor.totals.remote())
