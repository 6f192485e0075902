"""Data loading for the pruning job: JSONL (plain or .gz) and Parquet into typed, frozen datasets.

- `read_records(uri)`: a local path, a `file://` URI, or any other fsspec URI -> list of dicts
- `load_retrieval(queries, corpus, qrels, split=...)` -> `RetrievalData`
- `load_classification(uri, ..., split=...)` -> `ClassificationData`
- `hash_split(key, fractions)`: the deterministic split rule the example datasets were built with

Bad data raises one `DataError` that names the file and the field (a missing field, an empty file,
qrels pointing at unknown ids, a label outside the label set), never a deep traceback.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .datapath import DataError, local_path

__all__ = [
    "ClassificationData",
    "DataError",
    "RetrievalData",
    "hash_split",
    "load_classification",
    "load_retrieval",
    "read_records",
    "record_values",
    "split_mask",
]


# -- reading ------------------------------------------------------------------------------------
_local_path = local_path  # DataError and local_path live in datapath.py, shared with images.py


def _read_bytes(uri: str | Path) -> bytes:
    path = _local_path(uri)
    try:
        if path is not None:
            return path.read_bytes()
        import fsspec

        with fsspec.open(str(uri), "rb") as f:
            return f.read()
    except (OSError, ValueError, ImportError) as exc:
        raise DataError(f"{uri}: cannot read file ({exc})") from exc


def _parse_jsonl(uri: str | Path, data: bytes) -> list[dict[str, Any]]:
    if data[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise DataError(f"{uri}: not a valid gzip file ({exc})") from exc
    records = []
    for lineno, line in enumerate(data.decode("utf-8", errors="strict").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{uri}: line {lineno} is not valid JSON ({exc.msg})") from exc
        if not isinstance(rec, dict):
            raise DataError(f"{uri}: line {lineno} is a JSON {type(rec).__name__}, not an object")
        records.append(rec)
    return records


def _parse_parquet(uri: str | Path, data: bytes) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(pa.BufferReader(data)).to_pylist()
    except pa.ArrowException as exc:
        raise DataError(f"{uri}: not a valid Parquet file ({exc})") from exc


def read_records(uri: str | Path) -> list[dict[str, Any]]:
    """Read every record of a JSONL (`.jsonl`, `.jsonl.gz`, `.json`) or Parquet file.

    `uri` is a local path, a `file://` URI, or an fsspec URI whose filesystem is installed.
    Parquet is chosen by the `.parquet`/`.pq` suffix; anything else is read as JSON lines (gzip is
    detected from the content). Raises `DataError` if the file is missing, unreadable or empty.
    """
    data = _read_bytes(uri)
    name = str(uri).lower()
    if name.endswith((".parquet", ".pq")):
        records = _parse_parquet(uri, data)
    else:
        records = _parse_jsonl(uri, data)
    if not records:
        raise DataError(f"{uri}: empty file (no records)")
    return records


def record_values(uri: str | Path, records: Sequence[Mapping[str, Any]], field: str,
                  kind: type | tuple[type, ...] = str) -> list[Any]:
    """The values of `field` in every record, each checked to be present, non-null and of `kind`."""
    values = []
    for i, rec in enumerate(records):
        if field not in rec or rec[field] is None:
            raise DataError(f"{uri}: field '{field}' missing in record {i}")
        value = rec[field]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise DataError(f"{uri}: field '{field}' in record {i} has type "
                            f"{type(value).__name__}, expected {_kind_name(kind)}")
        if isinstance(value, str) and not value.strip():
            raise DataError(f"{uri}: field '{field}' in record {i} is an empty string")
        values.append(value)
    return values


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _ids(uri: str | Path, records: Sequence[Mapping[str, Any]], field: str = "id") -> list[str]:
    ids = [str(v) for v in record_values(uri, records, field, (str, int))]
    seen: set[str] = set()
    for i, key in enumerate(ids):
        if key in seen:
            raise DataError(f"{uri}: field '{field}' in record {i} repeats the id '{key}'")
        seen.add(key)
    return ids


def split_mask(uri: str | Path, records: Sequence[Mapping[str, Any]],
               split: str | None) -> list[bool]:
    if split is None:
        return [True] * len(records)
    return [s == split for s in record_values(uri, records, "split")]


# -- splits -------------------------------------------------------------------------------------
def hash_split(key: str, fractions: Mapping[str, float], *, salt: str = "tierserve-split") -> str:
    """Deterministic split name for `key`: the same key always lands in the same split.

    The key is hashed (SHA-256 of `salt` + key) to a number u in [0, 1); the splits take
    consecutive intervals of [0, 1) in the order of `fractions`, each as wide as its fraction.
    Fractions must be positive and sum to 1. Changing the order or the salt reshuffles everything.
    """
    if not fractions:
        raise ValueError("hash_split: fractions is empty")
    if any(f <= 0 for f in fractions.values()):
        raise ValueError(f"hash_split: every fraction must be > 0, got {dict(fractions)}")
    total = sum(fractions.values())
    if abs(total - 1.0) > 1e-9:
        raise ValueError(f"hash_split: fractions must sum to 1, got {total}")
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64  # uniform in [0, 1)
    edge = 0.0
    for name, frac in fractions.items():
        edge += frac
        if u < edge:
            return name
    return next(reversed(fractions))  # u within rounding of 1.0


# -- retrieval ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RetrievalData:
    """Queries, a corpus and graded relevance judgements (qrels), aligned by position.

    qrels maps query id -> {doc id: relevance > 0}; every query has at least one judged document
    in `doc_ids`. `query_slices` holds each query's slice label, or None if the file has none.
    """

    query_ids: tuple[str, ...]
    queries: tuple[str, ...]
    doc_ids: tuple[str, ...]
    corpus: tuple[str, ...]
    qrels: Mapping[str, Mapping[str, int]]
    query_slices: tuple[str, ...] | None = None

    def relevance_matrix(self) -> np.ndarray:
        """(Q, D) float array of graded relevance, rows in `query_ids` order, columns `doc_ids`."""
        col = {d: j for j, d in enumerate(self.doc_ids)}
        rel = np.zeros((len(self.query_ids), len(self.doc_ids)), dtype=np.float64)  # (Q, D)
        for i, qid in enumerate(self.query_ids):
            for did, r in self.qrels[qid].items():
                rel[i, col[did]] = r
        return rel


def _read_qrels(uri: str | Path, query_ids: set[str],
                doc_ids: set[str]) -> dict[str, dict[str, int]]:
    records = read_records(uri)
    qids = [str(v) for v in record_values(uri, records, "query_id", (str, int))]
    dids = [str(v) for v in record_values(uri, records, "doc_id", (str, int))]
    rels = record_values(uri, records, "relevance", (int, float))
    qrels: dict[str, dict[str, int]] = {}
    for i, (q, d, r) in enumerate(zip(qids, dids, rels, strict=True)):
        if q not in query_ids:
            raise DataError(f"{uri}: field 'query_id' in record {i} names unknown query '{q}'")
        if d not in doc_ids:
            raise DataError(f"{uri}: field 'doc_id' in record {i} names unknown document '{d}'")
        if not (r >= 0 and float(r).is_integer()):  # NaN and inf fail too
            raise DataError(f"{uri}: field 'relevance' in record {i} is {r}, expected an int >= 0")
        if r > 0:
            qrels.setdefault(q, {})[d] = int(r)
    return qrels


def _require_field(uri: str | Path, records: Sequence[Mapping[str, Any]], field: str,
                   spec_field: str) -> None:
    """A configured field name that no record carries is a typo: say which spec field it is."""
    if not any(field in r for r in records):
        have = ", ".join(sorted({k for r in records[:100] for k in r}))
        raise DataError(f"spec.data.{spec_field}: no record of {uri} has the field '{field}' "
                        f"(missing in record 0 and every other; fields: {have})")


def load_retrieval(queries_uri: str | Path, corpus_uri: str | Path, qrels_uri: str | Path,
                   split: str | None = None, *, text_field: str = "text",
                   slice_field: str | None = "slice", require_slice: bool = False) -> RetrievalData:
    """Load a retrieval dataset: queries {id, text[, split, slice]}, corpus {id, text[, split]},
    qrels {query_id, doc_id, relevance}.

    All files are validated whole (ids unique, qrels ids known) before `split` filters queries and
    documents by their `split` field. Judgements with relevance 0 are dropped, and so are queries
    left with no judged document in the (split) corpus: they have nothing to find.
    """
    q_recs, d_recs = read_records(queries_uri), read_records(corpus_uri)
    _require_field(queries_uri, q_recs, text_field, "textField")
    _require_field(corpus_uri, d_recs, text_field, "textField")
    if slice_field is not None and require_slice:
        _require_field(queries_uri, q_recs, slice_field, "sliceField")
    q_ids, q_texts = _ids(queries_uri, q_recs), record_values(queries_uri, q_recs, text_field)
    d_ids, d_texts = _ids(corpus_uri, d_recs), record_values(corpus_uri, d_recs, text_field)
    has_slices = slice_field is not None and any(slice_field in r for r in q_recs)
    q_slices = record_values(queries_uri, q_recs, slice_field) if has_slices else None  # all, then
    qrels = _read_qrels(qrels_uri, set(q_ids), set(d_ids))
    d_keep = split_mask(corpus_uri, d_recs, split)
    doc_ids = tuple(d for d, k in zip(d_ids, d_keep, strict=True) if k)
    docs = set(doc_ids)
    kept_qrels = {q: {d: r for d, r in rel.items() if d in docs} for q, rel in qrels.items()}
    q_keep = [k and bool(kept_qrels.get(q)) for q, k in
              zip(q_ids, split_mask(queries_uri, q_recs, split), strict=True)]
    if not any(q_keep):
        raise DataError(f"{queries_uri}: no query with a judged document in split {split!r} "
                        f"(fields 'split' and {qrels_uri} 'query_id')")
    rows = [i for i, k in enumerate(q_keep) if k]
    return RetrievalData(
        query_ids=tuple(q_ids[i] for i in rows),
        queries=tuple(q_texts[i] for i in rows),
        doc_ids=doc_ids,
        corpus=tuple(t for t, k in zip(d_texts, d_keep, strict=True) if k),
        qrels={q_ids[i]: kept_qrels[q_ids[i]] for i in rows},
        query_slices=tuple(q_slices[i] for i in rows) if q_slices is not None else None,
    )


# -- classification -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassificationData:
    """Texts (or PIL images) with integer labels indexing `label_names`; `slices` is None without a
    slice field."""

    texts: tuple[Any, ...]
    labels: tuple[int, ...]
    label_names: tuple[str, ...]
    slices: tuple[str, ...] | None = None
    ids: tuple[str, ...] | None = None


def _label_set(values: Sequence[str | int]) -> tuple[str, ...]:
    if all(isinstance(v, int) for v in values):
        return tuple(str(v) for v in sorted(set(values)))
    return tuple(sorted({str(v) for v in values}))


def load_classification(uri: str | Path, text_field: str = "text", label_field: str = "label",
                        slice_field: str | None = None, split: str | None = None, *,
                        label_names: Sequence[str] | None = None,
                        image_field: str | None = None) -> ClassificationData:
    """Load {text, label[, slice, split, id]} records into a `ClassificationData`.

    The label set is `label_names` when given (e.g. a fine-tuned model's `id2label` order; every
    label must be in it), else the sorted distinct labels of the whole file, so every split of one
    file shares one label index. `split` then keeps the records whose `split` field equals it.
    With `image_field`, examples are the decoded images of that field (see `images.py`).
    """
    records = read_records(uri)
    raw_labels = record_values(uri, records, label_field, (str, int))
    names = tuple(str(n) for n in label_names) if label_names is not None else _label_set(raw_labels)
    index = {n: i for i, n in enumerate(names)}
    for i, lab in enumerate(raw_labels):
        if str(lab) not in index:
            raise DataError(f"{uri}: field '{label_field}' in record {i} is '{lab}', "
                            f"not in the label set {list(names)}")
    slices = record_values(uri, records, slice_field) if slice_field is not None else None
    has_ids = any("id" in r for r in records)  # then every record needs one
    ids = _ids(uri, records) if has_ids else None
    rows = [i for i, k in enumerate(split_mask(uri, records, split)) if k]
    if not rows:
        raise DataError(f"{uri}: field 'split' has no record equal to {split!r}")
    if image_field is not None:  # image classification: decode only the rows kept
        from .images import decode_images

        decoded = decode_images(uri, [records[i] for i in rows], image_field)
        texts = dict(zip(rows, decoded, strict=True))
    else:
        texts = record_values(uri, records, text_field)
    return ClassificationData(
        texts=tuple(texts[i] for i in rows),
        labels=tuple(index[str(raw_labels[i])] for i in rows),
        label_names=names,
        slices=tuple(slices[i] for i in rows) if slices is not None else None,
        ids=tuple(ids[i] for i in rows) if ids is not None else None,
    )
