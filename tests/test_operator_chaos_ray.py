"""Issue 17, defects 4 and 8, and issue 25, case 5, with no stand-in: the real control plane, the operator (`kopf run`
under the chart's ServiceAccount) and a real Ray head of this module's own, which the test stops
and starts again on the same ports (a Ray head restart: the new head knows no job).

- while the dashboard is down, status says `retrying after a transient error` (condition
  Waiting/TransientError names the unreachable dashboard);
- a job that failed before the restart is never submitted again (its outcome is in status);
- an operator restarted while a job waits is not a second job: it adopts it (`JobAdopted`).
"""

from __future__ import annotations

import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest
from fixtures.procs import ManagedProcess, free_ports, wait_until
from fixtures.ray_cluster import _HEAD_ENV, _dashboard_ready, _head_argv, _kill_leftovers
from operator_harness import (
    Operator,
    cond,
    events_for,
    install_crds,
    install_operator_rbac,
    manifest,
    patch_log_errors,
    phase_is,
    pm_status,
    tiny_spec,
    wait_for,
)

from tierserve.operator import names

pytestmark = [pytest.mark.k8s, pytest.mark.slow]
PORTS = ["port", "dashboard-port", "ray-client-server-port", "node-manager-port",
         "object-manager-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
         "runtime-env-agent-port", "metrics-export-port"]


class RestartableHead:
    """`ray start --head --block` that can be stopped and started again on the same ports."""

    def __init__(self) -> None:
        self.temp_dir = Path(tempfile.mkdtemp(prefix="ts-rayc-"))
        self.ports = dict(zip(PORTS, free_ports(len(PORTS)), strict=True))
        self.url = f"http://127.0.0.1:{self.ports['dashboard-port']}"
        self.proc: ManagedProcess | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.proc = ManagedProcess(f"ray-head-{self.starts}", _head_argv(self.temp_dir, self.ports),
                                   self.temp_dir / f"ray-start-{self.starts}.log",
                                   env=_HEAD_ENV).start()
        wait_until(lambda: self.proc.ensure_alive() and _dashboard_ready(self.url), timeout=180,
                   interval=1, what=f"Ray head at {self.url}", on_timeout=self.proc.describe_failure)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=30)
        _kill_leftovers(self.temp_dir)


def _jobs(url: str, ns: str, name: str) -> list[dict]:
    import json

    with urllib.request.urlopen(f"{url}/api/jobs/", timeout=30) as resp:
        jobs = json.loads(resp.read())
    return [j for j in jobs if (j.get("submission_id") or "").startswith(f"tierserve-{ns}.{name}-")]


def test_ray_head_restart_never_resubmits_a_failed_job(control_plane, namespace, tmp_path):
    cp, ns = control_plane, namespace
    install_crds(cp)
    head = RestartableHead()
    head.start()
    patches = tmp_path / "patches.jsonl"
    op = Operator(install_operator_rbac(cp, ns), ns, tmp_path, TIERSERVE_BACKEND="raycluster",
                  TIERSERVE_RAY_DASHBOARD=head.url, TIERSERVE_ARTIFACT_ROOT=str(tmp_path / "art"),
                  TIERSERVE_JOB_PYTHON=sys.executable, TIERSERVE_PATCH_LOG=str(patches)).start()
    try:
        spec = tiny_spec(tmp_path / "data")
        # inside the operator's data roots (the temp dir), so a job is launched and fails there
        missing = f"{tempfile.gettempdir()}/nonexistent/model"
        broken = {**spec, "model": {**spec["model"], "uri": missing}}
        cp.kubectl("apply", "-n", ns, "-f", "-", input=manifest("broken", broken))
        # a job that cannot start on this 2-CPU head: it waits (pending) until adopted/deleted
        cp.kubectl("apply", "-n", ns, "-f", "-", input=manifest(
            "waits", spec, {names.ANN_JOB_CPUS: "8"}))
        st = wait_for(lambda: phase_is(cp, ns, "broken", "Failed"), 300, "broken: Failed", 2)
        assert "/nonexistent/model does not exist" in st["lastFailure"]
        assert st["outcome"] == "JobFailed"
        assert [j["status"] for j in _jobs(head.url, ns, "broken")] == ["FAILED"]
        st = wait_for(lambda: (s := pm_status(cp, ns, "waits")).get("jobStatus") == "pending"
                      and s, 120, "waits: pending")
        assert cond(st, "Waiting")["reason"] == "JobPending"
        assert "asks for 8 CPU" in cond(st, "Waiting")["message"]

        op.kill()  # an operator restart while the job waits: adopted, not submitted again
        op.start()
        wait_for(lambda: ("Normal", "JobAdopted") in events_for(cp, ns, "waits"), 120, "JobAdopted")
        assert len(_jobs(head.url, ns, "waits")) == 1

        head.stop()  # the dashboard is down: status says the operator is retrying
        st = wait_for(lambda: "retrying after a transient error" in (
            pm_status(cp, ns, "broken").get("message") or "") and pm_status(cp, ns, "broken"),
            120, "broken: retrying")
        assert cond(st, "Waiting")["reason"] == "TransientError"
        assert head.url.split("//")[1] in cond(st, "Waiting")["message"]

        head.start()  # a new head: it knows no job at all
        wait_for(lambda: (s := pm_status(cp, ns, "broken")).get("phase") == "Failed"
                 and "retrying" not in s.get("message", "") and s, 120, "broken: Failed again")
        wait_for(lambda: _jobs(head.url, ns, "waits"), 120, "waits: its job submitted again")
        assert _jobs(head.url, ns, "broken") == []  # the failed job was never resubmitted
        st = pm_status(cp, ns, "broken")
        assert st["phase"] == "Failed" and st["outcome"] == "JobFailed"
        reasons = [r for _, r in events_for(cp, ns, "broken")]
        assert reasons.count("JobCreated") == 1, reasons
        assert patch_log_errors(patches) == []
        for name in ("broken", "waits"):
            cp.kubectl("delete", "-n", ns, "prunedmodel", name, "--wait=true", timeout=120)
    finally:
        op.stop()
        head.stop()


def test_a_serving_object_is_unknown_while_the_head_is_down_and_comes_back_without_pruning(
        control_plane, namespace, tmp_path):
    """Issue 25, case 5: while the head is down, Ready is Unknown (not True); a new head knows
    no job and no app, and the finished version is redeployed from its artifact: no new job."""
    from fixtures.procs import free_port
    from test_operator_identity import _embed

    cp, ns = control_plane, namespace
    install_crds(cp)
    head = RestartableHead()
    head.start()
    patches = tmp_path / "patches.jsonl"
    op = Operator(install_operator_rbac(cp, ns), ns, tmp_path, TIERSERVE_BACKEND="raycluster",
                  TIERSERVE_RAY_DASHBOARD=head.url, TIERSERVE_ARTIFACT_ROOT=str(tmp_path / "art"),
                  TIERSERVE_JOB_PYTHON=sys.executable, TIERSERVE_PATCH_LOG=str(patches),
                  TIERSERVE_SERVE_PORT=str(free_port())).start()
    try:
        cp.kubectl("apply", "-n", ns, "-f", "-", input=manifest("s", tiny_spec(tmp_path / "data")))
        st = wait_for(lambda: phase_is(cp, ns, "s", "Serving", "GatesFailed", "Failed"), 900,
                      "s: Serving", 2)
        assert st["phase"] == "Serving", (st, op.log()[-3000:])
        assert list(_jobs(head.url, ns, "s")) and _embed(st["endpoint"])["tier"]

        head.stop()
        st = wait_for(lambda: (s := pm_status(cp, ns, "s")) and cond(s, "Ready")["status"]
                      == "Unknown" and s, 120, "s: Ready Unknown")
        ready = cond(st, "Ready")
        assert ready["reason"] == "ClusterUnreachable" and head.url.split("//")[1] in ready["message"]

        head.start()  # a new head: no job, no job logs (no report), no Serve app
        st = wait_for(lambda: (s := phase_is(cp, ns, "s", "Serving", "Failed")) and
                      cond(s, "Ready")["status"] == "True" and s, 600, "s: Serving again", 2)
        assert _jobs(head.url, ns, "s") == []  # redeployed from the artifact, never re-pruned
        assert st["serving"]["generation"] == 1 and _embed(st["endpoint"])["tier"]
        reasons = [r for _, r in events_for(cp, ns, "s")]
        assert reasons.count("JobCreated") == 1 and "Pruning" not in reasons[reasons.index(
            "Serving"):], reasons
        assert patch_log_errors(patches) == []
        cp.kubectl("delete", "-n", ns, "prunedmodel", "s", "--wait=true", timeout=120)
    finally:
        op.stop()
        head.stop()
