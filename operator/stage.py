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

from tierserve.pruning.data import DataError
from tierserve.pruning.spec import PrunedModelSpec
from tierserve.pruning.storage import StorageError, resolve, scheme_of

from .datapaths import DATA_FIELDS, SOURCES

__all__ = ["confine", "stage_data"]


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


def _local_fields(spec: PrunedModelSpec) -> list[tuple[str, str]]:
    """(spec field, value) of every data file and the model the job will read."""
    fields = [("spec.model.uri", spec.model.uri)]
    for where in SOURCES:
        src = getattr(spec.data, where, None)
        fields += [(f"spec.data.{where}.{f}", getattr(src, f)) for f in DATA_FIELDS
                   if src is not None and getattr(src, f, None)]
    return fields


def confine(spec: PrunedModelSpec, base_dir: Path, roots: list[Path]) -> None:
    """Refuse (DataError naming the field) any local data or model path that resolves, symlinks
    followed, outside `roots`; a relative path may also resolve under `base_dir`, its base. The
    operator runs the job with its allowed data roots (`--data-roots`) after checking the spec's
    strings (datapaths.py); this is the same rule where the files are, so a symlink cannot lead
    out either. Run before `stage_data`: nothing has been read or copied when it refuses."""
    allowed = [r.resolve() for r in roots]
    for field_name, uri in _local_fields(spec):
        if scheme_of(uri) not in ("", "file"):
            continue
        relative = scheme_of(uri) == "" and not Path(uri).is_absolute()
        plain = uri.removeprefix("file://")  # relative ones resolve as the loader's do
        try:
            real = (resolve(uri) if Path(plain).is_absolute() else base_dir / plain).resolve()
        except (OSError, RuntimeError, StorageError) as err:  # missing, or a symlink loop
            raise DataError(f"{field_name}: {uri} cannot be resolved: {err}") from err
        ok = [*allowed, base_dir.resolve()] if relative else allowed
        if not any(real.is_relative_to(a) for a in ok):
            raise DataError(f"{field_name}: {uri} resolves to {real}, outside the data roots "
                            f"this job may read ({', '.join(map(str, ok)) or 'none'})")
