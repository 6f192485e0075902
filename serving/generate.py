"""`/v1/generate` for decoder-LM tiers: request/response models, what a tier does for
op="generate" (whole answers, batched; or one answer streamed), and Server-Sent Events framing.

A tier's reply to a generate request carries `text`, `output_tokens` (answer tokens, its EOS
included), `input_tokens` (the prompt, chat template included), `mean_logprob` (the cascade's confidence, computed as
the job's calibration computes it: `pruning.lm.generate_batch`) and `compute_s` (replica seconds
the request used: its token share of a batched `generate` call, or the whole call when alone).

Streaming (`stream: true`) answers `text/event-stream`: one `data: {"text": piece}` event per
decoded piece, then a last `data: {"done": true, ...}` event with the routing decision, token
counts and mean log-probability. The tier and reason are also HTTP headers
(`x-tierserve-tier`, `x-tierserve-reason`), sent before the first piece.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

from pydantic import BaseModel, Field

from .api import Routed

__all__ = ["GenerateRequest", "GenerateResponse", "answer_fields", "generate_replies", "sse",
           "stream_reply"]


class GenerateRequest(BaseModel):
    prompt: str = Field(min_length=1, description="User message (the chat template is applied)")
    max_new_tokens: int = Field(32, ge=1, le=512, description="Most tokens to generate")
    stream: bool = Field(False, description="Stream text pieces as Server-Sent Events")


class GenerateResponse(Routed):  # confidence: under cascade, pruned's mean token log-prob
    text: str
    tokens: int = Field(description="Generated tokens (counted by the token cost metrics)")
    prompt_tokens: int
    mean_logprob: float = Field(description="Mean token log-probability of the answer")


def _reply(gen, tier: str, compute_s: float) -> dict:
    return {"tier": tier, "text": gen.text, "outputs": gen.text,
            "input_tokens": gen.prompt_tokens, "output_tokens": gen.tokens,
            "mean_logprob": gen.mean_logprob, "compute_s": compute_s}


def answer_fields(reply: dict) -> dict:
    """The answer part of a `GenerateResponse` (and of a stream's last event) from a reply."""
    return {"text": reply["text"], "tokens": reply["output_tokens"],
            "prompt_tokens": reply["input_tokens"], "mean_logprob": reply["mean_logprob"]}


def _how(req: dict) -> tuple[int, bool, float]:
    """(max_new_tokens, chat template?, temperature) of a request: its generate call's shape.
    Optional keys (the OpenAI endpoints): `chat: false` for a raw completion prompt,
    `messages` for a whole conversation, `temperature` > 0 to sample."""
    return (int(req["max_new_tokens"]), bool(req.get("chat", True)),
            float(req.get("temperature") or 0.0))


def _prompt(req: dict):
    return req.get("messages") or req["texts"][0]


def generate_replies(tm, reqs: list[dict], tier: str) -> list[dict]:
    """Answer a batch of generate requests: one left-padded `generate` call per distinct
    (`max_new_tokens`, chat, temperature); each reply's `compute_s` is its token share of that
    call."""
    from tierserve.pruning.lm import generate_batch

    replies: list[dict | None] = [None] * len(reqs)
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(reqs):
        groups.setdefault(_how(r), []).append(i)
    for (max_new, chat, temperature), idx in groups.items():
        t0 = time.perf_counter()
        gens = generate_batch(tm, [_prompt(reqs[i]) for i in idx], max_new_tokens=max_new,
                              batch_size=len(idx), chat=chat, temperature=temperature)
        seconds = time.perf_counter() - t0
        total = sum(g.prompt_tokens + g.tokens for g in gens)
        for i, g in zip(idx, gens, strict=True):
            replies[i] = _reply(g, tier, seconds * (g.prompt_tokens + g.tokens) / max(total, 1))
    return replies  # type: ignore[return-value]


def stream_reply(tm, req: dict, tier: str) -> Iterator[dict]:
    """One generate request, streamed: {"text": piece} items, then the whole reply with
    `"done": True` (the same fields as `generate_replies` gives)."""
    from tierserve.pruning.lm import Generation, generate_stream

    t0 = time.perf_counter()
    max_new, chat, temperature = _how(req)
    for item in generate_stream(tm, _prompt(req), max_new_tokens=max_new, chat=chat,
                                temperature=temperature):
        if isinstance(item, Generation):
            yield {**_reply(item, tier, time.perf_counter() - t0), "done": True}
        else:
            yield {"text": item}


def sse(payload: dict) -> bytes:
    """One Server-Sent Event carrying `payload` as JSON."""
    return f"data: {json.dumps(payload)}\n\n".encode()
