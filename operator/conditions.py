"""Conditions with Kubernetes semantics: lastTransitionTime moves only when `status` changes."""

from __future__ import annotations

from typing import Any

__all__ = ["condition", "set_condition"]


def condition(conditions: list[dict[str, Any]], ctype: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == ctype), None)


def set_condition(conditions: list[dict[str, Any]], ctype: str, status: str, reason: str,
                  message: str, now: str, generation: int | None) -> list[dict[str, Any]]:
    """A new list with `ctype` set; other conditions are kept in their order."""
    old = condition(conditions, ctype)
    when = old["lastTransitionTime"] if old and old.get("status") == status else now
    new = {"type": ctype, "status": status, "reason": reason, "message": message,
           "lastTransitionTime": when, "observedGeneration": generation}
    if old is None:
        return [*conditions, new]
    return [new if c.get("type") == ctype else c for c in conditions]
