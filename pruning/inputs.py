"""Resolve a spec's model and data URIs into loaded inputs, with the hashes that key the artifact."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .artifact import sha256_file, weights_sha256
from .data import ClassificationData, DataError, RetrievalData, load_classification, load_retrieval
from .datapath import name_field
from .gguf import model_dir
from .pairs import SimilarityData, load_similarity
from .spec import DataSource, PrunedModelSpec
from .storage import StorageError, resolve, scheme_of
from .tasks import Task

__all__ = ["Dataset", "JobInputs", "head_queries", "load_inputs"]

Dataset = RetrievalData | ClassificationData | SimilarityData


@dataclass(frozen=True)
class JobInputs:
    model_path: Path
    calibration: Dataset
    validation: Dataset | None  # calibrates search and cascade; None -> evaluation is used
    evaluation: Dataset
    hashes: dict  # {"model": {file: sha256}, "data": {uri: sha256}}


def _local(uri: str, base: Path) -> Path:
    """Relative plain paths are relative to the spec file's directory."""
    if scheme_of(uri) in ("", "file") and not Path(uri.removeprefix("file://")).is_absolute():
        return (base / uri.removeprefix("file://")).resolve()
    return resolve(uri)


def _retrieval(src: DataSource, spec: PrunedModelSpec, base: Path,
               where: str) -> tuple[RetrievalData, list[Path]]:
    missing = [f for f in ("queries", "corpus", "qrels") if getattr(src, f) is None]
    if missing:
        raise DataError(f"spec.data.{where}: a retrieval task needs queries, corpus and qrels; "
                        f"missing {', '.join(missing)}")
    paths = [_local(getattr(src, f), base) for f in ("queries", "corpus", "qrels")]
    d = spec.data  # a slice field the spec names explicitly must exist; the default may not
    data = load_retrieval(*paths, split=src.split, text_field=d.text_field,
                          slice_field=d.slice_field,
                          require_slice="slice_field" in d.model_fields_set)
    if src.limit is not None and src.limit < len(data.query_ids):
        data = head_queries(data, src.limit)
    return data, paths


def head_queries(data: RetrievalData, n: int) -> RetrievalData:
    """The first n queries; the corpus stays whole, so ranking difficulty is unchanged."""
    from dataclasses import replace

    ids = data.query_ids[:n]
    return replace(data, query_ids=ids, queries=data.queries[:n],
                   qrels={q: data.qrels[q] for q in ids},
                   query_slices=data.query_slices[:n] if data.query_slices else None)


def _classification(src: DataSource, spec: PrunedModelSpec, base: Path, where: str,
                    label_names: tuple[str, ...] | None) -> tuple[ClassificationData, list[Path]]:
    if src.uri is None:
        raise DataError(f"spec.data.{where}.uri: a classification task needs a data file")
    path = _local(src.uri, base)
    d = spec.data
    image_field = (d.image_field or "image") if spec.model.task is Task.image_classification else None
    data = load_classification(path, d.text_field, d.label_field, d.slice_field, src.split,
                               label_names=label_names, image_field=image_field)
    if src.limit is not None and src.limit < len(data.texts):
        from dataclasses import replace

        n = src.limit
        data = replace(data, texts=data.texts[:n], labels=data.labels[:n],
                       slices=data.slices[:n] if data.slices else None,
                       ids=data.ids[:n] if data.ids else None)
    return data, [path]


def _similarity(src: DataSource, spec: PrunedModelSpec, base: Path) -> tuple[SimilarityData, list[Path]]:
    from dataclasses import replace

    path, d = _local(src.uri, base), spec.data
    data = load_similarity(path, d.text_field, d.pair_field, d.label_field, d.slice_field, src.split)
    if src.limit is not None and src.limit < len(data.texts):
        n = src.limit
        data = replace(data, texts=data.texts[:n], pairs=data.pairs[:n], scores=data.scores[:n],
                       slices=data.slices[:n] if data.slices else None)
    return data, [path]


def _label_names(model_path: Path) -> tuple[str, ...] | None:
    import json

    cfg = json.loads((model_path / "config.json").read_text())
    names = cfg.get("id2label") or {}
    labels = tuple(names[k] for k in sorted(names, key=int))
    return None if not labels or all(n.startswith("LABEL_") for n in labels) else labels


FILE_FIELDS = ("uri", "queries", "corpus", "qrels")


def _load(src: DataSource, spec: PrunedModelSpec, base_dir: Path, where: str,
          names: tuple[str, ...] | None) -> tuple[Dataset, list[Path]]:
    task = spec.model.task
    if task is Task.text_generation:  # texts for perplexity, prompt/answer rows (lm.py)
        from .lm import load_lm_data

        if src.uri is None:
            raise DataError(f"spec.data.{where}.uri: text-generation needs a data file")
        paths = [_local(src.uri, base_dir)]
        data = load_lm_data(paths[0], spec.data.text_field, spec.data.slice_field, src.split,
                            limit=src.limit)
        return data, paths
    if task is Task.embedding and src.uri is not None:
        return _similarity(src, spec, base_dir)
    if task in (Task.embedding, Task.rerank):
        return _retrieval(src, spec, base_dir, where)
    return _classification(src, spec, base_dir, where, names)


def _load_named(src: DataSource, spec: PrunedModelSpec, base_dir: Path, where: str,
                names: tuple[str, ...] | None) -> tuple[Dataset, list[Path]]:
    """`_load`, with any data error headed by the spec field of the file it is about
    (`spec.data.calibration.qrels (/abs/qrels.jsonl): line 3 ...`, docs/job.md)."""
    try:
        return _load(src, spec, base_dir, where, names)
    except (DataError, StorageError) as err:
        text = str(err)
        if text.startswith("spec."):
            raise
        for f in FILE_FIELDS:
            value = getattr(src, f, None)
            if value is None:
                continue
            try:
                path = str(_local(value, base_dir))
            except StorageError:  # this very file could not be resolved
                path = value
            if text.startswith((f"{path}: ", f"{value}: ")):
                head = path if text.startswith(f"{path}: ") else value
                raise DataError(name_field(text, f"spec.data.{where}.{f}", head)) from err
        raise DataError(f"spec.data.{where}: {text}") from err


def load_inputs(spec: PrunedModelSpec, base_dir: Path) -> JobInputs:
    model_path = model_dir(_local(spec.model.uri, base_dir))  # a .gguf file: converted once
    if not (model_path / "config.json").is_file():
        raise DataError(f"spec.model.uri: {spec.model.uri} ({model_path}) has no config.json")
    task = spec.model.task
    names = _label_names(model_path) if task is not Task.embedding else None
    loaded: dict[str, Dataset | None] = {}
    files: list[Path] = []
    for where in ("calibration", "validation", "evaluation"):
        src = getattr(spec.data, where)
        if src is None:
            loaded[where] = None
            continue
        data, paths = _load_named(src, spec, base_dir, where, names)
        loaded[where], files = data, files + paths
    hashes = {"model": weights_sha256(model_path),
              "data": {str(p): sha256_file(p) for p in sorted(set(files))}}
    return JobInputs(model_path, loaded["calibration"], loaded["validation"],  # type: ignore[arg-type]
                     loaded["evaluation"], hashes)  # type: ignore[arg-type]
