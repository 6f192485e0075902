"""Backend (b), an existing Ray cluster, end to end with no stand-in: the real control plane, the
operator (`kopf run`, the chart's ServiceAccount), and a real local Ray whose Jobs API runs the
real pruning job and whose Serve API deploys the real tiers (`tierserve.serving.app:build_app`).

apply -> the job runs -> the operator is SIGKILLed mid-Pruning and started again (it adopts the
running job: exactly one job) -> gates -> the Serve app is deployed -> a request through the router succeeds -> delete -> the finalizer removes the app.
"""

from __future__ import annotations

import json
import sys
import urllib.request

import pytest
from fixtures.procs import free_port
from operator_harness import (
    Operator,
    cond,
    events_for,
    get_json,
    install_crds,
    install_operator_rbac,
    manifest,
    patch_log_errors,
    phase_is,
    pm_status,
    tiny_spec,
    wait_for,
)

from tierserve.operator import names, raycluster

pytestmark = [pytest.mark.k8s, pytest.mark.slow]


def _http(method: str, url: str, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read() or b"null")


def _ensure_serve(dashboard: str) -> dict:
    """Start Serve on a free loopback port (unless this cluster runs it already)."""
    current = wait_for(lambda: raycluster.get_apps(dashboard), 120, "the Serve REST API", 2)
    if not current.get("controller_info", {}).get("node_id"):
        raycluster.put_apps(dashboard, {"http_options": {"host": "127.0.0.1", "port": free_port()},
                                        "applications": []})
        current = wait_for(lambda: (c := raycluster.get_apps(dashboard)).get(
            "controller_info", {}).get("node_id") and c, 120, "Serve controller")
    return current


def _jobs_of(dashboard: str, ns: str) -> list[dict]:
    jobs = _http("GET", f"{dashboard}/api/jobs/")
    return [j for j in jobs if (j.get("submission_id") or "").startswith(f"tierserve-{ns}.m-")]


def test_raycluster_backend_end_to_end_with_a_restart(control_plane, namespace, ray_cluster,
                                                      tmp_path):
    cp, ns, url = control_plane, namespace, ray_cluster.dashboard_url
    install_crds(cp)
    _ensure_serve(url)
    op = Operator(install_operator_rbac(cp, ns), ns, tmp_path, TIERSERVE_BACKEND="raycluster",
                  TIERSERVE_RAY_DASHBOARD=url, TIERSERVE_ARTIFACT_ROOT=str(tmp_path / "art"),
                  TIERSERVE_JOB_PYTHON=sys.executable,
                  TIERSERVE_PATCH_LOG=str(tmp_path / "patches.jsonl")).start()
    try:
        spec = tiny_spec(tmp_path / "data")
        h = names.spec_hash(spec)
        cp.kubectl("apply", "-n", ns, "-f", "-", input=manifest("m", spec))
        st = wait_for(lambda: phase_is(cp, ns, "m", "Pruning", "Validating"), 180, "Pruning")
        uid = get_json(cp, "-n", ns, "prunedmodel", "m")["metadata"]["uid"]
        assert st["jobName"] == names.submission_id(ns, "m", names.run_key(
            {"metadata": {"uid": uid}}, h))
        fin = get_json(cp, "-n", ns, "prunedmodel", "m")["metadata"].get("finalizers") or []
        assert names.FINALIZER in fin

        op.kill()  # mid-job, without any cleanup
        assert [j["status"] for j in _jobs_of(url, ns)] in (["RUNNING"], ["PENDING"])
        op.start()
        st = wait_for(lambda: phase_is(cp, ns, "m", "Serving", "GatesFailed", "Failed"), 900,
                      "Serving", interval=2)
        assert st["phase"] == "Serving", (st, op.log()[-5000:])
        assert len(_jobs_of(url, ns)) == 1  # adopted, never submitted twice
        assert _jobs_of(url, ns)[0]["status"] == "SUCCEEDED"
        for ctype in ("Pruned", "GatesPassed", "Ready"):
            assert cond(st, ctype)["status"] == "True", st
        assert st["serving"]["generation"] == 1 and st["gates"] and st["quality"] > 0.9
        assert st["endpoint"].endswith(f"/{ns}/m")
        wait_for(lambda: {"JobCreated", "JobAdopted", "Pruning", "Serving"} <= {
            r for _, r in events_for(cp, ns, "m")}, 30, "events")  # adopted after the restart

        apps = raycluster.get_apps(url)["applications"]
        mine = apps[f"{ns}.m"]
        assert mine["status"] == "RUNNING"
        assert mine["deployed_app_config"]["import_path"] == "tierserve.serving.app:build_app"
        reply = _http("POST", st["endpoint"] + "/v1/embed", {"texts": ["a tiling window manager"]})
        assert reply["tier"] in ("full", "pruned") and len(reply["embeddings"][0]) == 384
        st = wait_for(lambda: (s := pm_status(cp, ns, "m")).get("prunedShare") is not None and s,
                      120, "the live pruned share in status")  # read from the router's /metrics
        assert 0.0 <= st["prunedShare"] <= 1.0 and st["savingsUsd"] is not None
        print(cp.kubectl("get", "-n", ns, "pm", "-o", "wide").stdout)  # shown with -s (docs)
        print(cp.kubectl("describe", "-n", ns, "pm", "m").stdout[-2500:])

        assert patch_log_errors(tmp_path / "patches.jsonl") == []  # every patch fit the CRD
        cp.kubectl("delete", "-n", ns, "prunedmodel", "m", "--wait=true", timeout=180)
        wait_for(lambda: f"{ns}.m" not in (raycluster.get_apps(url).get("applications") or {}),
                 120, "the Serve app removed")
    finally:
        op.stop()
