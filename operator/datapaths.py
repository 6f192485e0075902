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

Confinement (`confine_data_paths`): a manifest author must not make the job read files of the
Ray nodes. Every local path a spec names (data files and `model.uri`) is checked before a job is
launched, after percent-decoding and normalising:
- a relative path may not leave its base (`..`);
- a path that resolves to an absolute one (an absolute path, `file://`, or a relative path under
  a base that the object chose: `spec.data.baseDir` or the source-dir annotation) must lie under
  one of the operator's allowed roots: `TIERSERVE_DATA_ROOTS` (os.pathsep-separated) and
  `TIERSERVE_DATA_BASE`. None listed: no absolute path is allowed at all;
- `pvc://CLAIM/PATH` and `pkg://PACKAGE/PATH` may not climb out of the claim or the package.
A refusal is a `SpecError` naming the field: the object's InvalidSpec condition. The job checks
again on the node, after following symlinks (`pruning/inputs.py`, `--data-roots`).
"""

from __future__ import annotations

import copy
import posixpath
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote

from tierserve.pruning.spec import SpecError

__all__ = ["DATA_FIELDS", "SOURCES", "base_dir", "confine_data_paths", "resolve_data_paths", "under"]

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


def under(path: str, root: str) -> bool:
    """`path` is `root` or inside it (both absolute and normalised, POSIX)."""
    root = root.rstrip("/") or "/"
    return path == root or path.startswith(root if root == "/" else root + "/")


def _climbs(path: str) -> bool:
    return posixpath.normpath(path or ".").split("/")[0] == ".."


def _check(field: str, value: str, base: str | None, roots: Sequence[str]) -> None:
    scheme, sep, rest = value.partition("://")
    if not sep:
        scheme, rest = "", value
    text = unquote(rest)
    if scheme in ("pvc", "pkg"):
        _, _, inner = text.partition("/")
        if _climbs(inner) or inner.startswith("/"):
            raise SpecError(f"{field}: {value!r} climbs out of its {scheme}:// "
                            f"{'claim' if scheme == 'pvc' else 'package'}")
        return
    if scheme not in ("", "file"):
        return  # remote stores (s3://, gs://, hf://): the store's own credentials confine them
    if scheme == "file" or text.startswith("/"):
        path = posixpath.normpath(text)
    elif base is None:
        if _climbs(text):
            raise SpecError(f"{field}: {value!r} leaves the job's working directory (..)")
        return
    else:
        if _climbs(text):
            raise SpecError(f"{field}: {value!r} leaves its base directory {base!r} (..)")
        path = posixpath.normpath(posixpath.join(unquote(base), text))
        if not path.startswith("/"):  # a relative base: relative to the job's working directory
            if _climbs(path):
                raise SpecError(f"{field}: {value!r} leaves the job's working directory (..)")
            return
    if not any(under(path, posixpath.normpath(r)) for r in roots):
        allowed = ", ".join(roots) if roots else "none are allowed"
        raise SpecError(f"{field}: {value!r} resolves to {path}, outside the data roots the "
                        f"operator allows (TIERSERVE_DATA_ROOTS: {allowed})")


def confine_data_paths(spec: dict[str, Any], default_base: str | None,
                       roots: Sequence[str]) -> None:
    """Raise `SpecError` naming the first spec field whose local path the job may not read
    (see the module doc). `roots`: the operator's allowed roots, absolute."""
    base = base_dir(spec, default_base)
    data = spec.get("data") or {}
    if isinstance(data.get("baseDir"), str) and _climbs(unquote(data["baseDir"])):
        raise SpecError(f"spec.data.baseDir: {data['baseDir']!r} climbs out of the job's "
                        "working directory (..)")
    for where in SOURCES:
        src = data.get(where)
        for key in DATA_FIELDS:
            if isinstance(src, dict) and isinstance(src.get(key), str) and src[key]:
                _check(f"spec.data.{where}.{key}", src[key], base, roots)
    uri = (spec.get("model") or {}).get("uri")
    if isinstance(uri, str) and uri:
        _check("spec.model.uri", uri, base, roots)
