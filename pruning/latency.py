"""Latency measured on the hardware at hand: the same code times the latency budget, the latency
gate and the benchmarks, so "faster" always means the same thing."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from .tasks import Task, TaskModel

__all__ = ["Latency", "job_device", "measure", "model_device", "synthetic_batch"]


def job_device() -> torch.device:
    """The job's device, chosen once: CUDA when a GPU is visible, else the CPU.
    `TIERSERVE_DEVICE` (e.g. `cpu`, `cuda:1`) overrides."""
    import os

    name = os.environ.get("TIERSERVE_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def model_device(tm: TaskModel) -> str:
    """Where `tm`'s weights live, e.g. "cpu" or "cuda:0" (with the card's name on CUDA)."""
    dev = next(tm.model.parameters()).device
    if dev.type == "cuda":
        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    return str(dev)


@dataclass(frozen=True)
class Latency:
    p50_s: float
    p95_s: float
    repeats: int
    batch: int
    seq_len: int
    device: str = "cpu"

    def to_dict(self) -> dict:
        return {"p50_s": self.p50_s, "p95_s": self.p95_s, "repeats": self.repeats,
                "batch": self.batch, "seq_len": self.seq_len, "device": self.device}


def synthetic_batch(tm: TaskModel, batch: int, seq_len: int) -> dict[str, torch.Tensor]:
    """A (batch, seq_len) input of real token ids (every position used), or images for ViT."""
    if tm.task is Task.image_classification:
        size = tm.model.config.image_size
        return {"pixel_values": torch.randn(batch, tm.model.config.num_channels, size, size,
                                            generator=torch.Generator().manual_seed(0))}
    g = torch.Generator().manual_seed(0)
    vocab = int(tm.model.config.vocab_size)
    ids = torch.randint(1000, vocab, (batch, seq_len), generator=g)  # (B, T) skip special ids
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "token_type_ids": torch.zeros_like(ids)}


@torch.inference_mode()
def measure(tm: TaskModel, batch: int = 32, seq_len: int = 128, *, repeats: int = 10,
            warmup: int = 2, inputs: dict[str, torch.Tensor] | None = None) -> Latency:
    """Median and p95 wall time of one forward of `tm` at (batch, seq_len)."""
    x = inputs if inputs is not None else synthetic_batch(tm, batch, seq_len)
    if "token_type_ids" in x and "token_type_ids" not in _accepted(tm):
        x = {k: v for k, v in x.items() if k != "token_type_ids"}
    dev = next(tm.model.parameters()).device
    x = {k: v.to(dev) for k, v in x.items()}  # inputs on the device before the clock starts
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        tm.outputs(x)
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        tm.outputs(x)
        sync()  # CUDA runs asynchronously: wait for the forward to really finish
        times.append(time.perf_counter() - t0)
    times.sort()
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    return Latency(statistics.median(times), p95, repeats, batch, seq_len, model_device(tm))


def _accepted(tm: TaskModel) -> set[str]:
    import inspect

    return set(inspect.signature(tm.model.forward).parameters)
