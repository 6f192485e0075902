"""Names, labels, annotations and event reasons of everything the operator creates: one place.

Every child is named by a pure function of the PrunedModel's identity and its run key
(`run_key`: spec hash, UID and attempt), so an operator restarted mid-job finds (adopts) what it
created before instead of creating a second one, while a re-created object (new UID) or a retry
(next attempt) never adopts an old job, report or artifact.

Names that live outside the object's namespace (Ray job ids, Serve app names and route
prefixes, artifact paths) join namespace and name with a character a namespace cannot contain
(`.` or `/`): `team-a/x` and `team/a-x` can never share one.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

__all__ = [
    "ANN_BACKEND", "ANN_DASHBOARD", "ANN_JOB_CPUS", "ANN_RETRY", "ANN_SOURCE_DIR", "ANN_SPEC_HASH",
    "APP_IMPORT_PATH", "BACKEND_KUBERAY", "BACKEND_RAYCLUSTER", "FINALIZER", "LABEL_HASH",
    "LABEL_MANAGED", "LABEL_MODEL", "LABEL_RUN", "Reason", "app_name", "child_labels",
    "job_role_name", "rayjob_name", "rayservice_name", "report_configmap_name", "route_prefix",
    "run_hash", "run_key", "spec_hash", "submission_id",
]

GROUP = "tierserve.io"
LABEL_MANAGED = "app.kubernetes.io/managed-by"
LABEL_MODEL = f"{GROUP}/prunedmodel"
LABEL_HASH = f"{GROUP}/spec-hash"
LABEL_RUN = f"{GROUP}/run"                # run key (spec hash, UID, attempt) of a job's children
ANN_SPEC_HASH = f"{GROUP}/spec-hash"
ANN_BACKEND = f"{GROUP}/backend"          # per-object override of TIERSERVE_BACKEND
ANN_DASHBOARD = f"{GROUP}/ray-dashboard"  # per-object override of TIERSERVE_RAY_DASHBOARD
ANN_SOURCE_DIR = f"{GROUP}/source-dir"    # the manifest's directory: base of relative data paths
ANN_JOB_CPUS = f"{GROUP}/job-cpus"        # backend b: per-object override of TIERSERVE_JOB_CPUS
ANN_RETRY = f"{GROUP}/retry"              # any new value: a failed object starts a new attempt
FINALIZER = f"{GROUP}/serve-apps"         # backend b only: external Serve apps and Ray jobs
BACKEND_KUBERAY, BACKEND_RAYCLUSTER = "kuberay", "raycluster"
APP_IMPORT_PATH = "tierserve.serving.app:build_app"  # contract 2
_MAX = 63  # DNS-1123 label length


class Reason:
    """Event and condition reasons (CamelCase, as kubectl shows them)."""

    accepted = "Accepted"
    invalid_spec = "InvalidSpec"
    job_created = "JobCreated"
    job_adopted = "JobAdopted"
    job_running = "JobRunning"
    validating = "Validating"
    job_failed = "JobFailed"
    pruned = "Pruned"
    gates_passed = "GatesPassed"
    gates_failed = "GatesFailed"
    deploying = "Deploying"
    serving = "Serving"
    previous_serving = "PreviousVersionServing"
    not_deployed = "NotDeployed"
    waiting = "Waiting"
    transient = "TransientError"
    job_pending = "JobPending"
    job_pending_timeout = "JobPendingTimeout"
    serve_not_ready = "ServeNotReady"
    deploy_timeout = "DeployTimeout"
    data_leak = "DataLeak"
    retrying = "Retrying"
    unreachable = "ClusterUnreachable"
    serve_unhealthy = "ServeUnhealthy"


def _canonical(value: Any) -> Any:
    """1.0 and 1 are the same number (the apiserver stores JSON numbers, and drops the `.0`)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def spec_hash(spec: dict[str, Any]) -> str:
    """8 hex characters of sha256 over the canonical JSON of the (camelCase) spec."""
    text = json.dumps(_canonical(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _dns(base: str, suffix: str) -> str:
    """`<base><suffix>`, base cut so the whole fits in 63 characters."""
    base = re.sub(r"[^a-z0-9-]", "-", base.lower())[: _MAX - len(suffix)].rstrip("-")
    return base + suffix


def run_key(pm: dict[str, Any], h: str) -> str:
    """`H-UUUUUUUU-N`: one attempt (N, status.attempt) of one spec (hash H) of one object (the
    first 8 hex digits of its UID). Fits a label value and, with a name, a DNS label."""
    uid = ((pm.get("metadata") or {}).get("uid") or "").replace("-", "")[:8] or "0" * 8
    attempt = int((pm.get("status") or {}).get("attempt") or 1)
    return f"{h}-{uid}-{attempt}"


def run_hash(run: str) -> str:
    """The spec hash a run key (or, from before run keys, a bare spec hash) was made from."""
    return run.split("-", 1)[0]


def rayjob_name(name: str, run: str) -> str:
    return _dns(name, f"-prune-{run}")


def rayservice_name(name: str) -> str:
    """One RayService per PrunedModel: a new version is an in-place serveConfigV2 upgrade."""
    return _dns(name, "-tiers")


def report_configmap_name(name: str, run: str) -> str:
    return _dns(name, f"-report-{run}")


def job_role_name(name: str, run: str) -> str:
    return _dns(name, f"-report-writer-{run}")


def submission_id(namespace: str, name: str, run: str) -> str:
    """Ray Jobs API submission id (backend b): the same run of the same object always gets the
    same id (adopted after a restart); another object, UID or attempt never does."""
    return f"tierserve-{namespace}.{name}-{run}"


def app_name(namespace: str, name: str) -> str:
    """Serve app of one object on a shared Ray cluster (a namespace never contains `.`)."""
    return f"{namespace}.{name}"


def route_prefix(namespace: str, name: str) -> str:
    return f"/{namespace}/{name}"


def child_labels(name: str, run: str | None = None) -> dict[str, str]:
    labels = {LABEL_MANAGED: "tierserve", LABEL_MODEL: name}
    if run:
        labels[LABEL_HASH], labels[LABEL_RUN] = run_hash(run), run
    return labels
