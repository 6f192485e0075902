"""Distillation on Ray Train on the real local Ray: a job submitted through the Jobs API trains
with `TorchTrainer` on 2 DDP workers, is killed mid-distillation and resumes from its checkpoint
on the artifact store; and one Ray Train worker gives the in-process loop's model."""

from __future__ import annotations

import copy
import json
import shlex
import sys
import time
from dataclasses import replace

import pytest
import yaml
from distill_common import small_debian, small_spec
from ray.job_submission import JobStatus

from tierserve.pruning.adapters import adapter_for
from tierserve.pruning.engine import PruneConfig, prune_with_scores
from tierserve.pruning.importance import score
from tierserve.pruning.recovery.distillation import (
    CheckpointStore,
    DistillConfig,
    build_data,
    distill_texts,
    train_loop,
)
from tierserve.pruning.recovery.distillation.objectives import Objective
from tierserve.pruning.recovery.distillation.ray_train import fit_on_ray
from tierserve.pruning.structure import Budget

pytestmark = pytest.mark.slow

STEPS, KILL_AT = 60, 12
DONE = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}


def _wait(jobs, job_id, until, timeout=600.0):
    deadline = time.monotonic() + timeout
    while not until():
        status = jobs.get_job_status(job_id)
        assert status not in DONE, f"job {job_id} {status}:\n{jobs.get_job_logs(job_id)[-3000:]}"
        assert time.monotonic() < deadline, f"job {job_id} still {status}"
        time.sleep(1)


def _finish(jobs, job_id, timeout=600.0) -> JobStatus:
    deadline = time.monotonic() + timeout
    while (status := jobs.get_job_status(job_id)) not in DONE:
        assert time.monotonic() < deadline, f"job {job_id} still {status}"
        time.sleep(1)
    return status


def _distill_step(out) -> int:
    try:
        stage = json.loads((out / "progress.json").read_text())["stage"]
    except (OSError, ValueError, KeyError):
        return -1
    return int(stage.split()[1].split("/")[0]) if stage.startswith("distill ") else -1


def test_ray_job_distills_on_two_workers_and_resumes_after_a_kill(ray_cluster, debian_dir,
                                                                  tmp_path):
    data = small_debian(debian_dir, tmp_path / "debian", {"calibration": 160, "test": 40})
    doc = small_spec(data, {"distillSteps": STEPS, "workers": 2, "batchSize": 16,
                            "learningRate": 1e-4})
    spec, out = tmp_path / "spec.yaml", tmp_path / "out"
    spec.write_text(yaml.safe_dump(doc))
    entry = shlex.join([sys.executable, "-m", "tierserve.pruning.job", "--spec", str(spec),
                        "--out", out.as_uri()])
    jobs = ray_cluster.job_client()
    env = {"env_vars": {"HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}}
    first = jobs.submit_job(entrypoint=entry, runtime_env=env)
    _wait(jobs, first, lambda: _distill_step(out) >= KILL_AT)
    jobs.stop_job(first)
    assert _finish(jobs, first) == JobStatus.STOPPED
    assert not (out / "report.json").exists()  # killed mid-distillation
    assert list(out.glob("artifacts/*/distill/round1/latest.pt"))  # checkpoint on the store

    second = jobs.submit_job(entrypoint=entry, runtime_env=env)
    status = _finish(jobs, second)
    assert status == JobStatus.SUCCEEDED, jobs.get_job_logs(second)[-5000:]
    d = json.loads((out / "report.json").read_text())["distillation"]
    # written by the trainer itself: rank 0 on Ray Train saw a world of 2 workers
    assert (d["backend"], d["workers"], d["steps"]) == ("ray-train", 2, STEPS)
    assert KILL_AT <= d["resumed_from"] < STEPS
    assert d["curve"][0]["step"] == 0  # the curve before the kill came back from the checkpoint


def test_one_ray_train_worker_gives_the_in_process_model(ray_cluster, minilm, debian_retrieval,
                                                         tmp_path):
    ray_cluster.connect()
    cal = debian_retrieval["calibration"]
    texts = distill_texts(replace(cal, queries=cal.queries[:40], corpus=cal.corpus[:40],
                                  query_ids=cal.query_ids[:40], doc_ids=cal.doc_ids[:40]))
    batches = minilm.batches(list(texts.train[:32]), 16)
    scores = score("magnitude", minilm, adapter_for(minilm.model), [], target="self")
    res = prune_with_scores(minilm, scores, batches, PruneConfig(
        criterion="magnitude", rescale=False, budget=Budget(kind="flops", target=0.5)))
    data = build_data(minilm, texts, Objective.embedding, 16)
    cfg = DistillConfig(steps=4, eval_every=2, lr=1e-4, workers=1)
    a, b = res.model, replace(res.model, model=copy.deepcopy(res.model.model))
    before = copy.deepcopy(a.model.state_dict())
    store_a = CheckpointStore(tmp_path / "a", "same-run")
    store_b = CheckpointStore(tmp_path / "b", "same-run")
    train_loop(a, data, cfg, store=store_a)
    res_b, device = fit_on_ray(b, data, cfg, store_b, None, None)
    assert (res_b.steps, res_b.resumed_from, device) == (4, 0, "cpu")
    # the last step's weights (checkpointed by the loop itself), not the best ones
    sa, sb = store_a.latest()["model"], store_b.latest()["model"]
    assert sa.keys() == sb.keys()
    moved = max(float((sa[k] - before[k]).abs().max()) for k in sa)
    assert moved > 1e-4  # distillation really changed the weights
    worst = max(float((sa[k] - sb[k]).abs().max()) for k in sa)
    assert worst < 1e-5, f"max weight difference in-process vs 1 Ray Train worker: {worst}"
