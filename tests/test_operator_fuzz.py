"""Issue 17's fuzzer-style check, on the real control plane with the operator running (`kopf run`
under the chart's ServiceAccount) against a real local Ray (its Jobs API runs the real jobs).

Every mutant is applied at once into one namespace, watched by one operator with short deadlines,
so the module costs one job's time. Each ends where it must within its deadline, naming the field
or the resource: refused by the apiserver's schema (empty path, `limit: 1e12`, gate `min: 1e12`),
`Failed/InvalidSpec` at once (replicas > maxReplicas, gate `min: -1`), `Failed/JobFailed` from the
job (a bogus `sliceField`, a bogus `textField`, a model that does not exist: the end of its log),
`GatesFailed` naming a slice that does not exist (with relative data paths resolved against the
`tierserve.io/source-dir` annotation, and tiers holding most of the cluster's CPUs, so the
evaluation tasks must fit what is free), and `Failed/JobPendingTimeout` when the cluster cannot
give the job its CPUs. Afterwards: the operator is still up, and every status patch it sent was
valid JSON within the CRD's own schema. A KubeRay object (the test plays KubeRay, writing the
job's report into the report ConfigMap) shows Ready staying True through an in-place rollout and
the serving version apart from the rejected candidate in `kubectl get pm`.
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
from fixtures.controlplane import KubectlError
from operator_harness import (
    Operator,
    cond,
    get_json,
    install_crds,
    install_operator_rbac,
    manifest,
    patch_log_errors,
    phase_is,
    pm_status,
    status_errors,
    tiny_spec,
    wait_for,
)

from tierserve.operator import names

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

PENDING_DEADLINE_S, DEPLOY_DEADLINE_S = 20, 600
HELD_CPUS = 1.5  # "served tiers" hold this much of the 2-CPU test cluster meanwhile


def _mutant(base: dict, path: str, value) -> dict:
    spec = copy.deepcopy(base)
    *parents, leaf = path.split(".")
    node = spec
    for key in parents:
        node = node.setdefault(int(key) if key.isdigit() else key, {}) if isinstance(node, dict) \
            else node[int(key)]
    node[int(leaf) if leaf.isdigit() else leaf] = value
    return spec


def _relative(spec: dict) -> dict:
    """Data paths relative to their directory (the manifest's origin is the annotation)."""
    spec = copy.deepcopy(spec)
    for src in (spec["data"]["calibration"], spec["data"]["evaluation"]):
        for key in ("queries", "corpus", "qrels"):
            src[key] = Path(src[key]).name
    return spec


# name: (mutation of the tiny spec, annotations, phases that end it, what the status names)
CASES = {
    "missing-slice": (lambda s: _mutant(s, "gates.quality", [
        *s["gates"]["quality"], {"metric": "ndcg@10", "relative": 0.5, "slice": "no-such-slice"}]),
        "source-dir", ("GatesFailed",), "slice 'no-such-slice' does not exist"),
    "bogus-slice-field": (lambda s: _mutant(s, "data.sliceField", "no_such_field"), None,
                          ("Failed",), "spec.data.sliceField"),
    "bogus-text-field": (lambda s: _mutant(s, "data.textField", "no_such_field"), None,
                         ("Failed",), "spec.data.textField"),
    "failed-job": (lambda s: _mutant(s, "model.uri", f"{tempfile.gettempdir()}/nonexistent/model"),
                   None, ("Failed",), "/nonexistent/model"),
    # data confinement: refused before any job (the operator) or before anything is read (the
    # job, symlinks followed); the status names the field, nothing lands in the artifact store
    "path-escape": (lambda s: _mutant(s, "data.calibration.qrels", "../../../../../../etc/passwd"),
                    "source-dir", ("Failed",), "spec.data.calibration.qrels"),
    "path-absolute": (lambda s: _mutant(s, "data.evaluation.qrels", "/etc/passwd"), None,
                      ("Failed",), "spec.data.evaluation.qrels"),
    "path-encoded": (lambda s: _mutant(s, "data.evaluation.corpus",
                                       f"file://{tempfile.gettempdir()}/%2e%2e/etc/passwd"),
                     None, ("Failed",), "spec.data.evaluation.corpus"),
    "path-symlink": (lambda s: _mutant(s, "data.calibration.qrels", "passwd-link.jsonl"),
                     "source-dir", ("Failed",), "spec.data.calibration.qrels"),
    # what the operator can read is checked before any job (precheck.py): a missing file, a split
    # that is not in the data; InvalidSpec naming the field, no job launched
    "data-missing-qrels": (lambda s: _mutant(s, "data.calibration.qrels", "no-such-qrels.jsonl.gz"),
                           "source-dir", ("Failed",), "spec.data.calibration.qrels: file not found"),
    "data-bad-split": (lambda s: _mutant(s, "data.evaluation.split", "tset"), None, ("Failed",),
                       "spec.data.evaluation.split: 'tset' not in the split values"),
    "data-no-queries": (lambda s: _mutant(s, "data.evaluation", {
        k: v for k, v in s["data"]["evaluation"].items() if k != "queries"}), None, ("Failed",),
        "spec.data.evaluation.queries: required for task embedding"),
    "replicas-over-max": (lambda s: _mutant(s, "serving.full", {"replicas": 5, "maxReplicas": 2}),
                          None, ("Failed",), "maxReplicas (2) must be >= replicas (5)"),
    "gate-min-negative": (lambda s: _mutant(s, "gates.quality.0", {"metric": "ndcg@10", "min": -1}),
                          None, ("Failed",), "spec.gates.quality.0"),
    "full-cluster": (lambda s: s, "job-cpus", ("Failed",), "the job asks for 1 CPU"),
}
REFUSED = {  # the apiserver's schema refuses these; its message names the field
    "empty-path": (lambda s: _mutant(s, "data.evaluation.queries", ""), "spec.data.evaluation.queries"),
    "limit-1e12": (lambda s: _mutant(s, "data.evaluation.limit", 10**12), "spec.data.evaluation.limit"),
    "gate-min-1e12": (lambda s: _mutant(s, "gates.quality.0.min", 1e12), "spec.gates.quality.min"),
}


@pytest.fixture(scope="module")
def world(control_plane, ray_cluster, tmp_path_factory):
    """One namespace, one operator, every mutant applied at once; the CPUs held meanwhile."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    cp, tmp = control_plane, tmp_path_factory.mktemp("fuzz")
    ns = f"t-{uuid.uuid4().hex[:10]}"
    cp.kubectl("create", "namespace", ns)
    install_crds(cp)
    ray_cluster.connect()
    held = placement_group([{"CPU": HELD_CPUS}])
    ray.get(held.ready(), timeout=120)
    patches = tmp / "patches.jsonl"
    op = Operator(install_operator_rbac(cp, ns), ns, tmp, TIERSERVE_BACKEND="raycluster",
                  TIERSERVE_RAY_DASHBOARD=ray_cluster.dashboard_url,
                  TIERSERVE_ARTIFACT_ROOT=str(tmp / "art"), TIERSERVE_JOB_PYTHON=sys.executable,
                  TIERSERVE_JOB_PENDING_DEADLINE_S=str(PENDING_DEADLINE_S),
                  TIERSERVE_DEPLOY_DEADLINE_S=str(DEPLOY_DEADLINE_S),
                  TIERSERVE_EVAL_WAIT_S="10", TIERSERVE_PATCH_LOG=str(patches),
                  TIERSERVE_IMAGE="tierserve:test").start()
    base = tiny_spec(tmp / "data")
    (tmp / "data" / "passwd-link.jsonl").symlink_to("/etc/passwd")  # inside the base, leads out
    base["data"]["evaluation"]["limit"] = 40  # the one full job here: keep it short
    ann = {"source-dir": {names.ANN_SOURCE_DIR: str(tmp / "data")},
           "job-cpus": {names.ANN_JOB_CPUS: "1"}}
    for name, (mutate, which, *_) in CASES.items():
        spec = mutate(_relative(base) if which == "source-dir" else base)
        cp.kubectl("apply", "-n", ns, "-f", "-", input=manifest(name, spec, ann.get(which)))
    try:
        yield cp, ns, op, base, patches
    finally:
        op.stop()
        remove_placement_group(held)
        for name in CASES:
            cp.kubectl("delete", "-n", ns, "prunedmodel", name, "--wait=false", check=False)
        cp.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.mark.parametrize("case", list(CASES))
def test_every_mutant_ends_in_a_terminal_phase_naming_the_cause(world, case):
    cp, ns, op, _, patches = world
    _, _, phases, named = CASES[case]
    st = wait_for(lambda: phase_is(cp, ns, case, *phases, "Failed", "GatesFailed", "Serving"),
                  600, f"{case}: terminal phase", interval=2)
    assert st["phase"] in phases, (st, op.log()[-3000:])
    text = json.dumps(st)
    assert named in text, st
    assert status_errors(st) == []
    if case == "full-cluster":
        assert cond(st, "Pruned")["reason"] == "JobPendingTimeout"
        assert cond(st, "Waiting")["status"] == "False"
    if case == "failed-job":  # the end of the job's output: the error itself
        assert st["lastFailure"].endswith("/nonexistent/model does not exist"), st
    if case.startswith("path-"):  # never read, never copied next to an artifact
        secret = Path("/etc/passwd").read_bytes()
        art = Path(patches.parent) / "art"
        copied = [p for p in art.rglob("*") if p.is_file() and p.read_bytes() == secret]
        assert not copied, copied
        if case != "path-symlink":  # refused by the operator: no job at all
            assert cond(st, "Pruned")["reason"] == "InvalidSpec", st
    if case.startswith("data-"):  # refused before launching: no job, no job status
        assert cond(st, "Pruned")["reason"] == "InvalidSpec" and "jobStatus" not in st, st
    if case == "missing-slice":
        row = next(g for g in st["gates"] if g.get("slice") == "no-such-slice")
        assert row["passed"] is False and "threshold" not in row  # null, never Infinity


@pytest.mark.parametrize("case", list(REFUSED))
def test_the_schema_refuses_values_it_can(world, case):
    cp, ns, _, base, _ = world
    mutate, field = REFUSED[case]
    with pytest.raises(KubectlError) as err:
        cp.kubectl("apply", "-n", ns, "-f", "-", input=manifest(case, mutate(base)))
    assert field in str(err.value)


def _run(cp, ns: str, name: str, h: str) -> str:
    """The run key of spec `h` of the object as it is now (its UID, its attempt)."""
    return names.run_key(get_json(cp, "-n", ns, "prunedmodel", name), h)


def _play_job(cp, ns: str, name: str, h: str, report: dict) -> None:
    """What the job and KubeRay would do: the report into its ConfigMap, the RayJob succeeded."""
    run = _run(cp, ns, name, h)
    cp.kubectl("patch", "-n", ns, "configmap", names.report_configmap_name(name, run),
               "--type=merge", "-p", json.dumps({"data": {"report.json": json.dumps(report)}}))
    cp.kubectl("patch", "-n", ns, "rayjob", names.rayjob_name(name, run), "--subresource=status",
               "--type=merge", "-p", json.dumps({"status": {
                   "jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}}))


def _service_status(cp, ns: str, name: str, ready: str, upgrading: str) -> None:
    svc = get_json(cp, "-n", ns, "rayservice", names.rayservice_name(name))
    observed = svc["metadata"]["generation"] - (1 if upgrading == "True" else 0)
    conds = [{"type": t, "status": s, "reason": "Test", "lastTransitionTime": "2026-01-01T00:00:00Z"}
             for t, s in (("Ready", ready), ("UpgradeInProgress", upgrading))]
    cp.kubectl("patch", "-n", ns, "rayservice", names.rayservice_name(name), "--subresource=status",
               "--type=merge", "-p", json.dumps({"status": {"observedGeneration": observed,
                                                            "conditions": conds}}))


def _report(spec: dict, h: str, deployable: bool, quality: float) -> dict:
    gate = {"metric": "ndcg@10", "value": quality, "threshold": 0.9, "passed": deployable,
            "comparison": ">=", "slice": None}
    return {"complete": True, "deployable": deployable, "key": f"key-{h}", "gates": [gate],
            "budget": {"encoder_flops_removed": 0.3}, "spec": spec,
            "metrics": {"full": {"ndcg@10": 0.9}, "pruned": {"ndcg@10": quality},
                        "quality_kept": {"ndcg@10": quality}},
            "artifact": {"uri": f"file:///art/{h}"}}


def test_ready_holds_during_a_rollout_and_columns_show_what_serves(world):
    cp, ns, op, base, _ = world
    ann = {names.ANN_BACKEND: "kuberay"}
    specs = [_mutant(base, "pruning.budget.target", t) for t in (0.3, 0.4, 0.5)]
    hashes = [names.spec_hash(s) for s in specs]
    cp.kubectl("apply", "-n", ns, "-f", "-", input=manifest("rollout", specs[0], ann))
    wait_for(lambda: get_json(cp, "-n", ns, "rayjob", names.rayjob_name(
        "rollout", _run(cp, ns, "rollout", hashes[0]))),
             60, "RayJob 1")
    _play_job(cp, ns, "rollout", hashes[0], _report(specs[0], hashes[0], True, 0.97))
    wait_for(lambda: phase_is(cp, ns, "rollout", "Deploying"), 60, "Deploying 1")
    _service_status(cp, ns, "rollout", "True", "False")
    wait_for(lambda: phase_is(cp, ns, "rollout", "Serving"), 60, "Serving 1")

    cp.kubectl("apply", "-n", ns, "-f", "-", input=manifest("rollout", specs[1], ann))
    wait_for(lambda: get_json(cp, "-n", ns, "rayjob", names.rayjob_name(
        "rollout", _run(cp, ns, "rollout", hashes[1]))),
             60, "RayJob 2")
    _play_job(cp, ns, "rollout", hashes[1], _report(specs[1], hashes[1], True, 0.95))
    wait_for(lambda: get_json(cp, "-n", ns, "rayservice", "rollout-tiers")["metadata"][
        "annotations"][names.ANN_SPEC_HASH] == hashes[1], 60, "the in-place serveConfigV2 update")
    _service_status(cp, ns, "rollout", "True", "True")  # KubeRay: old app answers, new one comes
    st = wait_for(lambda: phase_is(cp, ns, "rollout", "Deploying"), 60, "Deploying 2")
    for _ in range(3):  # over several resync passes
        st = pm_status(cp, ns, "rollout")
        assert st["phase"] == "Deploying" and cond(st, "Ready")["status"] == "True", st
    _service_status(cp, ns, "rollout", "True", "False")
    st = wait_for(lambda: (s := phase_is(cp, ns, "rollout", "Serving")) and
                  s["serving"]["generation"] == 2 and s, 60, "Serving 2")

    cp.kubectl("apply", "-n", ns, "-f", "-", input=manifest("rollout", specs[2], ann))
    wait_for(lambda: get_json(cp, "-n", ns, "rayjob", names.rayjob_name(
        "rollout", _run(cp, ns, "rollout", hashes[2]))),
             60, "RayJob 3")
    _play_job(cp, ns, "rollout", hashes[2], _report(specs[2], hashes[2], False, 0.61))
    st = wait_for(lambda: phase_is(cp, ns, "rollout", "GatesFailed"), 60, "GatesFailed 3")
    assert st["serving"]["quality"] == 0.95 and st["candidate"]["quality"] == 0.61
    printed = cp.kubectl("get", "-n", ns, "pm", "rollout").stdout.split("\n")
    head, row = printed[0].split(), printed[1].split()
    assert head[:6] == ["NAME", "PHASE", "SERVING", "BUDGET", "QUALITY", "CANDIDATE"], printed
    assert row[:6] == ["rollout", "GatesFailed", "2", "0.3", "0.95", "GatesFailed"], printed
    assert "0.61" in row[6:], printed


def test_the_operator_stayed_up_and_every_patch_fit_the_crd(world):
    _, _, op, _, patches = world
    for case in CASES:  # after all the mutants above
        wait_for(lambda c=case: phase_is(world[0], world[1], c, "Failed", "GatesFailed"), 600,
                 case)
    assert op.proc is not None and op.proc.proc.poll() is None, op.log()[-3000:]
    assert patches.exists() and patch_log_errors(patches) == []
    assert "Invalid JSON" not in op.log() and "Unhandled exception" not in op.log()
