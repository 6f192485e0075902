"""Where a running job leaves its progress and its report for the operator (the results channel).

Backend (a), KubeRay: the operator pre-creates ConfigMap `<name>-report-<hash8>` (owned by the
PrunedModel, so it goes with it) holding `spec.json`; the job's ServiceAccount may get/patch/update
exactly that ConfigMap, and the job writes `progress.json`, then `report.json` (or `error`) into it.
Backend (b), an existing Ray cluster: the job prints one marker line per progress step and one with
the report; the operator reads them back through the Ray Jobs API's logs endpoint. Both carry the
same compact report (contract 1 minus the bulky plan/prune/search details), well under the 1 MiB
ConfigMap limit.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["CM_ERROR", "CM_PROGRESS", "CM_REPORT", "CM_SPEC", "LOG_PROGRESS", "LOG_REPORT",
           "compact_report", "parse_logs", "patch_configmap", "read_configmap"]

CM_SPEC, CM_PROGRESS, CM_REPORT, CM_ERROR = "spec.json", "progress.json", "report.json", "error"
LOG_PROGRESS, LOG_REPORT, LOG_ERROR = "TIERSERVE_PROGRESS ", "TIERSERVE_REPORT ", "TIERSERVE_ERROR "
_BULKY = ("plan", "prune", "search", "versions", "inputs")


def compact_report(report: dict[str, Any]) -> dict[str, Any]:
    """The report without the bulky per-unit details; everything the operator and Serve read."""
    return {k: v for k, v in report.items() if k not in _BULKY}


def _load(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def read_configmap(data: dict[str, str] | None) -> tuple[dict | None, dict | None, str | None]:
    """(report, progress, error) from a report ConfigMap's data."""
    data = data or {}
    return _load(data.get(CM_REPORT)), _load(data.get(CM_PROGRESS)), data.get(CM_ERROR)


def parse_logs(logs: str) -> tuple[dict | None, dict | None, str | None]:
    """(report, progress, error) from a job's logs: the last marker line of each kind wins."""
    report = progress = error = None
    for line in logs.splitlines():
        if line.startswith(LOG_REPORT):
            report = _load(line[len(LOG_REPORT):]) or report
        elif line.startswith(LOG_PROGRESS):
            progress = _load(line[len(LOG_PROGRESS):]) or progress
        elif line.startswith(LOG_ERROR):
            error = line[len(LOG_ERROR):].strip()
    return report, progress, error


def patch_configmap(core, namespace: str, name: str, data: dict[str, str]) -> None:
    """Merge `data` into the ConfigMap (a `kubernetes.client.CoreV1Api`)."""
    core.patch_namespaced_config_map(name, namespace, {"data": data})
