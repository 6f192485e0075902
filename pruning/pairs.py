"""Similarity data for embedding models: text pairs with a graded human score, judged by Spearman.

JSONL/Parquet records {text, text2, label[, slice, split]}: `label` is the similarity score (any
scale; only its ranking matters), `text2` the second text (`spec.data.pairField`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .data import DataError, read_records, record_values, split_mask

__all__ = ["SimilarityData", "load_similarity"]


@dataclass(frozen=True)
class SimilarityData:
    texts: tuple[str, ...]  # first text of each pair
    pairs: tuple[str, ...]  # second text of each pair
    scores: tuple[float, ...]  # human similarity, higher = more similar
    slices: tuple[str, ...] | None = None


def load_similarity(uri: str | Path, text_field: str = "text", pair_field: str = "text2",
                    score_field: str = "label", slice_field: str | None = None,
                    split: str | None = None) -> SimilarityData:
    records = read_records(uri)
    keep = [i for i, k in enumerate(split_mask(uri, records, split)) if k]
    if not keep:
        raise DataError(f"{uri}: field 'split' has no record equal to {split!r}")
    records = [records[i] for i in keep]
    a, b = record_values(uri, records, text_field), record_values(uri, records, pair_field)
    scores = [float(s) for s in record_values(uri, records, score_field, (int, float))]
    if len(set(scores)) < 2:
        raise DataError(f"{uri}: field '{score_field}' is constant; Spearman needs varied scores")
    slices = record_values(uri, records, slice_field) if slice_field is not None and all(
        slice_field in r for r in records) else None
    return SimilarityData(tuple(a), tuple(b), tuple(scores), tuple(slices) if slices else None)
