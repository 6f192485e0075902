"""The Serve application (contract 2): `build_app({"name", "spec", "report"}) -> Application`.

    full   = Tier(full model from spec.model.uri)        replicas/autoscaling/resources from
    pruned = Tier(pruned artifact from report.artifact)  spec.serving.full / spec.serving.pruned
    router = Router(full, pruned)                        FastAPI ingress, 0 CPUs

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
from tierserve.pruning.spec import PrunedModelSpec, TierSpec, parse_spec

from .router import Router
from .tier import Tier

__all__ = ["AppArgs", "build_app", "router_config", "tier_options"]


class AppArgs(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    name: str = Field(min_length=1)
    spec: dict
    report: str | dict = Field(description="URI of report.json (or its directory), or the report")
    metrics_port: int | None = Field(None, ge=1, le=65535)
    artifact: str | None = None


def tier_options(t: TierSpec) -> dict:
    """Serve deployment options of one tier: fixed replicas, or autoscaling with maxReplicas."""
    opts: dict = {"ray_actor_options": {"num_cpus": t.cpus, "num_gpus": t.gpus},
                  "max_ongoing_requests": max(2 * t.max_batch_size, 8)}
    if t.max_replicas is not None and t.max_replicas > t.replicas or t.replicas == 0:
        opts["autoscaling_config"] = {"min_replicas": t.replicas,
                                      "initial_replicas": max(t.replicas, 1),
                                      "max_replicas": max(t.max_replicas or 1, t.replicas, 1),
                                      "target_ongoing_requests": t.max_batch_size}
    else:
        opts["num_replicas"] = t.replicas
    return opts


def router_config(name: str, spec: PrunedModelSpec, report: dict, metrics_port: int | None) -> dict:
    return {"name": name, "spec": spec.model_dump(mode="json", by_alias=True),
            "calibration": report.get("calibration"),
            "latency_ratio": (report.get("latency") or {}).get("ratio"),
            "metrics_port": metrics_port}


def _artifact_uri(report: dict) -> str:
    art = report.get("artifact") or {}
    uri = art.get("uri") or art.get("path")
    if not uri:
        raise ValueError("report has no artifact (artifact.uri): the pruning job did not finish")
    return uri.rstrip("/") + "/model"


def build_app(args: dict) -> Application:
    a = AppArgs.model_validate(args)
    spec = parse_spec(a.spec)
    report = a.report if isinstance(a.report, dict) else load_report(a.report)
    if not report.get("deployable"):
        raise ValueError(f"report {a.report if isinstance(a.report, str) else ''} is not "
                         f"deployable (status {report.get('status')}): a gate failed")
    m, s = spec.model, spec.serving
    common = {"task": m.task.value, "max_length": m.max_length}
    full = Tier.options(name="full", **tier_options(s.full)).bind(
        "full", m.uri, max_batch_size=s.full.max_batch_size,
        threads=max(1, math.floor(s.full.cpus)), **common)
    pruned = Tier.options(name="pruned", **tier_options(s.pruned)).bind(
        "pruned", a.artifact or _artifact_uri(report), max_batch_size=s.pruned.max_batch_size,
        threads=max(1, math.floor(s.pruned.cpus)), **common)
    return Router.bind(full, pruned, router_config(a.name, spec, report, a.metrics_port))
