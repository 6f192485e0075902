"""A model tier as a Serve deployment: `full` loads the spec's model, `pruned` the job's artifact,
both through the pruning library's loaders, and both answer through one `@serve.batch` method.

A request is {"op": "embed"|"rerank"|"classify", "texts": [...]} (rerank: the query first, then
the documents; a cross-encoder gets (query, document) pairs). Requests of one batch share a
single forward pass; each reply carries `compute_s`, the request's token share of that pass, so
the router can price it, and `input_tokens`, the tokens it fed the model. Outputs: embed -> unit
embeddings (n, d); rerank -> scores (D,); classify -> logits (n, C) plus the label names.

Decoder LMs (task text-generation) take {"op": "generate", "texts": [prompt],
"max_new_tokens": n}: `infer` batches them into one greedy `generate` call per length, off the
event loop; `stream` answers one request piece by piece (a Serve streaming method, called through
a handle with `.options(stream=True)`). See generate.py for the reply fields.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import numpy as np
import torch
from ray import serve

from tierserve.pruning.calibration import rerank_scores

from .generate import generate_replies, stream_reply

__all__ = ["Tier", "load_tier_model"]


def load_tier_model(tier: str, model_uri: str, task: str, max_length: int):
    """full: `load_task_model` on the spec's model; pruned: `load_pruned` on the artifact."""
    from tierserve.pruning.artifact import load_pruned
    from tierserve.pruning.gguf import model_dir
    from tierserve.pruning.storage import resolve
    from tierserve.pruning.tasks import load_task_model

    if tier == "full":
        return load_task_model(model_dir(resolve(model_uri)), task, max_length=max_length)
    return load_pruned(model_uri, task, max_length=max_length)


def _pieces(req: dict, cross: bool) -> list:
    texts = req["texts"]
    if req["op"] == "rerank" and cross:
        return [(texts[0], d) for d in texts[1:]]
    return list(texts)


@serve.deployment
class Tier:
    def __init__(self, tier: str, model_uri: str, task: str, max_length: int = 128,
                 max_batch_size: int = 16, threads: int = 1) -> None:
        torch.set_num_threads(max(1, threads))
        self.tier = tier
        self.tm = load_tier_model(tier, model_uri, task, max_length)
        cfg = self.tm.model.config
        names = getattr(cfg, "id2label", None) or {}
        self.labels = [names[i] for i in sorted(names)] if names else []
        self.infer.set_max_batch_size(max_batch_size)
        self.broken = False  # set by `break_for` in tests of the router's fallback

    def ping(self) -> str:
        if self.broken:
            raise RuntimeError(f"{self.tier} tier is broken on purpose")
        return self.tier

    def break_tier(self, broken: bool = True) -> bool:
        """Make every call fail (a real error path, used to test fallback)."""
        self.broken = broken
        return broken

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def infer(self, reqs: list[dict]) -> list[dict]:
        if self.broken:
            raise RuntimeError(f"{self.tier} tier is broken on purpose")
        if reqs[0]["op"] == "generate":  # seconds of work: keep the replica's loop answering
            return await asyncio.to_thread(generate_replies, self.tm, reqs, self.tier)
        return self._forward(reqs)

    async def stream(self, req: dict) -> AsyncIterator[dict]:
        """One generate request as it is decoded: {"text": piece}..., then the reply, "done"."""
        if self.broken:
            raise RuntimeError(f"{self.tier} tier is broken on purpose")
        pieces = stream_reply(self.tm, req, self.tier)
        end = object()
        while (item := await asyncio.to_thread(next, pieces, end)) is not end:
            yield item

    @torch.inference_mode()
    def _forward(self, reqs: list[dict]) -> list[dict]:
        tm = self.tm
        pieces = [_pieces(r, tm.cross_encoder) for r in reqs]
        flat = [p for ps in pieces for p in ps]
        t0 = time.perf_counter()
        batch = tm.batch(flat)
        out = tm.outputs(batch).float().numpy()  # (N, d) embeddings or (N, C) logits
        seconds = time.perf_counter() - t0
        tokens = batch["attention_mask"].sum(1).numpy().astype(float)  # (N,)
        replies, i = [], 0
        for r, ps in zip(reqs, pieces, strict=True):
            rows, used = out[i:i + len(ps)], tokens[i:i + len(ps)].sum()
            i += len(ps)
            replies.append({"tier": self.tier, "compute_s": float(seconds * used / tokens.sum()),
                            "input_tokens": int(used),
                            **self._shape(r["op"], rows)})
        return replies

    def _shape(self, op: str, rows: np.ndarray) -> dict:
        if op == "embed":
            return {"outputs": rows.tolist()}
        if op == "rerank":
            scores = rows[:, 0] if self.tm.cross_encoder else rerank_scores(rows[0], rows[1:])
            return {"outputs": np.asarray(scores).tolist()}
        return {"outputs": rows.tolist(), "labels": self.labels}
