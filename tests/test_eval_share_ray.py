"""Serving is never starved by evaluation (issue 25, item 7), on the real local Ray (2 CPUs).

The job's evaluation tasks reserve together at most TIERSERVE_EVAL_CPU_SHARE of the cluster's CPUs
(default 0.5); and the operator can say who holds the CPUs a waiting deploy needs. The pure
sizing, the line's wording and the chart setting are in tests/test_eval_share.py.
"""

from __future__ import annotations

import shlex
import sys
import time

import pytest
import ray
from ray.util.placement_group import placement_group, remove_placement_group

from tierserve.operator.holders import cpu_holders, with_holders
from tierserve.operator.reconcile import ServeState
from tierserve.pruning.parallel import PG_NAME, run_side_by_side

pytestmark = pytest.mark.slow


def _wait_free(ray_cluster, cpus: float) -> None:
    """Until `cpus` are free (placement groups are released asynchronously); else say who holds
    them."""
    deadline = time.monotonic() + 60
    while ray.available_resources().get("CPU", 0.0) < cpus:
        assert time.monotonic() < deadline, cpu_holders(ray_cluster.dashboard_url, timeout_s=30)
        time.sleep(0.5)


def test_evaluation_on_a_2_cpu_cluster_reserves_at_most_1_cpu(ray_cluster, monkeypatch):
    ray_cluster.connect()
    monkeypatch.setenv("TIERSERVE_EVAL_CPU_SHARE", "0.5")
    monkeypatch.delenv("TIERSERVE_EVAL_CPUS", raising=False)

    def observe(i: int) -> dict:  # what the evaluation task itself holds while it runs
        import ray
        from ray.util import get_current_placement_group

        pg = get_current_placement_group()
        return {"i": i, "bundles": pg.bundle_specs,
                "eval_pgs": [p for p in ray.util.placement_group_table().values()
                             if p["name"] == PG_NAME and p["state"] == "CREATED"]}

    assert ray.cluster_resources()["CPU"] == 2.0
    _wait_free(ray_cluster, 2.0)
    results, where = run_side_by_side(observe, [(0,), (1,)])
    assert where == "ray"
    assert [r["i"] for r in results] == [0, 1]  # order kept although one task ran both
    for r in results:
        assert r["bundles"] == [{"CPU": 1.0}], r["bundles"]  # one task of 1 CPU evaluated both
        held = sum(b.get("CPU", 0) for p in r["eval_pgs"] for b in p["bundles"].values())
        assert held <= 1.0, r["eval_pgs"]  # all the evaluation tasks together: half the CPUs
    monkeypatch.setenv("TIERSERVE_EVAL_CPU_SHARE", "1")  # the whole cluster, once it is free again
    _wait_free(ray_cluster, 2.0)
    results, where = run_side_by_side(observe, [(0,), (1,)])
    assert where == "ray" and [len(r["eval_pgs"][0]["bundles"]) for r in results] == [2, 2]


def test_cpu_holders_names_the_job_and_its_placement_group(ray_cluster):
    """A job submitted like the operator's (submission id, PrunedModel metadata) holds a named
    placement group; the line names the job, its object and the group."""
    ray_cluster.connect()
    hold = ("import ray, time; from ray.util.placement_group import placement_group as p; "
            "ray.init(); ray.get(p([{'CPU': 1}], name='tierserve-eval').ready()); "
            "print('HE' + 'LD', flush=True); time.sleep(120)")  # the log echoes the entrypoint
    jobs = ray_cluster.job_client()
    sid = f"tierserve-ns--holder-{time.time_ns() % 10**8}"
    jobs.submit_job(entrypoint=shlex.join([sys.executable, "-c", hold]), submission_id=sid,
                    metadata={"tierserve.io/prunedmodel": "holder"})
    mine = placement_group([{"CPU": 0.5}], name="probe-pg")
    try:
        ray.get(mine.ready(), timeout=60)
        deadline = time.monotonic() + 120
        while "HELD" not in jobs.get_job_logs(sid):  # printed once the group is ready
            assert time.monotonic() < deadline, jobs.get_job_logs(sid)[-2000:]
            time.sleep(1)
        text = cpu_holders(ray_cluster.dashboard_url, timeout_s=30)  # a loaded CI machine
        assert f"job {sid} (PrunedModel holder) 1 (placement group tierserve-eval 1)" in text, text
        assert "placement group probe-pg 0.5" in text, text
        assert text.index(sid) < text.index("probe-pg")  # the largest holder first
        waiting = ServeState(spec_hash="h", message="Deployment Router: cannot be scheduled")
        assert with_holders(waiting, ray_cluster.dashboard_url, 30).message.startswith(
            "Deployment Router: cannot be scheduled; CPUs held by: job tierserve-ns--holder")
        ready = ServeState(spec_hash="h", ready=True)
        assert with_holders(ready, ray_cluster.dashboard_url) is ready  # no wait, no question
    finally:
        jobs.stop_job(sid)
        remove_placement_group(mine)
    assert cpu_holders("http://127.0.0.1:9", timeout_s=1) == ""  # nothing answers: no claim
    assert with_holders(waiting, "http://127.0.0.1:9", timeout_s=1) is waiting
