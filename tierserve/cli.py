"""`tierserve` command line: prune a PrunedModel spec locally, and read reports."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main"]


def _hub_cache(spec) -> None:
    """`spec.model.cacheDir` is where hf:// snapshots go (pruning/hub.py reads HF_HUB_CACHE).
    Also: no per-file "Loading weights" bars from transformers/huggingface_hub between ours."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if spec.model.cache_dir:
        os.environ["HF_HUB_CACHE"] = str(Path(spec.model.cache_dir).expanduser())


def _prune(args: argparse.Namespace) -> int:
    from tierserve.console import JobBars
    from tierserve.pruning.job import EXIT_ERROR, run_job
    from tierserve.pruning.report import summary_table
    from tierserve.pruning.report_model import PruningReport
    from tierserve.pruning.spec import SpecError, load_spec

    try:
        spec, name = load_spec(args.spec)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    _hub_cache(spec)
    out = args.out or f"runs/{name}"
    with JobBars() as bars:
        try:
            report, code = run_job(spec, out, name=name, base_dir=Path(args.spec).resolve().parent,
                                   progress=bars, reuse=not args.no_reuse)
        except (SpecError, ValueError, OSError) as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_ERROR
    print(summary_table(report))
    art = PruningReport.read(report).artifact
    print(f"report: {Path(out) / 'report.json'}   artifact: {art.path if art else None}")
    return code


def _run(args: argparse.Namespace) -> int:
    from tierserve.pruning.spec import SpecError, load_spec
    from tierserve.serving.embedded import run

    try:
        _hub_cache(load_spec(args.spec)[0])
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return run(args.spec, args.out, once=args.once, requests=args.requests,
               metrics_port=args.metrics_port, port=args.port)


def _report(args: argparse.Namespace) -> int:
    """The summary, or one line saying why there is none (exit 1), never a traceback."""
    from pydantic import ValidationError

    from tierserve.pruning.report import load_report, summary_table
    from tierserve.pruning.storage import StorageError

    try:
        report = load_report(args.uri)
    except FileNotFoundError as err:
        print(f"error: no report at {args.uri}: {err.filename} does not exist (the run did not "
              "finish, or this is not a run directory)", file=sys.stderr)
        return 1
    except (StorageError, ValidationError, ValueError, OSError) as err:
        first = str(err).splitlines()[0] if str(err) else ""
        print(f"error: {args.uri} is not a readable report: {type(err).__name__}: {first}",
              file=sys.stderr)
        return 1
    print(summary_table(report))
    return 0


def _crd(args: argparse.Namespace) -> int:
    from tierserve.operator.crd import CRD_PATH, crd_yaml

    return _emit(crd_yaml(), args.write, CRD_PATH)


def _report_schema(args: argparse.Namespace) -> int:
    from tierserve.pruning.report_model import SCHEMA_PATH, report_schema_json

    return _emit(report_schema_json(), args.write, SCHEMA_PATH)


def _emit(text: str, write: str | None, default_path: Path) -> int:
    """Print a generated file, or write it (`--write -`: to its checked-in path)."""
    if not write:
        sys.stdout.write(text)
        return 0
    path = Path(write if write != "-" else default_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tierserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prune", help="run the pruning job locally and print the gate table")
    p.add_argument("spec", help="PrunedModel manifest (the same YAML works with kubectl) or bare spec")
    p.add_argument("--out", help="output directory (default runs/<name>)")
    p.add_argument("--no-reuse", action="store_true", help="re-run even if a finished result exists")
    p.set_defaults(fn=_prune)
    run = sub.add_parser("run", help="prune (or reuse), gate, serve both tiers on local Ray Serve, "
                         "replay the evaluation set through the router and print the table")
    run.add_argument("spec")
    run.add_argument("--out", help="output directory (default runs/<name>)")
    run.add_argument("--once", action="store_true", help="exit 0 after the table instead of serving")
    run.add_argument("--requests", type=int, default=200, help="evaluation requests to replay (0: all)")
    run.add_argument("--metrics-port", type=int, default=9464, help="port of /metrics")
    run.add_argument("--port", type=int, default=8000, help="Serve HTTP port of the router")
    run.set_defaults(fn=_run)
    r = sub.add_parser("report", help="print the summary of a report.json (file or directory)")
    r.add_argument("uri")
    r.set_defaults(fn=_report)
    c = sub.add_parser("crd", help="print the PrunedModel CRD generated from the spec model")
    c.add_argument("--write", nargs="?", const="-", metavar="PATH",
                   help="write it (default charts/tierserve/crds/prunedmodels.tierserve.io.yaml)")
    c.set_defaults(fn=_crd)
    rs = sub.add_parser("report-schema", help="print the JSON schema of report.json (PruningReport)")
    rs.add_argument("--write", nargs="?", const="-", metavar="PATH",
                    help="write it (default docs/schemas/report.schema.json)")
    rs.set_defaults(fn=_report_schema)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
