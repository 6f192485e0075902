"""Who holds a Ray cluster's CPUs: one short line for a deploy that waits on resources.

A Serve replica that cannot be scheduled says only that no node has room. `cpu_holders` asks the
dashboard's state API what holds the CPUs now, so a ServeNotReady or DeployTimeout message can
name it: `CPUs held by: job tierserve-team-a-x-45bc92d0 (PrunedModel x) 2 (placement group
tierserve-eval 2); Serve app team-b-y 1`.

- placement groups in state CREATED hold all their bundles (`GET /api/v0/placement_groups`);
- ALIVE actors outside a placement group hold what they required (`GET /api/v0/actors`); a Serve
  replica (`ServeReplica:APP:DEPLOYMENT`) is counted under its app;
- RUNNING tasks outside a placement group (`GET /api/v0/tasks`);
- a job's hex id is shown as its submission id, and its PrunedModel when the operator's metadata
  `tierserve.io/prunedmodel` names one (`GET /api/jobs/`).

The HTTP calls share one deadline; `describe` and `holdings` are pure. `with_holders` adds the
line to the observed state of a Serve app that is deployed but not ready (backend raycluster).
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from .names import LABEL_MODEL
from .state import ServeState

__all__ = ["cpu_holders", "describe", "holdings", "with_holders"]

TIMEOUT_S = 5.0
LIMIT = 1000  # rows per state API list; a cluster with more holders is summarized anyway
SHOWN = 4  # holders named in the line; the rest are counted
Held = dict[str, dict[str, float]]  # holder -> {what: CPUs}


def _cpu(resources: Mapping[str, Any] | None) -> float:
    return float((resources or {}).get("CPU") or 0.0)


def holdings(pgs: Iterable[dict], actors: Iterable[dict], tasks: Iterable[dict]) -> Held:
    """CPUs held per holder ("job <hex id>" or "Serve app <name>") and per what holds them."""
    held: Held = defaultdict(lambda: defaultdict(float))
    for pg in pgs:
        cpus = sum(_cpu(b.get("unit_resources")) for b in pg.get("bundles") or [])
        if pg.get("state") == "CREATED" and cpus:
            what = f"placement group {pg['name']}" if pg.get("name") else "placement groups"
            held[f"job {pg.get('creator_job_id')}"][what] += cpus
    for actor in actors:
        cpus = _cpu(actor.get("required_resources"))
        if actor.get("state") != "ALIVE" or actor.get("placement_group_id") or not cpus:
            continue
        cls = actor.get("class_name") or ""
        if cls.startswith("ServeReplica:"):  # ServeReplica:APP:DEPLOYMENT
            held[f"Serve app {cls.split(':')[1]}"]["replicas"] += cpus
        else:
            held[f"job {actor.get('job_id')}"][f"actor {actor.get('name') or cls}"] += cpus
    for task in tasks:
        cpus = _cpu(task.get("required_resources"))
        if task.get("state") == "RUNNING" and not task.get("placement_group_id") and cpus:
            held[f"job {task.get('job_id')}"]["tasks"] += cpus
    return {k: dict(v) for k, v in held.items()}


def _job_label(holder: str, jobs: Mapping[str, dict]) -> str:
    """"job 02000000" -> "job <submission id> (PrunedModel <name>)" where the jobs API knows it."""
    job = jobs.get(holder.removeprefix("job "))
    if not holder.startswith("job ") or job is None:
        return holder
    label = f"job {job.get('submission_id') or job.get('job_id')}"
    owner = (job.get("metadata") or {}).get(LABEL_MODEL)
    return f"{label} (PrunedModel {owner})" if owner else label


def describe(held: Held, jobs: Iterable[dict] = ()) -> str:
    """One line naming the largest holders first; "" when nothing holds a CPU."""
    by_id = {j["job_id"]: j for j in jobs if j.get("job_id")}
    ranked = sorted(held.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
    parts = []
    for holder, what in ranked[:SHOWN]:
        detail = ", ".join(f"{w} {c:g}" for w, c in sorted(what.items(), key=lambda x: -x[1]))
        parts.append(f"{_job_label(holder, by_id)} {sum(what.values()):g} ({detail})")
    if len(ranked) > SHOWN:
        parts.append(f"{len(ranked) - SHOWN} more")
    return f"CPUs held by: {'; '.join(parts)}" if parts else ""


def _get(url: str, deadline: float) -> Any:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(url)
    with urllib.request.urlopen(url, timeout=left) as resp:
        return json.loads(resp.read().decode() or "null")


def _state(dashboard: str, kind: str, deadline: float, query: str = "") -> list[dict]:
    doc = _get(f"{dashboard}/api/v0/{kind}?detail=true&limit={LIMIT}{query}", deadline)
    return ((doc or {}).get("data") or {}).get("result", {}).get("result") or []


def cpu_holders(dashboard: str, timeout_s: float = TIMEOUT_S) -> str:
    """Who holds the CPUs of the cluster behind `dashboard` (e.g. http://ray-head:8265), as one
    line; "" when nothing does, or the dashboard does not answer within `timeout_s` in all."""
    url, deadline = dashboard.rstrip("/"), time.monotonic() + timeout_s
    try:
        held = holdings(_state(url, "placement_groups", deadline),
                        _state(url, "actors", deadline),
                        _state(url, "tasks", deadline, "&filter_keys=state&filter_predicates=%3D"
                                                       "&filter_values=RUNNING"))
        jobs = _get(f"{url}/api/jobs/", deadline) if held else []
    except (OSError, ValueError, AttributeError, TypeError):  # unreachable, timeout, not JSON
        return ""
    return describe(held, jobs or [])


def with_holders(serve: ServeState, dashboard: str, timeout_s: float = TIMEOUT_S) -> ServeState:
    """`serve` with who holds the CPUs appended to its message while a deployed app is not ready
    (ServeNotReady, and the DeployTimeout message built from it); otherwise `serve` itself."""
    if serve.spec_hash is None or serve.ready:
        return serve
    held = cpu_holders(dashboard, timeout_s)
    return replace(serve, message="; ".join(m for m in (serve.message, held) if m)) if held else serve
