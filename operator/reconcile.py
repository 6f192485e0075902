"""The pure reconcile core: (object, observed children) -> (what should exist, new status, events).

No I/O here. Handlers observe the backend (a RayJob/RayService, or a Ray cluster's Jobs and Serve
APIs), normalise what they saw into `Observed`, call `reconcile`, and apply the `Decision`:
make sure the job of the current spec hash exists (never a second one), configure the serving
layer with `decision.serve`, patch the status when it changed and post `decision.events`.

The phase machine, for the spec of the current generation (hash h):

    Pending -> Pruning -> Validating -> GatesFailed
                                     -> Deploying -> Serving
    any step -> Failed (invalid spec, or the job failed without a report)

A new generation re-runs the job; the version that already serves keeps serving (`decision.serve`
stays the old one) until the new report passes its gates and the new version is ready.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tierserve.pruning.spec import PrunedModelSpec, SpecError, parse_spec

from .conditions import set_condition
from .names import Reason, spec_hash
from .status import Phase

__all__ = ["Decision", "Event", "JobState", "Observed", "ServeState", "reconcile", "report_summary"]

VALIDATING_FROM = 0.65  # progress fraction where the job starts evaluating (pipeline "evaluate")


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


def report_summary(report: dict[str, Any]) -> dict[str, Any]:
    """Gate table and headline numbers of a report, as status fields."""
    metrics = report.get("metrics") or {}
    kept = metrics.get("quality_kept") or {}
    gates = report.get("gates") or []
    headline = next((g["metric"] for g in gates if g.get("metric") in kept), None)
    headline = headline or next(iter(kept), None)
    rows = [{k: g.get(k) for k in ("metric", "slice", "value", "threshold", "passed")
             if g.get(k) is not None} for g in gates]
    out: dict[str, Any] = {"gates": rows,
                           "metrics": {"full": metrics.get("full"),
                                       "pruned": metrics.get("pruned"),
                                       "headline": headline}}
    if (budget := report.get("budget")) and budget.get("encoder_flops_removed") is not None:
        out["budget"] = round(float(budget["encoder_flops_removed"]), 4)
    if headline and kept.get(headline) is not None:
        out["quality"] = round(float(kept[headline]), 4)
    if (lat := report.get("latency")) and lat.get("ratio") is not None:
        out["latencyRatio"] = round(float(lat["ratio"]), 4)
    return out


def _failed_gates(report: dict[str, Any]) -> str:
    bad = [g for g in report.get("gates") or [] if not g.get("passed")]
    text = ", ".join(f"{g.get('metric')}{'[' + g['slice'] + ']' if g.get('slice') else ''}"
                     f"={g.get('value')} < {g.get('threshold')}" for g in bad)
    return text or report.get("message") or "no budget passes every gate"


def _version(generation: int, h: str, report: dict[str, Any]) -> dict[str, Any]:
    art = report.get("artifact") or {}
    return {"generation": generation, "specHash": h, "key": report.get("key") or h,
            "artifact": art.get("uri"), "report": art.get("uri")}


class _Builder:
    """Accumulates the new status of one reconcile (a deep-enough copy of the old one)."""

    def __init__(self, old: dict[str, Any], generation: int, now: str) -> None:
        self.old, self.gen, self.now = old, generation, now
        self.new = {k: v for k, v in old.items() if k != "kopf"}
        self.new["conditions"] = list(old.get("conditions") or [])

    def cond(self, ctype: str, status: str, reason: str, message: str = "") -> None:
        self.new["conditions"] = set_condition(self.new["conditions"], ctype, status, reason,
                                               message, self.now, self.gen)

    def set(self, **fields: Any) -> None:
        for k, v in fields.items():
            if v is None:
                self.new.pop(k, None)
            else:
                self.new[k] = v


def _ready(b: _Builder, serving: dict | None, serve: ServeState, reason: str, message: str) -> None:
    """Ready stays True while an older version serves (a re-prune never takes it down)."""
    if serving and serve.ready:
        gen = serving.get("generation")
        b.cond("Ready", "True", Reason.previous_serving if gen != b.gen else Reason.serving,
               f"generation {gen} serves at {serve.endpoint or 'its endpoint'}"
               + (f"; {message}" if gen != b.gen else ""))
    else:
        b.cond("Ready", "False", reason, message)


def _from_report(b: _Builder, h: str, report: dict, obs: Observed) -> dict | None:
    """The job finished with a report: GatesFailed, or Deploying/Serving its version."""
    b.set(**report_summary(report), progress=None)
    b.cond("Pruned", "True", Reason.pruned, f"artifact {report.get('key')}")
    serving, target = b.new.get("serving"), b.new.get("deploying") or b.new.get("serving")
    if not report.get("deployable"):
        why = f"generation {b.gen} failed its gates: {_failed_gates(report)}"
        b.cond("GatesPassed", "False", Reason.gates_failed, why)
        b.set(phase=Phase.gates_failed.value, lastFailure=why, message=why)
        _ready(b, serving, obs.serve, Reason.gates_failed, why)
        return target
    b.cond("GatesPassed", "True", Reason.gates_passed, "every gate passed")
    version = _version(b.gen, h, report)
    if serving and serving.get("specHash") == h and obs.serve.ready:
        b.set(phase=Phase.serving.value, lastFailure=None, message=f"serving generation {b.gen}")
        b.cond("Ready", "True", Reason.serving, f"serving at {obs.serve.endpoint}")
        return serving
    b.set(phase=Phase.deploying.value, deploying=version, lastFailure=None,
          message=f"deploying generation {b.gen}" + (f": {obs.serve.message}" if obs.serve.message else ""))
    _ready(b, serving, obs.serve, Reason.deploying, f"deploying generation {b.gen}")
    return version


def _from_job(b: _Builder, obs: Observed) -> None:
    """No report yet: the job is pending/running (Pruning/Validating) or failed."""
    job, serving = obs.job, b.new.get("serving")
    b.set(jobStatus=job.state)
    if job.state in ("failed", "stopped"):
        why = f"generation {b.gen}: job {job.name} {job.state}" + (f": {job.message}" if job.message else "")
        b.set(phase=Phase.failed.value, message=why, lastFailure=why)
        b.cond("Pruned", "False", Reason.job_failed, why)
        b.cond("GatesPassed", "Unknown", Reason.job_failed, "the job produced no report")
        _ready(b, serving, obs.serve, Reason.job_failed, why)
        return
    progress = obs.progress or {}
    fraction = float(progress.get("fraction") or 0.0)
    validating = fraction >= VALIDATING_FROM or job.state == "succeeded"
    phase = Phase.validating if validating else Phase.pruning
    if job.state == "absent":
        phase = Phase.pending
    if progress:
        b.set(progress={k: progress[k] for k in ("stage", "fraction", "updated") if k in progress})
    what = "creating it" if job.state == "absent" else progress.get("stage", job.state)
    b.set(phase=phase.value, message=f"job {job.name}: {what}")
    b.cond("Pruned", "True" if validating else "False",
           Reason.validating if validating else Reason.job_running, f"job {job.name} {job.state}")
    b.cond("GatesPassed", "Unknown", Reason.validating if validating else Reason.waiting,
           "gates are judged when the job finishes")
    _ready(b, serving, obs.serve, Reason.not_deployed, f"generation {b.gen} is being pruned")


def _events(old: dict[str, Any], new: dict[str, Any]) -> list[Event]:
    before, after = old.get("phase"), new.get("phase")
    if before == after and old.get("observedGeneration") == new.get("observedGeneration"):
        return []
    warn = after in (Phase.failed.value, Phase.gates_failed.value)
    return [Event("Warning" if warn else "Normal", after, new.get("message") or after)]


def _invalid(b: _Builder, err: SpecError, obs: Observed) -> None:
    b.set(phase=Phase.failed.value, message=f"invalid spec: {err}", lastFailure=f"invalid spec: {err}",
          progress=None)
    b.cond("Pruned", "False", Reason.invalid_spec, str(err))
    b.cond("GatesPassed", "Unknown", Reason.invalid_spec, str(err))
    _ready(b, b.new.get("serving"), obs.serve, Reason.invalid_spec, str(err))


def _promote(b: _Builder, serve: ServeState) -> None:
    """A rollout that became ready (maybe of an older generation) is now what serves."""
    deploying = b.new.get("deploying")
    if deploying and serve.ready and serve.spec_hash == deploying.get("specHash"):
        b.set(serving=deploying, deploying=None)
    if b.new.get("serving") and serve.ready:
        b.set(endpoint=serve.endpoint, prunedShare=serve.pruned_share, savingsUsd=serve.savings_usd)


def _job_wanted(b: _Builder, h: str, obs: Observed) -> bool:
    """The job of `h` must exist until it reported; a failed job is never resubmitted."""
    failed_before = b.old.get("specHash") == h and b.old.get("jobStatus") in ("failed", "stopped")
    return obs.report is None and obs.job.state not in ("failed", "stopped") and not failed_before


def reconcile(spec: dict[str, Any], generation: int, status: dict[str, Any], obs: Observed, *,
              backend: str, job_name: str | None, now: str) -> Decision:
    """One level-based reconcile step; call it again whenever anything changed."""
    h = spec_hash(spec)
    b = _Builder(status or {}, generation, now)
    if b.old.get("specHash") != h:  # a new spec: forget the previous run, keep what serves
        for key in ("progress", "gates", "metrics", "budget", "quality", "latencyRatio",
                    "jobStatus", "lastFailure"):
            b.new.pop(key, None)
    b.set(observedGeneration=generation, specHash=h, backend=backend, jobName=job_name)
    _promote(b, obs.serve)
    try:
        parsed = parse_spec(spec)
    except SpecError as err:
        _invalid(b, err, obs)
        return Decision(b.new, h, None, serve=b.new.get("deploying") or b.new.get("serving"),
                        events=_events(b.old, b.new), error=str(err))
    if obs.report is not None and obs.report.get("complete"):
        if obs.job.state != "absent":  # a finished RayJob may be gone (TTL); keep what it was
            b.set(jobStatus=obs.job.state)
        target = _from_report(b, h, obs.report, obs)
    else:
        _from_job(b, obs)
        target = b.new.get("deploying") or b.new.get("serving")
    return Decision(b.new, h, parsed, run_job=_job_wanted(b, h, obs), serve=target,
                    events=_events(b.old, b.new))
