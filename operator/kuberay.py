"""Backend (a), KubeRay: builders for the children and readers of their status. No I/O here.

Children of one PrunedModel `NAME` for one run `R` (`names.run_key`: spec hash, UID, attempt;
all owned by the object, so they go with it):
- ConfigMap `NAME-report-R`: `spec.json` written by the operator; `progress.json` and
  `report.json` written by the job (see report_store.py);
- Role + RoleBinding `NAME-report-writer-R`: the job's ServiceAccount may get/patch/update exactly
  that ConfigMap (resourceNames);
- RayJob `NAME-prune-R` running `python -m tierserve.operator.jobrunner` (the pruning job, then the
  report into the ConfigMap);
- RayService `NAME-tiers` whose `serveConfigV2` holds the Serve app of the version that passed its
  gates (contract 2). A new version is an in-place serveConfigV2 change: KubeRay keeps the old
  app serving until the new one is ready. Serve listens on the operator's TIERSERVE_SERVE_PORT
  (`http_options` in serveConfigV2, and the head's `serve` container port, which KubeRay's
  `NAME-tiers-serve-svc` Service exposes).
"""

from __future__ import annotations

import json
import os
import shlex
from typing import Any

import yaml

from . import names
from .config import OperatorConfig
from .raycluster import tail
from .state import JobState, ServeState

__all__ = ["build_configmap", "build_rayjob", "build_rayservice", "build_role", "build_rolebinding",
           "job_state", "owner_reference", "serve_app", "serve_config", "serve_state"]

RAY_API = "ray.io/v1"
SERVE_PORT = 8000  # Ray's default; a RayService that names no `serve` container port listens here


def owner_reference(owner: dict[str, Any]) -> dict[str, Any]:
    """Controller ownerReference to the PrunedModel: children go with it (ownerRef GC)."""
    meta = owner["metadata"]
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": meta["name"],
            "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}


def _meta(owner: dict[str, Any], name: str, run: str | None, **extra: Any) -> dict[str, Any]:
    model = owner["metadata"]["name"]
    return {"name": name, "namespace": owner["metadata"]["namespace"],
            "labels": names.child_labels(model, run), "ownerReferences": [owner_reference(owner)],
            **extra}


def build_configmap(owner: dict[str, Any], run: str) -> dict[str, Any]:
    name = names.report_configmap_name(owner["metadata"]["name"], run)
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(owner, name, run),
            "data": {"spec.json": json.dumps(owner["spec"], sort_keys=True)}}


def build_role(owner: dict[str, Any], run: str) -> dict[str, Any]:
    model = owner["metadata"]["name"]
    rule = {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "patch", "update"],
            "resourceNames": [names.report_configmap_name(model, run)]}
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": _meta(owner, names.job_role_name(model, run), run), "rules": [rule]}


def build_rolebinding(owner: dict[str, Any], run: str, cfg: OperatorConfig) -> dict[str, Any]:
    role = names.job_role_name(owner["metadata"]["name"], run)
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": _meta(owner, role, run),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": cfg.job_service_account,
                          "namespace": owner["metadata"]["namespace"]}]}


def _pod_template(cfg: OperatorConfig, container: str, cpus: float, gpus: float,
                  service_account: str | None = None,
                  labels: dict[str, str] | None = None) -> dict[str, Any]:
    limits: dict[str, Any] = {"cpu": str(max(cpus, 1)), "memory": "4Gi"}
    if gpus:
        limits["nvidia.com/gpu"] = str(int(gpus) if float(gpus).is_integer() else gpus)
    spec: dict[str, Any] = {"containers": [{"name": container, "image": cfg.image,
                                            "resources": {"limits": limits, "requests": limits}}]}
    if service_account:
        spec["serviceAccountName"] = service_account
    if cfg.artifact_root.startswith("pvc://"):  # mount the claim where storage.resolve looks
        claim = cfg.artifact_root[len("pvc://"):].split("/", 1)[0]
        spec["volumes"] = [{"name": "artifacts", "persistentVolumeClaim": {"claimName": claim}}]
        spec["containers"][0]["volumeMounts"] = [{"name": "artifacts",
                                                  "mountPath": f"/mnt/pvc/{claim}"}]
    if labels:  # the chart's PodMonitor selects Serve head pods by these labels
        spec["containers"][0]["ports"] = [{"name": "serve", "containerPort": cfg.serve_port}]
        return {"metadata": {"labels": labels}, "spec": spec}
    return {"spec": spec}


def _with_hub_env(template: dict[str, Any], spec: dict[str, Any], cfg: OperatorConfig) -> None:
    """Pods that load an hf:// model get `pruning.hub.hub_env` (a Secret only by reference)."""
    from tierserve.pruning.hub import hub_env

    env = hub_env(spec.get("model") or {}, cfg.artifact_root)
    if env:
        template["spec"]["containers"][0].setdefault("env", []).extend(env)


def job_entrypoint(owner: dict[str, Any], run: str, cfg: OperatorConfig) -> list[str]:
    meta = owner["metadata"]
    # -P: the pod's working directory is not on sys.path (nothing there shadows the package)
    return ["python", "-P", "-m", "tierserve.operator.jobrunner",
            "--configmap", names.report_configmap_name(meta["name"], run),
            "--namespace", meta["namespace"], "--name", meta["name"],
            "--out", cfg.out_dir(meta["namespace"], meta["name"], run),
            "--data-roots", os.pathsep.join(cfg.data_roots)]  # confined on the node too


def build_rayjob(owner: dict[str, Any], run: str, cfg: OperatorConfig) -> dict[str, Any]:
    name = names.rayjob_name(owner["metadata"]["name"], run)
    gpus = float((owner["spec"].get("serving") or {}).get("full", {}).get("gpus") or 0)
    head = {"rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
            "template": _pod_template(cfg, "ray-head", 1, 0, cfg.job_service_account)}
    worker = {"groupName": "prune", "replicas": 1, "minReplicas": 1, "maxReplicas": 1,
              "rayStartParams": {},
              "template": _pod_template(cfg, "ray-worker", 2, gpus, cfg.job_service_account)}
    for group in (head, worker):  # hf:// models: HF_TOKEN by secretKeyRef, Hub cache on the PVC
        _with_hub_env(group["template"], owner["spec"], cfg)
        # the RayJob's cluster is its own (Serve never runs there): evaluation may use all of it
        group["template"]["spec"]["containers"][0].setdefault("env", []).append(
            {"name": "TIERSERVE_EVAL_CPU_SHARE", "value": "1"})
    return {"apiVersion": RAY_API, "kind": "RayJob",
            "metadata": _meta(owner, name, run, annotations={names.ANN_SPEC_HASH: names.run_hash(run)}),
            "spec": {"entrypoint": shlex.join(job_entrypoint(owner, run, cfg)),
                     "shutdownAfterJobFinishes": True, "ttlSecondsAfterFinished": 3600,
                     "rayClusterSpec": {"rayVersion": cfg.ray_version,
                                        "headGroupSpec": head, "workerGroupSpecs": [worker]}}}


def serve_app(namespace: str, name: str, spec: dict[str, Any], report_uri: str,
              route_prefix: str | None = None) -> dict[str, Any]:
    """One Serve application (contract 2): the tierserve app builder and its args."""
    app = names.app_name(namespace, name)
    return {"name": app, "import_path": names.APP_IMPORT_PATH,
            "route_prefix": route_prefix or names.route_prefix(namespace, name),
            "args": {"name": app, "spec": spec, "report": report_uri}}


def _worker_groups(spec: dict[str, Any], cfg: OperatorConfig) -> list[dict[str, Any]]:
    serving = spec.get("serving") or {}
    groups = []
    for tier in ("full", "pruned"):
        t = serving.get(tier) or {}
        replicas = int(t.get("replicas", 1))
        groups.append({"groupName": tier, "replicas": replicas, "minReplicas": replicas,
                       "maxReplicas": int(t.get("maxReplicas") or replicas), "rayStartParams": {},
                       "template": _pod_template(cfg, "ray-worker", float(t.get("cpus", 1)),
                                                 float(t.get("gpus", 0)))})
        _with_hub_env(groups[-1]["template"], spec, cfg)  # the full tier loads spec.model.uri
    return groups


def build_rayservice(owner: dict[str, Any], version: dict[str, Any],
                     cfg: OperatorConfig) -> dict[str, Any]:
    """The RayService serving `version` (the spec it was pruned from travels in its report)."""
    meta = owner["metadata"]
    spec = version.get("spec") or owner["spec"]
    app = serve_app(meta["namespace"], meta["name"], spec, version["report"])
    head = {"rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
            "template": _pod_template(cfg, "ray-head", 1, 0, labels={
                names.LABEL_MANAGED: "tierserve", names.LABEL_MODEL: meta["name"]})}
    ann = {names.ANN_SPEC_HASH: version["specHash"]}
    return {"apiVersion": RAY_API, "kind": "RayService",
            "metadata": _meta(owner, names.rayservice_name(meta["name"]), None, annotations=ann),
            "spec": {"serveConfigV2": yaml.safe_dump(serve_config([app], cfg), sort_keys=False),
                     "rayClusterConfig": {"rayVersion": cfg.ray_version, "headGroupSpec": head,
                                          "workerGroupSpecs": _worker_groups(spec, cfg)}}}


def serve_config(apps: list[dict[str, Any]], cfg: OperatorConfig) -> dict[str, Any]:
    """A Serve config (serveConfigV2) listening on every interface at TIERSERVE_SERVE_PORT."""
    return {"http_options": {"host": "0.0.0.0", "port": cfg.serve_port}, "applications": apps}


def _serve_port(rayservice: dict[str, Any]) -> int:
    """The head's `serve` container port (what KubeRay's serve Service exposes)."""
    head = ((rayservice.get("spec") or {}).get("rayClusterConfig") or {}).get("headGroupSpec")
    containers = (((head or {}).get("template") or {}).get("spec") or {}).get("containers") or []
    ports = [p for c in containers for p in c.get("ports") or [] if p.get("name") == "serve"]
    return int(ports[0]["containerPort"]) if ports else SERVE_PORT


_JOB_STATES = {"PENDING": "pending", "RUNNING": "running", "SUCCEEDED": "succeeded",
               "FAILED": "failed", "STOPPED": "stopped"}


def job_state(rayjob: dict[str, Any] | None) -> JobState:
    """RayJob `jobDeploymentStatus` + `jobStatus` -> JobState."""
    if rayjob is None:
        return JobState()
    st = rayjob.get("status") or {}
    name = rayjob["metadata"]["name"]
    deploy, job = st.get("jobDeploymentStatus", ""), st.get("jobStatus", "")
    state = _JOB_STATES.get(job, "pending")
    if deploy == "Failed" and state not in ("succeeded",):
        state = "failed"
    return JobState(state=state, name=name,
                    message=tail(st.get("message") or st.get("reason") or ""))


def serve_state(rayservice: dict[str, Any] | None) -> ServeState:
    """RayService conditions (Ready, UpgradeInProgress) + observedGeneration -> ServeState."""
    if rayservice is None:
        return ServeState()
    meta, st = rayservice["metadata"], rayservice.get("status") or {}
    conds = {c.get("type"): c for c in st.get("conditions") or []}
    current = st.get("observedGeneration") == meta.get("generation")
    upgrading = (conds.get("UpgradeInProgress") or {}).get("status") == "True"
    answering = (conds.get("Ready") or {}).get("status") == "True"  # the old app, mid-upgrade
    ready = current and not upgrading and answering
    model = (meta.get("labels") or {}).get(names.LABEL_MODEL, meta["name"])
    prefix = names.route_prefix(meta["namespace"], model)
    port = _serve_port(rayservice)
    endpoint = f"http://{meta['name']}-serve-svc.{meta['namespace']}.svc:{port}{prefix}"
    msg = (conds.get("Ready") or {}).get("message") or ""
    return ServeState(spec_hash=(meta.get("annotations") or {}).get(names.ANN_SPEC_HASH),
                      ready=ready, message=msg, endpoint=endpoint if answering else None,
                      answering=answering)
