"""Planning under grouped-query attention (GQA): whole KV groups are the head units.

In a GQA layer with H query heads and H/g KV heads, query head h reads KV head h // g. Removing a
KV head therefore removes its g query heads with it. `plan.plan` / `plan.plan_gqa` send a GQA
shape here (this module never imports plan.py: the dense planner is passed in), and the plan is
made on a *group view* of the model:

- the view's "heads" are the KV groups, each costing g query heads plus one KV head's k/v
  projections (`ModelShape.head_group` keeps the k/v share exact, see cost.py);
- a group's score is the sum of its query heads' scores (every criterion scores query heads);
- the planned groups are expanded back to the query heads of the original model, so a
  `Structure` always lists query heads, and the adapter derives the KV heads from them.

Optional query-head pruning inside groups (`queries_per_group=r < g`): every kept group keeps its
r best query heads, the same r in every group of the model, so the layer stays a valid GQA layer
(r query heads per KV head). The group's score is then the sum of its r best query heads and its
cost r query heads plus one KV head (k/v projections assumed bias-free, as in Llama).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from .cost import ModelShape, encoder_flops, encoder_params
from .structure import Budget, LayerStructure, Scores, Structure

__all__ = ["expand_groups", "group_scores", "group_view", "plan_groups"]

Planner = Callable[[Scores, Budget, ModelShape], Structure]


def _per_group(shape: ModelShape, queries_per_group: int | None) -> int:
    g = shape.head_group
    r = g if queries_per_group is None else int(queries_per_group)
    if not 1 <= r <= g:
        raise ValueError(f"queries_per_group {r}: must be in [1, {g}] (query heads per KV head)")
    if any(h % g for h in shape.heads):
        raise ValueError(f"heads per layer {shape.heads} are not whole KV groups of {g}; "
                         "plan GQA models from their unpruned shape")
    return r


def group_view(shape: ModelShape, queries_per_group: int | None = None) -> ModelShape:
    """The shape seen by the planner: one "head" per KV group, of r query heads each."""
    g = shape.head_group
    r = _per_group(shape, queries_per_group)
    kv_params = 2 * shape.hidden * shape.head_dim  # k and v rows of one KV head
    qo_params = shape.params_per_head - kv_params // g  # q rows + o columns of one query head
    # head_dim * r and head_group r make cost.head_flops count r query heads + one KV head
    return replace(shape, heads=tuple(h // g for h in shape.heads), head_dim=shape.head_dim * r,
                   head_group=r, params_per_head=r * qo_params + kv_params)


def _top_in_groups(heads: torch.Tensor, g: int, r: int) -> torch.Tensor:
    """(L, H) query-head scores -> (L, H/g, r) indices within each group of its r best heads."""
    L, H = heads.shape
    by_group = heads.nan_to_num(float("-inf")).view(L, H // g, g)  # (L, G, g)
    order = torch.argsort(-by_group, dim=-1, stable=True)  # best first, ties by index
    return order[..., :r]


def group_scores(scores: Scores, g: int, r: int | None = None) -> Scores:
    """Query-head scores (L, H) -> group scores (L, H/g): the sum of each group's r best heads."""
    r = g if r is None else r
    heads = scores.heads.float()
    L, H = heads.shape
    top = _top_in_groups(heads, g, r)  # (L, G, r)
    summed = heads.nan_to_num(0.0).view(L, H // g, g).gather(-1, top).sum(-1)  # (L, G)
    return replace(scores, heads=summed, meta={**scores.meta, "gqa_group": g,
                                               "queries_per_group": r})


def expand_groups(view: Structure, scores: Scores, g: int, r: int | None = None) -> Structure:
    """A structure over KV groups -> the same structure over query heads (original indices)."""
    r = g if r is None else r
    top = _top_in_groups(scores.heads.float(), g, r)  # (L, G, r)
    layers: list[LayerStructure | None] = []
    for i, ls in enumerate(view.layers):
        if ls is None:
            layers.append(None)
            continue
        heads = sorted(k * g + int(j) for k in ls.heads for j in top[i, k])
        layers.append(LayerStructure(heads=tuple(heads), neurons=ls.neurons))
    return Structure(tuple(layers))


def plan_groups(planner: Planner, scores: Scores, budget: Budget, shape: ModelShape, *,
                queries_per_group: int | None = None) -> Structure:
    """Plan whole KV groups with `planner` (plan._plan) on the group view, then expand."""
    g = shape.head_group
    r = _per_group(shape, queries_per_group)
    H = max(shape.heads)
    if scores.heads.dim() != 2 or scores.heads.shape[1] < H:
        raise ValueError(f"scores.heads has shape {tuple(scores.heads.shape)}, expected (L, {H})")
    trimmed = replace(scores, heads=scores.heads[:, :H])
    view_shape = group_view(shape, r)
    view = planner(group_scores(trimmed, g, r), _view_budget(budget, shape, view_shape), view_shape)
    return expand_groups(view, trimmed, g, r)


def _view_budget(budget: Budget, shape: ModelShape, view: ModelShape) -> Budget:
    """The budget as a fraction of the view's total, which lacks the query heads r < g drops."""
    if view.head_group == shape.head_group or budget.kind not in ("flops", "params"):
        return budget
    if budget.kind == "flops":
        full, seen = (encoder_flops(s, None, budget.seq_len) for s in (shape, view))
    else:
        full, seen = encoder_params(shape), encoder_params(view)
    ratio = full / seen
    target = 1.0 - (1.0 - budget.target) * ratio
    if not 0.0 < target < 1.0:
        raise ValueError(f"budget.target {budget.target}: keeping {view.head_group} of "
                         f"{shape.head_group} query heads per group already removes "
                         f"{1 - 1 / ratio:.3f} of encoder {budget.kind}; ask for more")
    return replace(budget, target=target, tolerance=budget.tolerance * ratio)
