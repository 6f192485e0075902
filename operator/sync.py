"""One reconcile pass for one PrunedModel: fetch, observe, decide (pure), apply, write status.

Every trigger (create/update/resume, the level-based timer, an event of a RayJob or RayService)
calls `sync`; a per-object lock keeps passes of one object in order. The status is computed
before applying and written even when a step failed (with the error as its message, replaced by
the next good pass), and only when it changed.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from . import k8s
from .attempts import next_attempt, retry_token
from .backends import backend_for
from .config import OperatorConfig
from .names import Reason, run_key, spec_hash
from .reconcile import reconcile, unreachable
from .secrets import check_hf_secret
from .state import Decision, Event
from .status import finite

__all__ = ["current_attempt", "sync"]

_LOCKS: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)
Emit = Callable[[dict[str, Any], Event], None]


def _write(pm: dict[str, Any], new: dict[str, Any]) -> None:
    meta, old = pm["metadata"], pm.get("status") or {}
    if (body := k8s.status_patch(old, finite(new))) is not None:
        k8s.patch_status(meta["namespace"], meta["name"], body)


def _unreachable(pm: dict[str, Any], cfg: OperatorConfig, emit: Emit, err: Exception) -> None:
    """The backend could not be observed: status says so (bounded by a deadline), then retry."""
    meta = pm["metadata"]
    d = unreachable(pm["spec"], meta.get("generation", 1), pm.get("status") or {}, str(err),
                    now=k8s.now(), deadlines=cfg.deadlines)
    _write(pm, d.status)
    for event in d.events:
        emit(pm, event)


def current_attempt(pm: dict[str, Any], h: str, emit: Emit) -> dict[str, Any]:
    """`pm` as of its current attempt: a retry asked for since the last one ended starts the
    next (status written first, so the backend is observed under the new run's names)."""
    old = pm.get("status") or {}
    change = next_attempt(old, h, retry_token(pm["metadata"].get("annotations")), k8s.now())
    if change is None:
        return pm
    new = {k: v for k, v in {**old, **change}.items() if v is not None}
    _write(pm, new)
    if "attempt" in change:
        emit(pm, Event("Normal", Reason.retrying, f"attempt {new['attempt']} of spec {h}: "
                       f"the previous one ended {old.get('outcome')}"))
    return {**pm, "status": new}


def _pass(pm: dict[str, Any], cfg: OperatorConfig, emit: Emit) -> Decision:
    backend = backend_for(pm, cfg)
    h = spec_hash(pm["spec"])
    pm = current_attempt(pm, h, emit)
    meta, status = pm["metadata"], pm.get("status") or {}
    try:
        observed = backend.observe(pm, h)
    except Exception as err:  # noqa: BLE001 - recorded in status, then re-raised for a retry
        _unreachable(pm, cfg, emit, err)
        raise
    own = cfg.for_object(meta.get("annotations"))
    d = reconcile(pm["spec"], meta.get("generation", 1), status, observed,
                  backend=own.backend, job_name=backend.job_name(pm, h), run=run_key(pm, h),
                  now=k8s.now(),
                  deadlines=cfg.deadlines, data=(own.data_base, cfg.data_roots),
                  extra_error=check_hf_secret(pm, cfg))
    events, error = list(d.events), None
    try:
        events += backend.apply(pm, d)
    except Exception as err:  # noqa: BLE001 - recorded in status, then re-raised for a retry
        error = err
    new = dict(d.status)
    if error is not None:
        new["message"] = f"retrying after a transient error: {str(error)[:300]}"
    _write(pm, new)
    for event in events:
        emit(pm, event)
    if error is not None:
        raise error
    return d


def sync(namespace: str, name: str, cfg: OperatorConfig, emit: Emit) -> Decision | None:
    """Reconcile `namespace/name` once; None when it is gone or being deleted."""
    with _LOCKS[(namespace, name)]:
        pm = k8s.get("PrunedModel", namespace, name)
        if pm is None or pm["metadata"].get("deletionTimestamp"):
            return None
        return _pass(pm, cfg, emit)
