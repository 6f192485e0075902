"""Distillation checkpoints on the artifact store: a restarted job resumes where it stopped.

One file, `<dir>/latest.pt`, replaced atomically (write to a temporary name, then rename), holds
the student's weights, the optimizer state, the step, the curve and the best weights so far. A
`fingerprint` (the structure and the distillation settings) is stored with it: a checkpoint of a
different run is ignored, never loaded into the wrong model. torch.load runs with
weights_only=True: nothing but tensors and plain containers is unpickled.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["CheckpointStore"]


class CheckpointStore:
    def __init__(self, directory: str | Path, fingerprint: str) -> None:
        self.dir, self.fingerprint = Path(directory), fingerprint
        self.path = self.dir / "latest.pt"

    def save(self, snapshot: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"fingerprint": self.fingerprint, **snapshot}, tmp)
        tmp.replace(self.path)

    def latest(self) -> dict | None:
        """The last snapshot of this run, or None (no file, or another run's)."""
        if not self.path.is_file():
            return None
        snap = torch.load(self.path, map_location="cpu", weights_only=True)
        return snap if snap.get("fingerprint") == self.fingerprint else None

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
