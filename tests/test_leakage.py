"""No leakage into the judged set: a spec whose evaluation or validation rows are calibration or
distillation rows fails with DataLeak before pruning, unless it opts in with a reason; the report
records the overlap either way. Real example data and the real MiniLM inputs throughout."""

import json

import pytest
import yaml

from tierserve.pruning.inputs import load_inputs
from tierserve.pruning.job import run_job
from tierserve.pruning.leakage import DataLeak, check_leakage, find_overlap, rows_of, text_hash
from tierserve.pruning.report_model import PruningReport
from tierserve.pruning.spec import SpecError, parse_spec

CLEAN = ("minilm-pass", "minilm-strict", "minilm-distill")


def _doc(repo_root, name: str = "minilm-pass") -> dict:
    return yaml.safe_load((repo_root / "examples" / f"{name}.yaml").read_text())["spec"]


def _check(repo_root, doc: dict) -> dict:
    spec = parse_spec(doc)
    return check_leakage(spec, load_inputs(spec, repo_root / "examples"))


@pytest.mark.parametrize("name", CLEAN)
def test_examples_are_clean(repo_root, name):
    overlap = _check(repo_root, _doc(repo_root, name))
    assert overlap == {"by_id": 0, "by_text": 0, "allowed": False, "reason": None, "pairs": []}


def test_calibration_without_split_holds_every_evaluation_query(repo_root):
    doc = _doc(repo_root)
    del doc["data"]["calibration"]["split"]  # calibration: all 4000 queries
    with pytest.raises(DataLeak) as err:
        _check(repo_root, doc)
    msg = str(err.value)
    assert msg.startswith("DataLeak: 600 of 600 rows of spec.data.evaluation are also in "
                          "spec.data.calibration (by id: 600, by text: 600; e.g. "), msg
    assert "check spec.data.calibration.split and spec.data.evaluation.split" in msg
    assert "spec.data.allowOverlap.reason" in msg


def test_evaluation_without_split_takes_calibration_queries(repo_root):
    doc = _doc(repo_root)
    del doc["data"]["evaluation"]["split"]
    with pytest.raises(DataLeak, match=r"^DataLeak: 154 of 600 rows of spec.data.evaluation "
                                       r"are also in spec.data.calibration \(by id: 154, by text: 154"):
        _check(repo_root, doc)


def test_opt_in_proceeds_and_the_report_records_the_overlap(repo_root):
    doc = _doc(repo_root)
    del doc["data"]["calibration"]["split"]
    doc["data"]["allowOverlap"] = {"reason": "smoke test of the serving path, gates not trusted"}
    overlap = _check(repo_root, doc)
    assert (overlap["by_id"], overlap["by_text"], overlap["allowed"]) == (600, 600, True)
    assert overlap["reason"] == "smoke test of the serving path, gates not trusted"
    [pair] = overlap["pairs"]
    assert pair["judged"] == "spec.data.evaluation" and pair["training"] == "spec.data.calibration"
    assert len(pair["examples"]) == 3
    report = PruningReport.read({"task": "embedding", "data": {"overlap": overlap}})
    assert report.data.overlap.by_id == 600 and report.to_doc()["data"]["overlap"] == overlap


def test_distillation_texts_count_as_training_rows(repo_root):
    doc = _doc(repo_root, "minilm-distill")
    doc["data"]["distillation"] = {"uri": "data/debian/queries.jsonl.gz"}  # every query, no split
    with pytest.raises(DataLeak, match=r"rows of spec.data.evaluation are also in "
                                       r"spec.data.distillation .*spec.data.distillation.uri"):
        _check(repo_root, doc)
    doc["recovery"] = {"distillSteps": 0}  # read only when the job distils
    assert _check(repo_root, doc)["by_id"] == 0


def test_text_hash_catches_duplicates_under_other_ids(fine_foods):
    # the fine-food reviews repeat 7 test reviews in train under other ids
    overlap = find_overlap(rows_of(fine_foods["test"]), rows_of(fine_foods["train"]))
    assert (len(overlap.by_id), len(overlap.by_text)) == (0, 7)
    assert overlap.examples[0].startswith("test-")
    assert text_hash("Great  Coffee\n") == text_hash("great coffee")
    assert text_hash("a", "b") != text_hash("a b")


@pytest.mark.parametrize("reason", ["", "   "])
def test_opt_in_needs_a_reason(repo_root, reason):
    doc = _doc(repo_root)
    doc["data"]["allowOverlap"] = {"reason": reason}
    with pytest.raises(SpecError, match=r"spec.data.allowOverlap.reason"):
        parse_spec(doc)


def test_job_fails_before_pruning(repo_root, tmp_path):
    doc = _doc(repo_root)
    del doc["data"]["calibration"]["split"]
    out = tmp_path / "out"
    with pytest.raises(DataLeak, match="^DataLeak: 600 of 600"):
        run_job(parse_spec(doc), out, base_dir=repo_root / "examples")
    assert json.loads((out / "progress.json").read_text())["stage"] == "load"
    assert not (out / "artifacts").exists()  # nothing scored, nothing reused
