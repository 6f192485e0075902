"""Least privilege (issue 25, item 8): `spec.model.hfTokenSecret` may name only a Secret carrying
the operator's mark (TIERSERVE_HF_SECRET_LABEL), read as metadata only; Serve's HTTP port is set
explicitly (TIERSERVE_SERVE_PORT) wherever the operator configures Serve.

Pure tests first; then the real control plane with the operator running under the chart's RBAC
(backend kuberay; the test plays KubeRay only by reading what the operator created): an
unmarked or missing Secret is InvalidSpec naming the field and gets no RayJob, a marked one gets
its RayJob with HF_TOKEN by secretKeyRef.
"""

from __future__ import annotations

import functools

import pytest
import yaml

from tierserve.operator import k8s, kuberay, raycluster, secrets
from tierserve.operator.config import OperatorConfig
from tierserve.operator.reconcile import Observed, reconcile

SPEC = {"model": {"uri": "hf://org/model", "task": "embedding",
                  "hfTokenSecret": {"name": "hf", "key": "token"}},
        "data": {"calibration": {"queries": "/q", "corpus": "/c", "qrels": "/r"},
                 "evaluation": {"queries": "/q", "corpus": "/c", "qrels": "/r"}},
        "gates": {"quality": [{"metric": "ndcg@10", "relative": 0.9}]}}
PM = {"apiVersion": "tierserve.io/v1alpha1", "kind": "PrunedModel",
      "metadata": {"name": "m", "namespace": "ns", "uid": "u-1"}, "spec": SPEC}
NOW = "2026-01-01T00:00:00Z"


# -- pure ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("meta,mark,ok", [
    ({"labels": {"tierserve.io/hf-token": "true"}}, "tierserve.io/hf-token=true", True),
    ({"annotations": {"tierserve.io/hf-token": "true"}}, "tierserve.io/hf-token=true", True),
    ({"labels": {"tierserve.io/hf-token": "false"}}, "tierserve.io/hf-token=true", False),
    ({"labels": {"other": "true"}}, "tierserve.io/hf-token=true", False),
    ({}, "tierserve.io/hf-token=true", False),
    ({"labels": {"example.com/hf": "anything"}}, "example.com/hf", True),  # bare key: any value
])
def test_marked_reads_labels_and_annotations(meta: dict, mark: str, ok: bool) -> None:
    assert secrets.marked(meta, mark) is ok


@pytest.mark.parametrize("found,expect", [
    ({"labels": {"tierserve.io/hf-token": "true"}}, None),
    ({"labels": {"app": "db"}}, "lacks the label or annotation tierserve.io/hf-token=true"),
    (None, "Secret ns/hf does not exist"),
])
def test_check_hf_secret_names_the_field(monkeypatch, found, expect) -> None:
    asked = []
    monkeypatch.setattr(secrets, "read_metadata", lambda ns, name: asked.append((ns, name)) or found)
    msg = secrets.check_hf_secret(PM, OperatorConfig())
    assert asked == [("ns", "hf")]
    if expect is None:
        assert msg is None
    else:
        assert msg.startswith("spec.model.hfTokenSecret") and expect in msg


def test_no_secret_named_reads_nothing_and_a_bad_name_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(secrets, "read_metadata", lambda *a: pytest.fail("read a Secret"))
    plain = {**PM, "spec": {**SPEC, "model": {"uri": "hf://org/model", "task": "embedding"}}}
    assert secrets.check_hf_secret(plain, OperatorConfig()) is None
    bad = {**PM, "spec": {**SPEC, "model": {**SPEC["model"],
                                            "hfTokenSecret": {"name": "../configmaps/x"}}}}
    assert "spec.model.hfTokenSecret.name" in secrets.check_hf_secret(bad, OperatorConfig())


def test_a_refused_secret_is_invalid_spec_and_launches_nothing() -> None:
    why = "spec.model.hfTokenSecret: Secret ns/hf lacks the label or annotation x=y"
    d = reconcile(SPEC, 1, {}, Observed(), backend="kuberay", job_name="j", now=NOW,
                  extra_error=why)
    assert d.error == why and not d.run_job and d.serve is None
    assert d.status["phase"] == "Failed"
    pruned = next(c for c in d.status["conditions"] if c["type"] == "Pruned")
    assert pruned["reason"] == "InvalidSpec" and "spec.model.hfTokenSecret" in pruned["message"]
    ok = reconcile(SPEC, 1, d.status, Observed(), backend="kuberay", job_name="j", now=NOW)
    assert ok.run_job and ok.error is None  # the Secret got its mark: the next pass proceeds


def test_serve_port_in_the_rayservice_and_its_endpoint() -> None:
    cfg = OperatorConfig(serve_port=8123)
    svc = kuberay.build_rayservice(PM, {"generation": 1, "specHash": "h", "report": "r"}, cfg)
    conf = yaml.safe_load(svc["spec"]["serveConfigV2"])
    assert conf["http_options"] == {"host": "0.0.0.0", "port": 8123}
    head = svc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"name": "serve", "containerPort": 8123} in head["ports"]
    svc["metadata"]["generation"] = 1
    svc["status"] = {"observedGeneration": 1,
                     "conditions": [{"type": "Ready", "status": "True"}]}
    assert ":8123/" in kuberay.serve_state(svc).endpoint
    default = kuberay.build_rayservice(PM, {"generation": 1, "specHash": "h", "report": "r"},
                                       OperatorConfig())
    assert yaml.safe_load(default["spec"]["serveConfigV2"])["http_options"]["port"] == 8000


def test_first_serve_put_names_the_port_and_a_running_serve_keeps_its_own() -> None:
    app = {"name": "a", "import_path": "x:y", "route_prefix": "/a", "args": {}}
    body = raycluster.merged_config({}, "a", app, port=8123)  # Serve not running: this starts it
    assert body["http_options"] == {"host": "0.0.0.0", "port": 8123}
    assert raycluster.merged_config({}, "a", app)["http_options"]["port"] == 8000  # explicit
    running = {"controller_info": {"node_id": "n"}, "http_options": {"host": "h", "port": 9},
               "applications": {}}
    assert raycluster.merged_config(running, "a", app, port=8123)["http_options"] == {
        "host": "h", "port": 9}


def test_config_reads_the_settings_from_the_environment() -> None:
    cfg = OperatorConfig.from_env({"TIERSERVE_HF_SECRET_LABEL": "example.com/hf",
                                   "TIERSERVE_SERVE_PORT": "8123"})
    assert (cfg.hf_secret_label, cfg.serve_port) == ("example.com/hf", 8123)
    d = OperatorConfig.from_env({})
    assert (d.hf_secret_label, d.serve_port) == ("tierserve.io/hf-token=true", 8000)


# -- the real control plane ----------------------------------------------------------------------
@pytest.fixture
def operator_hf(control_plane, namespace, tmp_path):
    from operator_harness import Operator, install_crds, install_operator_rbac

    install_crds(control_plane)
    kubeconfig = install_operator_rbac(control_plane, namespace)
    op = Operator(kubeconfig, namespace, tmp_path, TIERSERVE_BACKEND="kuberay",
                  TIERSERVE_ARTIFACT_ROOT=str(tmp_path / "artifacts"),
                  TIERSERVE_IMAGE="tierserve:test", TIERSERVE_JOB_SERVICE_ACCOUNT="tierserve-job")
    yield op.start()
    op.stop()


def _secret(name: str, labels: dict | None = None) -> dict:
    meta: dict = {"name": name}
    if labels:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta,
            "stringData": {"token": "hf_not_a_real_token"}}


def _jobs_of(cp, ns: str, uid: str) -> list[dict]:
    from operator_harness import get_json

    return [j for j in get_json(cp, "-n", ns, "rayjobs")["items"]
            if any(r["uid"] == uid for r in j["metadata"].get("ownerReferences") or [])]


def _hf_token_refs(job: dict) -> set[str]:
    spec = job["spec"]["rayClusterSpec"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return {e["valueFrom"]["secretKeyRef"]["name"] for g in groups
            for c in g["template"]["spec"]["containers"] for e in c.get("env") or []
            if e["name"] == "HF_TOKEN"}


@pytest.mark.k8s
@pytest.mark.slow
def test_only_a_marked_secret_may_be_mounted(control_plane, namespace, operator_hf, tmp_path):
    from operator_harness import cond, get_json, manifest, phase_is, tiny_spec, wait_for

    cp, ns = control_plane, namespace
    cp.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump_all([
        _secret("plain"), _secret("marked", {"tierserve.io/hf-token": "true"})]))
    base = tiny_spec(tmp_path / "data")
    base["model"]["uri"] = "hf://sentence-transformers/all-MiniLM-L6-v2"
    objs = {"unmarked": "plain", "missing": "ghost", "accepted": "marked"}
    for name, secret in objs.items():
        spec = {**base, "model": {**base["model"], "hfTokenSecret": {"name": secret}}}
        cp.kubectl("apply", "-n", ns, "-f", "-", input=manifest(name, spec))
    uid = {n: get_json(cp, "-n", ns, "prunedmodel", n)["metadata"]["uid"] for n in objs}

    job = wait_for(lambda: (_jobs_of(cp, ns, uid["accepted"]) or [None])[0], 60,
                   "the RayJob of the object naming a marked Secret")
    assert _hf_token_refs(job) == {"marked"}
    for name, why in (("unmarked", "lacks the label or annotation tierserve.io/hf-token=true"),
                      ("missing", "does not exist")):
        st = wait_for(lambda n=name: phase_is(cp, ns, n, "Failed"), 60, f"{name} Failed")
        pruned = cond(st, "Pruned")
        assert pruned["reason"] == "InvalidSpec", pruned
        assert "spec.model.hfTokenSecret" in pruned["message"] and why in pruned["message"]
    assert phase_is(cp, ns, "accepted", "Pending", "Pruning") is not None
    assert _jobs_of(cp, ns, uid["unmarked"]) == [] and _jobs_of(cp, ns, uid["missing"]) == []

    # the operator's own token reads a Secret's metadata and never its data
    from kubernetes import config

    client = config.new_client_from_config(config_file=str(operator_hf.kubeconfig))
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(k8s, "api", functools.cache(lambda: client))
            doc = secrets.get_partial(ns, "marked")
            assert doc["kind"] == "PartialObjectMetadata" and "data" not in doc
            assert doc["metadata"]["labels"] == {"tierserve.io/hf-token": "true"}
            assert secrets.read_metadata(ns, "ghost") is None
    finally:
        client.close()
