"""Recovery after pruning: retraining-free least-squares rescale, and optional distillation.

`ls_rescale` is the "mask tuning" step of Kwon et al. 2022, done on the physically pruned model.
Layer by layer (pruned layer j = original layer `structure.kept_layers[j]`), first the attention
then the FFN of that layer:

- target y: the FULL model's o-proj output (attention, before the residual add) or ffn_out output
  for the same calibration batch;
- design: the PRUNED model's per-kept-unit contributions to that output, from the pruned model's
  own forward, whose earlier layers are already rescaled. Inputs from the pruned model mean each
  layer's scales also compensate the errors that earlier layers left in its input;
- solve min_s |sum_u s_u A_u + b - y|^2 + lam |s - 1|^2 over real (non-padding) tokens; the ridge
  pulls towards 1 (= no change), lam = ridge * trace(G) / n; s is clamped to [-clamp, clamp] as
  in Kwon's code, and dropped (kept at 1) if it does not lower the error;
- fold s into the pruned model's o-proj input columns (per kept head) / ffn_out input columns.

Memory stays bounded: only the normal equations G = A^T A (n x n) and A^T y are accumulated
over batches; forwards stop (by a private exception) right after the needed module.

Both functions are re-entrant: a second `ls_rescale` computes scales relative to the weights it
finds (near 1 after a first pass) and returns those; `distill` builds a fresh optimizer per call.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from tierserve.pruning.adapters.base import ArchAdapter
from tierserve.pruning.importance.common import grad_only
from tierserve.pruning.structure import Structure
from tierserve.pruning.tasks import TaskModel

__all__ = ["Rescale", "distill", "ls_rescale"]

Batch = dict[str, torch.Tensor]


class Rescale(NamedTuple):
    """Scales folded by one `ls_rescale` call, indexed by ORIGINAL unit (0 at removed units),
    so they can be passed to `surgery.apply_structure(..., head_scale=, neuron_scale=)` or used
    as `masks.unit_masks` values on the full model."""

    head_scale: torch.Tensor  # (L, H)
    neuron_scale: torch.Tensor  # (L, F)
    errors: dict  # {"layers": [{"layer", "heads_before", "heads_after", "neurons_before", ...}]}


class _Stop(Exception):
    """Raised by a capture hook to end a forward early."""


def _capture(tm: TaskModel, module: nn.Module, batch: Batch, output: bool) -> torch.Tensor:
    """Input (output=False) or output of `module` in `tm`'s forward of `batch`, stopping there."""
    store: dict[str, torch.Tensor] = {}

    def pre(mod: nn.Module, args: tuple) -> None:
        store["x"] = args[0].detach()
        raise _Stop

    def post(mod: nn.Module, args: tuple, out: torch.Tensor) -> None:
        store["x"] = out.detach()
        raise _Stop

    handle = module.register_forward_hook(post) if output else module.register_forward_pre_hook(pre)
    try:
        tm.outputs(batch)
    except _Stop:
        pass
    finally:
        handle.remove()
    return store["x"]


class _Normal:
    """Running normal equations of one least-squares problem in n unknown scales."""

    def __init__(self, n: int) -> None:
        self.G = torch.zeros(n, n, dtype=torch.float64)
        self.r = torch.zeros(n, dtype=torch.float64)
        self.yy = torch.zeros((), dtype=torch.float64)

    def add(self, G: torch.Tensor, r: torch.Tensor, yy: torch.Tensor) -> None:
        self.G += G.double().cpu()
        self.r += r.double().cpu()
        self.yy += yy.double().cpu()

    def error(self, s: torch.Tensor) -> float:
        """Relative squared error |A s - y|^2 / |y|^2."""
        return float((s @ self.G @ s - 2 * self.r @ s + self.yy) / self.yy.clamp(min=1e-30))

    def solve(self, ridge: float, clamp: float) -> tuple[torch.Tensor, float, float]:
        n, ones = self.G.shape[0], torch.ones(self.G.shape[0], dtype=torch.float64)
        lam = ridge * float(self.G.trace()) / n
        s = torch.linalg.solve(self.G + lam * torch.eye(n, dtype=torch.float64), self.r + lam * ones)
        s = s.clamp(-clamp, clamp)
        before, after = self.error(ones), self.error(s)
        return (s, before, after) if after < before else (ones, before, before)


def _tokens(batch: Batch, x: torch.Tensor) -> torch.Tensor:
    """(B, T, k) -> (N, k) over real tokens."""
    mask = batch.get("attention_mask")
    if mask is None or mask.shape != x.shape[:2]:
        return x.reshape(-1, x.shape[-1])
    return x[mask.to(x.device).bool()]


def _head_system(ctx: torch.Tensor, y: torch.Tensor, o: nn.Linear, dh: int):
    """ctx (N, H*dh), target y (N, d) -> G (H, H), r (H,), |y - b|^2."""
    n = ctx.shape[0]
    w = o.weight.float().view(o.out_features, -1, dh)  # (d, H, dh)
    contrib = torch.einsum("nhi,dhi->nhd", ctx.float().view(n, -1, dh), w)  # (N, H, d)
    y = y.float() - (o.bias.float() if o.bias is not None else 0)  # (N, d)
    return (torch.einsum("nhd,ngd->hg", contrib, contrib), torch.einsum("nhd,nd->h", contrib, y),
            y.pow(2).sum())


def _neuron_system(act: torch.Tensor, y: torch.Tensor, lin: nn.Linear):
    """act (N, F), target y (N, d) -> G (F, F), r (F,), |y - b|^2."""
    w, a = lin.weight.float(), act.float()  # (d, F), (N, F)
    y = y.float() - (lin.bias.float() if lin.bias is not None else 0)  # (N, d)
    return (a.T @ a) * (w.T @ w), (a * (y @ w)).sum(0), y.pow(2).sum()


def _fit(pruned: TaskModel, full: TaskModel, p_mod: nn.Linear, f_mod: nn.Linear,
         batches: Sequence[Batch], dh: int | None) -> _Normal:
    """Accumulate the normal equations of one sublayer (heads if dh else neurons)."""
    eq = _Normal(p_mod.in_features // (dh or 1))
    for batch in batches:
        y = _tokens(batch, _capture(full, f_mod, batch, output=True))  # (N, d)
        x = _tokens(batch, _capture(pruned, p_mod, batch, output=False))  # (N, in)
        eq.add(*(_head_system(x, y, p_mod, dh) if dh else _neuron_system(x, y, p_mod)))
    return eq


@torch.no_grad()
def _fold(lin: nn.Linear, s: torch.Tensor, repeat: int) -> None:
    """Multiply `lin`'s input columns by s (U,), each unit spanning `repeat` columns."""
    cols = s.to(device=lin.weight.device, dtype=torch.float32).repeat_interleave(repeat)
    lin.weight.copy_((lin.weight.float() * cols).to(lin.weight.dtype))


def _check(structure: Structure, pa: ArchAdapter, fa: ArchAdapter) -> None:
    kept = structure.kept_layers
    if fa.num_layers != len(structure.layers) or pa.num_layers != len(kept):
        raise ValueError(f"structure: {len(structure.layers)} layers ({len(kept)} kept) vs full "
                         f"model {fa.num_layers}, pruned model {pa.num_layers}")
    for j, i in enumerate(kept):
        ls = structure.layers[i]
        if (pa.num_heads(j), pa.intermediate_size(j)) != (len(ls.heads), len(ls.neurons)):
            raise ValueError(f"structure layer {i}: keeps {len(ls.heads)} heads / "
                             f"{len(ls.neurons)} neurons, pruned layer {j} has "
                             f"{pa.num_heads(j)} / {pa.intermediate_size(j)}")


def ls_rescale(pruned: TaskModel, full: TaskModel, structure: Structure, batches: Sequence[Batch],
               *, ridge: float = 1e-4, clamp: float = 10.0, pruned_adapter: ArchAdapter | None = None,
               full_adapter: ArchAdapter | None = None) -> Rescale:
    """Least-squares rescale of `pruned`'s kept heads and neurons, folded in place (module doc)."""
    if not batches:
        raise ValueError("batches: ls_rescale needs at least one calibration batch")
    if pruned_adapter is None or full_adapter is None:
        from tierserve.pruning.adapters import adapter_for
        pruned_adapter = pruned_adapter or adapter_for(pruned.model)
        full_adapter = full_adapter or adapter_for(full.model)
    pa, fa = pruned_adapter, full_adapter
    _check(structure, pa, fa)
    head_scale = torch.zeros(fa.num_layers, fa.num_heads(0))  # (L, H)
    neuron_scale = torch.zeros(fa.num_layers, fa.intermediate_size(0))  # (L, F)
    report = []
    with grad_only(pruned.model), grad_only(full.model):
        for j, i in enumerate(structure.kept_layers):
            ph, fh, ls = pa.handles(j), fa.handles(i), structure.layers[i]
            row = {"layer": i}
            for kind, p_mod, f_mod, dh, units, out in (
                    ("heads", ph.o, fh.o, pa.head_dim, ls.heads, head_scale),
                    ("neurons", ph.ffn_out, fh.ffn_out, None, ls.neurons, neuron_scale)):
                if not units:
                    continue
                s, row[f"{kind}_before"], row[f"{kind}_after"] = _fit(
                    pruned, full, p_mod, f_mod, batches, dh).solve(ridge, clamp)
                _fold(p_mod, s, dh or 1)
                out[i, list(units)] = s.float()
            report.append(row)
    return Rescale(head_scale, neuron_scale, {"layers": report, "ridge": ridge, "clamp": clamp})


def _kd_loss(student: torch.Tensor, teacher: torch.Tensor, is_classifier: bool,
             temperature: float) -> torch.Tensor:
    if not is_classifier:  # unit-norm embeddings (B, d)
        return (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()
    if student.shape[-1] == 1:  # one logit (B, 1)
        return F.mse_loss(student, teacher)
    t = temperature
    return F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1),
                    log_target=True, reduction="batchmean") * t * t


def distill(pruned: TaskModel, full: TaskModel, batches: Sequence[Batch], steps: int,
            lr: float = 2e-5, *, temperature: float = 2.0, weight_decay: float = 0.01) -> dict:
    """Knowledge distillation from `full` into `pruned` (in place) for `steps` AdamW steps.

    Loss: KL(teacher || student) at `temperature` for classifiers (MSE for one logit), mean
    1 - cosine for embeddings. Batches are cycled in order; both models stay in eval mode (no
    dropout) so a run is deterministic. Parameter .grad is cleared before returning.
    """
    if not batches or steps < 0:
        raise ValueError("distill: needs at least one batch and steps >= 0")
    teacher: dict[int, torch.Tensor] = {}
    params = [p for p in pruned.model.parameters() if p.is_floating_point()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    losses, t0 = [], time.perf_counter()
    with grad_only(pruned.model, params), grad_only(full.model):
        for step in range(steps):
            k = step % len(batches)
            if k not in teacher:
                with torch.no_grad():
                    teacher[k] = full.outputs(batches[k])
            loss = _kd_loss(pruned.outputs(batches[k]), teacher[k], pruned.is_classifier,
                            temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        opt.zero_grad(set_to_none=True)
    return {"loss": losses, "steps": steps, "lr": lr, "seconds": time.perf_counter() - t0,
            "objective": "cosine" if not pruned.is_classifier else "kl"}
