"""Distillation on Ray Train: `TorchTrainer`, DDP, `ScalingConfig(num_workers, use_gpu)`.

Used when the job runs inside Ray (a Ray job or a KubeRay RayJob). The student, the tokenised
batches and the teacher's cached targets travel to the workers once through the object store;
every worker runs the same `train_loop` on its share of the batches (worker r takes batch
s x W + r at step s) and DDP averages the gradients, so one worker reproduces the in-process run.
Rank 0 checkpoints to the artifact store (`CheckpointStore`), so a restarted job resumes from the
last checkpoint, writes `progress.json` there for the driver to forward to the job's progress,
and at the end writes `result.pt` (the best weights and the curve) that the driver loads.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

import torch

from tierserve.pruning.tasks import TaskModel

from .checkpoint import CheckpointStore
from .data import DistillData
from .loop import DistillConfig, LoopResult, OnProgress, train_loop, trainable

__all__ = ["fit_on_ray"]

POLL_S = 1.0


def _write_progress(path: Path, *args) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(zip(("step", "total", "loss", "val_agreement", "fraction"),
                                       args, strict=True))))
    tmp.replace(path)


def _worker(config: dict) -> None:
    """One Ray Train worker: the shared loop on this worker's batches, DDP across workers."""
    import ray
    import ray.train
    import ray.train.torch

    p = ray.get(config["payload"])
    torch.set_num_threads(max(1, p["threads"]))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    student, cfg = p["student"], p["cfg"]
    store = CheckpointStore(p["dir"], p["fingerprint"])
    for q in student.model.parameters():  # DDP registers hooks on what requires grad
        q.requires_grad_(False)
    for q in trainable(student.model):
        q.requires_grad_(True)
    model = ray.train.torch.prepare_model(
        student.model, parallel_strategy_kwargs={"find_unused_parameters": True})
    tm = TaskModel(student.task, model, student.processor, student.cross_encoder,
                   student.max_length)
    progress = (lambda *a: _write_progress(store.dir / "progress.json", *a)) if rank == 0 else None
    res = train_loop(tm, p["data"], cfg, rank=rank, world=world, store=store,
                     on_progress=progress, d_teacher=p["d_teacher"])
    if rank == 0:
        doc = {k: v for k, v in asdict(res).items() if k != "best_state"}
        torch.save({"result": json.dumps(doc), "state": res.best_state,
                    "device": str(next(model.parameters()).device)}, store.dir / "result.pt")
    ray.train.report({"steps": res.steps, "best_step": res.best_step, "world": world})


def _forward_progress(path: Path, on_progress: OnProgress | None, done: threading.Event) -> None:
    seen = None
    while not done.wait(POLL_S):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if on_progress is not None and doc != seen:
            seen = doc
            on_progress(doc["step"], doc["total"], doc["loss"], doc["val_agreement"],
                        doc["fraction"])


def fit_on_ray(student: TaskModel, data: DistillData, cfg: DistillConfig,
               store: CheckpointStore | None, on_progress: OnProgress | None,
               d_teacher: int | None) -> tuple[LoopResult, str]:
    """Run the loop on `cfg.workers` Ray Train workers; load the best weights into `student`."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    store = store or CheckpointStore(tempfile.mkdtemp(prefix="distill-"), "tmp")
    store.dir.mkdir(parents=True, exist_ok=True)
    (store.dir / "result.pt").unlink(missing_ok=True)
    (store.dir / "progress.json").unlink(missing_ok=True)
    payload = ray.put({"student": student, "data": data, "cfg": cfg, "dir": str(store.dir),
                       "fingerprint": store.fingerprint, "d_teacher": d_teacher,
                       "threads": max(1, torch.get_num_threads() // cfg.workers)})
    trainer = TorchTrainer(
        _worker, train_loop_config={"payload": payload},
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu),
        run_config=RunConfig(name=f"distill-{store.fingerprint}-{time.time_ns()}",
                             storage_path=str((store.dir / "ray").resolve())))
    done = threading.Event()
    poller = threading.Thread(target=_forward_progress, daemon=True,
                              args=(store.dir / "progress.json", on_progress, done))
    poller.start()
    try:
        trainer.fit()
    finally:
        done.set()
        poller.join()
    out = torch.load(store.dir / "result.pt", map_location="cpu", weights_only=True)
    res = LoopResult(**json.loads(out["result"]))
    if out["state"] is not None:
        device = next(student.model.parameters()).device
        student.model.load_state_dict({k: v.to(device) for k, v in out["state"].items()})
    return res, out["device"]
