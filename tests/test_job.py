"""The pruning job end to end on real MiniLM weights and real Debian data: gates decide."""

import json
import subprocess
import sys
import time

import pytest
import yaml

pytestmark = pytest.mark.slow


def _prune(spec, out, *extra, cwd=None):
    return subprocess.run([sys.executable, "-m", "tierserve.cli", "prune", str(spec), "--out",
                           str(out), *extra], capture_output=True, text=True, timeout=1200, cwd=cwd)


def _absolute(repo_root):
    """The pass example with its data paths made absolute, to be rewritten under tmp_path."""
    doc = yaml.safe_load((repo_root / "examples/minilm-pass.yaml").read_text())
    for src in doc["spec"]["data"].values():
        if isinstance(src, dict):
            for field in ("queries", "corpus", "qrels"):
                src[field] = str(repo_root / "examples" / src[field])
    return doc


def test_pass_example_exits_0_and_every_gate_passes(repo_root, tmp_path):
    # a relative --out, as in the README's first command
    proc = _prune(repo_root / "examples/minilm-pass.yaml", "run", cwd=tmp_path)
    tmp_path = tmp_path / "run"
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["deployable"] is True and report["gates"]
    assert all(g["passed"] for g in report["gates"])
    assert abs(report["budget"]["encoder_flops_removed"] - 0.3) <= 0.01
    assert report["latency"]["ratio"] < 1.0  # physically smaller, really faster
    model_dir = tmp_path / "artifacts" / report["key"] / "model"
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "pruning.json").is_file()
    assert (tmp_path / "report.html").read_text().count("data:image/png;base64") >= 2
    assert "PASS" in proc.stdout

    # Same spec, same inputs: the finished result is reused, not recomputed.
    t0 = time.monotonic()
    again = _prune(repo_root / "examples/minilm-pass.yaml", tmp_path)
    assert again.returncode == 0
    second = json.loads((tmp_path / "report.json").read_text())
    assert second["reused"] is True and second["key"] == report["key"]
    assert time.monotonic() - t0 < 120


def test_strict_example_exits_2_and_is_not_deployable(repo_root, tmp_path):
    proc = _prune(repo_root / "examples/minilm-strict.yaml", tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["deployable"] is False and report["status"] == "gates_failed"
    failed = [g for g in report["gates"] if not g["passed"]]
    assert failed and all(g["value"] is not None for g in failed)
    assert "FAIL" in proc.stdout


def test_bad_data_is_one_clear_error(repo_root, tmp_path):
    doc = _absolute(repo_root)
    bad = tmp_path / "queries.jsonl"
    bad.write_text('{"id": "a", "txt": "no text field"}\n')
    doc["spec"]["data"]["calibration"]["queries"] = str(bad)
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump(doc))
    proc = _prune(spec, tmp_path / "out")
    assert proc.returncode == 1
    assert "queries.jsonl" in proc.stderr and "text" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_invalid_spec_names_the_field(repo_root, tmp_path):
    doc = yaml.safe_load((repo_root / "examples/minilm-pass.yaml").read_text())
    doc["spec"]["pruning"]["budget"]["target"] = 3
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump(doc))
    proc = _prune(spec, tmp_path / "out")
    assert proc.returncode == 1
    assert "spec.pruning.budget.target" in proc.stderr
