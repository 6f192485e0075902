"""Issue 25 item 6: what the operator can check without running the job is refused before any job
(InvalidSpec naming the field), the latency and size gates cannot be removed by deleting them,
and the errors the job does find name the spec field before the file."""

import copy
import gzip
import json
import shutil

import pytest
import yaml

from tierserve.operator import precheck
from tierserve.operator.precheck import check_data
from tierserve.operator.reconcile import JobState, Observed, reconcile
from tierserve.pruning.data import DataError
from tierserve.pruning.gates import Measured, check_gates
from tierserve.pruning.inputs import load_inputs
from tierserve.pruning.spec import SpecError, parse_spec


@pytest.fixture
def example(repo_root) -> dict:
    """examples/minilm-pass.yaml's spec: relative paths under examples/, the checkout a root."""
    return yaml.safe_load((repo_root / "examples/minilm-pass.yaml").read_text())["spec"]


def _refused(doc: dict, base: str, roots: tuple[str, ...]) -> str:
    with pytest.raises(SpecError) as err:
        check_data(parse_spec(doc), base, roots)
    return str(err.value)


def _with(doc: dict, where: str, key: str, value) -> dict:
    doc = copy.deepcopy(doc)
    if value is None:
        doc["data"][where].pop(key)
    else:
        doc["data"][where][key] = value
    return doc


def test_the_examples_pass(repo_root, example):
    roots = (str(repo_root),)
    check_data(parse_spec(example), str(repo_root / "examples"), roots)
    lm = yaml.safe_load((repo_root / "examples/smollm2-generate.yaml").read_text())["spec"]
    check_data(parse_spec(lm), str(repo_root / "examples"), roots)


@pytest.mark.parametrize("key", ["queries", "corpus", "qrels"])
def test_a_deleted_retrieval_file_field_is_named(repo_root, example, key):
    msg = _refused(_with(example, "calibration", key, None), str(repo_root / "examples"),
                   (str(repo_root),))
    assert msg == (f"spec.data.calibration.{key}: required for task embedding "
                   "(retrieval data: queries, corpus, qrels)")


@pytest.mark.parametrize(("where", "key"), [("calibration", "queries"), ("evaluation", "corpus"),
                                            ("calibration", "qrels")])
def test_a_missing_file_is_named(repo_root, example, where, key):
    base = repo_root / "examples"
    msg = _refused(_with(example, where, key, "data/debian/gone.jsonl.gz"), str(base),
                   (str(repo_root),))
    assert msg == (f"spec.data.{where}.{key}: file not found: {base}/data/debian/gone.jsonl.gz "
                   "('data/debian/gone.jsonl.gz')")


def test_a_split_that_is_not_in_the_data_is_named(repo_root, example):
    base = repo_root / "examples"
    msg = _refused(_with(example, "evaluation", "split", "tset"), str(base), (str(repo_root),))
    assert msg == ("spec.data.evaluation.split: 'tset' not in the split values "
                   f"['calibration', 'test', 'validation'] of queries "
                   f"({base}/data/debian/queries.jsonl.gz)")


def test_classification_needs_its_uri_and_a_split_of_that_file(repo_root):
    doc = {"model": {"uri": "pkg://x/model", "task": "sequence-classification"},
           "data": {"calibration": {"uri": "data/fine_foods/train.jsonl.gz", "split": "train"},
                    "evaluation": {"uri": "data/fine_foods/test.jsonl.gz", "split": "test"}}}
    base, roots = str(repo_root / "examples"), (str(repo_root),)
    check_data(parse_spec(doc), base, roots)
    assert _refused(_with(doc, "evaluation", "uri", None), base, roots).startswith(
        "spec.data.evaluation.uri: required for task sequence-classification")
    assert "'validation' not in the split values ['test'] of uri" in _refused(
        _with(doc, "evaluation", "split", "validation"), base, roots)


def test_records_without_a_split_field_and_unparsable_files(tmp_path, example):
    for name in ("queries", "corpus", "qrels"):
        (tmp_path / f"{name}.jsonl").write_text('{"id": "a", "text": "t"}\n')
    doc = copy.deepcopy(example)
    for where in ("calibration", "evaluation"):
        doc["data"][where].update(queries="queries.jsonl", corpus="corpus.jsonl",
                                  qrels="qrels.jsonl")
    assert _refused(doc, str(tmp_path), (str(tmp_path),)) == (
        f"spec.data.calibration.split: 'calibration' given, but records of queries "
        f"({tmp_path}/queries.jsonl) have no 'split' field")
    (tmp_path / "queries.jsonl").write_text('{"id": "a", "split": "calibration"}\n{"id": \n')
    assert _refused(doc, str(tmp_path), (str(tmp_path),)) == (
        f"spec.data.calibration.queries ({tmp_path}/queries.jsonl): line 2 is not valid JSON "
        "(Expecting value)")


def test_a_symlink_out_of_the_roots_is_refused_unread(tmp_path, example):
    data = tmp_path / "data"
    data.mkdir()
    secret = tmp_path / "secret.jsonl"
    secret.write_text("not json, never parsed\n")
    (data / "q.jsonl").symlink_to(secret)
    msg = _refused(_with(example, "calibration", "queries", "q.jsonl"), str(data), (str(data),))
    assert msg.startswith("spec.data.calibration.queries: 'q.jsonl' resolves to "
                          f"{secret} (symlinks followed), outside the data roots")


def test_what_the_operator_cannot_see_is_left_to_the_job(tmp_path, example):
    doc = _with(example, "evaluation", "split", "tset")
    check_data(parse_spec(doc), None, ())  # relative, no base: the job's working directory
    check_data(parse_spec(doc), "/srv/not-mounted-here", ("/srv/not-mounted-here",))
    remote = copy.deepcopy(doc)  # a base the operator sees, but nothing local in it
    for where in ("calibration", "evaluation"):
        remote["data"][where].update(queries="s3://bucket/q.jsonl", qrels="hf://org/data/qrels.jsonl",
                                     corpus="pvc://claim/corpus.jsonl")
    check_data(parse_spec(remote), str(tmp_path), (str(tmp_path),))


def test_a_file_over_the_read_cap_is_only_checked_to_exist(repo_root, example, monkeypatch):
    monkeypatch.setattr(precheck, "MAX_READ_BYTES", 1024)
    doc = _with(example, "evaluation", "split", "tset")
    check_data(parse_spec(doc), str(repo_root / "examples"), (str(repo_root),))


def test_reconcile_refuses_before_the_job_and_never_once_it_runs(repo_root, example):
    data = (str(repo_root / "examples"), (str(repo_root),))
    bad = _with(example, "evaluation", "split", "tset")
    d = reconcile(bad, 1, {}, Observed(), backend="raycluster", job_name="j", now="t", data=data)
    assert not d.run_job and d.error and d.error.startswith("spec.data.evaluation.split: 'tset'")
    pruned = {c["type"]: c for c in d.status["conditions"]}["Pruned"]
    assert pruned["reason"] == "InvalidSpec" and "spec.data.evaluation.split" in pruned["message"]
    missing = _with(example, "calibration", "qrels", "data/debian/none.jsonl")
    d = reconcile(missing, 1, {}, Observed(), backend="raycluster", job_name="j", now="t", data=data)
    assert not d.run_job and d.error.startswith("spec.data.calibration.qrels: file not found")
    # a job already runs (or reported) for this spec: data read since is the job's business
    running = Observed(job=JobState("running", "j"))
    d = reconcile(missing, 1, {}, running, backend="raycluster", job_name="j", now="t", data=data)
    assert d.error is None


def test_latency_and_size_gates_are_defaulted_and_judged(example):
    doc = copy.deepcopy(example)
    del doc["gates"]["maxLatencyRatio"], doc["gates"]["maxSizeRatio"]
    gates = parse_spec(doc).gates
    assert (gates.max_latency_ratio, gates.max_size_ratio) == (1.0, 1.0)
    dumped = parse_spec(doc).model_dump(mode="json", by_alias=True)  # what the job is given
    assert dumped["gates"]["maxLatencyRatio"] == 1.0 and dumped["gates"]["maxSizeRatio"] == 1.0
    m = Measured({"ndcg@10": 0.8}, {"ndcg@10": 0.8}, {}, {}, latency_ratio=1.05, size_ratio=0.7)
    judged = {r.metric: r for r in check_gates(gates, m)}
    assert judged["latency_ratio"].threshold == 1.0 and not judged["latency_ratio"].passed
    assert judged["size_ratio"].threshold == 1.0 and judged["size_ratio"].passed
    doc["gates"]["maxLatencyRatio"] = None  # no silent "off" either
    with pytest.raises(SpecError, match=r"^spec\.gates\.maxLatencyRatio"):
        parse_spec(doc)


def _write(path, rows):
    with gzip.open(path, "wt") as fh:
        fh.writelines(r if isinstance(r, str) else json.dumps(r) + "\n" for r in rows)


def test_job_side_data_errors_name_the_spec_field_first(repo_root, tmp_path, example):
    src = repo_root / "examples/data/debian"
    for name in ("queries", "corpus"):
        shutil.copy(src / f"{name}.jsonl.gz", tmp_path / f"{name}.jsonl.gz")
    _write(tmp_path / "qrels.jsonl.gz", [{"query_id": "q", "doc_id": "d", "relevance": 1},
                                         {"query_id": "q", "doc_id": "d", "relevance": 1},
                                         "{not json\n"])
    qrels = tmp_path / "qrels.jsonl.gz"
    doc = copy.deepcopy(example)
    for where in ("calibration", "evaluation"):
        doc["data"][where].update(queries=str(tmp_path / "queries.jsonl.gz"),
                                  corpus=str(tmp_path / "corpus.jsonl.gz"), qrels=str(qrels))
    with pytest.raises(DataError) as err:
        load_inputs(parse_spec(doc), tmp_path)
    assert str(err.value).startswith(
        f"spec.data.calibration.qrels ({qrels}): line 3 is not valid JSON"), str(err.value)
    doc["data"]["evaluation"]["qrels"] = str(tmp_path / "gone.jsonl")  # a missing absolute path
    _write(qrels, [])
    doc["data"]["calibration"]["qrels"] = "missing.jsonl"  # relative: resolved under the base
    with pytest.raises(DataError) as err:
        load_inputs(parse_spec(doc), tmp_path)
    assert str(err.value).startswith(
        f"spec.data.calibration.qrels ({tmp_path}/missing.jsonl): cannot read file"), str(err.value)
