"""The two backends' I/O: observe the children of one PrunedModel, and apply a Decision.

Apply runs as ordered steps and stops at the first error (the caller turns it into a retry):
job (create once, adopt after), serving layer (only the version the Decision names), obsolete
children. Every step is idempotent, so a re-run after a crash or restart does no harm.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import replace
from typing import Any

from . import holders, k8s, kuberay, names
from . import raycluster as rc
from . import report_store as rs
from .config import OperatorConfig
from .datapaths import resolve_data_paths
from .live import read_live
from .state import Decision, Event, Observed, ServeState

__all__ = ["KubeRayBackend", "RayClusterBackend", "backend_for"]


def _meta(pm: dict[str, Any]) -> tuple[str, str]:
    return pm["metadata"]["namespace"], pm["metadata"]["name"]


_FOLLOWED: set[str] = set()  # jobs this operator process created or adopted (JobAdopted once)


def _job_event(job: str, created: bool) -> list[Event]:
    """JobCreated for a new job; JobAdopted the first time this process follows an old one."""
    if created:
        _FOLLOWED.add(job)
        return [Event("Normal", names.Reason.job_created, job)]
    if job in _FOLLOWED:
        return []
    _FOLLOWED.add(job)
    return [Event("Normal", names.Reason.job_adopted, f"{job}: found it already submitted")]


def job_spec(pm: dict[str, Any], cfg: OperatorConfig) -> dict[str, Any]:
    """The spec the job is given: relative data paths resolved against the declared base."""
    return resolve_data_paths(pm["spec"], cfg.data_base)


def _with_live(serve: ServeState, probe: bool = False) -> ServeState:
    """The router's live pruned share and savings, when it serves and is reachable. `probe`:
    the operator can reach the endpoint (backend b), so an app Serve calls RUNNING whose router
    does not answer within the bound is not ready (Ready follows the app's real health). KubeRay's
    endpoints are in-cluster Services; there the RayService's own health conditions decide."""
    if not (serve.ready and serve.endpoint):
        return serve
    share, savings, error = read_live(serve.endpoint)
    if error and probe:
        return replace(serve, ready=False, answering=False, endpoint=None,
                       message=f"Serve reports the app RUNNING, but {error}")
    return replace(serve, pruned_share=share, savings_usd=savings)


class KubeRayBackend:
    """(a): ConfigMap + Role/RoleBinding + RayJob per spec hash, one RayService per object."""

    def __init__(self, cfg: OperatorConfig) -> None:
        self.cfg = cfg

    def job_name(self, pm: dict[str, Any], h: str) -> str:
        return names.rayjob_name(pm["metadata"]["name"], names.run_key(pm, h))

    def _report(self, ns: str, name: str, run: str) -> tuple[dict | None, dict | None, str | None]:
        cm = k8s.get("ConfigMap", ns, names.report_configmap_name(name, run))
        return rs.read_configmap((cm or {}).get("data"))

    def observe(self, pm: dict[str, Any], h: str) -> Observed:
        ns, name = _meta(pm)
        report, progress, error = self._report(ns, name, names.run_key(pm, h))
        job = kuberay.job_state(k8s.get("RayJob", ns, self.job_name(pm, h)))
        if error and job.state in ("failed", "stopped"):
            job = type(job)(job.state, job.name, error)
        serve = kuberay.serve_state(k8s.get("RayService", ns, names.rayservice_name(name)))
        return Observed(job=job, report=report, progress=progress, serve=_with_live(serve))

    def apply(self, pm: dict[str, Any], d: Decision) -> list[Event]:
        events: list[Event] = []
        if d.run_job:
            run, resolved = names.run_key(pm, d.spec_hash), {**pm, "spec": job_spec(pm, self.cfg)}
            for child in (kuberay.build_configmap(resolved, run), kuberay.build_role(pm, run),
                          kuberay.build_rolebinding(pm, run, self.cfg)):
                k8s.create_if_absent(child)
            created = k8s.create_if_absent(kuberay.build_rayjob(pm, run, self.cfg))
            events += _job_event(f"RayJob {self.job_name(pm, d.spec_hash)}", created)
        if d.stop_job:  # pending past its deadline: the outcome is in status, the job goes
            k8s.delete("RayJob", pm["metadata"]["namespace"], self.job_name(pm, d.spec_hash))
        if d.serve:
            events += self._serve(pm, d.serve)
        self._collect(pm, d)
        return events

    def _serve(self, pm: dict[str, Any], version: dict[str, Any]) -> list[Event]:
        ns, name = _meta(pm)
        current = k8s.get("RayService", ns, names.rayservice_name(name))
        have = ((current or {}).get("metadata", {}).get("annotations") or {}).get(names.ANN_SPEC_HASH)
        if current is not None and have == version["specHash"]:
            return []
        report, _, _ = self._report(ns, name, _run_of(pm, version))
        spec = (report or {}).get("spec") or pm["spec"]
        svc = kuberay.build_rayservice(pm, {**version, "spec": spec}, self.cfg)
        if current is None:
            k8s.create_if_absent(svc)
        else:
            k8s.patch("RayService", ns, svc["metadata"]["name"],
                      {"metadata": {"annotations": svc["metadata"]["annotations"]},
                       "spec": svc["spec"]})
        return [Event("Normal", names.Reason.deploying,
                      f"RayService {svc['metadata']['name']} -> generation {version['generation']}")]

    def _collect(self, pm: dict[str, Any], d: Decision) -> None:
        """Delete jobs of other runs (spec hashes or attempts), and reports (+ their Role) no
        version needs any more.

        Roles and RoleBindings are found by name from their ConfigMap's run: the operator may
        not list them (contract 5).
        """
        ns, name = _meta(pm)
        status, run = d.status, names.run_key(pm, d.spec_hash)
        keep = {run} | {_run_of(pm, v) for k in ("serving", "deploying") if (v := status.get(k))}
        selector = f"{names.LABEL_MODEL}={name},{names.LABEL_MANAGED}=tierserve"
        for job in k8s.list_labelled("RayJob", ns, selector):
            if (job["metadata"].get("labels") or {}).get(names.LABEL_RUN) != run:
                k8s.delete("RayJob", ns, job["metadata"]["name"])
        for cm in k8s.list_labelled("ConfigMap", ns, selector):
            old = (cm["metadata"].get("labels") or {}).get(names.LABEL_RUN)
            if old and old not in keep:
                for kind in ("RoleBinding", "Role"):
                    k8s.delete(kind, ns, names.job_role_name(name, old))
                k8s.delete("ConfigMap", ns, cm["metadata"]["name"])

    def cleanup(self, pm: dict[str, Any]) -> None:
        """Nothing: every child is owned by the PrunedModel and goes through ownerRef GC."""


class RayClusterBackend:
    """(b): Ray Jobs API submission per spec hash; one Serve app per object on that cluster."""

    def __init__(self, cfg: OperatorConfig) -> None:
        if not cfg.dashboard:
            raise ValueError("backend raycluster needs TIERSERVE_RAY_DASHBOARD or the "
                             f"{names.ANN_DASHBOARD} annotation")
        self.cfg, self.url = cfg, cfg.dashboard.rstrip("/")

    def job_name(self, pm: dict[str, Any], h: str) -> str:
        ns, name = _meta(pm)
        return names.submission_id(ns, name, names.run_key(pm, h))

    def _report(self, sid: str) -> tuple[dict | None, dict | None, str | None, dict | None]:
        info = rc.job_info(self.url, sid)
        if info is None:
            return None, None, None, None
        return (*rs.parse_logs(rc.job_logs(self.url, sid)), info)

    def _known(self, status: dict[str, Any]) -> dict[str, str]:
        return {v["report"]: v["specHash"] for k in ("serving", "deploying")
                if (v := status.get(k)) and v.get("report")}

    def observe(self, pm: dict[str, Any], h: str) -> Observed:
        ns, name = _meta(pm)
        sid = self.job_name(pm, h)
        report, progress, error, info = self._report(sid)
        serve = rc.app_state(rc.get_apps(self.url), names.app_name(ns, name),
                             self._known(pm.get("status") or {}))
        serve = holders.with_holders(serve, self.url)  # not ready: who holds the CPUs
        return Observed(job=rc.job_state(info, sid, error, self.cfg.job_cpus), report=report,
                        progress=progress, serve=_with_live(serve, probe=True))

    def entrypoint(self, pm: dict[str, Any], h: str) -> str:
        ns, name = _meta(pm)
        # -P: the job's working directory is not on sys.path, so nothing there can shadow the
        # installed package (a `tierserve/` folder in the Ray node's cwd, say)
        return shlex.join([self.cfg.job_python, "-P", "-m", "tierserve.operator.jobrunner",
                           "--spec-json", json.dumps(job_spec(pm, self.cfg), sort_keys=True),
                           "--name", name,
                           "--out", self.cfg.out_dir(ns, name, names.run_key(pm, h)),
                           "--data-roots", os.pathsep.join(self.cfg.data_roots)])

    def apply(self, pm: dict[str, Any], d: Decision) -> list[Event]:
        events: list[Event] = []
        sid = self.job_name(pm, d.spec_hash)
        if d.run_job:
            created = rc.job_info(self.url, sid) is None and rc.submit_job(
                self.url, sid, self.entrypoint(pm, d.spec_hash),
                env_vars={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                          # the rest of the shared cluster stays free for Serve replicas
                          "TIERSERVE_EVAL_CPU_SHARE": str(self.cfg.eval_cpu_share)},
                metadata={names.LABEL_MODEL: pm["metadata"]["name"]},
                num_cpus=self.cfg.job_cpus)
            events += _job_event(f"Ray job {sid}", created)
        if d.stop_job:  # pending past its deadline: the outcome is in status, the job goes
            rc.stop_job(self.url, sid)
        if d.serve:
            events += self._deploy(pm, d.serve)
        elif d.undeploy:  # a first rollout that never became ready: free its replicas
            self._remove_app(pm)
        return events

    def _app(self, pm: dict[str, Any], version: dict[str, Any]) -> dict[str, Any]:
        ns, name = _meta(pm)
        report, *_ = self._report(names.submission_id(ns, name, _run_of(pm, version)))
        spec = (report or {}).get("spec") or pm["spec"]
        return kuberay.serve_app(ns, name, spec, version["report"])

    def _deploy(self, pm: dict[str, Any], version: dict[str, Any]) -> list[Event]:
        app = self._app(pm, version)
        with rc.apps_lock(self.url):  # read-modify-write of the whole app set
            body = rc.merged_config(rc.get_apps(self.url), app["name"], app,
                                    port=self.cfg.serve_port)
            if body is None:
                return []
            rc.put_apps(self.url, body)
        return [Event("Normal", names.Reason.deploying,
                      f"Serve app {app['name']} -> generation {version['generation']}")]

    def _remove_app(self, pm: dict[str, Any]) -> None:
        ns, name = _meta(pm)
        with rc.apps_lock(self.url):
            body = rc.merged_config(rc.get_apps(self.url), names.app_name(ns, name), None)
            if body is not None:
                rc.put_apps(self.url, body)

    def cleanup(self, pm: dict[str, Any]) -> None:
        """Finalizer: remove this object's Serve app (keeping every other) and stop its jobs."""
        self._remove_app(pm)
        jobs = {self.job_name(pm, names.spec_hash(pm["spec"])),
                (pm.get("status") or {}).get("jobName")}
        for sid in filter(None, jobs):
            rc.stop_job(self.url, sid)


def _run_of(pm: dict[str, Any], version: dict[str, Any]) -> str:
    """The run a ServingVersion was built by (versions from before run keys: this attempt's)."""
    return version.get("run") or names.run_key(pm, version["specHash"])


def backend_for(pm: dict[str, Any], cfg: OperatorConfig) -> KubeRayBackend | RayClusterBackend:
    obj_cfg = cfg.for_object(pm["metadata"].get("annotations"))
    if obj_cfg.backend == names.BACKEND_RAYCLUSTER:
        return RayClusterBackend(obj_cfg)
    return KubeRayBackend(obj_cfg)
