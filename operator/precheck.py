"""What the operator can check about a spec's data without running the job.

Run after `confine_data_paths` and before a job is launched; a failure is a `SpecError` naming the
spec field, so the object ends `Failed/InvalidSpec` and no doomed job starts:

- the task's required data fields are set: retrieval (embedding without `uri`, rerank) needs
  `queries`, `corpus` and `qrels`; classification, similarity pairs and text-generation a `uri`:
  `spec.data.calibration.qrels: required for task embedding (retrieval data: queries, corpus, qrels)`;
- every local data file the operator itself can see exists and is a file:
  `spec.data.calibration.qrels: file not found: /srv/data/team/qrels.jsonl`;
  its real path (symlinks followed) stays under the data roots, as the job will demand;
- each `split` is a value of the `split` field of the files it filters (queries and corpus for
  retrieval, `uri` otherwise), read with the job's own loader (`pruning.data.read_records`):
  `spec.data.evaluation.split: 'tset' not in the split values ['calibration', 'test'] of queries
  (/srv/data/team/queries.jsonl.gz)`; a file the loader cannot parse is refused naming its field.

"The operator can see" a file when it is local (a path or `file://`) and lies under one of the
allowed data roots that is a directory on the operator's own filesystem: the operator runs beside
the data there (a shared volume, or a local Ray). Anything else (a relative path with no base,
`pvc://`, `pkg://`, `s3://`, `hf://`, a root the operator does not mount) is left to the job,
whose errors name the field too (`pruning/inputs.py`). Bounded: a file larger than
`MAX_READ_BYTES` on disk is only checked to exist; files read are cached by (path, size, mtime),
so the resync loop does not re-read unchanged data.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from urllib.parse import unquote

from tierserve.pruning.data import DataError, read_records
from tierserve.pruning.datapath import name_field
from tierserve.pruning.spec import DataSource, PrunedModelSpec, SpecError
from tierserve.pruning.tasks import Task

from .datapaths import under

__all__ = ["MAX_READ_BYTES", "check_data", "required_fields"]

MAX_READ_BYTES = 32 << 20  # 32 MiB on disk (gzip: a few hundred MiB of JSON): larger, existence only
_CACHE_SIZE = 64
_splits_cache: dict[tuple[str, int, int], tuple[list[str | None], str | None]] = {}

RETRIEVAL = ("queries", "corpus", "qrels")
SOURCES = ("calibration", "validation", "evaluation")  # distillation: raw texts, checked apart


def _retrieval(task: Task, src: DataSource) -> bool:
    return task is Task.rerank or (task is Task.embedding and src.uri is None)


def required_fields(task: Task, src: DataSource) -> tuple[str, ...]:
    """The file fields the job reads for this source (mirrors `pruning.inputs.load_inputs`)."""
    return RETRIEVAL if _retrieval(task, src) else ("uri",)


def _split_fields(task: Task, src: DataSource) -> tuple[str, ...]:
    """Files the loader filters by `split` (load_retrieval: queries and corpus)."""
    return ("queries", "corpus") if _retrieval(task, src) else ("uri",)


def _visible(value: str, base: str | None, roots: Sequence[str]) -> str | None:
    """The operator-side path of a local data file under a root it mounts; None: the job's."""
    scheme, sep, rest = value.partition("://")
    if sep and scheme != "file":
        return None  # pvc://, pkg://, s3://, hf://: not the operator's to read
    text = unquote(rest) if sep else value
    if not text.startswith("/"):
        if not base or not base.startswith("/"):
            return None  # relative to the job's working directory
        text = posixpath.join(base, text)
    path = posixpath.normpath(text)
    for root in roots:
        if under(path, posixpath.normpath(root)) and os.path.isdir(root):
            return path
    return None


def _splits(path: str) -> tuple[list[str | None], str | None]:
    """(the distinct `split` values of the file, None when a record has none; or a parse error)."""
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    if key not in _splits_cache:
        try:
            values = sorted({r.get("split") for r in read_records(path)},
                            key=lambda v: (v is None, str(v)))
            _splits_cache[key] = (values, None)
        except DataError as err:
            _splits_cache[key] = ([], str(err))
        while len(_splits_cache) > _CACHE_SIZE:
            _splits_cache.pop(next(iter(_splits_cache)))
    return _splits_cache[key]


def _check_file(field: str, value: str, path: str, roots: Sequence[str]) -> None:
    if not os.path.lexists(path):
        raise SpecError(f"{field}: file not found: {path}" + ("" if value == path else f" ({value!r})"))
    real = os.path.realpath(path)
    if not any(under(real, os.path.realpath(r)) for r in roots):
        raise SpecError(f"{field}: {value!r} resolves to {real} (symlinks followed), outside the "
                        f"data roots the operator allows ({', '.join(roots)})")
    if not os.path.isfile(real):
        raise SpecError(f"{field}: not a file: {path}")


def _check_split(where: str, key: str, path: str, split: str) -> None:
    if os.path.getsize(path) > MAX_READ_BYTES:
        return  # too big to read here: the job checks it
    values, error = _splits(path)
    if error is not None:
        raise SpecError(name_field(error, f"spec.data.{where}.{key}", path))
    if None in values:
        raise SpecError(f"spec.data.{where}.split: {split!r} given, but records of {key} "
                        f"({path}) have no 'split' field")
    if split not in values:
        raise SpecError(f"spec.data.{where}.split: {split!r} not in the split values "
                        f"{values} of {key} ({path})")


def check_data(spec: PrunedModelSpec, default_base: str | None, roots: Sequence[str]) -> None:
    """Raise `SpecError` naming the first data field the job would fail on (see the module doc).
    `default_base`: the object's data base (annotation or operator config); `roots`: the
    operator's allowed data roots. Call after `confine_data_paths` accepted the same spec."""
    task, data = spec.model.task, spec.data
    base = data.base_dir or default_base
    for where in SOURCES:
        src = getattr(data, where)
        if src is None:
            continue
        needed = required_fields(task, src)
        for key in needed:
            if getattr(src, key) is None:
                what = "retrieval data: queries, corpus, qrels" if key in RETRIEVAL else "a data file"
                raise SpecError(f"spec.data.{where}.{key}: required for task {task.value} ({what})")
        for key in needed:
            path = _visible(getattr(src, key), base, roots)
            if path is None:
                continue
            _check_file(f"spec.data.{where}.{key}", getattr(src, key), path, roots)
            if src.split is not None and key in _split_fields(task, src):
                _check_split(where, key, path, src.split)
    extra = data.distillation
    if extra is not None and extra.uri is not None:
        path = _visible(extra.uri, base, roots)
        if path is not None:
            _check_file("spec.data.distillation.uri", extra.uri, path, roots)
