"""The pruning job: load -> score -> prune -> recover -> evaluate full and pruned -> gates -> save.

    python -m tierserve.pruning.job --spec spec.yaml --out DIR

Exit code 0: every gate passed (the artifact is deployable); 2: a gate failed (the artifact is
kept for inspection but marked not deployable); 1: an error (bad spec or data, named precisely).

Layout under DIR (a path or file:// URI):
    report.json, report.html          the latest run (report.html embeds PNGs)
    progress.json                     stage + fraction, rewritten as the job goes (operator reads it)
    artifacts/<key>/                  the pruned model directory (safetensors + pruning.json)
    artifacts/<key>/report.json       that run's report; <key> hashes the spec and input hashes,
                                      so a re-submitted job with identical inputs reuses it
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from .inputs import JobInputs, load_inputs
from .leakage import check_leakage
from .report_model import PruningReport, ReportError
from .spec import PrunedModelSpec, SpecError, load_spec
from .storage import resolve

__all__ = ["EXIT_ERROR", "EXIT_GATES_FAILED", "EXIT_PASSED", "job_key", "key_hashes", "main",
           "run_job"]

EXIT_PASSED, EXIT_ERROR, EXIT_GATES_FAILED = 0, 1, 2


def job_key(spec: PrunedModelSpec, input_hashes: dict[str, Any]) -> str:
    """Deterministic artifact key from the spec and the sha256 of every input file."""
    doc = {"spec": spec.model_dump(mode="json", by_alias=True), "inputs": input_hashes}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def key_hashes(spec: PrunedModelSpec, inputs: JobInputs) -> dict[str, Any]:
    """The inputs' hashes plus, when the spec distils with `data.distillation`, that file's
    sha256 under "distillation" (its content shapes the model, so it keys the artifact)."""
    from .recovery.distillation.from_spec import distillation_hash

    extra = distillation_hash(spec, inputs.hashes.get("data", {}))
    return inputs.hashes if extra is None else {**inputs.hashes, "distillation": extra}


class ProgressFile:
    """Writes {"stage", "fraction", "updated"} atomically; also calls an optional callback."""

    def __init__(self, out: Path, callback=None) -> None:
        self.path, self.callback = out / "progress.json", callback

    def __call__(self, stage: str, fraction: float) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"stage": stage, "fraction": round(fraction, 4),
                                   "updated": time.time()}))
        tmp.replace(self.path)
        if self.callback is not None:
            self.callback(stage, fraction)


def _reuse(art: Path) -> dict | None:
    report = art / "report.json"
    if not report.is_file():
        return None
    try:
        doc = PruningReport.read(report).to_doc()
    except (ReportError, ValueError):  # unreadable or from an incompatible schema: run again
        return None
    return doc if doc.get("complete") else None


def _write_report(out: Path, art: Path, report: dict) -> dict:
    """Validate through `PruningReport`, write report.json (strict JSON: non-finite -> null)
    and report.html; returns the report as written."""
    from .report import write_html

    model = PruningReport.read(report)
    text, doc = model.to_json(), model.to_doc()
    for where in (art, out):
        tmp = where / "report.json.tmp"
        tmp.write_text(text)
        tmp.replace(where / "report.json")
    write_html(doc, out / "report.html")
    return doc


def run_job(spec: PrunedModelSpec, out: str | Path, *, name: str = "prunedmodel",
            base_dir: Path | None = None, progress=None, reuse: bool = True) -> tuple[dict, int]:
    """Run the whole job in this process. Returns (report, exit code)."""
    from .pipeline import run_pipeline

    out_dir = resolve(out, must_exist=False).resolve()  # absolute, so it has a file:// URI
    out_dir.mkdir(parents=True, exist_ok=True)
    tick = ProgressFile(out_dir, progress)
    tick("load", 0.0)
    inputs: JobInputs = load_inputs(spec, base_dir or Path.cwd())
    data = {"overlap": check_leakage(spec, inputs)}  # DataLeak before anything is scored or reused
    hashes = key_hashes(spec, inputs)
    key = job_key(spec, hashes)
    art = out_dir / "artifacts" / key
    cached = _reuse(art) if reuse else None
    if cached is not None:
        cached.update({"reused": True, "data": data})
        cached = _write_report(out_dir, art, cached)
        tick("done (reused)", 1.0)
        return cached, EXIT_PASSED if cached["deployable"] else EXIT_GATES_FAILED
    art.mkdir(parents=True, exist_ok=True)
    report = run_pipeline(spec, inputs, art, tick)
    report.update({"name": name, "key": key, "inputs": hashes, "data": data, "complete": True,
                   "artifact": {"path": str(art), "uri": f"{Path(out_dir).as_uri()}/artifacts/{key}"}})
    report = _write_report(out_dir, art, report)
    tick("done", 1.0)
    return report, EXIT_PASSED if report["deployable"] else EXIT_GATES_FAILED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tierserve.pruning.job", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", required=True, help="PrunedModel manifest or bare spec (YAML/JSON)")
    parser.add_argument("--out", required=True, help="output directory (path or file:// URI)")
    parser.add_argument("--no-reuse", action="store_true", help="re-run even if a finished result exists")
    args = parser.parse_args(argv)
    try:
        spec, name = load_spec(args.spec)
        report, code = run_job(spec, args.out, name=name, base_dir=Path(args.spec).resolve().parent,
                               reuse=not args.no_reuse)
    except (SpecError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    from .report import summary_table

    print(summary_table(report))
    return code


if __name__ == "__main__":
    sys.exit(main())
