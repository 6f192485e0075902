"""The distillation stage of the job: texts -> cached teacher targets -> loop (in-process or Ray
Train) -> the best student, plus the report section.

    section, details = distill_stage(pruned, full, texts, DistillConfig(steps=400), kept_layers=...,
                                     ckpt_dir=art / "distill", fingerprint=..., use_ray=False)

`section` has exactly the keys of report["distillation"]: steps, seconds, device, workers,
backend ("in-process" | "ray-train"), best_step, resumed_from, curve [{step, loss,
val_agreement}]. `details` (objective, texts, stop reason, ...) goes to report["prune"].
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from tierserve.pruning.tasks import TaskModel

from .checkpoint import CheckpointStore
from .data import DistillTexts, build_data
from .loop import DistillConfig, LoopResult, OnProgress, train_loop
from .objectives import choose_objective

__all__ = ["distill_stage", "fingerprint", "section"]


def fingerprint(structure: dict, cfg: DistillConfig, texts: DistillTexts, tag: str = "") -> str:
    """Identifies one distillation run: a checkpoint with another fingerprint is never loaded."""
    doc = {"structure": structure, "config": asdict(cfg), "tag": tag,
           "texts": hashlib.sha256("\x00".join(map(str, texts.train)).encode()).hexdigest(),
           "groups": hashlib.sha256(repr(texts.groups).encode()).hexdigest()}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def section(res: LoopResult, device: str, workers: int, backend: str) -> dict:
    """report["distillation"], exactly these keys."""
    curve = [{"step": p["step"], "loss": p["loss"], "val_agreement": p["val_agreement"]}
             for p in res.curve]
    return {"steps": res.steps, "seconds": res.seconds, "device": device, "workers": workers,
            "backend": backend, "best_step": res.best_step, "resumed_from": res.resumed_from,
            "curve": curve}


def distill_stage(student: TaskModel, teacher: TaskModel, texts: DistillTexts, cfg: DistillConfig,
                  *, kept_layers: Sequence[int], ckpt_dir: str | Path | None = None,
                  fingerprint: str = "", use_ray: bool = False,
                  on_progress: OnProgress | None = None) -> tuple[dict, dict]:
    """Distil `teacher` into `student` (in place). Returns (report section, details)."""
    t0 = time.perf_counter()
    objective = choose_objective(student, cfg.objective)
    layers = tuple(kept_layers) if cfg.hidden_states else None
    data = build_data(teacher, texts, objective, cfg.batch_size, seed=cfg.seed, layers=layers,
                      bucket=cfg.bucket)
    teacher_s = time.perf_counter() - t0
    store = CheckpointStore(ckpt_dir, fingerprint) if ckpt_dir is not None else None
    d_teacher = int(teacher.model.config.hidden_size) if cfg.hidden_states else None
    if use_ray:
        from .ray_train import fit_on_ray

        res, device = fit_on_ray(student, data, cfg, store, on_progress, d_teacher)
        backend, workers = "ray-train", cfg.workers
    else:
        res = train_loop(student, data, cfg, store=store, on_progress=on_progress,
                         d_teacher=d_teacher)
        device = str(next(student.model.parameters()).device)
        backend, workers = "in-process", 1
    details = {"objective": objective.value, "texts": data.texts, "val_texts": data.val_texts,
               "teacher_cache_seconds": teacher_s, "stopped": res.stopped,
               "best_val_agreement": res.best_agreement, "lr": cfg.lr,
               "schedule": cfg.schedule, "warmup": cfg.warmup, "bucket": cfg.bucket,
               "batch_size": cfg.batch_size, "precision": cfg.precision,
               "hidden_states": cfg.hidden_states, "max_seconds": cfg.max_seconds,
               "val_cosine": [p.get("val_cosine") for p in res.curve]}
    return section(res, device, workers, backend), details
