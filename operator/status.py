"""The PrunedModel `status` as code, next to the spec model it reports on.

The operator computes a `PrunedModelStatus` and writes `status.model_dump(by_alias=True,
exclude_none=True)`; the CRD's status schema is generated from this model (see `crd.py`), so the
apiserver never prunes a field the operator writes. Conditions follow the KServe / KubeRay style:
one entry per type with status, reason, message and lastTransitionTime.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

__all__ = ["Attempt", "Candidate", "Condition", "ConditionType", "GateRow", "Phase", "Progress",
           "PrunedModelStatus", "ServingVersion", "finite"]


def finite(value: Any) -> Any:
    """`value` with every NaN/Infinity replaced by None: JSON has no such numbers, and a patch
    carrying one is refused by the apiserver (the status would never be written)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class Phase(StrEnum):
    pending = "Pending"
    pruning = "Pruning"
    validating = "Validating"
    gates_failed = "GatesFailed"
    deploying = "Deploying"
    serving = "Serving"
    failed = "Failed"


class ConditionType(StrEnum):
    pruned = "Pruned"
    gates_passed = "GatesPassed"
    ready = "Ready"
    waiting = "Waiting"  # True while a phase waits on something external (message names it)


class Condition(_Model):
    type: ConditionType
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(description="CamelCase machine-readable reason")
    message: str = ""
    last_transition_time: str = Field(description="RFC 3339")
    observed_generation: int | None = None


class GateRow(_Model):
    metric: str
    slice: str | None = None
    value: float | None = None
    threshold: float | None = None
    passed: bool


class Progress(_Model):
    stage: str
    fraction: float = Field(ge=0.0, le=1.0)
    updated: str | None = None


class ServingVersion(_Model):
    """The version that serves traffic; it changes only after a new generation's gates pass."""

    generation: int
    spec_hash: str | None = Field(None, description="Hash of the spec this version was built from")
    key: str = Field(description="Job key (spec + input hashes) of the artifact being served")
    run: str | None = Field(None, description="Run (spec hash, UID, attempt) that built it")
    artifact: str | None = None
    report: str | None = Field(None, description="URI of the report.json the Serve app was built from")
    budget: float | None = Field(None, description="Encoder FLOPs removed by this version")
    quality: float | None = Field(None, description="Headline pruned / full quality of this version")


class Candidate(_Model):
    """The latest generation while it is not the one serving (rejected, or being rolled out)."""

    generation: int
    outcome: str = Field(description="Phase of the candidate, e.g. GatesFailed, Deploying")
    budget: float | None = None
    quality: float | None = None


class Attempt(_Model):
    """One finished attempt of a spec: how it ended, kept when a retry starts the next one."""

    attempt: int
    spec_hash: str | None = None
    outcome: str | None = Field(None, description="JobFailed, GatesFailed, DataLeak, ...")
    message: str | None = Field(None, description="The attempt's last error")
    finished: str | None = Field(None, description="When the next attempt replaced it (RFC 3339)")


class PrunedModelStatus(_Model):
    phase: Phase = Phase.pending
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    message: str | None = None
    backend: Literal["kuberay", "raycluster"] | None = None
    spec_hash: str | None = Field(None, description="Hash of the spec of observedGeneration")
    job_name: str | None = Field(None, description="RayJob name or Ray submission id of the current run")
    job_status: str | None = Field(None, description="The job's own status (RayJob jobStatus / Ray job)")
    progress: Progress | None = None
    gates: list[GateRow] | None = None
    metrics: dict[str, Any] | None = Field(None, description="Headline full/pruned metrics")
    budget: float | None = Field(None, description="Achieved fraction of encoder FLOPs removed")
    quality: float | None = Field(None, description="Headline pruned / full quality")
    latency_ratio: float | None = None
    serving: ServingVersion | None = None
    deploying: ServingVersion | None = Field(None, description="Version being rolled out")
    endpoint: str | None = None
    pruned_share: float | None = None
    savings_usd: float | None = None
    last_failure: str | None = Field(None, description="Why the latest generation is not serving")
    candidate: Candidate | None = Field(None, description="Latest generation, while another serves")
    outcome: str | None = Field(None, description=(
        "Terminal outcome of this spec hash (JobFailed, JobPendingTimeout, DeployTimeout, "
        "GatesFailed), kept across backend restarts: a finished job is never submitted again"))
    attempt: int | None = Field(None, description=(
        "Attempt of the current spec: a retry (a new `tierserve.io/retry` annotation, or a changed "
        "data annotation, on a failed object) starts the next one with a fresh job"))
    retry_token: str | None = Field(None, description="Hash of the annotations the attempt started with")
    attempts: list[Attempt] | None = Field(None, description="Earlier attempts (last 10), newest last")
