"""The Serve application (contract 2): `build_app({"name", "spec", "report"}) -> Application`.

    full   = Tier(full model from spec.model.uri)        replicas/autoscaling/resources from
    pruned = Tier(pruned artifact from report.artifact)  spec.serving.full / spec.serving.pruned
    router = Router(full, pruned)                        FastAPI ingress, 0 CPUs

Every deployment's `max_ongoing_requests` / `max_queued_requests` (and the autoscaling target)
come from the spec's replica counts and batch sizes through `capacity.py`; the router's queue at
the HTTP proxy is bounded too, and a full one answers 503 + Retry-After (`spec.serving.router`).

The operator points RayService `serveConfigV2` (or `PUT /api/serve/applications/`) at
`tierserve.serving.app:build_app` with these args; `tierserve run` calls it in-process. Optional
args: `metricsPort` (the stats actor's own /metrics port), `artifact` (override the pruned
model's URI, e.g. a degraded copy in tests).
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from ray.serve import Application

from tierserve.pruning.report import load_report
from tierserve.pruning.report_model import PruningReport
from tierserve.pruning.spec import PrunedModelSpec, RouterSpec, TierSpec, parse_spec

from .capacity import Capacity, router_capacity, tier_capacity
from .cost import CostModel
from .router import Router
from .tier import Tier

__all__ = ["AppArgs", "build_app", "capacity_of", "router_config", "router_options",
           "tier_options", "tier_runtimes"]


class AppArgs(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    name: str = Field(min_length=1)
    spec: dict
    report: str | dict = Field(description="URI of report.json (or its directory), or the report")
    metrics_port: int | None = Field(None, ge=1, le=65535)
    artifact: str | None = None


def capacity_of(t: TierSpec) -> Capacity:
    return tier_capacity(t.max_batch_size, t.replicas, t.max_replicas, t.max_ongoing_requests,
                         t.max_queued_requests)


def tier_options(t: TierSpec, retry_after_s: float = 1.0) -> dict:
    """Serve deployment options of one tier: fixed replicas, or autoscaling with maxReplicas;
    ongoing/queued limits and the autoscaling target from `capacity.py`."""
    cap = capacity_of(t)
    opts: dict = {"ray_actor_options": {"num_cpus": t.cpus, "num_gpus": t.gpus},
                  "max_ongoing_requests": cap.max_ongoing, "max_queued_requests": cap.max_queued,
                  "backpressure_config": {"status_code": 503, "retry_after_s": retry_after_s}}
    if t.max_replicas is not None and t.max_replicas > t.replicas or t.replicas == 0:
        opts["autoscaling_config"] = {"min_replicas": t.replicas,
                                      "initial_replicas": max(t.replicas, 1),
                                      "max_replicas": max(t.max_replicas or 1, t.replicas, 1),
                                      "target_ongoing_requests": cap.target_ongoing}
    else:
        opts["num_replicas"] = t.replicas
    return opts


def router_options(r: RouterSpec, full: TierSpec, pruned: TierSpec) -> dict:
    """The router admits what both tiers can hold; the proxy queues a bounded number more and
    answers 503 + Retry-After beyond that. Colocated (`colocatePruned`), it also carries the
    pruned model: pruned's resources, and at least pruned's replicas."""
    replicas = max(r.replicas, pruned.replicas, 1) if r.colocate_pruned else r.replicas
    cap = router_capacity([capacity_of(full), capacity_of(pruned)], replicas,
                          r.max_ongoing_requests, r.max_queued_requests)
    opts = {"num_replicas": replicas, "max_ongoing_requests": cap.max_ongoing,
            "max_queued_requests": cap.max_queued,
            "backpressure_config": {"status_code": 503, "retry_after_s": r.retry_after_s}}
    if r.colocate_pruned:
        opts["ray_actor_options"] = {"num_cpus": pruned.cpus, "num_gpus": pruned.gpus}
        if pruned.max_replicas is not None and pruned.max_replicas > replicas:
            # the router scales as pruned would have: routine traffic is its load now
            del opts["num_replicas"]
            opts["autoscaling_config"] = {"min_replicas": replicas, "initial_replicas": replicas,
                                          "max_replicas": pruned.max_replicas,
                                          "target_ongoing_requests":
                                              capacity_of(pruned).target_ongoing}
    return opts


def router_config(name: str, spec: PrunedModelSpec, report: PruningReport,
                  metrics_port: int | None) -> dict:
    doc = report.to_doc()  # the sections the router needs, as plain JSON
    return {"name": name, "spec": spec.model_dump(mode="json", by_alias=True),
            "calibration": doc.get("calibration"),
            "gates": doc.get("gates"),  # the cross-tier gate decides whether embed may split
            "latency_ratio": report.latency.ratio if report.latency else None,
            "metrics_port": metrics_port}


def _artifact_uri(report: PruningReport) -> str:
    uri = report.artifact_model_uri
    if not uri:
        raise ValueError("report has no artifact (artifact.uri): the pruning job did not finish")
    return uri


def tier_runtimes(report: PruningReport, override: str | None) -> tuple[dict | None, dict | None]:
    """What the full and the pruned tier load: the report's runtime, each tier's graph from the
    job's artifact; None for eager torch (reports from before runtimes were recorded are torch).
    An `artifact` override holds the pruned model: its own graph when it has one, else torch."""
    rt = report.runtime
    if rt is None or rt.name not in ("onnxruntime", "openvino"):
        return None, None
    job = report.artifact_model_uri or override
    pruned = override or job
    return ({"name": rt.name, "artifact": job},
            {"name": rt.name, "artifact": pruned, "optional": pruned != job})


def build_app(args: dict) -> Application:
    a = AppArgs.model_validate(args)
    spec = parse_spec(a.spec)
    report = PruningReport.read(a.report if isinstance(a.report, dict) else load_report(a.report))
    if not report.deployable:
        raise ValueError(f"report {a.report if isinstance(a.report, str) else ''} is not "
                         f"deployable (status {report.status}): a gate failed")
    m, s = spec.model, spec.serving
    cost = CostModel.from_spec(spec.cost, report.latency.ratio if report.latency else None)
    artifact = a.artifact or _artifact_uri(report)
    full_rt, pruned_rt = tier_runtimes(report, a.artifact)
    common = {"task": m.task.value, "max_length": m.max_length, "model": a.name, "cost": cost}
    retry = s.router.retry_after_s
    full = Tier.options(name="full", **tier_options(s.full, retry)).bind(
        "full", m.uri, max_batch_size=s.full.max_batch_size, gpus=s.full.gpus,
        threads=max(1, math.floor(s.full.cpus)), runtime=full_rt, **common)
    pruned_args = {"tier": "pruned", "model_uri": artifact, "runtime": pruned_rt,
                   "max_batch_size": s.pruned.max_batch_size, "gpus": s.pruned.gpus,
                   "threads": max(1, math.floor(s.pruned.cpus)), **common}
    config = router_config(a.name, spec, report, a.metrics_port)
    router = Router.options(**router_options(s.router, s.full, s.pruned))
    if s.router.colocate_pruned:  # no pruned deployment: the router loads it (colocated.py)
        return router.bind(full, None, {**config, "colocated": pruned_args})
    pruned = Tier.options(name="pruned", **tier_options(s.pruned, retry)).bind(**pruned_args)
    return router.bind(full, pruned, config)
