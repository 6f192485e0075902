"""Stage a job's data files onto the artifact store, so a path means the same thing everywhere.

The operator resolved relative paths against the declared base (`datapaths.py`); the job, where
it runs, copies each local data file it will read into `<out>/data/<sha256[:16]>-<name>` and reads
it from there. The artifact directory then holds exactly the bytes the gates were judged on, and
a re-run (another backend, another node with the same artifact store) reads the same files.
Remote URIs (s3://, hf://, pkg://...) are left as they are.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from tierserve.pruning.spec import PrunedModelSpec
from tierserve.pruning.storage import scheme_of

from .datapaths import DATA_FIELDS, SOURCES

__all__ = ["stage_data"]


def _sha(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _stage_one(uri: str, base: Path, dest: Path) -> str:
    if scheme_of(uri) not in ("", "file"):
        return uri
    src = Path(uri.removeprefix("file://"))
    src = src if src.is_absolute() else base / src
    if not src.is_file():
        return uri  # the loader names the missing file (with the spec field)
    target = dest / f"{_sha(src)}-{src.name}"
    if not target.exists():
        dest.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".part")
        shutil.copyfile(src, tmp)
        tmp.replace(target)
    return str(target)


def stage_data(spec: PrunedModelSpec, base: Path, out_dir: Path) -> PrunedModelSpec:
    """`spec` with every local data file copied under `out_dir/data` and pointing there."""
    data = spec.data
    updates = {}
    for where in SOURCES:
        src = getattr(data, where, None)
        if src is None:
            continue
        fields = {f: _stage_one(getattr(src, f), base, out_dir / "data")
                  for f in DATA_FIELDS if getattr(src, f, None)}
        updates[where] = src.model_copy(update=fields)
    return spec.model_copy(update={"data": data.model_copy(update=updates)})
