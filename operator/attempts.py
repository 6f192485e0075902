"""Retry as a first-class operation: when a failed object starts its next attempt. Pure.

An attempt is one run of one spec (`names.run_key`: spec hash, UID, attempt number), and its
job, report and artifact directory are named by it. A terminal outcome (JobFailed, DataLeak,
GatesFailed, ...) is kept across passes and backend restarts, so nothing reruns by itself; the
next attempt starts when the user asks for one:

- a new value of the `tierserve.io/retry` annotation
  (`kubectl annotate pm X tierserve.io/retry=$(date +%s) --overwrite`);
- a changed annotation the job depends on (`tierserve.io/source-dir`, `-backend`,
  `-ray-dashboard`, `-job-cpus`), e.g. adding the source directory a failed job lacked;
- a changed spec (a new spec hash: a new run, whatever the attempt);
- delete and re-create (a new UID: a new run, attempt 1).

The annotations an attempt started with are kept as `status.retryToken`; the attempt that ended
goes to `status.attempts` with its outcome and last error.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from .names import ANN_BACKEND, ANN_DASHBOARD, ANN_JOB_CPUS, ANN_RETRY, ANN_SOURCE_DIR, Reason

__all__ = ["HISTORY", "RETRYABLE", "next_attempt", "retry_token"]

WATCHED = (ANN_RETRY, ANN_SOURCE_DIR, ANN_BACKEND, ANN_DASHBOARD, ANN_JOB_CPUS)
RETRYABLE = frozenset({Reason.job_failed, Reason.job_pending_timeout, Reason.deploy_timeout,
                       Reason.gates_failed, Reason.data_leak})
HISTORY = 10  # attempts kept in status.attempts
# what the previous attempt computed; the next one starts without it
_RUN_FIELDS = ("outcome", "jobStatus", "lastFailure", "progress", "gates", "metrics", "budget",
               "quality", "latencyRatio", "candidate")


def retry_token(annotations: Mapping[str, str] | None) -> str:
    """12 hex characters over the annotations a job depends on, plus the retry annotation."""
    ann = annotations or {}
    text = json.dumps({k: ann[k] for k in WATCHED if k in ann}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def next_attempt(status: Mapping[str, Any], h: str, token: str, now: str) -> dict[str, Any] | None:
    """The status that starts the next attempt of spec `h`, or only records `token`; None when
    nothing changes. Fields set to None are to be removed."""
    if status.get("retryToken") == token:
        return None
    ended = status.get("specHash") == h and status.get("outcome") in RETRYABLE
    if status.get("retryToken") is None or not ended:
        return {"retryToken": token}  # the first pass, or a running attempt: only remember it
    attempt = int(status.get("attempt") or 1)
    done = {"attempt": attempt, "specHash": h, "outcome": status.get("outcome"),
            "message": (status.get("lastFailure") or status.get("message") or "")[:1000],
            "finished": now}
    history = [*(status.get("attempts") or []), done][-HISTORY:]
    return {"attempt": attempt + 1, "retryToken": token, "attempts": history,
            "message": f"attempt {attempt + 1}: retrying after {status.get('outcome')}",
            **dict.fromkeys(_RUN_FIELDS)}
