"""The operator's job entrypoint: run the pruning job, then publish progress and report.

    python -m tierserve.operator.jobrunner --configmap NAME-report-H --namespace NS --name NAME --out OUT
    python -m tierserve.operator.jobrunner --spec-json '{...}' --name NAME --out OUT

It runs exactly what `python -m tierserve.pruning.job` runs (`run_job`, same exit codes: 0 passed,
2 gates failed, 1 error) in this process and adds the results channel of report_store.py: with
`--configmap` the spec is read from, and progress/report written to, that ConfigMap (in-cluster
credentials, else $KUBECONFIG); progress and report are always printed as marker lines too, which
is how backend (b) reads them through the Ray Jobs API.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from tierserve.pruning.job import EXIT_ERROR, run_job
from tierserve.pruning.report import summary_table
from tierserve.pruning.spec import SpecError, parse_spec
from tierserve.pruning.storage import is_local, resolve

from . import report_store as rs
from .stage import confine, stage_data

__all__ = ["main"]

_PATCH_EVERY_S = 2.0


class Publisher:
    """Progress and report to stdout markers and, when given, to the report ConfigMap."""

    def __init__(self, namespace: str | None, configmap: str | None) -> None:
        self.namespace, self.configmap, self.core, self._last = namespace, configmap, None, 0.0
        if configmap:
            from kubernetes import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            self.core = client.CoreV1Api()

    def spec(self) -> dict:
        cm = self.core.read_namespaced_config_map(self.configmap, self.namespace)
        return json.loads((cm.data or {})[rs.CM_SPEC])

    def _write(self, key: str, text: str) -> None:
        if self.core is not None:
            rs.patch_configmap(self.core, self.namespace, self.configmap, {key: text})

    def progress(self, stage: str, fraction: float) -> None:
        text = json.dumps({"stage": stage, "fraction": round(fraction, 4),
                           "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        print(rs.LOG_PROGRESS + text, flush=True)
        if time.monotonic() - self._last >= _PATCH_EVERY_S or fraction >= 1.0:
            self._last = time.monotonic()
            self._write(rs.CM_PROGRESS, text)

    def report(self, report: dict) -> None:
        text = json.dumps(rs.compact_report(report), sort_keys=True, default=str)
        self._write(rs.CM_REPORT, text)
        print(rs.LOG_REPORT + text, flush=True)

    def error(self, message: str) -> None:
        self._write(rs.CM_ERROR, message)
        print(rs.LOG_ERROR + message, flush=True)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tierserve.operator.jobrunner", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--configmap", help="report ConfigMap (holds spec.json; gets the report)")
    src.add_argument("--spec-json", help="the camelCase spec as JSON (backend b)")
    p.add_argument("--namespace", help="namespace of --configmap")
    p.add_argument("--name", default="prunedmodel", help="PrunedModel name (for the report)")
    p.add_argument("--out", required=True, help="output directory (path, file://, pvc://)")
    p.add_argument("--data-roots", help="os.pathsep-separated roots (the operator's "
                   "TIERSERVE_DATA_ROOTS): given, every local data or model path must resolve, "
                   "symlinks followed, under one of them or the working directory; none read "
                   "or copied otherwise")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    pub = Publisher(args.namespace, args.configmap)
    try:
        spec = parse_spec(json.loads(args.spec_json) if args.spec_json else pub.spec())
        if args.data_roots is not None:  # before anything is read or staged
            confine(spec, Path.cwd(), [Path(r) for r in args.data_roots.split(os.pathsep) if r])
        if is_local(args.out):  # the data the gates are judged on, next to the artifact
            spec = stage_data(spec, Path.cwd(), resolve(args.out, must_exist=False).resolve())
        report, code = run_job(spec, args.out, name=args.name, base_dir=Path.cwd(),
                               progress=pub.progress)
    except (SpecError, ValueError, OSError, KeyError) as err:
        kind = type(err).__name__  # named once (a DataLeak's message already starts with it)
        pub.error(str(err) if str(err).startswith(f"{kind}:") else f"{kind}: {err}")
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    pub.report(report)
    print(summary_table(report))
    return code


if __name__ == "__main__":
    sys.exit(main())
