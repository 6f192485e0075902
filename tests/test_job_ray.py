"""The pruning job submitted through Ray's Jobs API to a real local Ray; the report is read back."""

import json
import shlex
import sys
import time

import pytest
import yaml
from ray.job_submission import JobStatus

pytestmark = pytest.mark.slow


def test_job_runs_through_the_ray_jobs_api(ray_cluster, repo_root, tmp_path):
    doc = yaml.safe_load((repo_root / "examples/minilm-pass.yaml").read_text())
    data = doc["spec"]["data"]
    for src in (data["calibration"], data["evaluation"]):
        for field in ("queries", "corpus", "qrels"):
            src[field] = str(repo_root / "examples" / src[field])
    data["evaluation"]["limit"] = 150  # keep the Ray round trip short; gates still judge real rows
    doc["spec"]["pruning"]["calibrationSamples"] = 64
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    entry = shlex.join([sys.executable, "-m", "tierserve.pruning.job", "--spec", str(spec),
                        "--out", out.as_uri()])
    jobs = ray_cluster.job_client()
    job_id = jobs.submit_job(entrypoint=entry, runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}})
    deadline = time.monotonic() + 900
    while (status := jobs.get_job_status(job_id)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED,
                                                          JobStatus.STOPPED}:
        assert time.monotonic() < deadline, f"job {job_id} still {status}"
        time.sleep(2)
    logs = jobs.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs
    report = json.loads((out / "report.json").read_text())
    assert report["deployable"] is True
    assert all(g["passed"] for g in report["gates"])
    assert "PASS" in logs  # the gate table is in the job's own log
    assert report["evaluated_on"] == "ray"  # full and pruned were evaluated as Ray tasks
    progress = json.loads((out / "progress.json").read_text())
    assert progress["fraction"] == 1.0
