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
from typing import Any

from tierserve.pruning.report_model import PruningReport
from tierserve.pruning.spec import PrunedModelSpec, SpecError, parse_spec

from .conditions import condition, set_condition
from .datapaths import confine_data_paths
from .names import Reason, spec_hash
from .precheck import check_data
from .state import Deadlines, Decision, Event, JobState, Observed, ServeState
from .status import Phase, finite
from .summary import failed_gates, report_summary, version_of

# the values reconcile works on live in state.py; they are re-exported for its callers
__all__ = ["Deadlines", "Decision", "Event", "JobState", "Observed", "ServeState", "reconcile",
           "report_summary", "unreachable"]

VALIDATING_FROM = 0.65  # progress fraction where the job starts evaluating (pipeline "evaluate")


def _seconds(stamp: str) -> float:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


class _Builder:
    """Accumulates the new status of one reconcile (a deep-enough copy of the old one)."""

    def __init__(self, old: dict[str, Any], generation: int, now: str,
                 deadlines: Deadlines | None = None) -> None:
        self.old, self.gen, self.now = old, generation, now
        self.deadlines = deadlines or Deadlines()
        self.run: str | None = None  # the run key of the current attempt (names.run_key)
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
        why = f"generation {b.gen} failed its gates: {failed_gates(report)}"
        b.cond("GatesPassed", "False", Reason.gates_failed, why)
        b.set(phase=Phase.gates_failed.value, lastFailure=why, message=why,
              outcome=Reason.gates_failed)
        _ready(b, serving, obs.serve, Reason.gates_failed, why)
        _candidate(b, Phase.gates_failed.value, report)
        return target
    b.cond("GatesPassed", "True", Reason.gates_passed, "every gate passed")
    version = version_of(b.gen, h, report, b.run)
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
    unhealthy = bool(serving) and serving.get("specHash") == h  # it served, and stopped
    _ready(b, serving, obs.serve, Reason.serve_unhealthy if unhealthy else Reason.deploying,
           f"generation {b.gen}: {obs.serve.message or 'the Serve app is not running'}"
           if unhealthy else f"deploying generation {b.gen}")
    _candidate(b, Phase.deploying.value, report)
    return version


def _built(b: _Builder, h: str) -> dict | None:
    """The version status already names for spec `h`: its job finished and passed its gates."""
    return next((v for k in ("deploying", "serving")
                 if (v := b.new.get(k)) and v.get("specHash") == h), None)


def _from_version(b: _Builder, h: str, version: dict, obs: Observed) -> dict:
    """The job of `h` finished before, but the backend no longer has its report (a Ray head
    restart forgets jobs and Serve apps): never prune again; (re)deploy the version from its
    artifact, and say so. Ready follows the app's health."""
    if obs.serve.ready and obs.serve.spec_hash == h:
        b.set(phase=Phase.serving.value, message=f"serving generation {version['generation']}")
        b.cond("Ready", "True", Reason.serving, f"serving at {obs.serve.endpoint}")
        return version
    what = (f"Serve app of generation {version['generation']}, redeployed from its artifact "
            f"{version.get('artifact')}: {obs.serve.message or 'not running'}")
    if (waited := b.wait(Reason.serve_not_ready, what, b.deadlines.deploy_s)) is not None:
        return _deploy_timeout(b, b.new.get("serving"), obs, waited) or version
    b.set(phase=Phase.deploying.value, message=what)
    b.cond("Ready", "False", Reason.serve_unhealthy, what)
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
        # the job refused evaluation rows that are also training rows (pruning's DataLeak)
        leak = job.state == "failed" and "DataLeak" in job.message
        _job_failed(b, obs, why, Reason.data_leak if leak else Reason.job_failed)
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
    """The job of `h` must exist until it reported; a failed job is never resubmitted, and a
    finished one (its version is in status) never runs again."""
    failed_before = b.old.get("specHash") == h and (
        b.old.get("jobStatus") in ("failed", "stopped") or bool(b.old.get("outcome")))
    return (obs.report is None and obs.job.state not in ("failed", "stopped")
            and not failed_before and _built(b, h) is None)


def _decision(b: _Builder, h: str, parsed: PrunedModelSpec | None, **kw: Any) -> Decision:
    b.done_waiting()
    return Decision(finite(b.new), h, parsed, events=_events(b.old, b.new), **kw)


def reconcile(spec: dict[str, Any], generation: int, status: dict[str, Any], obs: Observed, *,
              backend: str, job_name: str | None, now: str,
              deadlines: Deadlines | None = None, run: str | None = None,
              data: tuple[str | None, tuple[str, ...]] | None = None,
              extra_error: str | None = None) -> Decision:
    """One level-based reconcile step; call it again whenever anything changed. `data`: the
    object's data base and the operator's allowed data roots; given, a spec naming a local path
    outside them is InvalidSpec (datapaths.py) and no job is launched. `run`: the current
    attempt's run key, recorded in the version it builds (backends read its report by it)."""
    h = spec_hash(spec)
    b = _Builder(status or {}, generation, now, deadlines)
    b.run = run
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
            if obs.job.state == "absent" and obs.report is None and _built(b, h) is None:
                # no job yet (nor a version it built): refuse a doomed one
                check_data(parsed, *data)  # files, splits (precheck.py)
        if extra_error:  # found by the caller's reads (secrets.py): InvalidSpec, no job
            raise SpecError(extra_error)
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
    elif obs.job.state in ("absent", "succeeded") and (built := _built(b, h)) is not None:
        target = _from_version(b, h, built, obs)
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
    # what serves cannot be observed: neither "serves" nor "does not serve" is known
    b.cond("Ready", "Unknown", Reason.unreachable, f"the cluster cannot be observed: {error[:300]}")
    if waited is not None and b.new.get("phase") not in (Phase.failed.value,
                                                         Phase.gates_failed.value):
        why = (f"generation {generation}: backend unreachable for {waited:.0f}s "
               f"(TIERSERVE_UNREACHABLE_DEADLINE_S); retrying: {error[:300]}")
        b.set(phase=Phase.failed.value, lastFailure=why, message=why)
    return _decision(b, h, None)
