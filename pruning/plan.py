"""Turn importance scores and a budget into a `Structure`. Pure: no model, no I/O, deterministic.

Algorithm (after Kwon et al. 2022, "A Fast Post-Training Pruning Framework for Transformers"):

1. Cost of a unit in the budget's currency (`cost.py`): FLOPs at `budget.seq_len`, or parameters.
   The keep budget is `(1 - target) * encoder cost`.
2. Scores of different types live on different scales (a head's score sums over 32 features, a
   neuron's over one), so each type is normalised separately: a unit's importance is
   `score / mean(|scores of its type|) * unit cost`. A unit of average importance for its type is
   then worth exactly its cost, and heads trade against neurons by importance per FLOP (or per
   parameter). Criteria whose head and neuron scores share one scale (Fisher: both estimate the loss
   increase) can set `scores.meta["same_scale"] = True` to compare raw scores, as Kwon et al. do.
3. Neurons are ranked within each layer and grouped into blocks of `budget.multiple` (the last
   block of a layer may be smaller); each kept layer keeps its best block and best head. All other
   heads and blocks are ranked globally by importance per cost, so allocation across layers is
   non-uniform and kept neuron counts are multiples of `budget.multiple` (or the full width).
4. Mask search: for every number of extra heads kept (best first), the remaining budget is filled
   with the best neuron blocks; among splits landing within target ± tolerance, the one keeping
   the most importance wins. If none lands (coarse units: whole heads, whole layers), the fill is
   repeated with the loosest budget, `target - tolerance`.
5. With "layers" in `budget.structures`, the k least important layers (by `scores.layers`, else by
   the summed importance of their units) are removed for k = 0 .. L-1 and step 4 runs on the rest.
   A removed layer costs `layer score / mean(|layer scores|) * mean summed unit importance per
   layer` (or its summed unit importance when `scores.layers` is None, so then units, being
   cheaper to drop one by one, win unless depth is the only structure). Depth-only budgets just
   remove layers. Ties break by index, so the result is deterministic.

A layer is never left with 0 heads (it is removed whole instead) and at least one layer is kept.
Only splits whose removed fraction lands within `target ± tolerance` qualify; when none does (a
depth-only budget between layer steps, or a target the minimums can't reach) `PlanError` says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .cost import (
    ModelShape,
    encoder_flops,
    encoder_params,
    head_flops,
    neuron_flops,
    whole_flops,
    whole_params,
)
from .gqa import plan_groups
from .structure import Budget, LayerStructure, Scores, Structure

__all__ = ["PlanError", "plan", "plan_gqa", "plan_report"]

_STRUCTURES = {"heads", "neurons", "layers"}


class PlanError(ValueError):
    """The scores, budget or shape can't give a structure within the budget's tolerance."""


@dataclass(frozen=True)
class _Units:
    """Optional units (heads or neuron blocks) ranked globally, plus each layer's mandatory part."""

    layer: np.ndarray  # (U,) layer of each optional unit, best first
    members: list[list[int]]  # original indices in each optional unit
    imp: np.ndarray  # (U,) importance
    cost: np.ndarray  # (U,)
    mandatory: list[list[int]]  # per layer: indices always kept when the layer is kept
    mand_imp: np.ndarray  # (L,)
    mand_cost: np.ndarray  # (L,)


def _importance(scores: np.ndarray, widths: tuple[int, ...], cost: float,
                same_scale: bool) -> list[np.ndarray]:
    rows = [scores[i, :w] for i, w in enumerate(widths)]
    if same_scale:
        return rows
    scale = max(float(np.mean(np.abs(np.concatenate(rows)))), 1e-30)
    return [r / scale * cost for r in rows]


def _units(imps: list[np.ndarray], size: int, unit_cost: float, prunable: bool) -> _Units:
    layer, members, imp, mand, mand_imp = [], [], [], [], []
    for i, row in enumerate(imps):
        order = np.argsort(-row, kind="stable")  # best first, ties by index
        blocks = [order[j:j + size].tolist() for j in range(0, len(order), size)]
        if not prunable:
            blocks = [order.tolist()]
        mand.append(blocks[0])
        mand_imp.append(float(row[blocks[0]].sum()))
        for b in blocks[1:]:
            layer.append(i)
            members.append(b)
            imp.append(float(row[b].sum()))
    counts = np.array([len(m) for m in members], dtype=np.float64)
    imp_a = np.array(imp, dtype=np.float64)
    rank = np.lexsort((np.arange(len(imp_a)), -imp_a / np.maximum(counts, 1)))  # density, stable
    return _Units(layer=np.array(layer, dtype=np.int64)[rank], members=[members[r] for r in rank],
                  imp=imp_a[rank], cost=counts[rank] * unit_cost, mandatory=mand,
                  mand_imp=np.array(mand_imp), mand_cost=np.array([len(m) * unit_cost
                                                                   for m in mand]))


@dataclass(frozen=True)
class _Choice:
    removed_imp: float
    removed_frac: float
    kept_layers: tuple[int, ...]
    n_heads: int  # optional heads kept (prefix of the ranked list restricted to kept layers)
    n_blocks: int


def _base_cost(heads: _Units, blocks: _Units, kept: list[int], fixed: float) -> float:
    """Cost of the kept layers' fixed parts and mandatory units (the least they can cost)."""
    return fixed * len(kept) + float(heads.mand_cost[kept].sum() + blocks.mand_cost[kept].sum())


def _search(heads: _Units, blocks: _Units, kept: list[int], fixed: float, keep_budget: float,
            total: float, budget: Budget) -> tuple[float, float, int, int] | None:
    """Best (kept importance incl. mandatory units, removed fraction, #optional heads, #optional
    blocks) for the kept layers, among fills landing within target ± tolerance; else None."""
    hsel = np.isin(heads.layer, kept)
    bsel = np.isin(blocks.layer, kept)
    h_cost = np.concatenate([[0.0], np.cumsum(heads.cost[hsel])])
    h_imp = np.concatenate([[0.0], np.cumsum(heads.imp[hsel])])
    b_cost = np.concatenate([[0.0], np.cumsum(blocks.cost[bsel])])
    b_imp = np.concatenate([[0.0], np.cumsum(blocks.imp[bsel])])
    base = _base_cost(heads, blocks, kept, fixed)
    room = keep_budget - base - h_cost  # (nh + 1,) budget left for neuron blocks
    nb = np.maximum(np.searchsorted(b_cost, room + 1e-9, side="right") - 1, 0)  # blocks that fit
    frac = 1.0 - (base + h_cost + b_cost[nb]) / total  # (nh + 1,) removed fraction
    ok = (room >= 0) & (np.abs(frac - budget.target) <= budget.tolerance + 1e-12)
    if not ok.any():
        return None
    kept_imp = np.where(ok, h_imp + b_imp[nb], -np.inf)
    best = int(np.argmax(kept_imp))
    mandatory = float(heads.mand_imp[kept].sum() + blocks.mand_imp[kept].sum())
    return float(kept_imp[best]) + mandatory, float(frac[best]), best, int(nb[best])


def _layer_importance(scores: Scores, unit_total: np.ndarray, same_scale: bool) -> np.ndarray:
    if scores.layers is None:
        return unit_total
    s = scores.layers.detach().double().cpu().numpy()
    if same_scale:
        return s
    return s / max(float(np.mean(np.abs(s))), 1e-30) * float(np.mean(unit_total))


def _validate(scores: Scores, budget: Budget, shape: ModelShape) -> None:
    if budget.kind not in ("flops", "params"):
        raise PlanError(f"budget.kind '{budget.kind}': plan() takes 'flops' or 'params'; convert "
                        "a latency target to one of them first")
    if not 0.0 < budget.target < 1.0:
        raise PlanError(f"budget.target {budget.target} must be in (0, 1)")
    bad = set(budget.structures) - _STRUCTURES
    if not budget.structures or bad:
        raise PlanError(f"budget.structures {budget.structures}: use any of {sorted(_STRUCTURES)}")
    if budget.multiple < 1:
        raise PlanError(f"budget.multiple {budget.multiple} must be >= 1")
    L = shape.num_layers
    for name, t, widths in (("heads", scores.heads, shape.heads),
                            ("neurons", scores.neurons, shape.intermediate)):
        if t.dim() != 2 or t.shape[0] != L or t.shape[1] < max(widths):
            raise PlanError(f"scores.{name} has shape {tuple(t.shape)}, expected ({L}, "
                            f"{max(widths)})")
        if not bool(t.isfinite().all()):
            raise PlanError(f"scores.{name} contains NaN or inf")
    if scores.layers is not None and tuple(scores.layers.shape) != (L,):
        raise PlanError(f"scores.layers has shape {tuple(scores.layers.shape)}, expected ({L},)")


def _costs(budget: Budget, shape: ModelShape) -> tuple[float, float, float, float]:
    """(per head, per neuron, fixed per layer, encoder total) in the budget's currency."""
    if budget.kind == "flops":
        ch, cn = head_flops(shape, budget.seq_len), neuron_flops(shape, budget.seq_len)
        return float(ch), float(cn), 0.0, float(encoder_flops(shape, None, budget.seq_len))
    ch, cn, fixed = shape.params_per_head, shape.params_per_neuron, shape.layer_fixed_params
    return float(ch), float(cn), float(fixed), float(encoder_params(shape))


def plan(scores: Scores, budget: Budget, shape: ModelShape) -> Structure:
    """Pick the kept heads, neurons and layers that remove `budget.target` of the encoder's cost
    (±`budget.tolerance`) while removing the least normalised importance. See the module doc.
    Under grouped-query attention (`shape.head_group` > 1) whole KV groups are the head units
    (gqa.py)."""
    if shape.head_group > 1:
        return plan_groups(_plan, scores, budget, shape)
    return _plan(scores, budget, shape)


def plan_gqa(scores: Scores, budget: Budget, shape: ModelShape, *,
             queries_per_group: int | None = None) -> Structure:
    """`plan` for a GQA model, with optional query-head pruning inside the kept groups (gqa.py)."""
    return plan_groups(_plan, scores, budget, shape, queries_per_group=queries_per_group)


def _plan(scores: Scores, budget: Budget, shape: ModelShape) -> Structure:
    _validate(scores, budget, shape)
    same = bool(scores.meta.get("same_scale", False))
    ch, cn, fixed, total = _costs(budget, shape)
    h_imp = _importance(scores.heads.detach().double().cpu().numpy(), shape.heads, ch, same)
    n_imp = _importance(scores.neurons.detach().double().cpu().numpy(), shape.intermediate, cn, same)
    heads = _units(h_imp, 1, ch, "heads" in budget.structures)
    blocks = _units(n_imp, budget.multiple, cn, "neurons" in budget.structures)
    unit_total = np.array([h.sum() + n.sum() for h, n in zip(h_imp, n_imp, strict=True)])
    layer_imp = _layer_importance(scores, unit_total, same)
    L = shape.num_layers
    max_removed = L - 1 if "layers" in budget.structures else 0
    order = np.lexsort((np.arange(L), layer_imp)).tolist()  # least important first
    keep_budget = (1.0 - budget.target) * total
    best: _Choice | None = None
    floors: list[float] = []  # removed fraction when only the minimum is kept, per k
    for k in range(max_removed + 1):
        kept = sorted(order[k:])
        floors.append(1.0 - _base_cost(heads, blocks, kept, fixed) / total)
        # fill to the target's budget; if nothing lands (coarse units), to the loosest allowed
        found = (_search(heads, blocks, kept, fixed, keep_budget, total, budget)
                 or _search(heads, blocks, kept, fixed, keep_budget + budget.tolerance * total,
                            total, budget))
        if found is None:
            continue
        kept_imp, frac, nh, nb = found
        removed = float(layer_imp[order[:k]].sum() + unit_total[kept].sum() - kept_imp)
        if best is None or removed < best.removed_imp - 1e-12:
            best = _Choice(removed, frac, tuple(kept), nh, nb)
    if best is None:
        raise PlanError(_miss_message(budget, floors))
    return _build(heads, blocks, best, L)


def _miss_message(budget: Budget, floors: list[float]) -> str:
    steps = ", ".join(f"{k}: {f:.3f}" for k, f in enumerate(floors[:16]))
    return (f"no structure removes {budget.target:.3f} ± {budget.tolerance} of encoder "
            f"{budget.kind} with structures {budget.structures} (each kept layer keeps >= 1 head "
            f"and >= {budget.multiple} neurons). Most removable with k layers removed "
            f"{{{steps}}}; depth-only budgets reach exactly these. Change budget.target, widen "
            "budget.tolerance, or allow more structures")


def _pick(units: _Units, kept: tuple[int, ...], n: int, i: int) -> tuple[int, ...]:
    chosen = list(units.mandatory[i])
    sel = np.flatnonzero(np.isin(units.layer, kept))[:n]
    for u in sel:
        if units.layer[u] == i:
            chosen.extend(units.members[u])
    return tuple(sorted(int(c) for c in chosen))


def _build(heads: _Units, blocks: _Units, choice: _Choice, num_layers: int) -> Structure:
    layers: list[LayerStructure | None] = []
    for i in range(num_layers):
        if i not in choice.kept_layers:
            layers.append(None)
            continue
        layers.append(LayerStructure(heads=_pick(heads, choice.kept_layers, choice.n_heads, i),
                                     neurons=_pick(blocks, choice.kept_layers, choice.n_blocks, i)))
    return Structure(tuple(layers))


def _fractions(before: int, after: int) -> float:
    return 1.0 - after / before if before else 0.0


def plan_report(structure: Structure, shape: ModelShape, seq_len: int = 128) -> dict:
    """JSON-ready costs of `structure` on `shape` (the unpruned model's) at T = seq_len."""
    out: dict = {"seq_len": seq_len}
    for scope, flops, params in (("encoder", encoder_flops, encoder_params),
                                 ("whole", whole_flops, whole_params)):
        fb, fa = flops(shape, None, seq_len), flops(shape, structure, seq_len)
        pb, pa = params(shape, None), params(shape, structure)
        out[scope] = {"flops_before": fb, "flops_after": fa,
                      "flops_removed_fraction": _fractions(fb, fa),
                      "params_before": pb, "params_after": pa,
                      "params_removed_fraction": _fractions(pb, pa)}
    kept = structure.layers
    out["layers_kept"] = structure.kept_layers
    out["heads_per_layer"] = [0 if s is None else len(s.heads) for s in kept]
    out["neurons_per_layer"] = [0 if s is None else len(s.neurons) for s in kept]
    out["heads_kept"] = sum(out["heads_per_layer"])
    out["neurons_kept"] = sum(out["neurons_per_layer"])
    out["embedding_params"] = shape.embedding_params
    return out
