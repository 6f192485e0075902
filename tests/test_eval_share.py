"""Serving is never starved by evaluation (issue 25, item 7), the pure half: how many evaluation
tasks of what size a share of the cluster allows, how the operator words who holds the CPUs, and
the setting from the chart to the operator. The real Ray half is tests/test_eval_share_ray.py.
"""

from __future__ import annotations

import pytest

from tierserve.operator.config import OperatorConfig
from tierserve.operator.holders import describe, holdings
from tierserve.pruning.parallel import eval_share, plan_workers


def test_the_plan_caps_evaluation_at_its_share_of_the_cluster():
    two, four, eight = {"CPU": 2.0}, {"CPU": 4.0}, {"CPU": 8.0, "GPU": 2.0}
    assert plan_workers(two, two, 2) == (1, 1.0, 0)  # one task of 1 CPU evaluates both models
    assert plan_workers(two, two, 2, share=1.0) == (2, 1.0, 0)
    assert plan_workers(four, four, 2) == (2, 1.0, 0)
    assert plan_workers(eight, eight, 2) == (2, 2.0, 0)  # 1 of the 2 GPUs: not one each
    assert plan_workers(eight, eight, 2, share=1.0) == (2, 4.0, 1)
    assert plan_workers({"CPU": 1.0}, {"CPU": 1.0}, 2) == (1, 1.0, 0)  # never below one task
    assert plan_workers({"CPU": 1.0}, four, 2) == (1, 1.0, 0)  # free is less than the share
    assert plan_workers(two, two, 2, wanted_cpus=0.5) == (2, 0.5, 0)
    assert plan_workers({"CPU": 0.5}, two, 2) == ("cluster full: 0.5 CPU available, an "
                                                  "evaluation task needs 1")
    assert eval_share({}) == 0.5 and eval_share({"TIERSERVE_EVAL_CPU_SHARE": "0.25"}) == 0.25
    assert eval_share({"TIERSERVE_EVAL_CPU_SHARE": "2"}) == 0.5  # not in (0, 1]: the default
    assert eval_share({"TIERSERVE_EVAL_CPU_SHARE": "half"}) == 0.5


def test_describe_counts_serve_replicas_under_their_app_and_skips_what_holds_nothing():
    held = holdings(
        pgs=[{"state": "REMOVED", "name": "gone", "creator_job_id": "01",
              "bundles": [{"unit_resources": {"CPU": 2}}]}],
        actors=[{"state": "ALIVE", "class_name": "ServeReplica:team-b-y:Router", "job_id": "02",
                 "required_resources": {"CPU": 1}},
                {"state": "ALIVE", "class_name": "ServeController", "job_id": "02",
                 "required_resources": {}},
                {"state": "ALIVE", "class_name": "X", "job_id": "03", "placement_group_id": "p",
                 "required_resources": {"CPU": 1}}],
        tasks=[{"state": "RUNNING", "job_id": "03", "required_resources": {"CPU": 0.5}}])
    assert describe(held) == ("CPUs held by: Serve app team-b-y 1 (replicas 1); "
                              "job 03 0.5 (tasks 0.5)")
    assert describe({}) == ""


def test_the_operator_reads_the_share_it_passes_to_jobs():
    assert OperatorConfig().eval_cpu_share == 0.5
    assert OperatorConfig.from_env({"TIERSERVE_EVAL_CPU_SHARE": "0.25"}).eval_cpu_share == 0.25
    assert OperatorConfig.from_env({"TIERSERVE_EVAL_CPU_SHARE": "0"}).eval_cpu_share == 0.5


def test_the_chart_sets_the_share_and_refuses_one_outside_0_1():
    test_chart = pytest.importorskip("test_chart")
    env = {e["name"]: e.get("value")
           for e in test_chart.operator_container(test_chart.render())["env"]}
    assert env["TIERSERVE_EVAL_CPU_SHARE"] == "0.5"
    docs = test_chart.render({"operator": {"evalCpuShare": 0.25}})
    env = {e["name"]: e.get("value") for e in test_chart.operator_container(docs)["env"]}
    assert env["TIERSERVE_EVAL_CPU_SHARE"] == "0.25"
    for bad in (0, 1.5, "half"):
        with pytest.raises(Exception, match="evalCpuShare"):
            test_chart.render({"operator": {"evalCpuShare": bad}})
