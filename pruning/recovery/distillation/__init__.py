"""Recovery stage 2: knowledge distillation from the full model into the pruned one (no labels).

- `objectives`: what is matched (pooled embeddings + in-batch similarities, logits, next-token
  distributions, optionally hidden states of the kept layers);
- `data`: which texts (calibration split + optional raw-text file) and the teacher's cached targets;
- `loop`: the training loop with step/time budgets, validation agreement, early stop, best weights;
- `checkpoint`: resumable checkpoints on the artifact store;
- `ray_train`: the same loop on Ray Train workers (`TorchTrainer`, DDP);
- `stage`: the job's entry point (`distill_stage`), which picks the backend and writes the report.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from tierserve.pruning.tasks import TaskModel

from .checkpoint import CheckpointStore
from .data import (
    DistillData,
    DistillTexts,
    build_data,
    distill_texts,
    greedy_continuations,
    read_texts,
)
from .loop import DistillConfig, LoopResult, train_loop, val_agreement
from .objectives import Objective, choose_objective, teacher_forward
from .stage import distill_stage, fingerprint

__all__ = ["CheckpointStore", "DistillConfig", "DistillData", "DistillTexts", "LoopResult",
           "Objective", "build_data", "choose_objective", "distill", "distill_stage",
           "distill_texts", "fingerprint", "greedy_continuations", "read_texts", "train_loop",
           "val_agreement"]


def distill(pruned: TaskModel, full: TaskModel, batches: Sequence[dict], steps: int,
            lr: float = 2e-5, *, temperature: float = 2.0, weight_decay: float = 0.01) -> dict:
    """Distil on ready-made batches for exactly `steps` AdamW steps, no validation (the last
    weights are kept). Batches are cycled in order. Returns {"loss": [per step], "steps", "lr",
    "seconds", "objective": "cosine" | "kl"}."""
    if not batches or steps < 0:
        raise ValueError("distill: needs at least one batch and steps >= 0")
    objective = choose_objective(pruned)
    teacher = tuple(teacher_forward(full, b, objective) for b in batches)
    data = DistillData(objective, tuple(batches), teacher, (), (), (), (), len(batches), 0)
    cfg = DistillConfig(steps=steps, lr=lr, temperature=temperature, weight_decay=weight_decay,
                        eval_every=1, schedule="constant", warmup=0.0)
    t0 = time.perf_counter()
    res = train_loop(pruned, data, cfg) if steps else None
    losses = [p["loss"] for p in res.curve if p["step"] > 0] if res else []
    return {"loss": losses, "steps": steps, "lr": lr, "seconds": time.perf_counter() - t0,
            "objective": "cosine" if objective is Objective.embedding else "kl"}

