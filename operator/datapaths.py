"""Data paths that mean the same thing wherever the job runs (pure).

A manifest names its data relative to itself (`data/debian/queries.jsonl.gz` next to
`examples/minilm-pass.yaml`). The job runs elsewhere: a Ray node or a pod, whose working
directory is not the manifest's. So the operator resolves every relative plain path against a
declared base before the job sees the spec, in this order:

1. `spec.data.baseDir`;
2. the object's `tierserve.io/source-dir` annotation (the manifest's origin, e.g. set by
   `kubectl annotate` or a kustomize commonAnnotation);
3. the operator's `TIERSERVE_DATA_BASE`.

Without any of them a relative path stays relative (the job's working directory, as `tierserve
prune` does for a local spec file). URIs with a scheme (pkg://, pvc://, s3://, file:///abs) and
absolute paths are never touched. The job then stages the files it read onto the artifact store
(`stage.py`), so the run is reproducible from there.
"""

from __future__ import annotations

import copy
import posixpath
from typing import Any

__all__ = ["DATA_FIELDS", "SOURCES", "base_dir", "resolve_data_paths"]

SOURCES = ("calibration", "validation", "evaluation", "distillation")
DATA_FIELDS = ("uri", "queries", "corpus", "qrels")


def _relative(value: Any) -> bool:
    return isinstance(value, str) and bool(value) and "://" not in value and not value.startswith("/")


def base_dir(spec: dict[str, Any], default: str | None) -> str | None:
    """The declared base: spec.data.baseDir, else `default` (annotation or operator config)."""
    return (spec.get("data") or {}).get("baseDir") or default


def resolve_data_paths(spec: dict[str, Any], default_base: str | None) -> dict[str, Any]:
    """A copy of the camelCase spec with relative data (and model) paths joined to the base."""
    base = base_dir(spec, default_base)
    if not base:
        return spec
    out = copy.deepcopy(spec)
    data = out.get("data") or {}
    for where in SOURCES:
        src = data.get(where)
        for key in DATA_FIELDS:
            if isinstance(src, dict) and _relative(src.get(key)):
                src[key] = posixpath.normpath(posixpath.join(base, src[key]))
    model = out.get("model") or {}
    if _relative(model.get("uri")):
        model["uri"] = posixpath.normpath(posixpath.join(base, model["uri"]))
    return out
