"""No leakage into the judged set: evaluation and validation rows are not calibration or
distillation rows, by id or by text.

A judged row that also shaped the pruned model (importance scores, the LS rescale, distillation)
makes the gates judge memory, not quality: delete `spec.data.calibration.split` and calibration
holds every evaluation query. The job runs `check_leakage` right after loading its data, before
anything is scored or a finished artifact reused. Any overlap raises `DataLeak` (its message
starts with `DataLeak:` and names the spec fields), unless `spec.data.allowOverlap.reason` says
why it is acceptable; the report records the counts either way (`data.overlap`).

A row is, per task: a retrieval query (the corpus is shared by design and not a row), a
classification text or image, an embedding similarity pair, a decoder text or prompt, and a
distillation text. Two rows are the same by id (the records' `id` field, where both sides have
one) or by text: sha256 of the casefolded text with whitespace runs collapsed (pairs: both texts).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .datapath import DataError

__all__ = ["JUDGED", "TRAINING", "DataLeak", "Overlap", "Rows", "check_leakage", "find_overlap",
           "leak_message", "overlap_report", "rows_of", "text_hash"]

JUDGED = ("evaluation", "validation")  # the gates and the cascade threshold are judged on these
TRAINING = ("calibration", "distillation")  # these shaped the pruned model
EXAMPLES = 3  # ids named in the message


class DataLeak(DataError):
    """Judged rows are also calibration/distillation rows; the message starts with `DataLeak:`."""


def text_hash(*parts: str) -> str:
    """sha256 of the parts, each casefolded with whitespace runs collapsed to one space."""
    return hashlib.sha256("\n".join(" ".join(p.split()).casefold() for p in parts).encode()).hexdigest()


@dataclass(frozen=True)
class Rows:
    """One split's rows as the check sees them, aligned: ids (None: the data has none) and text
    hashes (None for a row without text, e.g. an image)."""

    ids: tuple[str, ...] | None
    hashes: tuple[str | None, ...]

    def name(self, i: int) -> str:
        return self.ids[i] if self.ids is not None else f"row {i}"


def _hashes(texts: Sequence[Any]) -> tuple[str | None, ...]:
    return tuple(text_hash(t) if isinstance(t, str) else None for t in texts)


def rows_of(data: Any) -> Rows:
    """The rows of a loaded dataset (inputs.Dataset or lm.LMData)."""
    from .data import ClassificationData, RetrievalData
    from .lm import LMData
    from .pairs import SimilarityData

    if isinstance(data, RetrievalData):
        return Rows(data.query_ids, _hashes(data.queries))
    if isinstance(data, SimilarityData):
        return Rows(None, tuple(text_hash(a, b) for a, b in zip(data.texts, data.pairs, strict=True)))
    if isinstance(data, LMData):
        return Rows(data.ids, _hashes(data.texts + data.prompts))
    if isinstance(data, ClassificationData):
        return Rows(data.ids, _hashes(data.texts))
    raise TypeError(f"rows_of: unknown dataset type {type(data).__name__}")


def _distillation_rows(spec, data_files: dict) -> Rows | None:
    """The raw texts distillation reads (`from_spec._extra_texts`: non-empty texts, then limit),
    or None when the spec does not distil with a `data.distillation` file."""
    from .data import read_records
    from .recovery.distillation.from_spec import distill_config, distillation_path

    path = distillation_path(spec, data_files) if distill_config(spec) is not None else None
    if path is None:
        return None
    field = spec.data.text_field
    recs = [r for r in read_records(path) if isinstance(r.get(field), str) and r[field].strip()]
    recs = recs[:spec.data.distillation.limit or None]
    ids = [r.get("id") for r in recs]
    return Rows(tuple(str(i) for i in ids) if None not in ids else None,
                _hashes([r[field] for r in recs]))


@dataclass(frozen=True)
class Overlap:
    """Judged rows (indices into the judged split) also found among training rows."""

    judged: str
    training: str
    rows: int  # judged rows checked
    by_id: frozenset[int]
    by_text: frozenset[int]
    examples: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"judged": f"spec.data.{self.judged}", "training": f"spec.data.{self.training}",
                "rows": self.rows, "by_id": len(self.by_id), "by_text": len(self.by_text),
                "examples": list(self.examples)}


def find_overlap(judged: Rows, training: Rows, *, names: tuple[str, str] = ("evaluation",
                 "calibration")) -> Overlap:
    """Which judged rows share an id or a text hash with a training row."""
    ids = set(training.ids) if training.ids is not None and judged.ids is not None else set()
    texts = {h for h in training.hashes if h is not None}
    by_id = frozenset(i for i, k in enumerate(judged.ids or ()) if k in ids)
    by_text = frozenset(i for i, h in enumerate(judged.hashes) if h is not None and h in texts)
    hit = sorted(by_id | by_text)
    return Overlap(names[0], names[1], len(judged.hashes), by_id, by_text,
                   tuple(judged.name(i) for i in hit[:EXAMPLES]))


def _field(where: str) -> str:
    """The spec field that decides which rows a split holds."""
    return f"spec.data.{where}.uri" if where == "distillation" else f"spec.data.{where}.split"


def leak_message(found: Sequence[Overlap]) -> str:
    parts = [f"{len(o.by_id | o.by_text)} of {o.rows} rows of spec.data.{o.judged} are also in "
             f"spec.data.{o.training} (by id: {len(o.by_id)}, by text: {len(o.by_text)}; e.g. "
             f"{', '.join(o.examples)}); check {_field(o.training)} and {_field(o.judged)}"
             for o in found]
    return ("DataLeak: " + "; ".join(parts) + ". The gates would judge rows the pruned model was "
            "fitted on; to accept it, set spec.data.allowOverlap.reason")


def overlap_report(found: Sequence[Overlap], reason: str | None) -> dict[str, Any]:
    """The report's `data.overlap`: judged rows overlapping any training row, summed over the
    judged splits, and each (judged, training) pair with overlap."""
    union: dict[str, tuple[set[int], set[int]]] = {}
    for o in found:
        ids, texts = union.setdefault(o.judged, (set(), set()))
        ids |= o.by_id
        texts |= o.by_text
    hits = [o for o in found if o.by_id or o.by_text]
    return {"by_id": sum(len(i) for i, _ in union.values()),
            "by_text": sum(len(t) for _, t in union.values()),
            "allowed": reason is not None, "reason": reason,
            "pairs": [o.to_dict() for o in hits]}


def check_leakage(spec, inputs) -> dict[str, Any]:
    """Compare every judged split of the loaded `inputs` with every training split; raise
    `DataLeak` on overlap unless the spec allows it. Returns the report's `data.overlap`."""
    judged = {w: rows_of(getattr(inputs, w)) for w in JUDGED if getattr(inputs, w) is not None}
    training = {"calibration": rows_of(inputs.calibration)}
    extra = _distillation_rows(spec, inputs.hashes.get("data", {}))
    if extra is not None:
        training["distillation"] = extra
    found = [find_overlap(j, t, names=(jw, tw)) for jw, j in judged.items()
             for tw, t in training.items()]
    allow = spec.data.allow_overlap
    if any(o.by_id or o.by_text for o in found) and allow is None:
        raise DataLeak(leak_message([o for o in found if o.by_id or o.by_text]))
    return overlap_report(found, allow.reason if allow is not None else None)
