"""The job's side of distillation: `spec.recovery` -> `DistillConfig`, `spec.data` -> texts.

`spec.data.distillation.uri` is read like the other data files: a URI (file://, pvc://, s3://,
pkg://) or an absolute path as is; a relative path against `spec.data.baseDir` when set, else
against the directory the calibration files were found in (the spec's own directory for
`tierserve prune`).
"""

from __future__ import annotations

from pathlib import Path

from .data import DistillTexts, distill_texts, greedy_continuations, read_texts
from .loop import DistillConfig

__all__ = ["distill_config", "distillation_hash", "distillation_path", "spec_texts"]


def distill_config(spec) -> DistillConfig | None:
    """None when the spec asks for no distillation (no steps and no time budget)."""
    r = spec.recovery
    if not r.distill_steps and r.max_seconds is None:
        return None
    return DistillConfig(steps=r.distill_steps, max_seconds=r.max_seconds, lr=r.learning_rate,
                         batch_size=r.batch_size, temperature=r.temperature,
                         objective=r.objective, hidden_states=r.hidden_states,
                         patience=r.early_stop_patience, precision=r.precision,
                         workers=r.workers, use_gpu=r.use_gpu)


def _base(spec, data_files: dict) -> Path:
    """Where relative data paths of this spec were found (see the module doc)."""
    base = getattr(spec.data, "base_dir", None)
    if base:
        return Path(base)
    cal = spec.data.calibration
    for rel in (cal.uri, cal.queries, cal.corpus, cal.qrels):
        if not rel or Path(rel).is_absolute() or "://" in rel:
            continue
        for found in data_files:
            if found.endswith("/" + rel.removeprefix("./")):
                return Path(found[: -len(rel.removeprefix("./"))])
    return Path.cwd()


def distillation_path(spec, data_files: dict) -> Path | None:
    """The local path of `spec.data.distillation.uri` (module doc), or None without one."""
    src = spec.data.distillation
    if src is None or src.uri is None:
        return None
    uri = src.uri
    if "://" in uri or Path(uri).is_absolute():
        from tierserve.pruning.storage import resolve

        return resolve(uri)
    return (_base(spec, data_files) / uri).resolve()


def distillation_hash(spec, data_files: dict) -> dict[str, str] | None:
    """{path: sha256} of the distillation file when the spec distils with one, else None: its
    CONTENT is part of the job's artifact key (the same content gives the same key)."""
    if distill_config(spec) is None:
        return None
    path = distillation_path(spec, data_files)
    if path is None:
        return None
    from tierserve.pruning.artifact import sha256_file

    return {str(path): sha256_file(path)}


def _extra_texts(spec, data_files: dict) -> list[str]:
    path = distillation_path(spec, data_files)
    if path is None:
        return []
    texts = read_texts(path, spec.data.text_field)
    limit = spec.data.distillation.limit
    return texts[:limit] if limit else texts


def spec_texts(spec, calibration, full, data_files: dict) -> DistillTexts:
    """The calibration split's texts by task, plus the spec's raw-text file; decoder prompts get
    the full model's greedy continuation."""
    from tierserve.pruning.tasks import Task

    gen = None
    if spec.model.task is Task.text_generation:
        def gen(prompts: list[str]) -> list[str]:
            return greedy_continuations(full, prompts)
    return distill_texts(calibration, _extra_texts(spec, data_files), gen)
