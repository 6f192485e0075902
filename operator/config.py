"""Operator-wide settings, read once from the environment (contract 5), plus per-object overrides.

    TIERSERVE_BACKEND             kuberay (default) | raycluster
    TIERSERVE_RAY_DASHBOARD       backend b: the Ray dashboard address, e.g. http://ray-head:8265
    TIERSERVE_IMAGE               image of the RayJob / RayService pods (backend a)
    TIERSERVE_JOB_SERVICE_ACCOUNT ServiceAccount of the job's pods; may write only its report
    TIERSERVE_ARTIFACT_ROOT       where jobs write artifacts: pvc://CLAIM/DIR, s3://..., or a path
    TIERSERVE_POLL_SECONDS        how often the level-based timer looks at jobs and Serve apps
    TIERSERVE_JOB_PYTHON          backend b: python on the Ray cluster (default `python`)
    TIERSERVE_JOB_CPUS            backend b: CPUs the job's driver reserves (default 0)
    TIERSERVE_DATA_BASE           directory relative data paths resolve against (default: none)
    TIERSERVE_JOB_PENDING_DEADLINE_S  a job pending longer fails the object (default 900)
    TIERSERVE_DEPLOY_DEADLINE_S       Serve replicas not ready for longer: Failed (default 900)
    TIERSERVE_UNREACHABLE_DEADLINE_S  backend unreachable for longer: Failed (default 600)
    TIERSERVE_EVAL_CPU_SHARE      share of the Ray cluster's CPUs (and GPUs) a job's evaluation
                                  tasks may reserve together, in (0, 1] (default 0.5); jobs get it
    TIERSERVE_HF_SECRET_LABEL     label or annotation (`key=value`, or `key` for any value) that a
                                  Secret named by spec.model.hfTokenSecret must carry (default
                                  tierserve.io/hf-token=true); any other Secret is InvalidSpec
    TIERSERVE_SERVE_PORT          HTTP port Serve listens on when the operator starts it (8000)

A PrunedModel may pick its own backend with the annotations `tierserve.io/backend` and
`tierserve.io/ray-dashboard`, its data base with `tierserve.io/source-dir`, and its job's CPUs
(backend b) with `tierserve.io/job-cpus`.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, replace

from tierserve.pruning.parallel import eval_share

from .names import (
    ANN_BACKEND,
    ANN_DASHBOARD,
    ANN_JOB_CPUS,
    ANN_SOURCE_DIR,
    BACKEND_KUBERAY,
    BACKEND_RAYCLUSTER,
)
from .state import Deadlines

__all__ = ["OperatorConfig"]


@dataclass(frozen=True)
class OperatorConfig:
    backend: str = BACKEND_KUBERAY
    dashboard: str | None = None
    image: str = "tierserve:latest"
    job_service_account: str = "tierserve-job"
    artifact_root: str = "pvc://tierserve-artifacts"
    ray_version: str = "2.60.0"
    poll_seconds: float = 5.0
    job_python: str = "python"  # backend b: the interpreter on the Ray cluster's nodes
    job_cpus: float = 0.0  # backend b: entrypoint_num_cpus of the job's driver
    data_base: str | None = None  # where relative data paths resolve (object annotation wins)
    # roots a spec's local data and model paths must lie under (datapaths.py): the operator's
    # TIERSERVE_DATA_ROOTS plus its own TIERSERVE_DATA_BASE; never the object's annotation
    data_roots: tuple[str, ...] = ()
    deadlines: Deadlines = Deadlines()
    # passed to every job as TIERSERVE_EVAL_CPU_SHARE (pruning/parallel.py): the rest of the
    # cluster stays free for Serve replicas, so a deploy never waits on another object's evaluation
    eval_cpu_share: float = 0.5
    # the mark a Secret needs before a PrunedModel may mount it as HF_TOKEN (secrets.py)
    hf_secret_label: str = "tierserve.io/hf-token=true"
    serve_port: int = 8000  # Serve's HTTP port where the operator starts Serve (Ray's default)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        env = os.environ if env is None else env
        d = cls()
        return cls(
            backend=env.get("TIERSERVE_BACKEND", d.backend),
            dashboard=env.get("TIERSERVE_RAY_DASHBOARD") or None,
            image=env.get("TIERSERVE_IMAGE", d.image),
            job_service_account=env.get("TIERSERVE_JOB_SERVICE_ACCOUNT", d.job_service_account),
            artifact_root=env.get("TIERSERVE_ARTIFACT_ROOT", d.artifact_root).rstrip("/"),
            ray_version=env.get("TIERSERVE_RAY_VERSION", d.ray_version),
            poll_seconds=float(env.get("TIERSERVE_POLL_SECONDS", d.poll_seconds)),
            job_python=env.get("TIERSERVE_JOB_PYTHON", d.job_python),
            job_cpus=float(env.get("TIERSERVE_JOB_CPUS", d.job_cpus)),
            data_base=env.get("TIERSERVE_DATA_BASE") or None,
            data_roots=_roots(env),
            deadlines=Deadlines(*(float(env.get(f"TIERSERVE_{k}_DEADLINE_S", v)) for k, v in (
                ("JOB_PENDING", d.deadlines.job_pending_s), ("DEPLOY", d.deadlines.deploy_s),
                ("UNREACHABLE", d.deadlines.unreachable_s)))),
            eval_cpu_share=eval_share(env),
            hf_secret_label=env.get("TIERSERVE_HF_SECRET_LABEL") or d.hf_secret_label,
            serve_port=int(env.get("TIERSERVE_SERVE_PORT") or d.serve_port),
        )

    def for_object(self, annotations: Mapping[str, str] | None) -> OperatorConfig:
        """This config with the object's backend / dashboard annotations applied."""
        ann = annotations or {}
        backend = ann.get(ANN_BACKEND, self.backend)
        if backend not in (BACKEND_KUBERAY, BACKEND_RAYCLUSTER):
            backend = self.backend
        return replace(self, backend=backend, dashboard=ann.get(ANN_DASHBOARD, self.dashboard),
                       data_base=ann.get(ANN_SOURCE_DIR, self.data_base),
                       job_cpus=_number(ann.get(ANN_JOB_CPUS), self.job_cpus))

    def out_dir(self, namespace: str, name: str, run: str) -> str:
        """The job's --out for one run of one object (`names.run_key`): stable across operator
        restarts, so an adopted job writes where it did; a new UID or attempt never reuses it."""
        return f"{self.artifact_root}/{namespace}/{name}/{run}"


def _roots(env: Mapping[str, str]) -> tuple[str, ...]:
    """Absolute allowed data roots: TIERSERVE_DATA_ROOTS (os.pathsep-separated) and
    TIERSERVE_DATA_BASE. Relative entries are ignored (they would depend on the job's cwd)."""
    listed = (env.get("TIERSERVE_DATA_ROOTS") or "").split(os.pathsep)
    listed.append(env.get("TIERSERVE_DATA_BASE") or "")
    return tuple(dict.fromkeys(posixpath.normpath(r) for r in listed if r.startswith("/")))


def _number(text: str | None, default: float) -> float:
    """A numeric annotation; a missing or malformed one keeps the default."""
    try:
        return default if text is None else max(0.0, float(text))
    except ValueError:
        return default
