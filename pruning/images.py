"""Image fields of classification data: a path (relative to the data file), raw PNG/JPEG bytes,
a Hugging Face datasets-style {"bytes": ..., "path": ...} struct, or a base64 string.

Images are decoded with Pillow and converted to RGB or kept grayscale as the model's processor
expects; a field that is none of these gives one `DataError` naming the file, field and record.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .datapath import DataError, local_path

__all__ = ["decode_images"]


def _raw(value: Any, base: Path | None) -> bytes | Path:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, Mapping):  # datasets' Image feature as written to Parquet
        if value.get("bytes"):
            return bytes(value["bytes"])
        if value.get("path"):
            return _raw(value["path"], base)
        raise ValueError("an image struct needs 'bytes' or 'path'")
    if isinstance(value, str):
        candidate = Path(value) if Path(value).is_absolute() or base is None else base / value
        if candidate.is_file():
            return candidate
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"'{value[:60]}' is neither an existing file nor base64") from None
    raise ValueError(f"type {type(value).__name__} is not an image (path, bytes or base64)")


def decode_images(uri: str | Path, records: Sequence[Mapping[str, Any]], field: str) -> list:
    """PIL images from `field` of every record."""
    from PIL import Image, UnidentifiedImageError

    local = local_path(uri)
    base = local.parent if local is not None else None
    images = []
    for i, rec in enumerate(records):
        if rec.get(field) is None:
            raise DataError(f"{uri}: field '{field}' missing in record {i}")
        try:
            raw = _raw(rec[field], base)
            img = Image.open(raw if isinstance(raw, Path) else io.BytesIO(raw))
            img.load()
        except (ValueError, OSError, UnidentifiedImageError) as exc:
            raise DataError(f"{uri}: field '{field}' in record {i}: {exc}") from None
        images.append(img if img.mode in ("RGB", "L") else img.convert("RGB"))
    return images
