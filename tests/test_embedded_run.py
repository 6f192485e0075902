"""`tierserve run` as a user runs it, in a subprocess: README command 1 on a small cut of the
real Debian data (the same example manifest, fewer queries), with its own local Ray.

1. `--once`: exit 0 after the table, with the lines saying what the cost assumes and how busy
   the machine was; Ray's chatter in OUT/ray.log and OUT/serve-logs, not on the terminal; the
   local Ray it started is gone afterwards.
2. SIGTERM while it is replaying (Ray and Serve up; the artifact of run 1 is reused): it stops
   Serve and Ray, says where the artifacts are, and exits.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

PER_SPLIT = {"calibration": 32, "validation": 64, "test": 24}
RAY_NOISE = ("Failed to get queue length", "Failed to route request", "INFO worker.py",
             "Started a local Ray instance")


def _subset(repo_root: Path, dest: Path) -> dict[str, str]:
    from tierserve.pruning.data import read_records

    base = repo_root / "examples/data/debian"
    queries, corpus, qrels = (read_records(base / f"{n}.jsonl.gz")
                              for n in ("queries", "corpus", "qrels"))
    kept, count = set(), dict.fromkeys(PER_SPLIT, 0)
    for q in queries:
        if q["split"] in PER_SPLIT and count[q["split"]] < PER_SPLIT[q["split"]]:
            count[q["split"]] += 1
            kept.add(q["id"])
    rel = [r for r in qrels if r["query_id"] in kept]
    docs = {r["doc_id"] for r in rel}
    files = {}
    for name, rows in (("queries", [q for q in queries if q["id"] in kept]),
                       ("corpus", [d for d in corpus if d["id"] in docs]), ("qrels", rel)):
        files[name] = f"{name}.jsonl"
        (dest / files[name]).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return files


@pytest.fixture(scope="module")
def manifest(repo_root, tmp_path_factory) -> Path:
    """examples/minilm-pass.yaml on a small cut of its data; gates a loaded machine meets."""
    dest = tmp_path_factory.mktemp("embedded")
    doc = yaml.safe_load((repo_root / "examples/minilm-pass.yaml").read_text())
    files = _subset(repo_root, dest)
    spec = doc["spec"]
    spec["data"] = {s: {**files, "split": s} for s in ("calibration", "validation")}
    spec["data"]["evaluation"] = {**files, "split": "test"}
    spec["pruning"]["calibrationSamples"] = 16
    spec["pruning"]["budget"] = {"kind": "flops", "target": 0.3, "batch": 8, "seqLen": 64}
    spec["gates"] = {"quality": [{"metric": "ndcg@10", "relative": 0.8}]}
    spec["serving"] = {"policy": "cascade", "targetAgreement": 0.9,
                       "full": {"cpus": 0.5}, "pruned": {"cpus": 0.5}}
    path = dest / "minilm-small.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", COLUMNS="120")
    return env


def _argv(manifest: Path, out: Path, *extra: str) -> list[str]:
    from fixtures.procs import free_ports

    port, metrics = free_ports(2)
    return [sys.executable, "-m", "tierserve.cli", "run", str(manifest), "--out", str(out),
            "--port", str(port), "--metrics-port", str(metrics), "--requests", "16", *extra]


def _descendants(pid: int) -> set[int]:
    """Live processes below `pid` (Ray's gcs_server, raylet, workers ...), from /proc."""
    parents: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for p in pids:
        try:
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(p)
    return alive


def _gone(pids: set[int], timeout: float = 60.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    return _alive(pids)


def test_run_once_reports_quietly_and_exits_zero(manifest, tmp_path_factory):
    out = tmp_path_factory.getbasetemp() / "embedded-out"
    proc = subprocess.Popen(_argv(manifest, out, "--once"), env=_env(), cwd=manifest.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ray_pids: set[int] = set()
    stdout_lines = []
    for line in proc.stdout:  # collect Ray's processes while it runs
        stdout_lines.append(line)
        if line.startswith("[4/5]"):
            ray_pids = _descendants(proc.pid)
    rc = proc.wait(timeout=900)
    stdout = "".join(stdout_lines)  # stderr included
    assert rc == 0, stdout[-3000:]
    for step in ("[1/5]", "[2/5] gates passed", "[3/5]", "[4/5]", "[5/5] results"):
        assert step in stdout
    assert "cost assumes: the spec's prices" in stdout and "assumptions, not quotes" in stdout
    assert "machine: load" in stdout and "cores before" in stdout
    assert "on your hardware:" in stdout
    assert f"artifacts: {out}" in stdout
    assert not [n for n in RAY_NOISE if n in stdout], stdout[-3000:]
    assert (out / "ray.log").is_file() and (out / "report.json").is_file()
    assert ray_pids, "no Ray processes were seen while it served"
    assert not _gone(ray_pids), "the run left its Ray processes behind"


def test_sigterm_stops_serve_and_ray_and_names_the_artifacts(manifest, tmp_path_factory):
    out = tmp_path_factory.getbasetemp() / "embedded-out"  # run 1's artifact is reused
    proc = subprocess.Popen(_argv(manifest, out), env=_env(), cwd=manifest.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    lines, deadline, ray_pids = [], time.monotonic() + 900, set()
    while time.monotonic() < deadline and proc.poll() is None:
        if sel.select(timeout=1.0):
            line = proc.stdout.readline()
            lines.append(line)
            if line.startswith(("[4/5]", "serving;")):
                ray_pids = _descendants(proc.pid)
                break
    assert ray_pids, "".join(lines)[-3000:]
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=180)
    text = "".join(lines) + rest
    assert proc.returncode in (0, 130), text[-3000:]
    assert "stopping: Serve and the local Ray" in text
    assert f"artifacts: {out}" in text
    assert not _gone(ray_pids), "SIGTERM left Ray processes behind"


def test_job_stages_become_one_bar_per_phase():
    import io

    from tierserve.console import JobBars, Load, phase_of

    assert phase_of("score round 1/2") == "scoring" and phase_of("prune") == "scoring"
    assert phase_of("distill 3/10 loss 0.1 val_agreement 0.9") == "distillation"
    assert phase_of("done (reused)") is None
    out = io.StringIO()  # not a terminal: one plain line per phase instead of bars
    with JobBars(out) as bars:
        for stage in ("load", "prune", "score round 1/1", "prune round 1/1",
                      "distill 1/4 loss 1.0 val_agreement n/a", "distill 4/4 loss 0.5 "
                      "val_agreement 0.9", "evaluate", "save", "done"):
            bars(stage, 0.5)
    phases = [line.strip(" .") for line in out.getvalue().splitlines()]
    assert phases == ["loading model and data", "scoring", "pruning", "distillation",
                      "evaluation", "saving"]
    assert Load(3.0, 2).busy and not Load(0.5, 2).busy
    assert Load(1.25, 2).text() == "load 1.2 on 2 cores"


def test_the_closing_line_names_only_files_that_exist(tmp_path):
    from tierserve.serving.embedded import written

    assert written(tmp_path) == f"artifacts: nothing was written to {tmp_path}"
    (tmp_path / "ray.log").write_text("")
    line = written(tmp_path)  # stopped during the job: a log, no report
    assert "report.json" not in line.splitlines()[0] and "ray.log" in line
    assert "no report: the run stopped before the job finished" in line
    (tmp_path / "report.json").write_text("{}")
    (tmp_path / "artifacts/k1/model").mkdir(parents=True)
    (tmp_path / "artifacts/k1/model/pruning.json").write_text("{}")
    line = written(tmp_path)
    assert line == f"artifacts: {tmp_path}  (report.json, ray.log, artifacts/k1/model)"
