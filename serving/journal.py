"""The router's write-ahead record of metric events (a killed router loses no answered
request from the metrics, and the reply does not wait on an actor round trip for it).

Before a reply leaves, the router appends the events buffered so far to its own journal file with
one `write(2)` (`Journal.append`, tens of microseconds). The write lands in the kernel's page
cache, so it outlives the router *process* (what Serve restarts after a crash or `ray.kill`); a
lost node takes its page cache and its Serve replicas with it, and is not covered. A background
pusher ships journaled batches to the stats actor in order, each tagged `(source, upto)`: the
journal's id and the last sequence number in the batch. The actor applies a batch once (it keeps
the highest `upto` per source), so a push that timed out after the actor applied it can be resent.

A journal is owned through an exclusive `flock` on its `.lock` file, which the kernel drops when
the owner dies. Every router replica, when it starts and then every `RECOVER_EVERY_S`, takes the
locks nobody holds (`orphans`), asks the actor how far that source got, and pushes the rest
(`replay`) before deleting the files. Journals live per Ray node and per model
(`<root>/<node id>/<model>`): a new Ray cluster has new node ids and never replays an old
cluster's files, and a replacement replica on the same node finds its predecessor's journal.

Files are plain JSON lines (`Events.to_json`), never pickles. Segments roll over at
`SEGMENT_BYTES` and are deleted once the actor acknowledged all of their entries.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .metrics import Events

__all__ = ["Journal", "Orphan", "journal_dir", "orphans"]

log = logging.getLogger("tierserve.serving")
SEGMENT_BYTES = 4 << 20
RECOVER_EVERY_S = 30.0
ENV_ROOT = "TIERSERVE_JOURNAL_DIR"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "_"


def journal_dir(model: str, node_id: str, root: str | os.PathLike | None = None) -> Path:
    """`<root>/<node id>/<model>`; root: the argument, else $TIERSERVE_JOURNAL_DIR, else
    `<tmp>/tierserve-journal`."""
    base = Path(root or os.environ.get(ENV_ROOT) or Path(tempfile.gettempdir()) / "tierserve-journal")
    return base / _safe(node_id or "local") / _safe(model)


class Journal:
    """One router replica's journal: `append` before a reply leaves, `acked` once the stats actor
    applied everything up to a sequence number."""

    def __init__(self, directory: Path, source: str | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self.source = source or f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._lock = os.open(self.dir / f"{self.source}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.segments: list[tuple[Path, int, int]] = []  # (path, fd, last seq written to it)
        self._roll()

    def _roll(self) -> None:
        """A new segment, named by the last sequence number before it (sorts in order)."""
        after = self.segments[-1][2] if self.segments else 0
        path = self.dir / f"{self.source}.{after:012d}.jsonl"
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
        self.segments.append((path, fd, 0))
        self._size = 0

    def append(self, seq: int, ev: Events) -> None:
        """Write one batch of events as one line (one write: a crash leaves it whole or torn,
        and a torn last line is skipped on replay, its reply never left)."""
        line = json.dumps({"seq": seq, "ev": ev.to_json()}, separators=(",", ":")).encode() + b"\n"
        path, fd, _ = self.segments[-1]
        os.write(fd, line)
        self.segments[-1] = (path, fd, seq)
        self._size += len(line)
        if self._size >= SEGMENT_BYTES:
            self._roll()

    def acked(self, upto: int) -> None:
        """Drop segments whose entries are all in the stats actor; empty the live one when it is."""
        while len(self.segments) > 1 and self.segments[0][2] <= upto:
            path, fd, _ = self.segments.pop(0)
            os.close(fd)
            path.unlink(missing_ok=True)
        path, fd, last = self.segments[-1]
        if last and last <= upto and self._size:
            os.ftruncate(fd, 0)
            self._size = 0

    def close(self) -> None:
        for path, fd, _ in self.segments:
            os.close(fd)
            path.unlink(missing_ok=True)
        self.segments = []
        os.close(self._lock)
        (self.dir / f"{self.source}.lock").unlink(missing_ok=True)


@dataclass
class Orphan:
    """A dead replica's journal, locked by us until `done`."""

    source: str
    lock: Path
    lock_fd: int
    paths: list[Path] = field(default_factory=list)

    def entries(self, after: int) -> tuple[Events, int]:
        """Events of every whole entry with seq > `after`, merged, and the last seq."""
        merged, last = Events(), after
        for path in sorted(self.paths):
            for raw in path.read_bytes().splitlines():
                try:
                    entry = json.loads(raw)
                    seq, ev = int(entry["seq"]), Events.from_json(entry["ev"])
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line: the router died writing it, its reply never left
                if seq > after:
                    merged.merge(ev)
                    last = max(last, seq)
        return merged, last

    def done(self) -> None:
        for path in self.paths:
            path.unlink(missing_ok=True)
        self.lock.unlink(missing_ok=True)
        os.close(self.lock_fd)


def orphans(directory: Path, own: str | None = None) -> list[Orphan]:
    """Journals in `directory` whose owner is gone (their lock can be taken), locked for us."""
    found = []
    if not directory.is_dir():
        return found
    for lock in directory.glob("*.lock"):
        source = lock.name[:-len(".lock")]
        if source == own:
            continue
        try:
            fd = os.open(lock, os.O_RDWR)
        except FileNotFoundError:
            continue  # another replica replayed it just now
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # alive
            continue
        if not lock.exists():  # replayed and removed between our open and our lock
            os.close(fd)
            continue
        found.append(Orphan(source, lock, fd, sorted(directory.glob(f"{source}.*.jsonl"))))
    return found
