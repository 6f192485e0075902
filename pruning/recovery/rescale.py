"""Recovery stage 1: the retraining-free least-squares rescale (distillation: `distillation/`).

`ls_rescale` is the "mask tuning" step of Kwon et al. 2022, done on the physically pruned model.
Layer by layer (pruned layer j = original layer `structure.kept_layers[j]`), first attention,
then FFN, it finds one scale per kept head / neuron and folds it into the o-proj / ffn_out input
columns of the pruned model.

What is reconstructed. Each sublayer output u (o-proj or ffn_out, incl. bias) is added to the
residual stream x and the sum z = x + u is read by a normalisation N (post-LN BERT/DistilBERT:
the LayerNorm right after; pre-LN ViT: the next sublayer's LayerNorm). We minimise the
first-order error of N's output, as in Kwon's residual target plus LayerNorm weighting:

    min_s  sum_tokens | gamma * P(z_pruned(s) - z_full) / sigma_t |^2 + lam |s - 1|^2

- z_full from the FULL model; z_pruned(s) = x_pruned + b + sum_u s_u A_u from the PRUNED model's
  own forward, whose earlier layers are already rescaled. So each layer's scales also absorb the
  errors earlier layers left in its residual input (Kwon's teacher/student inputs).
- gamma: N's weight, P: centering over features (LayerNorm; none for RMSNorm), sigma_t: N's
  per-token scale on z_full. N is found generically as the first norm module to run after the
  linear in one traced forward; without one, plain L2 on the linear's output is used.
- Why not plain L2 of the o-proj output: on MiniLM with 50% of heads and neurons removed it
  lowered the layer errors yet cut held-out embedding agreement (0.64 -> 0.53): BERT's pre-norm
  sums carry large outlier features that the plain objective chases with scales of +-9. The
  normalised objective raised agreement (0.64 -> 0.70) on the same split.
- The ridge pulls towards 1 (= no change), lam = ridge * trace(G) / n; s is clamped to
  [-clamp, clamp] as in Kwon's code and dropped (kept at 1) if it does not lower the error.

Memory stays bounded: only the normal equations G = A'^T A' (n x n) and A'^T y' are accumulated
over batches, and pruned-model forwards stop (by a private exception) right after the needed
module. The full model's targets for all sublayers come from one forward per batch when they fit
in `cache_bytes` (real tokens x d x 2 x kept layers x 4 bytes), else from one partial forward
per sublayer. Cost: about 1 + (2 x layers x ~0.5) pruned-model forwards over the calibration set.

Re-entrant: a second `ls_rescale` computes scales relative to the weights it finds (near 1 after
a first pass) and returns those.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from tierserve.pruning.adapters.base import ArchAdapter
from tierserve.pruning.importance.common import grad_only
from tierserve.pruning.structure import Structure
from tierserve.pruning.tasks import TaskModel

__all__ = ["Rescale", "ls_rescale"]

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


def _capture(tm: TaskModel, batch: Batch, taps: Sequence[tuple[nn.Module, str]]) -> list:
    """Input ("in") or output ("out") of each tap module in `tm`'s forward of `batch`; the
    forward stops once all are captured. A tap that never runs gives None."""
    store: dict[int, torch.Tensor] = {}

    def keep(k: int, x: torch.Tensor) -> None:
        store[k] = x.detach()
        if len(store) == len(taps):
            raise _Stop

    handles = []
    for k, (mod, kind) in enumerate(taps):
        if kind == "in":
            handles.append(mod.register_forward_pre_hook(lambda m, a, k=k: keep(k, a[0])))
        else:
            handles.append(mod.register_forward_hook(lambda m, a, o, k=k: keep(k, o)))
    try:
        tm.outputs(batch)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return [store.get(k) for k in range(len(taps))]


def _is_norm(m: nn.Module) -> bool:
    return isinstance(m, nn.LayerNorm) or type(m).__name__.lower().endswith("rmsnorm")


def _norms_after(tm: TaskModel, linears: Sequence[nn.Linear], batch: Batch) -> list:
    """For each linear, the first norm module that runs after it (None if none does)."""
    found: dict[int, nn.Module] = {}
    pending: list[int] = []
    handles = [lin.register_forward_hook(lambda m, a, o, k=k: pending.append(k))
               for k, lin in enumerate(linears)]

    def resolve(norm: nn.Module, args: tuple) -> None:
        while pending:
            found.setdefault(pending.pop(), norm)

    handles += [m.register_forward_pre_hook(resolve) for m in tm.model.modules() if _is_norm(m)]
    try:
        with torch.no_grad():
            tm.outputs({k: v[:2] for k, v in batch.items()})
    finally:
        for h in handles:
            h.remove()
    return [found.get(k) for k in range(len(linears))]


class _Geometry:
    """Maps pre-norm vectors (..., d) into the first-order error space of the norm after them."""

    def __init__(self, norm: nn.Module | None, d: int) -> None:
        w = getattr(norm, "weight", None)
        self.gamma = torch.ones(d) if w is None else w.detach().float()  # (d,)
        self.center = isinstance(norm, nn.LayerNorm)
        self.eps = float(getattr(norm, "eps", getattr(norm, "variance_epsilon", 1e-6)) or 1e-6)
        self.plain = norm is None

    def sigma(self, z: torch.Tensor) -> torch.Tensor:
        """(N, d) -> (N, 1) the norm's per-token divisor on z (1 without a norm)."""
        if self.plain:
            return torch.ones_like(z[:, :1])
        zc = z - z.mean(-1, keepdim=True) if self.center else z
        return (zc.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()

    def apply(self, v: torch.Tensor, sigma: torch.Tensor | float = 1.0) -> torch.Tensor:
        if self.center:
            v = v - v.mean(-1, keepdim=True)
        return v * self.gamma.to(v.device) / sigma


def _tokens(batch: Batch, x: torch.Tensor) -> torch.Tensor:
    """(B, T, k) -> (N, k) over real tokens."""
    mask = batch.get("attention_mask")
    if mask is None or mask.shape != x.shape[:2]:
        return x.reshape(-1, x.shape[-1]).float()
    return x[mask.to(x.device).bool()].float()


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


def _head_system(ctx, y, sig, lin: nn.Linear, geo: _Geometry, dh: int):
    """ctx (N, H*dh), target y (N, d), sigma (N, 1) -> G (H, H), r (H,), |y'|^2."""
    n = ctx.shape[0]
    w = lin.weight.detach().float().view(lin.out_features, -1, dh)  # (d, H, dh)
    contrib = torch.einsum("nhi,dhi->nhd", ctx.view(n, -1, dh), w)  # (N, H, d)
    a, y = geo.apply(contrib, sig.unsqueeze(1)), geo.apply(y, sig)  # (N, H, d), (N, d)
    return torch.einsum("nhd,ngd->hg", a, a), torch.einsum("nhd,nd->h", a, y), y.pow(2).sum()


def _neuron_system(act, y, sig, lin: nn.Linear, geo: _Geometry):
    """act (N, F), target y (N, d), sigma (N, 1) -> G (F, F), r (F,), |y'|^2."""
    w = geo.apply(lin.weight.detach().float().T)  # (F, d): each neuron's output direction
    a, y = act / sig, geo.apply(y, sig)  # (N, F), (N, d)
    return (a.T @ a) * (w @ w.T), (a * (y @ w.T)).sum(0), y.pow(2).sum()


def _tap(lin_norm: tuple) -> tuple[nn.Module, str]:
    """Where the pre-norm sum z is read: the norm's input, or the linear's output if none."""
    lin, norm = lin_norm
    return (norm, "in") if norm is not None else (lin, "out")


class _FullTargets:
    """The full model's pre-norm sums z per (sublayer s, batch k), as (N, d) over real tokens.

    Cached from one forward per batch while all of them fit in `cache_bytes`; otherwise each is
    recomputed by a forward that stops at its sublayer (bounded memory, more compute).
    """

    def __init__(self, full: TaskModel, taps: list[tuple], batches: Sequence[Batch],
                 cache_bytes: int) -> None:
        self.full, self.taps, self.batches = full, taps, batches
        self.cache: list[list[torch.Tensor]] | None = []
        size = 0
        for b in batches:  # give up (and free) the cache as soon as it outgrows the budget
            zs = [_tokens(b, z) for z in _capture(full, b, [_tap(t) for t in taps])]
            size += sum(z.numel() * z.element_size() for z in zs)
            if size > cache_bytes:
                self.cache = None
                break
            self.cache.append(zs)

    def get(self, s: int, k: int) -> torch.Tensor:
        if self.cache is not None:
            return self.cache[k][s]
        (z,) = _capture(self.full, self.batches[k], [_tap(self.taps[s])])
        return _tokens(self.batches[k], z)


def _fit(pruned: TaskModel, p_tap: tuple, targets: _FullTargets, s: int,
         batches: Sequence[Batch], dh: int | None) -> _Normal:
    """Normal equations of sublayer s (heads if dh else neurons); taps = (linear, norm)."""
    p_lin, f_norm = p_tap[0], targets.taps[s][1]
    geo, eq = _Geometry(f_norm, p_lin.out_features), _Normal(p_lin.in_features // (dh or 1))
    bias = p_lin.bias.detach().float() if p_lin.bias is not None else 0.0
    for k, batch in enumerate(batches):
        x, u, z_p = _capture(pruned, batch, [(p_lin, "in"), (p_lin, "out"), _tap(p_tap)])
        x, u, z_p = (_tokens(batch, t) for t in (x, u, z_p))  # (N, .)
        z_f = targets.get(s, k)  # (N, d)
        y = z_f - (z_p - u) - bias  # what sum_u s_u A_u must produce
        sig = geo.sigma(z_f)  # (N, 1)
        eq.add(*(_head_system(x, y, sig, p_lin, geo, dh) if dh
                 else _neuron_system(x, y, sig, p_lin, geo)))
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
               *, ridge: float = 1e-3, clamp: float = 10.0, cache_bytes: int = 2**30,
               pruned_adapter: ArchAdapter | None = None,
               full_adapter: ArchAdapter | None = None) -> Rescale:
    """Least-squares rescale of `pruned`'s kept heads and neurons, folded in place (module doc)."""
    if not batches:
        raise ValueError("batches: ls_rescale needs at least one calibration batch")
    from tierserve.pruning.adapters import adapter_for

    pa = pruned_adapter or adapter_for(pruned.model)
    fa = full_adapter or adapter_for(full.model)
    _check(structure, pa, fa)
    head_scale = torch.zeros(fa.num_layers, fa.num_heads(0))  # (L, H)
    neuron_scale = torch.zeros(fa.num_layers, fa.intermediate_size(0))  # (L, F)
    p_lin = [lin for j in range(pa.num_layers) for lin in (pa.handles(j).o, pa.handles(j).ffn_out)]
    f_lin = [lin for i in structure.kept_layers for lin in (fa.handles(i).o, fa.handles(i).ffn_out)]
    report = []
    with grad_only(pruned.model), grad_only(full.model), torch.no_grad():
        p_taps = list(zip(p_lin, _norms_after(pruned, p_lin, batches[0]), strict=True))
        f_taps = list(zip(f_lin, _norms_after(full, f_lin, batches[0]), strict=True))
        targets = _FullTargets(full, f_taps, batches, cache_bytes)
        for j, i in enumerate(structure.kept_layers):
            ls, row = structure.layers[i], {"layer": i}
            for k, (kind, units, dh, out) in enumerate((
                    ("heads", ls.heads, pa.head_dim, head_scale),
                    ("neurons", ls.neurons, None, neuron_scale))):
                if not units:
                    continue
                s, row[f"{kind}_before"], row[f"{kind}_after"] = _fit(
                    pruned, p_taps[2 * j + k], targets, 2 * j + k, batches, dh).solve(ridge, clamp)
                _fold(p_taps[2 * j + k][0], s, dh or 1)
                out[i, list(units)] = s.float()
            report.append(row)
    return Rescale(head_scale, neuron_scale, {"layers": report, "ridge": ridge, "clamp": clamp})
