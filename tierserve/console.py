"""What a person at the terminal sees: one progress bar per job phase, Ray kept out of the way,
and the machine's load written down next to every timing.

- `JobBars`: the job's progress callback (`run_job(progress=...)`, stage text + overall fraction)
  drawn as rich bars, one per phase (loading, scoring, pruning, distillation, evaluation,
  saving); distillation's bar follows its steps. Off (a plain line per phase) when stderr is not
  a terminal.
- `ray_logs_to_file`: Ray's and Serve's Python loggers in this process go to a file (with
  `ray.init(log_to_driver=False)` the workers' output stays in Ray's own session logs), so the
  handle's "Failed to get queue length" / "Failed to route request" warnings never reach the
  terminal.
- `Load`: load average and cores, before and after, for the report's honesty line.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["JobBars", "Load", "phase_of", "ray_logs_to_file"]

_PHASES = {"load": "loading model and data", "latency": "measuring latency",
           "score": "scoring", "prune": "pruning", "distill": "distillation",
           "evaluate": "evaluation", "save": "saving"}
_STEPS = re.compile(r"^distill (\d+)/(\d+)")
RAY_LOGGERS = ("ray", "ray.serve", "ray.data", "ray.train", "ray.tune", "filelock")


def phase_of(stage: str) -> str | None:
    """The phase a job stage text belongs to ("score round 1/1" -> "scoring"); None for done."""
    if stage == "prune":  # the job's "pruning starts" mark: the engine scores first
        return _PHASES["score"]
    word = stage.split(" ", 1)[0].lower()
    return _PHASES.get(word)


class JobBars:
    """`progress(stage, fraction)` for `run_job`, drawn as one rich bar per phase."""

    def __init__(self, stream=None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            SpinnerColumn,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        console = Console(file=stream or sys.stderr)
        self.live = console.is_terminal
        self.bars = Progress(SpinnerColumn(finished_text="[green]✓"),
                             TextColumn("{task.description:<24}"), BarColumn(),
                             TaskProgressColumn(), TimeElapsedColumn(), console=console,
                             disable=not self.live)
        self.console = console
        self.tasks: dict[str, int] = {}
        self.current: str | None = None

    def __enter__(self) -> JobBars:
        self.bars.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._close_current()
        self.bars.__exit__(*exc)

    def _close_current(self) -> None:
        if self.current is not None:
            self.bars.update(self.tasks[self.current], completed=1.0)

    def __call__(self, stage: str, fraction: float) -> None:
        phase = phase_of(stage)
        if phase is None:  # "done", "done (reused)"
            self._close_current()
            self.current = None
            return
        if phase != self.current:
            self._close_current()
            self.current = phase
            if phase not in self.tasks:
                self.tasks[phase] = self.bars.add_task(phase, total=1.0)
            if not self.live:
                print(f"      {phase} ...", file=self.console.file, flush=True)
        steps = _STEPS.match(stage)
        if steps:  # distillation knows how far it is
            done, total = int(steps[1]), max(int(steps[2]), 1)
            self.bars.update(self.tasks[phase], completed=done / total,
                             description=f"{phase} {done}/{total}")


def ray_logs_to_file(path: Path) -> Path:
    """Send this process's Ray/Serve log records to `path` only (not the terminal)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    target = str(path.resolve())
    handler = logging.FileHandler(target)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in RAY_LOGGERS:  # again after ray.init: Ray installs its own terminal handler
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            if not isinstance(old, logging.FileHandler):
                logger.removeHandler(old)
        if not any(getattr(h, "baseFilename", None) == target for h in logger.handlers):
            logger.addHandler(handler)
        logger.propagate = False
    return path


@dataclass(frozen=True)
class Load:
    """1-minute load average and the cores it is measured against."""

    load1: float
    cores: int

    @classmethod
    def now(cls) -> Load:
        try:
            load1 = os.getloadavg()[0]
        except OSError:  # not on this platform
            load1 = float("nan")
        return cls(load1, os.cpu_count() or 1)

    @property
    def busy(self) -> bool:
        """More runnable work than half the cores: timings are noisy."""
        return self.load1 > 0.5 * self.cores

    def text(self) -> str:
        return f"load {self.load1:.1f} on {self.cores} cores"
