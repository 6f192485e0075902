"""30 PrunedModels applied at once to one operator (chart RBAC, real control plane) all reconcile:
each gets exactly one RayJob and, once the test (playing KubeRay) fails every job, the Failed
status of its own, with no conflict or transient error left in any status."""

from __future__ import annotations

import json

import pytest
import yaml
from operator_harness import (
    Operator,
    cond,
    get_json,
    install_crds,
    install_operator_rbac,
    tiny_spec,
    wait_for,
)

from tierserve.operator import names

pytestmark = [pytest.mark.k8s, pytest.mark.slow]
N = 30


def test_thirty_prunedmodels_reconcile_without_conflicts(control_plane, namespace, tmp_path):
    cp, ns = control_plane, namespace
    install_crds(cp)
    op = Operator(install_operator_rbac(cp, ns), ns, tmp_path, TIERSERVE_BACKEND="kuberay",
                  TIERSERVE_ARTIFACT_ROOT=str(tmp_path / "art")).start()
    try:
        spec = tiny_spec(tmp_path / "data")
        docs = [{"apiVersion": "tierserve.io/v1alpha1", "kind": "PrunedModel",
                 "metadata": {"name": f"m{i:02d}"}, "spec": spec} for i in range(N)]
        cp.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump_all(docs))

        def all_in(*phases: str) -> list[dict] | None:
            items = get_json(cp, "-n", ns, "prunedmodels")["items"]
            ok = len(items) == N and all((i.get("status") or {}).get("phase") in phases
                                         for i in items)
            return items if ok else None

        wait_for(lambda: all_in("Pending", "Pruning"), 240, f"{N} objects with their job", 2)
        jobs = get_json(cp, "-n", ns, "rayjobs")["items"]
        owners = sorted(j["metadata"]["labels"][names.LABEL_MODEL] for j in jobs)
        assert owners == [f"m{i:02d}" for i in range(N)]  # exactly one job each
        for job in jobs:  # play KubeRay: every job fails (no pods run here)
            cp.kubectl("patch", "-n", ns, "rayjob", job["metadata"]["name"],
                       "--subresource=status", "--type=merge", "-p", json.dumps({"status": {
                           "jobDeploymentStatus": "Failed", "jobStatus": "FAILED",
                           "message": "no nodes in this test cluster"}}))
        items = wait_for(lambda: all_in("Failed"), 240, f"{N} Failed statuses", 2)
        for item in items:
            st = item["status"]
            assert "no nodes in this test cluster" in st["message"], st
            assert cond(st, "Pruned")["reason"] == "JobFailed"
            text = json.dumps(st).lower()
            assert "conflict" not in text and "retrying" not in text, st
        assert len(get_json(cp, "-n", ns, "rayjobs")["items"]) == N
    finally:
        op.stop()
