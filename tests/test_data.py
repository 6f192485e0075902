"""Data loaders on the real frozen datasets, and one clear DataError per kind of bad file."""

import gzip
import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tierserve.pruning.data import (
    DataError,
    hash_split,
    load_classification,
    load_retrieval,
    read_records,
)

SPLITS = {"calibration": 0.25, "validation": 0.25, "test": 0.5}


@pytest.fixture(scope="module")
def meta(debian_dir):
    return json.loads((debian_dir / "meta.json").read_text())


def test_retrieval_splits_match_meta_and_are_disjoint(debian_retrieval, meta):
    counts = {s: len(d.query_ids) for s, d in debian_retrieval.items()}
    assert counts == meta["counts_by_split"]["queries"]
    assert sum(counts.values()) == meta["counts"]["queries"] == 4000
    ids = [set(d.query_ids) for d in debian_retrieval.values()]
    docs = [set(d.doc_ids) for d in debian_retrieval.values()]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not ids[i] & ids[j] and not docs[i] & docs[j]
    test = debian_retrieval["test"]
    assert 0.45 < len(test.query_ids) / 4000 < 0.55  # the split rule's 50%


def test_retrieval_qrels_are_valid(debian_retrieval):
    for data in debian_retrieval.values():
        assert set(data.qrels) == set(data.query_ids)
        docs = set(data.doc_ids)
        for qid, judged in data.qrels.items():
            assert judged == {qid: 1}  # a query judges its own package's description
            assert set(judged) <= docs
        rel = data.relevance_matrix()  # (Q, D)
        assert rel.shape == (len(data.query_ids), len(data.doc_ids))
        assert (rel.sum(axis=1) == 1).all()
        assert len(set(data.queries)) == len(data.queries)  # synopses were de-duplicated
        assert all(len(t) >= 120 for t in data.corpus)
        assert data.query_slices is not None and len(data.query_slices) == len(data.queries)


def test_frozen_splits_follow_hash_split(debian_retrieval):
    for split, data in debian_retrieval.items():
        assert all(hash_split(q, SPLITS) == split for q in data.query_ids)


def test_sections(debian_sections, meta):
    names = {d.label_names for d in debian_sections.values()}
    assert names == {tuple(meta["section_labels"])} and len(meta["section_labels"]) == 12
    assert {s: len(d.texts) for s, d in debian_sections.items()} == \
        meta["counts_by_split"]["sections"]
    test = debian_sections["test"]
    assert set(test.labels) == set(range(12))  # every section occurs in the test split
    assert test.slices is not None and {"code", "docs", "games"} <= set(test.slices)
    by_label = Counter(test.label_names[i] for i in test.labels)
    assert by_label.most_common(1)[0][0] == "python"


def test_fine_foods(fine_foods):
    train, test = fine_foods["train"], fine_foods["test"]
    assert (len(train.texts), len(test.texts)) == (4000, 1000)
    assert train.label_names == test.label_names == ("great", "other")
    assert 0.6 < Counter(test.labels)[0] / 1000 < 0.7  # 'great' majority, as the note measured


def test_hash_split_is_deterministic_and_proportional():
    keys = [f"pkg-{i}" for i in range(20000)]
    first = [hash_split(k, SPLITS) for k in keys]
    assert first == [hash_split(k, SPLITS) for k in keys]
    share = Counter(first)
    for name, frac in SPLITS.items():
        assert abs(share[name] / len(keys) - frac) < 0.015
    assert hash_split("pkg-1", SPLITS, salt="other") in SPLITS
    with pytest.raises(ValueError, match="sum to 1"):
        hash_split("x", {"a": 0.5, "b": 0.4})
    with pytest.raises(ValueError, match="> 0"):
        hash_split("x", {"a": 1.0, "b": 0.0})


def test_read_records_formats(tmp_path):
    rows = [{"id": "a", "text": "one"}, {"id": "b", "text": "two"}]
    body = "".join(json.dumps(r) + "\n" for r in rows)
    (tmp_path / "r.jsonl").write_text(body + "\n")  # blank lines are skipped
    (tmp_path / "r.jsonl.gz").write_bytes(gzip.compress(body.encode()))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "r.parquet")
    for name in ("r.jsonl", "r.jsonl.gz", "r.parquet"):
        assert read_records(tmp_path / name) == rows
        assert read_records(f"file://{tmp_path / name}") == rows


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def good(tmp_path):
    """A small valid retrieval + classification dataset in tmp_path."""
    q = _write(tmp_path / "q.jsonl", [{"id": "q1", "text": "first", "split": "test"},
                                      {"id": "q2", "text": "second", "split": "calibration"}])
    d = _write(tmp_path / "d.jsonl", [{"id": "d1", "text": "doc one", "split": "test"},
                                      {"id": "d2", "text": "doc two", "split": "calibration"}])
    r = _write(tmp_path / "r.jsonl", [{"query_id": "q1", "doc_id": "d1", "relevance": 1},
                                      {"query_id": "q2", "doc_id": "d2", "relevance": 2}])
    c = _write(tmp_path / "c.jsonl", [{"text": "t1", "label": "pos", "split": "test"},
                                      {"text": "t2", "label": "neg", "split": "test"}])
    return {"q": q, "d": d, "r": r, "c": c}


def test_good_small_files_load(good):
    data = load_retrieval(good["q"], good["d"], good["r"])
    assert data.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2}}
    test = load_retrieval(good["q"], good["d"], good["r"], split="test")
    assert (test.query_ids, test.doc_ids) == (("q1",), ("d1",))
    cls = load_classification(good["c"])
    assert cls.label_names == ("neg", "pos") and cls.labels == (1, 0)
    fixed = load_classification(good["c"], label_names=["pos", "neg"])
    assert fixed.labels == (0, 1)


# (which file to break, replacement records or raw text, call, expected words in the message)
BAD = {
    "missing text": ("d", [{"id": "d1"}], "retrieval", ["'text'", "record 0"]),
    "empty file": ("q", "", "retrieval", ["empty file"]),
    "unknown doc": ("r", [{"query_id": "q1", "doc_id": "d9", "relevance": 1}], "retrieval",
                    ["'doc_id'", "d9"]),
    "unknown query": ("r", [{"query_id": "q9", "doc_id": "d1", "relevance": 1}], "retrieval",
                      ["'query_id'", "q9"]),
    "negative relevance": ("r", [{"query_id": "q1", "doc_id": "d1", "relevance": -1}],
                           "retrieval", ["'relevance'"]),
    "duplicate id": ("d", [{"id": "d1", "text": "a"}, {"id": "d1", "text": "b"},
                           {"id": "d2", "text": "c"}], "retrieval", ["'id'", "repeats"]),
    "bad json": ("q", '{"id": "q1", "text": "first"}\n{"id": \n', "retrieval", ["line 2"]),
    "no split field": ("q", [{"id": "q1", "text": "x"}, {"id": "q2", "text": "y"}],
                       "retrieval-test", ["'split'"]),
    "label outside set": ("c", [{"text": "t", "label": "meh"}], "classification-fixed",
                          ["'label'", "meh", "label set"]),
    "label not a string": ("c", [{"text": "t", "label": [1]}], "classification", ["'label'"]),
    "empty text": ("c", [{"text": "  ", "label": "pos"}], "classification", ["'text'"]),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_data_gives_one_clear_error(good, case):
    which, content, call, words = BAD[case]
    path = good[which]
    if isinstance(content, str):
        path.write_text(content)
    else:
        _write(path, content)
    with pytest.raises(DataError) as err:
        if call.startswith("retrieval"):
            load_retrieval(good["q"], good["d"], good["r"],
                           split="test" if call.endswith("test") else None)
        else:
            load_classification(good["c"], label_names=["pos", "neg"] if "fixed" in call else None)
    message = str(err.value)
    assert str(path) in message
    for word in words:
        assert word in message


def test_missing_file_and_missing_slice_field(good, tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        read_records(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="'slice'"):
        load_classification(good["c"], slice_field="slice")
