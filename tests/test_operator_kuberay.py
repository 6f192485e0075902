"""Backend (a), KubeRay, end to end on the real control plane with the operator running as its
own ServiceAccount (the chart's RBAC). Nothing runs pods here, so the test plays the KubeRay
controller: it runs the RayJob's entrypoint itself (as the job's ServiceAccount, a real pruning
job that publishes into its report ConfigMap) and patches RayJob/RayService status. It asserts
every transition of the PrunedModel: status, conditions, events, children, ownerRefs, GC."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from operator_harness import (
    Operator,
    cond,
    events_for,
    get_json,
    install_crds,
    install_operator_rbac,
    manifest,
    phase_is,
    pm_status,
    tiny_spec,
    wait_for,
)

from tierserve.operator import names

pytestmark = [pytest.mark.k8s, pytest.mark.slow]
JOB_SA = "tierserve-job"


@pytest.fixture
def operator_a(control_plane, namespace, tmp_path):
    install_crds(control_plane)
    kubeconfig = install_operator_rbac(control_plane, namespace)
    op = Operator(kubeconfig, namespace, tmp_path, TIERSERVE_BACKEND="kuberay",
                  TIERSERVE_ARTIFACT_ROOT=str(tmp_path / "artifacts"),
                  TIERSERVE_IMAGE="tierserve:test", TIERSERVE_JOB_SERVICE_ACCOUNT=JOB_SA).start()
    yield op
    op.stop()


def patch_status(cp, ns: str, kind: str, name: str, status: dict) -> None:
    cp.kubectl("patch", "-n", ns, kind, name, "--subresource=status", "--type=merge",
               "-p", json.dumps({"status": status}))


def run_entrypoint(cp, ns: str, rayjob: dict, tmp_path) -> subprocess.CompletedProcess:
    """What KubeRay would do with the RayJob: run its entrypoint, as the job's ServiceAccount."""
    argv = shlex.split(rayjob["spec"]["entrypoint"])
    assert argv[:4] == ["python", "-P", "-m", "tierserve.operator.jobrunner"]
    env = {**os.environ, "KUBECONFIG": str(cp.serviceaccount_kubeconfig(ns, JOB_SA)),
           "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, *argv[1:]], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)


def owned_by(obj: dict, uid: str) -> bool:
    refs = obj["metadata"].get("ownerReferences") or []
    return any(r["uid"] == uid and r["kind"] == "PrunedModel" and r["controller"] for r in refs)


def can_i(cp, kubeconfig, *args: str) -> bool:
    return cp.kubectl("auth", "can-i", *args, kubeconfig=kubeconfig, check=False
                      ).stdout.strip() == "yes"


def test_kuberay_backend_end_to_end(control_plane, namespace, operator_a, tmp_path):
    cp, ns = control_plane, namespace
    spec = tiny_spec(tmp_path / "data")
    h = names.spec_hash(spec)
    cp.kubectl("apply", "-n", ns, "-f", "-", input=manifest("m", spec))
    uid = get_json(cp, "-n", ns, "prunedmodel", "m")["metadata"]["uid"]
    run = names.run_key({"metadata": {"uid": uid}}, h)  # spec hash, UID, attempt 1

    # Pending -> Pruning: the children exist, owned by the PrunedModel
    job = wait_for(lambda: get_json(cp, "-n", ns, "rayjob", f"m-prune-{run}"), 60, "the RayJob")
    for kind, name in (("rayjob", f"m-prune-{run}"), ("configmap", f"m-report-{run}"),
                       ("role", f"m-report-writer-{run}"), ("rolebinding", f"m-report-writer-{run}")):
        assert owned_by(get_json(cp, "-n", ns, kind, name), uid), kind
    patch_status(cp, ns, "rayjob", f"m-prune-{run}",
                 {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
    st = wait_for(lambda: phase_is(cp, ns, "m", "Pruning"), 60, "Pruning")
    assert st["observedGeneration"] == 1 and st["jobName"] == f"m-prune-{run}"
    assert cond(st, "Ready")["status"] == "False"

    # the job's ServiceAccount may write exactly its own report ConfigMap, nothing else
    job_kc = cp.serviceaccount_kubeconfig(ns, JOB_SA)
    assert can_i(cp, job_kc, "patch", f"configmap/m-report-{run}", "-n", ns)
    assert not can_i(cp, job_kc, "patch", "configmap/other", "-n", ns)
    assert not can_i(cp, job_kc, "get", "secrets", "-n", ns)

    res = run_entrypoint(cp, ns, job, tmp_path)  # the real pruning job
    assert res.returncode == 0, res.stderr[-3000:]
    patch_status(cp, ns, "rayjob", f"m-prune-{run}",
                 {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"})

    # Deploying: the RayService carries the Serve app of contract 2
    st = wait_for(lambda: phase_is(cp, ns, "m", "Deploying"), 60, "Deploying")
    assert cond(st, "Pruned")["status"] == "True" and cond(st, "GatesPassed")["status"] == "True"
    assert st["gates"] and all(g["passed"] for g in st["gates"])
    assert 0 < st["budget"] < 1 and st["quality"] > 0.9
    svc = get_json(cp, "-n", ns, "rayservice", "m-tiers")
    assert owned_by(svc, uid) and svc["metadata"]["annotations"][names.ANN_SPEC_HASH] == h
    (app,) = yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"]
    assert (app["name"], app["route_prefix"], app["import_path"]) == (
        f"{ns}.m", f"/{ns}/m", "tierserve.serving.app:build_app")
    assert app["args"]["report"] == st["deploying"]["report"]
    report_file = Path(app["args"]["report"].removeprefix("file://")) / "report.json"
    assert json.loads(report_file.read_text())["deployable"] is True

    # Serving once KubeRay reports the RayService ready for its current generation
    patch_status(cp, ns, "rayservice", "m-tiers", {
        "observedGeneration": svc["metadata"]["generation"],
        "conditions": [{"type": "Ready", "status": "True", "reason": "NonZeroServeEndpoints",
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}]})
    st = wait_for(lambda: phase_is(cp, ns, "m", "Serving"), 60, "Serving")
    assert cond(st, "Ready")["status"] == "True" and st["serving"]["generation"] == 1
    assert st["endpoint"] == f"http://m-tiers-serve-svc.{ns}.svc:8000/{ns}/m"
    wanted = {"Pending", "JobCreated", "Pruning", "Deploying", "Serving"}
    wait_for(lambda: wanted <= {r for _, r in events_for(cp, ns, "m")}, 30, f"events {wanted}")
    printed = cp.kubectl("get", "-n", ns, "pm", "m").stdout
    assert "Serving" in printed and "PRUNED SHARE" in printed.upper()

    # generation 2 fails its gates: generation 1 keeps serving, and the status says so
    strict = {**spec, "gates": {**spec["gates"], "quality": [
        *spec["gates"]["quality"], {"metric": "ndcg@10", "min": 0.999}]}}
    h2 = names.spec_hash(strict)
    run2 = names.run_key({"metadata": {"uid": uid}}, h2)
    cp.kubectl("apply", "-n", ns, "-f", "-", input=manifest("m", strict))
    job2 = wait_for(lambda: get_json(cp, "-n", ns, "rayjob", f"m-prune-{run2}"), 60, "RayJob 2")
    wait_for(lambda: cp.kubectl("get", "-n", ns, "rayjob", f"m-prune-{run}",
                                check=False).returncode != 0, 60, "old RayJob deleted")
    st = wait_for(lambda: phase_is(cp, ns, "m", "Pending", "Pruning"), 60, "re-prune")
    assert st["observedGeneration"] == 2 and cond(st, "Ready")["reason"] == "PreviousVersionServing"
    assert run_entrypoint(cp, ns, job2, tmp_path).returncode == 2  # gates failed
    patch_status(cp, ns, "rayjob", f"m-prune-{run2}",
                 {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED"})
    st = wait_for(lambda: phase_is(cp, ns, "m", "GatesFailed"), 60, "GatesFailed")
    assert "generation 2 failed its gates" in st["lastFailure"] and "ndcg@10" in st["lastFailure"]
    assert cond(st, "GatesPassed")["status"] == "False"
    assert cond(st, "Ready")["status"] == "True" and st["serving"]["generation"] == 1
    svc2 = get_json(cp, "-n", ns, "rayservice", "m-tiers")
    assert svc2["metadata"]["annotations"][names.ANN_SPEC_HASH] == h  # untouched
    assert svc2["metadata"]["generation"] == svc["metadata"]["generation"]
    wait_for(lambda: ("Warning", "GatesFailed") in events_for(cp, ns, "m"), 30, "GatesFailed event")

    # generation 3 is invalid in a way only the parser sees: Failed, naming the field
    bad = {**spec, "gates": {"quality": [{"metric": "ndcg@10"}]}}
    cp.kubectl("apply", "-n", ns, "-f", "-", input=manifest("m", bad))
    st = wait_for(lambda: phase_is(cp, ns, "m", "Failed"), 60, "Failed")
    assert cond(st, "Pruned")["reason"] == "InvalidSpec"
    assert "spec.gates.quality.0" in cond(st, "Pruned")["message"]
    assert cond(st, "Ready")["status"] == "True"  # generation 1 still serves
    wait_for(lambda: ("Warning", "Failed") in events_for(cp, ns, "m"), 30, "Failed event")
    print(cp.kubectl("get", "-n", ns, "pm,rayjobs,rayservices,configmaps").stdout)  # with -s
    print(json.dumps(pm_status(cp, ns, "m"), indent=1)[:4000])
    h3 = names.spec_hash(bad)
    assert cp.kubectl("get", "-n", ns, "rayjob", f"m-prune-{names.run_key({'metadata': {'uid': uid}}, h3)}", check=False).returncode != 0

    # delete: every child goes through ownerReference GC (no finalizer on backend a)
    assert not get_json(cp, "-n", ns, "prunedmodel", "m")["metadata"].get("finalizers")
    cp.kubectl("delete", "-n", ns, "prunedmodel", "m", "--wait=true")

    def children_left() -> list[str]:
        sel = f"{names.LABEL_MODEL}=m"
        out = cp.kubectl("get", "-n", ns, "rayjobs,rayservices,configmaps,roles,rolebindings",
                         "-l", sel, "-o", "name").stdout.split()
        return out or ["none"]

    wait_for(lambda: children_left() == ["none"], 90, "ownerRef GC of every child")


def test_operator_serviceaccount_cannot_list_secrets(control_plane, namespace, operator_a):
    """`get` only, in its namespace: the hfTokenSecret mark, read as metadata (secrets.py)."""
    cp, kc = control_plane, operator_a.kubeconfig
    assert not can_i(cp, kc, "get", "secrets", "-n", "default")
    assert not can_i(cp, kc, "list", "secrets", "-n", namespace)
    res = cp.kubectl("get", "secrets", "-n", namespace, kubeconfig=kc, check=False)
    assert res.returncode != 0 and "forbidden" in res.stderr.lower()
    assert can_i(cp, kc, "create", "rayjobs.ray.io", "-n", namespace)
    assert can_i(cp, kc, "patch", "prunedmodels.tierserve.io/status", "-n", namespace)
    assert not can_i(cp, kc, "delete", "prunedmodels.tierserve.io", "-n", namespace)
    assert not can_i(cp, kc, "create", "rayjobs.ray.io", "-n", "default")  # only its namespace
