"""The distillation loop, shared by the in-process path and every Ray Train worker.

Step s of a run with W workers trains worker r on batch (s x W + r) mod n_batches, so one worker
in Ray Train does exactly what the in-process loop does (same seed, same model). Stopping: the
step budget, the wall-time budget (`max_seconds`; all workers stop at the same step) and early
stop after `patience` validations without a better validation agreement. The best validated
weights (step 0, the undistilled model, included) are kept. The learning rate follows the budget
used (the larger of steps/total and seconds/max_seconds, the largest over the workers): a linear
warm-up, then cosine decay to 0 as the budget ends (`schedule`, `warmup`). Models stay in eval
mode (no dropout), so a run with a step budget is deterministic; the input embedding table is
frozen (few calibration texts should not move token vectors that the rest of the vocabulary
shares).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from tierserve.pruning.importance.common import grad_only
from tierserve.pruning.tasks import TaskModel

from .checkpoint import CheckpointStore
from .data import DistillData
from .objectives import HiddenMaps, Objective, hidden_loss, objective_loss, student_forward

__all__ = ["DistillConfig", "LoopResult", "OnProgress", "lr_factor", "train_loop", "trainable",
           "unwrap", "val_agreement"]

OnProgress = Callable[[int, int | None, float, float | None, float], None]
# (step, total or None, loss, val_agreement or None, fraction of the budget used)


@dataclass(frozen=True)
class DistillConfig:
    steps: int = 0  # optimizer steps (0 with max_seconds: until the wall-time budget)
    max_seconds: float | None = None  # wall-time budget of the loop
    lr: float = 1e-4  # peak learning rate (after warm-up); the spec's default too
    batch_size: int = 32
    schedule: str = "cosine"  # cosine | constant: lr over the budget used (steps or seconds)
    warmup: float = 0.05  # fraction of the budget with a linear warm-up to `lr`
    bucket: bool = True  # batches of similar token length: less padding, cheaper steps
    temperature: float = 2.0
    objective: str = "auto"  # auto | embedding | logits | tokens
    hidden_states: bool = False
    relational: float = 1.0  # weight of the in-batch similarity-matrix term (embeddings)
    patience: int = 0  # validations without improvement before stopping; 0 = never early
    eval_every: int = 0  # steps between validations; 0 = about 10 per run (at most 50 apart)
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    workers: int = 1
    use_gpu: bool = False
    seed: int = 0
    weight_decay: float = 0.01
    cap_steps: int = 100_000  # with only a time budget

    @property
    def total(self) -> int:
        return self.steps or self.cap_steps

    @property
    def every(self) -> int:
        return self.eval_every or (max(1, min(50, self.total // 10)) if self.steps else 25)


@dataclass
class LoopResult:
    steps: int
    seconds: float
    best_step: int
    best_agreement: float
    resumed_from: int
    curve: list[dict] = field(default_factory=list)  # [{"step", "loss", "val_agreement"}]
    best_state: dict | None = field(default=None, repr=False)
    stopped: str = "steps"  # steps | time | early-stop


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside a DDP wrapper."""
    return getattr(model, "module", model)


def trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters distillation trains: every float one but the input embedding table."""
    bare = unwrap(model)
    emb = bare.get_input_embeddings() if hasattr(bare, "get_input_embeddings") else None
    frozen = getattr(emb, "weight", None)
    return [p for p in model.parameters() if p.is_floating_point() and p is not frozen]


def lr_factor(cfg: DistillConfig, fraction: float) -> float:
    """The schedule's multiplier of `cfg.lr` once `fraction` (0..1) of the budget is used:
    linear warm-up over `cfg.warmup`, then cosine decay to 0 (or constant)."""
    f = min(max(fraction, 0.0), 1.0)
    if cfg.warmup > 0 and f < cfg.warmup:
        return f / cfg.warmup
    if cfg.schedule == "constant":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (f - cfg.warmup) / max(1e-9, 1.0 - cfg.warmup)))


def _fraction(cfg: DistillConfig, step: int, elapsed: float) -> float:
    """The budget used after `step` optimizer steps and `elapsed` seconds (the larger one)."""
    return max(step / cfg.total if cfg.steps else 0.0,
               elapsed / cfg.max_seconds if cfg.max_seconds else 0.0)


def _synced_max(x: float) -> float:
    """The largest `x` over the workers (all workers then take the same branch / lr)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def _agree(flag: bool) -> bool:
    """True if any worker says so (all workers then take the same branch)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def _sync_grads(params: list[torch.Tensor]) -> None:
    """All-reduce (mean) gradients that DDP does not own (the hidden-state maps)."""
    import torch.distributed as dist

    if not params or not (dist.is_available() and dist.is_initialized()):
        return
    world = dist.get_world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world


@torch.no_grad()
def _outs(tm: TaskModel, batches, autocast) -> torch.Tensor:
    with autocast():
        return torch.cat([tm.outputs(b).float().cpu() for b in batches]) if batches else None


@torch.no_grad()
def val_agreement(tm: TaskModel, data: DistillData, autocast=None) -> tuple[float, float]:
    """(agreement, mean cosine or 0) of the student with the teacher on the held-back slice.

    embedding: query -> document top-1 agreement (retrieval), else nearest-neighbour agreement
    among the texts; logits: argmax (sign for one logit); tokens: next-token argmax."""
    from contextlib import nullcontext

    autocast = autocast or nullcontext
    s_d = _outs(tm, data.val_docs, autocast)
    if s_d is None:
        return 0.0, 0.0
    t_d = torch.cat([t.out for t in data.teacher_val_docs])
    if data.objective is Objective.tokens:
        t_top = torch.cat([t.index[:, 0] for t in data.teacher_val_docs])
        return float((s_d.argmax(-1) == t_top).float().mean()), 0.0
    if data.objective is Objective.logits:
        same = (s_d > 0) == (t_d > 0) if s_d.shape[-1] == 1 else s_d.argmax(-1) == t_d.argmax(-1)
        return float(same.float().mean()), 0.0
    cos = float((s_d * t_d).sum(-1).mean())
    if data.val_queries:
        s_q, t_q = _outs(tm, data.val_queries, autocast), torch.cat(
            [t.out for t in data.teacher_val_queries])
        s_top, t_top = (s_q @ s_d.T).argmax(-1), (t_q @ t_d.T).argmax(-1)
    else:  # nearest other text
        eye = torch.eye(len(s_d), dtype=torch.bool)
        s_top = (s_d @ s_d.T).masked_fill(eye, -2).argmax(-1)
        t_top = (t_d @ t_d.T).masked_fill(eye, -2).argmax(-1)
    return float((s_top == t_top).float().mean()), cos


def _autocast(precision: str, device: torch.device):
    from contextlib import nullcontext
    from functools import partial

    if precision != "bf16":
        return nullcontext
    return partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16)


class _State:
    """Everything a checkpoint holds and the loop mutates."""

    def __init__(self, tm: TaskModel, maps: HiddenMaps | None, cfg: DistillConfig) -> None:
        self.params = trainable(tm.model)
        self.map_params = list(maps.parameters()) if maps is not None else []
        self.opt = torch.optim.AdamW(self.params + self.map_params, lr=cfg.lr,
                                     weight_decay=cfg.weight_decay)
        self.tm, self.maps, self.step, self.curve = tm, maps, 0, []
        self.best: tuple[float, float, int] = (-1.0, -1.0, 0)  # (agreement, cosine, step)
        self.best_state: dict | None = None
        self.bad, self.elapsed = 0, 0.0

    def snapshot(self) -> dict:
        return {"model": unwrap(self.tm.model).state_dict(), "opt": self.opt.state_dict(),
                "maps": self.maps.state_dict() if self.maps is not None else None,
                "step": self.step, "curve": self.curve, "best": self.best,
                "best_state": self.best_state, "bad": self.bad, "elapsed": self.elapsed}

    def restore(self, snap: dict) -> None:
        unwrap(self.tm.model).load_state_dict(snap["model"])
        self.opt.load_state_dict(snap["opt"])
        if self.maps is not None and snap["maps"] is not None:
            self.maps.load_state_dict(snap["maps"])
        self.step, self.curve, self.best = snap["step"], snap["curve"], tuple(snap["best"])
        self.best_state, self.bad, self.elapsed = snap["best_state"], snap["bad"], snap["elapsed"]

    def validate(self, data: DistillData, loss: float, autocast) -> float:
        """Validation agreement at the current step; keeps the best weights."""
        if not data.val_docs:  # nothing held back: the last weights are the result
            self.curve.append({"step": self.step, "loss": loss, "val_agreement": None})
            self.best = (0.0, 0.0, self.step)
            return 0.0
        agree, cos = val_agreement(self.tm, data, autocast)
        self.curve.append({"step": self.step, "loss": loss, "val_agreement": agree,
                           "val_cosine": cos})
        if (agree, cos) > self.best[:2]:
            self.best, self.bad = (agree, cos, self.step), 0
            self.best_state = {k: v.detach().cpu().clone()
                               for k, v in unwrap(self.tm.model).state_dict().items()}
        else:
            self.bad += 1
        return agree


def _step_loss(st: _State, data: DistillData, k: int, cfg: DistillConfig, autocast):
    objective = data.objective
    with autocast():
        out, hidden = student_forward(st.tm, data.train[k], st.maps is not None)
        loss = objective_loss(objective, out, data.teacher[k], temperature=cfg.temperature,
                              relational=cfg.relational)
        if st.maps is not None and data.teacher[k].hidden is not None:
            t_hidden = tuple(h.to(out.device) for h in data.teacher[k].hidden)
            loss = loss + hidden_loss(hidden, t_hidden, st.maps)
    return loss


def _maps(tm: TaskModel, cfg: DistillConfig, d_teacher: int | None) -> HiddenMaps | None:
    if not cfg.hidden_states or d_teacher is None:
        return None
    bare_cfg = unwrap(tm.model).config
    maps = HiddenMaps(int(bare_cfg.hidden_size), d_teacher, int(bare_cfg.num_hidden_layers))
    return maps.to(next(tm.model.parameters()).device)


def train_loop(tm: TaskModel, data: DistillData, cfg: DistillConfig, *, rank: int = 0,
               world: int = 1, store: CheckpointStore | None = None,
               on_progress: OnProgress | None = None, d_teacher: int | None = None) -> LoopResult:
    """Distil `data`'s cached teacher targets into `tm` (in place; DDP-wrapped in Ray Train).
    On return `tm` holds the best validated weights."""
    if not data.train:
        raise ValueError("distillation: no training texts")
    device = next(tm.model.parameters()).device
    autocast = _autocast(cfg.precision, device)
    torch.manual_seed(cfg.seed)
    st = _State(tm, _maps(tm, cfg, d_teacher), cfg)
    resumed = 0
    if store is not None and (snap := store.latest()) is not None:
        st.restore(snap)
        resumed = st.step
    else:
        st.validate(data, float("nan"), autocast)
    t0 = time.perf_counter() - st.elapsed
    stopped, loss_v = "steps", float("nan")
    with grad_only(tm.model, st.params), torch.enable_grad():
        while st.step < cfg.total:
            elapsed = _synced_max(time.perf_counter() - t0)
            if cfg.max_seconds is not None and elapsed >= cfg.max_seconds:
                stopped = "time"
                break
            k = (st.step * world + rank) % len(data.train)
            loss = _step_loss(st, data, k, cfg, autocast)
            st.opt.zero_grad(set_to_none=True)
            loss.backward()
            _sync_grads(st.map_params)
            for g in st.opt.param_groups:  # the step's lr: budget used once this step is done
                g["lr"] = cfg.lr * lr_factor(cfg, _fraction(cfg, st.step + 1, elapsed))
            st.opt.step()
            st.step, loss_v = st.step + 1, float(loss.detach())
            if st.step == 1 and st.curve and st.curve[0]["step"] == 0:
                st.curve[0]["loss"] = loss_v  # batch 0 under the step-0 weights
            if st.step % cfg.every == 0 or st.step == cfg.total:
                agree = st.validate(data, loss_v, autocast)
                st.elapsed = time.perf_counter() - t0
                if store is not None and rank == 0:
                    store.save(st.snapshot())
                if on_progress is not None:
                    frac = _fraction(cfg, st.step, st.elapsed)
                    on_progress(st.step, cfg.steps or None, loss_v, agree, min(1.0, frac))
                if _agree(cfg.patience > 0 and st.bad >= cfg.patience):
                    stopped = "early-stop"
                    break
    st.opt.zero_grad(set_to_none=True)
    if st.curve and st.curve[-1]["step"] != st.step:  # the last steps since a validation
        st.validate(data, loss_v, autocast)
    if st.best_state is not None:
        unwrap(tm.model).load_state_dict(st.best_state)
    return LoopResult(st.step, time.perf_counter() - t0, st.best[2], st.best[0], resumed,
                      st.curve, st.best_state, stopped)
