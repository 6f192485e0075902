"""`tierserve run SPEC`: the whole product on one machine, no cluster.

local Ray -> pruning job (a finished artifact is reused) -> gates -> both tiers and the router on
local Serve -> the evaluation set replayed through the router over HTTP -> a table -> keep serving
(Ctrl-C stops; `--once` exits after the table).

The terminal shows tierserve's steps only: one progress bar per job phase (`console.JobBars`);
Ray's and Serve's logs go to `OUT/ray.log` (this process) and `OUT/serve-logs/` (the Serve
controller, proxy and replicas; Ray's own core logs stay in its session directory,
/tmp/ray/session_latest/logs). After the table it says what the cost figures assume (the spec's prices) and how busy
the machine was. Ctrl-C or SIGTERM at any point stops Serve and the local Ray it started and
prints where the artifacts are.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from tierserve.console import JobBars, Load, ray_logs_to_file

__all__ = ["run"]

EXIT_PASSED, EXIT_ERROR, EXIT_GATES_FAILED = 0, 1, 2


def absolute_model_uri(doc: dict, base: Path) -> dict:
    """The spec as the Serve app gets it: a relative model path made absolute."""
    from tierserve.pruning.storage import scheme_of

    uri = doc["model"]["uri"]
    if scheme_of(uri) in ("", "file") and not Path(uri.removeprefix("file://")).is_absolute():
        doc["model"]["uri"] = str((base / uri.removeprefix("file://")).resolve())
    return doc


def ensure_calibration(report: dict, spec, base: Path, out: Path) -> dict:
    """A report from before cascade calibration existed gets it now (validation set, else
    calibration set), and is rewritten (through the typed PruningReport)."""
    from tierserve.pruning.report_model import PruningReport

    typed = PruningReport.read(report)
    if typed.calibration is not None or typed.artifact is None or not typed.artifact.path:
        return report
    from tierserve.pruning.artifact import load_pruned
    from tierserve.pruning.calibration import calibration_report
    from tierserve.pruning.inputs import load_inputs
    from tierserve.pruning.tasks import load_task_model

    print("report has no cascade calibration; calibrating now ...", file=sys.stderr)
    inputs = load_inputs(spec, base)
    m = spec.model
    full = load_task_model(inputs.model_path, m.task, max_length=m.max_length)
    pruned = load_pruned(typed.artifact.path + "/model", m.task, max_length=m.max_length)
    typed = PruningReport.read({**report, "calibration": calibration_report(spec, full, pruned, inputs)})
    (out / "report.json").write_text(typed.to_json())
    return typed.to_doc()


def _start_ray_serve(port: int, out_dir: Path) -> dict:
    """A local Ray (unless RAY_ADDRESS names one) and Serve, their logs under `out_dir`."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    log = ray_logs_to_file(out_dir / "ray.log")
    import ray
    from ray import serve

    ray_logs_to_file(log)
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False,
                 logging_config=ray.LoggingConfig(log_level="WARNING"))
    ray_logs_to_file(log)  # ray.init installs a terminal handler of its own
    _interrupt_on_sigterm()  # ... and a SIGTERM handler that aborts the process: ours again
    logging = {"logs_dir": str(out_dir / "serve-logs"), "log_level": "WARNING",
               "enable_access_log": False}
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config=logging)
    _interrupt_on_sigterm()
    session = ray.get_runtime_context().gcs_address
    with open(log, "a") as f:
        f.write(f"tierserve: Ray at {session}; Serve logs in {out_dir / 'serve-logs'}\n")
    return logging


def _stop_ray_serve() -> None:
    """Serve's apps and actors, then the local Ray this process started (a connected cluster is
    only disconnected from)."""
    import contextlib

    import ray
    from ray import serve

    if ray.is_initialized():
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()


def _interrupt_on_sigterm() -> None:
    """SIGTERM takes the Ctrl-C path (KeyboardInterrupt), so both clean up alike."""
    import signal
    import threading

    def handler(signum, frame):  # noqa: ARG001 - signal's signature
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def _assumptions(spec, before: Load, after: Load) -> str:
    """What the cost figures rest on, how busy the machine was, and what to expect elsewhere."""
    c = spec.cost
    prices = [(k, v) for k, v in c.model_dump().items() if v]
    named = ", ".join(f"{k.replace('usd_per_', '$/').replace('_', ' ')} {v:g}"
                      for k, v in prices) or "none: $1 per replica-hour per tier assumed"
    busy = (" -- busy: latency and cost are noisy here; rerun on a quiet machine"
            if before.busy or after.busy else "")
    return "\n".join([
        f"cost assumes: the spec's prices ({named}); they are assumptions, not quotes. Replica "
        "time per request is measured here, on this machine.",
        f"machine: {before.text()} before, {after.load1:.1f} after{busy}.",
        "on your hardware: the pruned/full cost ratio follows the latency gate's ratio measured "
        "where the job runs; a GPU at small batch sizes is launch-bound and gains less per "
        "request than a CPU, larger batches gain more. Run the job there to measure it.",
    ])


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

    from .capacity import ask_all

    full = serve.get_deployment_handle("full", app_name=name)
    reqs = []
    for r in requests:
        if r.endpoint == "generate":
            req = {"op": "generate", "texts": [r.body["prompt"]],
                   "max_new_tokens": r.body["max_new_tokens"]}
        else:
            texts = ([r.body["query"], *r.body["documents"]] if r.endpoint == "rerank"
                     else r.body["texts"])
            req = {"op": r.endpoint, "texts": texts}
        reqs.append(req)
    out = []  # windowed: the tier's queue per caller is bounded (capacity.py)
    for op, reply in zip((r.endpoint for r in requests), ask_all(full, reqs), strict=True):
        if op == "generate":
            out.append(normalize_answer(reply["text"]))
        else:
            o = reply["outputs"]
            out.append(int(np.argmax(o if op == "rerank" else o[0])))
    return out


def run(spec_path: str, out: str | None = None, *, once: bool = False, requests: int = 200,
        metrics_port: int = 9464, port: int = 8000, concurrency: int = 4) -> int:
    from tierserve.pruning.spec import load_spec

    spec, name = load_spec(spec_path)
    out_dir = Path(out or f"runs/{name}").resolve()
    _interrupt_on_sigterm()
    stage = {"serving": False}
    try:
        return _run(spec, name, spec_path, out_dir, once, requests, metrics_port, port,
                    concurrency, stage)
    except KeyboardInterrupt:
        print("\nstopping: Serve and the local Ray this run started ...", flush=True)
        return EXIT_PASSED if stage["serving"] else 130
    finally:
        _stop_ray_serve()
        print(written(out_dir), flush=True)


def written(out_dir: Path) -> str:
    """What the run left in `out_dir`, naming only files that exist (a run stopped before its
    job finished has no report, and says so)."""
    names = ["report.json", "report.html", "ray.log", "serve-logs"]
    found = [n for n in names if (out_dir / n).exists()]
    models = sorted(out_dir.glob("artifacts/*/model/pruning.json"))
    found += [str(m.parent.relative_to(out_dir)) for m in models]
    if not found:
        return f"artifacts: nothing was written to {out_dir}"
    line = f"artifacts: {out_dir}  ({', '.join(found)})"
    if "report.json" not in found:
        line += "\n  no report: the run stopped before the job finished"
    return line


def _run(spec, name: str, spec_path: str, out_dir: Path, once: bool, requests: int,
         metrics_port: int, port: int, concurrency: int, stage: dict) -> int:
    from dataclasses import replace

    import yaml

    from tierserve.pruning.job import run_job
    from tierserve.pruning.report import summary_table

    from .replay import replay_requests, summarize
    from .table import run_table

    base = Path(spec_path).resolve().parent
    before = Load.now()
    print(f"[1/5] pruning job -> {out_dir} ({before.text()})")
    with JobBars() as bars:
        report, code = run_job(spec, out_dir, name=name, base_dir=base, progress=bars)
    if report.get("reused"):  # said only when it happened
        print(f"      reused the finished artifact {report.get('key')} (same spec and inputs)")
    print(summary_table(report))
    if code != EXIT_PASSED:
        print("[2/5] gates failed: the pruned tier is not deployable; nothing is served")
        now = Load.now()
        if before.busy or now.busy:  # a latency gate judged on a loaded machine is noise
            print(f"machine: {before.text()} before, {now.load1:.1f} after -- busy: latency "
                  "gates are unreliable here; rerun on a quiet machine")
        return code
    print("[2/5] gates passed")
    report = ensure_calibration(report, spec, base, out_dir)
    print(f"[3/5] local Ray + Serve: full, pruned, router on http://127.0.0.1:{port}/ "
          f"(Ray's logs: {out_dir / 'ray.log'})")
    logging = _start_ray_serve(port, out_dir)
    from ray import serve

    from .app import build_app

    doc = yaml.safe_load(Path(spec_path).read_text())
    spec_doc = absolute_model_uri(doc.get("spec", doc), base)
    app = build_app({"name": name, "spec": spec_doc, "report": str(out_dir),
                     "metricsPort": metrics_port})
    serve.run(app, name=name, route_prefix="/", logging_config=logging)
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
    print(_assumptions(spec, before, Load.now()))
    print(f"metrics: http://127.0.0.1:{metrics_port}/metrics  (also http://127.0.0.1:{port}/metrics)")
    print(f"OpenAI-compatible API: http://127.0.0.1:{port}/v1 (GET /v1/models)", flush=True)
    if not once:
        stage["serving"] = True
        print("serving; Ctrl-C stops", flush=True)
        while True:
            time.sleep(3600)
    return EXIT_PASSED


def _stats_totals(name: str) -> dict:
    import ray

    actor = ray.get_actor(f"tierserve-stats-{name}", namespace="tierserve")
    return ray.get(actor.totals.remote())
