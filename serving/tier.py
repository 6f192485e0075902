"""A model tier as a Serve deployment: `full` loads the spec's model, `pruned` the job's artifact,
both through the pruning library's loaders, and both answer through one `@serve.batch` method.

A request is {"op": "embed"|"rerank"|"classify", "texts": [...]} (rerank: the query first, then
the documents; a cross-encoder gets (query, document) pairs). Requests of one batch share forward
passes; each reply carries `compute_s`, the request's token share of the passes, so the router
can price it, `input_tokens`, the tokens it fed the model, and `truncated`, how many of its texts
were cut at maxLength. Outputs (numpy, cheap to pickle between deployments): embed -> unit
embeddings (n, d); rerank -> scores (D,); classify -> logits (n, C) plus the label names.

Work can be abandoned: a batch runs as micro-batches of at most `max_batch_size` texts (off the
event loop when there is more than one), and a request whose call was cancelled (the router's
`DeploymentResponse.cancel()` after its timeout) has its remaining texts dropped between
micro-batches; the replica seconds it did use are charged to the tier's cost in the stats actor
(`tierserve_cancelled_total` counts such calls). `work()` reports texts run and abandoned.

A tier with `gpus > 0` places its model on CUDA and batches there (`pick_device`; decoder LMs
stay on CPU for now).

Decoder LMs (task text-generation) take {"op": "generate", "texts": [prompt],
"max_new_tokens": n}: `infer` batches them into one greedy `generate` call per length, off the
event loop; `stream` answers one request piece by piece (a Serve streaming method, called through
a handle with `.options(stream=True)`). See generate.py for the reply fields.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
import torch
from ray import serve

from tierserve.pruning.calibration import rerank_scores

from .generate import generate_replies, stream_reply
from .microbatch import Piece, plan_pieces, replies_from

__all__ = ["Tier", "load_tier_model", "pick_device"]

log = logging.getLogger("tierserve.serving")


def load_tier_model(tier: str, model_uri: str, task: str, max_length: int, *,
                    runtime: dict | None = None, threads: int = 1, gpus: float = 0.0):
    """full: `load_task_model` on the spec's model; pruned: `load_pruned` on the artifact.
    With `runtime` {"name": "onnxruntime" | "openvino", "artifact": URI}, the tier answers from
    the graph the job exported, checked and judged for it (pruning/served.py). `"optional":
    true` (an artifact given in place of the job's) serves on torch when it holds no graph."""
    from tierserve.pruning.artifact import ArtifactError, load_pruned, runtime_graph
    from tierserve.pruning.gguf import model_dir
    from tierserve.pruning.runtime import GRAPH_RUNTIMES, graph_model
    from tierserve.pruning.storage import resolve
    from tierserve.pruning.tasks import load_task_model

    graph, int8 = None, False
    if runtime and runtime.get("name") in GRAPH_RUNTIMES:
        try:
            graph, int8 = runtime_graph(runtime["artifact"], tier)
        except ArtifactError as err:
            if not runtime.get("optional"):
                raise
            log.warning("%s tier serves on torch: %s", tier, err)
    if tier == "full":
        tm = load_task_model(model_dir(resolve(model_uri)), task, max_length=max_length)
    else:  # on a graph runtime the INT8 graph replaces torch's quantization
        tm = load_pruned(model_uri, task, max_length=max_length, quantized=graph is None)
    if graph is None:
        return tm
    return graph_model(tm, graph, threads=threads, gpus=gpus, quantized=int8,
                       runtime=runtime["name"])


def pick_device(gpus: float, cuda_available: bool, task: str = "embedding") -> str:
    """Where a tier's model runs: CUDA when the spec gives the tier GPUs and one is visible.
    Decoder LMs stay on CPU: their generation helpers (pruning/lm.py) build inputs on CPU."""
    if gpus > 0 and not cuda_available:
        log.warning("tier asks for %s GPU(s) but CUDA is not visible here: running on CPU", gpus)
    if gpus > 0 and task == "text-generation":
        log.warning("text-generation tiers run on CPU (pruning/lm.py has no device placement)")
        return "cpu"
    return "cuda" if gpus > 0 and cuda_available else "cpu"


@dataclass
class Job:
    """One request inside the tier; `cancelled` is set when its caller gives up."""

    req: dict
    cancelled: bool = False


@serve.deployment
class Tier:
    def __init__(self, tier: str, model_uri: str, task: str, max_length: int = 128,
                 max_batch_size: int = 16, threads: int = 1, gpus: float = 0.0,
                 model: str | None = None, cost=None, offload: bool = False,
                 runtime: dict | None = None) -> None:
        torch.set_num_threads(max(1, threads))
        self.tier, self.model_name, self.cost = tier, model, cost
        self.tm = load_tier_model(tier, model_uri, task, max_length, runtime=runtime,
                                  threads=threads, gpus=gpus)
        if getattr(self.tm, "graph", ""):  # a graph runtime: the session's provider decides
            self.device = "cuda" if self.tm.provider.startswith(("CUDA", "OpenVINO GPU")) else "cpu"
        else:
            self.device = pick_device(gpus, torch.cuda.is_available(), task)
            self.tm.model.to(self.device)
        cfg = self.tm.model.config
        names = getattr(cfg, "id2label", None) or {}
        self.labels = [names[i] for i in sorted(names)] if names else []
        self.chunk = max_batch_size  # texts per forward pass
        self.offload = offload  # every forward pass off the event loop (inside the router)
        self._batch.set_max_batch_size(max_batch_size)
        self.broken = False  # set by `break_tier` in tests of the router's fallback
        self.counts = {"texts_run": 0, "texts_abandoned": 0, "calls_cancelled": 0}

    def ping(self) -> str:
        if self.broken:
            raise RuntimeError(f"{self.tier} tier is broken on purpose")
        return self.tier

    def break_tier(self, broken: bool = True) -> bool:
        """Make every call fail (a real error path, used to test fallback)."""
        self.broken = broken
        return broken

    def work(self) -> dict:
        """Texts run through the model and texts dropped because their call was cancelled."""
        return {**self.counts, "device": self.device,
                "runtime": getattr(self.tm, "runtime", "torch")}

    async def infer(self, req: dict) -> dict:
        job, t0 = Job(req), time.perf_counter()
        try:
            reply = await self._batch(job)
        except asyncio.CancelledError:
            job.cancelled = True  # the running batch drops its remaining texts
            self.counts["calls_cancelled"] += 1
            raise
        return {**reply, "replica_s": time.perf_counter() - t0}  # the router's stage breakdown

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _batch(self, jobs: list[Job]) -> list[dict]:
        if self.broken:
            raise RuntimeError(f"{self.tier} tier is broken on purpose")
        if jobs[0].req["op"] == "generate":  # seconds of work: keep the replica's loop answering
            return await asyncio.to_thread(generate_replies, self.tm, [j.req for j in jobs],
                                           self.tier)
        return await self._forward(jobs)

    async def stream(self, req: dict) -> AsyncIterator[dict]:
        """One generate request as it is decoded: {"text": piece}..., then the reply, "done"."""
        if self.broken:
            raise RuntimeError(f"{self.tier} tier is broken on purpose")
        pieces = stream_reply(self.tm, req, self.tier)
        end = object()
        while (item := await asyncio.to_thread(next, pieces, end)) is not end:
            yield item

    async def _forward(self, jobs: list[Job]) -> list[dict]:
        """Micro-batches of at most `chunk` texts; a cancelled job's remaining texts are dropped
        before each one. One micro-batch runs inline, more run off the loop (so a cancellation
        can arrive between them)."""
        pieces = plan_pieces([j.req for j in jobs], self.tm.cross_encoder)
        chunks = [pieces[i:i + self.chunk] for i in range(0, len(pieces), self.chunk)]
        for chunk in chunks:
            live = [p for p in chunk if not jobs[p.job].cancelled]
            self.counts["texts_abandoned"] += len(chunk) - len(live)
            if not live:
                continue
            if len(chunks) == 1 and not self.offload:
                self._run(live)
            else:
                await asyncio.to_thread(self._run, live)
        self._charge_cancelled(jobs, pieces)
        return [self._reply(j, r) for j, r in zip(jobs, replies_from(pieces, len(jobs)),
                                                  strict=True)]

    def _reply(self, job: Job, r: dict) -> dict:
        rows = r.pop("rows")
        if rows is None:  # cancelled before all its texts ran: nobody awaits this answer
            return {"tier": self.tier, **r, "outputs": None, "cancelled": True}
        return {"tier": self.tier, **r, **self._shape(job.req["op"], rows)}

    @torch.inference_mode()
    def _run(self, pieces: list[Piece]) -> None:
        """One forward pass over `pieces`, writing each piece's output row, tokens and seconds."""
        t0 = time.perf_counter()
        batch = self.tm.batch([p.text for p in pieces])
        out = self.tm.outputs(batch).float().cpu().numpy()  # (N, d) embeddings or (N, C) logits
        seconds = time.perf_counter() - t0
        tokens = batch["attention_mask"].sum(1).numpy()  # (N,)
        for p, row, n in zip(pieces, out, tokens, strict=True):
            p.row, p.tokens, p.seconds = row, int(n), seconds * float(n) / float(tokens.sum())
            p.truncated = int(n) >= self.tm.max_length and self._cut(p.text)
        self.counts["texts_run"] += len(pieces)

    def _cut(self, text) -> bool:
        """Was `text` cut at maxLength? (Asked only of texts that filled it: offsets tell.)"""
        if isinstance(text, tuple):  # a (query, document) pair that filled maxLength
            return True
        enc = self.tm.processor(text, truncation=True, max_length=self.tm.max_length,
                                return_offsets_mapping=True)
        end = max((e for _, e in enc.get("offset_mapping") or [(0, len(text))]), default=0)
        return end < len(text.rstrip())

    def _charge_cancelled(self, jobs: list[Job], pieces: list[Piece]) -> None:
        """The replica time cancelled jobs used still cost money: charge it in the stats actor."""
        spent: dict[int, tuple[float, int]] = {}
        for p in pieces:
            if jobs[p.job].cancelled and p.row is not None:
                s, n = spent.get(p.job, (0.0, 0))
                spent[p.job] = (s + p.seconds, n + p.tokens)
        if spent and self.model_name:
            from .metrics import charge_abandoned

            charge_abandoned(self.model_name, self.tier, self.cost,
                             sum(s for s, _ in spent.values()), sum(n for _, n in spent.values()))

    def _shape(self, op: str, rows: np.ndarray) -> dict:
        if op == "embed":
            return {"outputs": rows}
        if op == "rerank":
            scores = rows[:, 0] if self.tm.cross_encoder else rerank_scores(rows[0], rows[1:])
            return {"outputs": np.asarray(scores)}
        return {"outputs": rows, "labels": self.labels}
