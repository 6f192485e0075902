"""The lowest layer of data loading, shared by data.py and images.py: the one error type bad data
raises, and where a URI lives on the local disk (if it does)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

__all__ = ["DataError", "local_path", "name_field"]


class DataError(ValueError):
    """A dataset file is unreadable or does not have the shape the job needs."""


def local_path(uri: str | Path) -> Path | None:
    """Path for a plain path or a file:// URI; None for other schemes (read through fsspec)."""
    text = str(uri)
    parsed = urlparse(text)
    if parsed.scheme == "file":
        return Path(unquote(parsed.netloc + parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter = a Windows drive, not a scheme
        return None
    return Path(text)


def name_field(message: str, field: str, path: str | Path) -> str:
    """A loader's message about `path` (`<path>: what`) headed by the spec field that named the
    file instead: `spec.data.calibration.qrels (<path>): what`. A message about another file is
    kept whole after the field."""
    head = f"{path}: "
    rest = message[len(head):] if message.startswith(head) else message
    return f"{field} ({path}): {rest}"
