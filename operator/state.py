"""What a backend observed and what `reconcile` decided: plain, frozen values (no I/O, no logic).

The backends (kuberay.py, raycluster.py, backends.py) build `JobState`, `ServeState` and
`Observed` from what they read; `reconcile.py` turns them into a `Decision` the backends apply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tierserve.pruning.spec import PrunedModelSpec

__all__ = ["Deadlines", "Decision", "Event", "JobState", "Observed", "ServeState"]


@dataclass(frozen=True)
class JobState:
    """The pruning job of the current spec hash, whatever runs it."""

    state: str = "absent"  # absent | pending | running | succeeded | failed | stopped
    name: str | None = None
    message: str = ""


@dataclass(frozen=True)
class ServeState:
    """What the serving layer (RayService, or the Serve app on a Ray cluster) runs now."""

    spec_hash: str | None = None  # version it is configured with; None: nothing deployed
    ready: bool = False
    message: str = ""
    endpoint: str | None = None
    pruned_share: float | None = None
    savings_usd: float | None = None
    answering: bool = False  # some version answers requests (the old one, during a rollout)


@dataclass(frozen=True)
class Deadlines:
    """How long a phase may wait on something external before it fails (operator config)."""

    job_pending_s: float = 900.0  # the job waits for cluster resources / its runtime env
    deploy_s: float = 900.0  # Serve replicas of a new version are not ready (unschedulable...)
    unreachable_s: float = 600.0  # the backend (Ray dashboard) cannot be reached


@dataclass(frozen=True)
class Observed:
    job: JobState = field(default_factory=JobState)
    report: dict[str, Any] | None = None  # the complete report of the current spec hash
    progress: dict[str, Any] | None = None
    serve: ServeState = field(default_factory=ServeState)


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    status: dict[str, Any]
    spec_hash: str
    spec: PrunedModelSpec | None
    run_job: bool = False  # the job of spec_hash must exist (created once, adopted after)
    serve: dict[str, Any] | None = None  # ServingVersion the serving layer should run
    events: list[Event] = field(default_factory=list)
    error: str | None = None  # permanent: the spec is invalid (message names the field)
    stop_job: bool = False  # the job of spec_hash waited past its deadline: stop it
    undeploy: bool = False  # nothing should serve (a first rollout timed out): remove the app
