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

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from tierserve.pruning.report_model import PruningReport
from tierserve.pruning.spec import PrunedModelSpec, SpecError, parse_spec

from .conditions import condition, set_condition
from .datapaths import confine_data_paths
from .names import Reason, spec_hash
from .status import Phase, finite

__all__ = ["Deadlines", "Decision", "Event", "JobState", "Observed", "ServeState", "reconcile",
           "report_summary", "unreachable"]

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


def report_summary(report: dict[str, Any]) -> dict[str, Any]:
    """Gate table and headline numbers of a report, as status fields (non-finite numbers: null)."""
    r = PruningReport.read(finite(report))  # typed (report_model.py); ReportError names a field
    metrics, headline = r.metrics, r.headline()
    kept = metrics.quality_kept if metrics else {}
    rows = [g.model_dump(include={"metric", "slice", "value", "threshold", "passed"},
                         exclude_none=True) for g in r.gates]
    out: dict[str, Any] = {"gates": [{"passed": False, **row} for row in rows],
                           "metrics": {"full": metrics.full if metrics else None,
                                       "pruned": metrics.pruned if metrics else None,
                                       "headline": headline}}
    if r.budget and r.budget.encoder_flops_removed is not None:
        out["budget"] = round(r.budget.encoder_flops_removed, 4)
    if headline and kept.get(headline) is not None:
        out["quality"] = round(kept[headline], 4)
    if r.latency and r.latency.ratio is not None:
        out["latencyRatio"] = round(r.latency.ratio, 4)
    return out


def _gate_text(g: dict[str, Any]) -> str:
    """`ndcg@10=0.81 < 0.9`, `perplexity=61.2 > 50.0`: the failed comparison, as it happened."""
    name = f"{g.get('metric')}{'[' + g['slice'] + ']' if g.get('slice') else ''}"
    value, threshold = g.get("value"), g.get("threshold")
    if value is None or threshold is None:
        return f"{name} not judged: {g.get('detail') or 'not measured'}"
    broken = ">" if g.get("comparison") == "<=" else "<"
    return f"{name}={round(float(value), 4)} {broken} {round(float(threshold), 4)}"


def _failed_gates(report: dict[str, Any]) -> str:
    r = PruningReport.read(finite(report))
    text = ", ".join(_gate_text(g.model_dump()) for g in r.gates if not g.passed)
    return text or r.message or "no budget passes every gate"


def _version(generation: int, h: str, report: dict[str, Any]) -> dict[str, Any]:
    r, summary = PruningReport.read(finite(report)), report_summary(report)
    uri = r.artifact.uri if r.artifact else None
    version = {"generation": generation, "specHash": h, "key": r.key or h,
               "artifact": uri, "report": uri}
    return {**version, **{k: summary[k] for k in ("budget", "quality") if k in summary}}


def _seconds(stamp: str) -> float:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


class _Builder:
    """Accumulates the new status of one reconcile (a deep-enough copy of the old one)."""

    def __init__(self, old: dict[str, Any], generation: int, now: str,
                 deadlines: Deadlines | None = None) -> None:
        self.old, self.gen, self.now = old, generation, now
        self.deadlines = deadlines or Deadlines()
        self.new = {k: v for k, v in old.items() if k != "kopf"}
        self.new["conditions"] = list(old.get("conditions") or [])
        self.waited = False

    def cond(self, ctype: str, status: str, reason: str, message: str = "") -> None:
        self.new["conditions"] = set_condition(self.new["conditions"], ctype, status, reason,
                                               message, self.now, self.gen)

    def set(self, **fields: Any) -> None:
        for k, v in fields.items():
            if v is None:
                self.new.pop(k, None)
            else:
                self.new[k] = v

    def wait(self, reason: str, what: str, deadline_s: float) -> float | None:
        """Condition Waiting=True naming `what`; the seconds waited once past the deadline.

        The wait starts when this reason first appears (its lastTransitionTime), so a new kind
        of wait restarts the clock and an unchanged one keeps it across passes and restarts.
        """
        old = condition(self.new["conditions"], "Waiting")
        same = bool(old) and old.get("status") == "True" and old.get("reason") == reason
        since = old["lastTransitionTime"] if same else self.now
        entry = {"type": "Waiting", "status": "True", "reason": reason,
                 "message": f"{what} (waiting since {since}; deadline {deadline_s:g}s)",
                 "lastTransitionTime": since, "observedGeneration": self.gen}
        rest = [c for c in self.new["conditions"] if c.get("type") != "Waiting"]
        self.new["conditions"], self.waited = [*rest, entry], True
        waited = _seconds(self.now) - _seconds(since)
        return waited if waited > deadline_s else None

    def done_waiting(self) -> None:
        old = condition(self.new["conditions"], "Waiting")
        if not self.waited and old and old.get("status") == "True":
            self.cond("Waiting", "False", "NotWaiting", f"done: {old.get('reason')}")


def _ready(b: _Builder, serving: dict | None, serve: ServeState, reason: str, message: str) -> None:
    """Ready stays True while an older version serves (a re-prune never takes it down), and
    while an in-place rollout replaces it (the old replicas answer until the new ones are up)."""
    if serving and (serve.ready or serve.answering):
        gen = serving.get("generation")
        b.cond("Ready", "True", Reason.previous_serving if gen != b.gen else Reason.serving,
               f"generation {gen} serves at {serve.endpoint or 'its endpoint'}"
               + (f"; {message}" if gen != b.gen else ""))
    else:
        b.cond("Ready", "False", reason, message)


def _candidate(b: _Builder, outcome: str, report: dict[str, Any] | None) -> None:
    """The latest generation in its own status field while it is not what serves."""
    summary = report_summary(report) if report else {}
    b.set(candidate={"generation": b.gen, "outcome": outcome,
                     **{k: summary[k] for k in ("budget", "quality") if k in summary}})


def _deploy_timeout(b: _Builder, serving: dict | None, obs: Observed, waited: float) -> dict | None:
    """A rollout that never became ready: Failed; the previous version (if any) keeps serving."""
    why = (f"generation {b.gen}: Serve replicas not ready after {waited:.0f}s "
           f"(TIERSERVE_DEPLOY_DEADLINE_S): {obs.serve.message or 'no message'}")
    b.set(phase=Phase.failed.value, deploying=None, message=why, lastFailure=why,
          outcome=Reason.deploy_timeout)
    b.waited = False  # gave up waiting: Waiting turns False, Ready names the reason
    _ready(b, serving, obs.serve, Reason.deploy_timeout, why)
    _candidate(b, Phase.failed.value, None)
    return serving


def _from_report(b: _Builder, h: str, report: dict, obs: Observed) -> dict | None:
    """The job finished with a report: GatesFailed, or Deploying/Serving its version."""
    b.set(**report_summary(report), progress=None)
    r = PruningReport.read(finite(report))
    b.cond("Pruned", "True", Reason.pruned, f"artifact {r.key}")
    serving, target = b.new.get("serving"), b.new.get("deploying") or b.new.get("serving")
    if not r.deployable:
        why = f"generation {b.gen} failed its gates: {_failed_gates(report)}"
        b.cond("GatesPassed", "False", Reason.gates_failed, why)
        b.set(phase=Phase.gates_failed.value, lastFailure=why, message=why,
              outcome=Reason.gates_failed)
        _ready(b, serving, obs.serve, Reason.gates_failed, why)
        _candidate(b, Phase.gates_failed.value, report)
        return target
    b.cond("GatesPassed", "True", Reason.gates_passed, "every gate passed")
    version = _version(b.gen, h, report)
    if serving and serving.get("specHash") == h and obs.serve.ready:
        b.set(phase=Phase.serving.value, lastFailure=None, message=f"serving generation {b.gen}",
              candidate=None)
        b.cond("Ready", "True", Reason.serving, f"serving at {obs.serve.endpoint}")
        return serving
    what = f"Serve replicas of generation {b.gen}: {obs.serve.message or 'not ready yet'}"
    if (waited := b.wait(Reason.serve_not_ready, what, b.deadlines.deploy_s)) is not None:
        return _deploy_timeout(b, serving, obs, waited)
    b.set(phase=Phase.deploying.value, deploying=version, lastFailure=None,
          message=f"deploying generation {b.gen}" + (f": {obs.serve.message}" if obs.serve.message else ""))
    _ready(b, serving, obs.serve, Reason.deploying, f"deploying generation {b.gen}")
    _candidate(b, Phase.deploying.value, report)
    return version


def _job_failed(b: _Builder, obs: Observed, why: str, outcome: str) -> None:
    b.set(phase=Phase.failed.value, message=why, lastFailure=why, outcome=outcome, progress=None)
    b.cond("Pruned", "False", outcome, why)
    b.cond("GatesPassed", "Unknown", outcome, "the job produced no report")
    _ready(b, b.new.get("serving"), obs.serve, outcome, why)
    _candidate(b, Phase.failed.value, None)


def _pending_too_long(b: _Builder, job: JobState) -> float | None:
    if job.state != "pending":
        return None
    what = f"job {job.name} pending: {job.message or 'waiting for cluster resources to start it'}"
    return b.wait(Reason.job_pending, what, b.deadlines.job_pending_s)


def _from_job(b: _Builder, obs: Observed) -> bool:
    """No report yet: the job is pending/running (Pruning/Validating) or failed.

    True when the job waited past its deadline (it is to be stopped).
    """
    job, serving = obs.job, b.new.get("serving")
    b.set(jobStatus=job.state)
    if job.state in ("failed", "stopped"):
        why = f"generation {b.gen}: job {job.name} {job.state}" + (f": {job.message}" if job.message else "")
        _job_failed(b, obs, why, Reason.job_failed)
        return False
    if (waited := _pending_too_long(b, job)) is not None:
        why = (f"generation {b.gen}: job {job.name} still pending after {waited:.0f}s "
               f"(TIERSERVE_JOB_PENDING_DEADLINE_S): {job.message or 'no cluster resources'}")
        _job_failed(b, obs, why, Reason.job_pending_timeout)
        b.waited = False  # gave up waiting: Waiting turns False, Pruned names the reason
        return True
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
    return False


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
    if b.new.get("serving") and (serve.ready or serve.answering):
        b.set(endpoint=serve.endpoint, prunedShare=serve.pruned_share, savingsUsd=serve.savings_usd)


def _terminal(b: _Builder, h: str, obs: Observed) -> bool:
    """This spec hash already ended (job failed / timed out, gates failed, rollout timed out):
    keep that outcome even when the backend forgot the job (a Ray head restart), never rerun it."""
    failed = b.old.get("jobStatus") in ("failed", "stopped")  # written before `outcome` existed
    outcome = b.old.get("outcome") or (Reason.job_failed if failed else None)
    if b.old.get("specHash") != h or not outcome:
        return False
    if outcome == Reason.gates_failed and obs.report is not None and obs.report.get("complete"):
        return False  # the report is still readable: judge it again (same result)
    b.set(message=b.old.get("lastFailure") or b.old.get("message"))  # not a stale "retrying"
    _ready(b, b.new.get("serving"), obs.serve, outcome, b.old.get("lastFailure") or "")
    return True


def _job_wanted(b: _Builder, h: str, obs: Observed) -> bool:
    """The job of `h` must exist until it reported; a failed job is never resubmitted."""
    failed_before = b.old.get("specHash") == h and (
        b.old.get("jobStatus") in ("failed", "stopped") or bool(b.old.get("outcome")))
    return obs.report is None and obs.job.state not in ("failed", "stopped") and not failed_before


def _decision(b: _Builder, h: str, parsed: PrunedModelSpec | None, **kw: Any) -> Decision:
    b.done_waiting()
    return Decision(finite(b.new), h, parsed, events=_events(b.old, b.new), **kw)


def reconcile(spec: dict[str, Any], generation: int, status: dict[str, Any], obs: Observed, *,
              backend: str, job_name: str | None, now: str,
              deadlines: Deadlines | None = None,
              data: tuple[str | None, tuple[str, ...]] | None = None) -> Decision:
    """One level-based reconcile step; call it again whenever anything changed. `data`: the
    object's data base and the operator's allowed data roots; given, a spec naming a local path
    outside them is InvalidSpec (datapaths.py) and no job is launched."""
    h = spec_hash(spec)
    b = _Builder(status or {}, generation, now, deadlines)
    if b.old.get("specHash") != h:  # a new spec: forget the previous run, keep what serves
        for key in ("progress", "gates", "metrics", "budget", "quality", "latencyRatio",
                    "jobStatus", "lastFailure", "outcome"):
            b.new.pop(key, None)
    b.set(observedGeneration=generation, specHash=h, backend=backend, jobName=job_name)
    _promote(b, obs.serve)
    try:
        parsed = parse_spec(spec)
        if data is not None:
            confine_data_paths(spec, *data)
    except SpecError as err:
        _invalid(b, err, obs)
        return _decision(b, h, None, serve=b.new.get("deploying") or b.new.get("serving"),
                         error=str(err))
    if _terminal(b, h, obs):
        serve = b.new.get("deploying") or b.new.get("serving")
        return _decision(b, h, parsed, serve=serve, undeploy=serve is None
                         and b.new.get("outcome") == Reason.deploy_timeout)
    stop = False
    if obs.report is not None and obs.report.get("complete"):
        if obs.job.state != "absent":  # a finished RayJob may be gone (TTL); keep what it was
            b.set(jobStatus=obs.job.state)
        target = _from_report(b, h, obs.report, obs)
    else:
        stop = _from_job(b, obs)
        target = b.new.get("deploying") or b.new.get("serving")
    return _decision(b, h, parsed, run_job=_job_wanted(b, h, obs) and not stop, serve=target,
                     stop_job=stop, undeploy=target is None and b.new.get("outcome") is not None
                     and b.new.get("outcome") == Reason.deploy_timeout)


def unreachable(spec: dict[str, Any], generation: int, status: dict[str, Any], error: str, *,
                now: str, deadlines: Deadlines | None = None) -> Decision:
    """The backend could not be observed: say so in status, and fail once the wait is too long.

    Not an outcome of the spec: the next pass that reaches the backend reconciles as usual.
    """
    h = spec_hash(spec)
    b = _Builder(status or {}, generation, now, deadlines)
    b.set(message=f"retrying after a transient error: {error[:300]}")
    waited = b.wait(Reason.transient, f"the backend is unreachable: {error[:300]}",
                    b.deadlines.unreachable_s)
    if waited is not None and b.new.get("phase") not in (Phase.failed.value,
                                                         Phase.gates_failed.value):
        why = (f"generation {generation}: backend unreachable for {waited:.0f}s "
               f"(TIERSERVE_UNREACHABLE_DEADLINE_S); retrying: {error[:300]}")
        b.set(phase=Phase.failed.value, lastFailure=why, message=why)
    return _decision(b, h, None)
