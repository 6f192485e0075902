"""Backend (b), an existing Ray cluster: the Ray Jobs and Serve REST APIs of its dashboard.

- Jobs: `POST /api/jobs/` with a deterministic `submission_id` (object + spec hash): a restarted
  operator that submits again gets "already exists" and adopts the running job. `GET
  /api/jobs/<id>` for its status, `GET .../logs` for progress and report marker lines,
  `POST .../stop` on delete.
- Serve: `PUT /api/serve/applications/` replaces *every* application, so each PUT carries the
  whole set: all tierserve apps (and any foreign declarative app, untouched) as the cluster has
  them now, with only this object's app replaced or removed. The read-modify-write runs under a
  per-dashboard lock, so concurrent reconciles in this operator never drop each other's apps.
  Where Serve is not running yet, the PUT starts it: its `http_options` name the operator's
  TIERSERVE_SERVE_PORT (host 0.0.0.0); a running Serve keeps its own host and port.
Pure helpers (`merged_config`, `app_state`, `job_state`) are separate from the HTTP calls.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections import defaultdict
from typing import Any

from .state import JobState, ServeState

__all__ = ["RayApiError", "app_state", "apps_lock", "get_apps", "job_info", "job_logs",
           "job_state", "merged_config", "put_apps", "stop_job", "submit_job", "tail"]

_TIMEOUT_S = 30
SERVE_PORT = 8000  # Ray's default HTTP port; OperatorConfig.serve_port (TIERSERVE_SERVE_PORT)
MESSAGE_TAIL = 1000  # status keeps the END of a crashed job's message/log: the exception is there
_LOCKS: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
_STATES = {"PENDING": "pending", "RUNNING": "running", "SUCCEEDED": "succeeded",
           "FAILED": "failed", "STOPPED": "stopped"}


class RayApiError(RuntimeError):
    """The dashboard answered with an error or not at all (transient from the operator's view)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _call(method: str, url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=_TIMEOUT_S) as resp:
            text = resp.read().decode()
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace").strip()
        raise RayApiError(f"{method} {url}: {err.code} {detail[-500:]}", err.code) from None
    except OSError as err:
        raise RayApiError(f"{method} {url}: {err}") from None
    return json.loads(text) if text.strip() else None


def apps_lock(dashboard: str) -> threading.Lock:
    return _LOCKS[dashboard.rstrip("/")]


# -- jobs ----------------------------------------------------------------------------------------
def submit_job(dashboard: str, submission_id: str, entrypoint: str,
               env_vars: dict[str, str] | None = None, metadata: dict[str, str] | None = None,
               num_cpus: float = 0.0) -> bool:
    """Submit once. True: submitted now; False: a job with this id existed (adopted)."""
    body: dict[str, Any] = {"entrypoint": entrypoint, "submission_id": submission_id,
                            "runtime_env": {"env_vars": env_vars or {}}, "metadata": metadata or {}}
    if num_cpus:
        body["entrypoint_num_cpus"] = num_cpus
    try:
        _call("POST", f"{dashboard}/api/jobs/", body)
    except RayApiError as err:
        if "already exists" in str(err):
            return False
        raise
    return True


def job_info(dashboard: str, submission_id: str) -> dict[str, Any] | None:
    try:
        return _call("GET", f"{dashboard}/api/jobs/{submission_id}")
    except RayApiError as err:
        if err.status == 404:
            return None
        raise


def job_logs(dashboard: str, submission_id: str) -> str:
    return (_call("GET", f"{dashboard}/api/jobs/{submission_id}/logs") or {}).get("logs", "")


def stop_job(dashboard: str, submission_id: str) -> None:
    try:
        _call("POST", f"{dashboard}/api/jobs/{submission_id}/stop")
    except RayApiError as err:
        if err.status != 404:
            raise


def job_state(info: dict[str, Any] | None, submission_id: str, error: str | None = None,
              cpus: float = 0.0) -> JobState:
    """JobState of a Ray job; `cpus`: what its entrypoint asked for (the REST API omits it)."""
    if info is None:
        return JobState(name=submission_id)
    state = _STATES.get(str(info.get("status", "")).upper(), "pending")
    message = error or info.get("message") or ""
    if state == "pending" and cpus:  # name what it waits for
        message += f" (the job asks for {cpus:g} CPU)"
    return JobState(state=state, name=submission_id, message=tail(message))


def tail(text: str, limit: int = MESSAGE_TAIL) -> str:
    """At most `limit` characters: a long message keeps the start of its first line (the
    exception's name and the field it names) and its end (a traceback ends with the exception),
    joined by " ... " where it was cut."""
    text = text.strip()
    if len(text) <= limit:
        return text
    head = text.splitlines()[0][: limit // 4].rstrip()
    return f"{head} ... {text[-(limit - len(head) - 5):]}"


# -- serve ---------------------------------------------------------------------------------------
def get_apps(dashboard: str) -> dict[str, Any]:
    return _call("GET", f"{dashboard}/api/serve/applications/") or {}


def put_apps(dashboard: str, config: dict[str, Any]) -> None:
    _call("PUT", f"{dashboard}/api/serve/applications/", config)


def merged_config(current: dict[str, Any], app: str, new_app: dict[str, Any] | None,
                  port: int = SERVE_PORT) -> dict[str, Any] | None:
    """The whole PUT body with `app` replaced by `new_app` (removed when None).

    None when nothing would change (no PUT needed). Every other app is carried over exactly as
    deployed (`deployed_app_config`); the running proxy's host and port are kept. Serve not
    running yet: this PUT starts it, listening on 0.0.0.0:`port` (never an implicit default).
    """
    apps = current.get("applications") or {}
    others = [a["deployed_app_config"] for n, a in apps.items()
              if n != app and a.get("deployed_app_config")]
    deployed = (apps.get(app) or {}).get("deployed_app_config")
    if new_app is None and app not in apps:
        return None
    if new_app is not None and deployed is not None and _same(deployed, new_app):
        return None
    body: dict[str, Any] = {"applications": others + ([new_app] if new_app else [])}
    http = current.get("http_options") or {}
    if current.get("controller_info") and http.get("port"):
        body["http_options"] = {"host": http.get("host"), "port": http["port"]}
    else:
        body["http_options"] = {"host": "0.0.0.0", "port": port}
    return body


def _same(deployed: dict[str, Any], wanted: dict[str, Any]) -> bool:
    keys = ("import_path", "route_prefix", "args")
    return all(deployed.get(k) == wanted.get(k) for k in keys)


def app_state(current: dict[str, Any], app: str, known: dict[str, str]) -> ServeState:
    """ServeState of one app: RUNNING means ready.

    Its version is looked up by the app's `report` arg in `known` (report URI -> spec hash, from
    the versions the status names); an app of an unknown report has no version.
    """
    entry = (current.get("applications") or {}).get(app)
    if not entry:
        return ServeState()
    cfg = entry.get("deployed_app_config") or {}
    report = (cfg.get("args") or {}).get("report")
    http = current.get("http_options") or {}
    host = http.get("host") or "127.0.0.1"
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    ready = entry.get("status") == "RUNNING"
    # an in-place update: the old replicas answer until the new ones are up
    answering = ready or (entry.get("status") == "DEPLOYING" and _has_running(entry))
    endpoint = f"http://{host}:{http.get('port', SERVE_PORT)}{entry.get('route_prefix') or '/'}"
    return ServeState(spec_hash=known.get(report), ready=ready,
                      message=_serve_message(entry), answering=answering,
                      endpoint=endpoint if answering else None)


def _has_running(entry: dict[str, Any]) -> bool:
    """Some deployment of the app has RUNNING replicas (Serve's per-deployment status)."""
    return any(r.get("state") == "RUNNING" for dep in (entry.get("deployments") or {}).values()
               for r in dep.get("replicas") or [])


def _serve_message(entry: dict[str, Any]) -> str:
    """The app's status and message plus each unhealthy deployment's (e.g. unschedulable)."""
    parts = [f"{entry.get('status')}: {entry.get('message') or ''}".strip(": ")]
    for name, dep in sorted((entry.get("deployments") or {}).items()):
        if dep.get("status") not in (None, "HEALTHY") and dep.get("message"):
            parts.append(f"{name} {dep['status']}: {dep['message']}")
    return tail("; ".join(p for p in parts if p), 600)
