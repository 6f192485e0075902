"""`/v1/generate` for decoder-LM tiers: the request/response models, what a tier does for
op="generate" (whole answer, or streamed text pieces), the cascade rule and token-counted cost.

Not mounted yet: the router and the Tier deployment (router.py, tier.py) belong to the serving
part. How they would use this module:

- Tier, in `infer` / `_forward`: for `{"op": "generate", ...}` requests call
  `generate_reply(self.tm, req, self.tier)`; for streaming, a Serve generator method yields from
  `stream_pieces(self.tm, req)` (called through a handle with `.options(stream=True)`).
- Router: `@api.post("/v1/generate")` takes a `GenerateRequest`; `choose_tier` decides as for the
  other endpoints (split and rules apply unchanged); with the cascade policy it asks pruned
  first and calls `should_escalate(reply, threshold)` with the threshold from the job's
  report (`calibration.threshold`, confidence `mean_logprob`, see pruning/lm.py); an escalated
  request is answered by full. `stream: true` returns a `StreamingResponse` of the pruned or
  full tier's pieces (a streamed request cannot be escalated after its first piece, so the
  cascade applies to non-streamed requests only). Cost: `token_compute_s(reply)` gives the
  replica seconds to price with `cost.request_cost`, and `reply["tokens"]` feeds a tokens counter.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from pydantic import BaseModel, Field

__all__ = ["GenerateRequest", "GenerateResponse", "generate_reply", "should_escalate",
           "stream_pieces", "token_compute_s"]


class GenerateRequest(BaseModel):
    prompt: str = Field(min_length=1, description="User message (the chat template is applied)")
    max_new_tokens: int = Field(32, ge=1, le=512)
    stream: bool = Field(False, description="Stream text pieces as they are generated")


class GenerateResponse(BaseModel):
    text: str
    tier: str
    reason: str
    tokens: int = Field(description="Generated tokens (what cost metrics count)")
    prompt_tokens: int
    mean_logprob: float = Field(description="Mean token log-probability of the answer")


def generate_reply(tm, req: dict, tier: str) -> dict:
    """One greedy answer with its mean token log-probability and the replica time it took."""
    from tierserve.pruning.lm import _prompt_ids, generate_scored

    t0 = time.perf_counter()
    texts, scores = generate_scored(tm, [req["prompt"]], max_new_tokens=req["max_new_tokens"],
                                    batch_size=1)
    seconds = time.perf_counter() - t0
    prompt_tokens = int(_prompt_ids(tm, [req["prompt"]], True)["input_ids"].shape[1])
    tokens = len(tm.processor(texts[0], add_special_tokens=False)["input_ids"])
    return {"text": texts[0], "tier": tier, "tokens": max(tokens, 1),
            "prompt_tokens": prompt_tokens, "mean_logprob": float(scores[0]),
            "compute_s": seconds}


def stream_pieces(tm, req: dict) -> Iterator[str]:
    """Greedy generation streamed as decoded text pieces (transformers' TextIteratorStreamer)."""
    from transformers import TextIteratorStreamer

    from tierserve.pruning.lm import _prompt_ids

    enc = _prompt_ids(tm, [req["prompt"]], True)
    streamer = TextIteratorStreamer(tm.processor, skip_prompt=True, skip_special_tokens=True)
    kwargs = {**enc, "max_new_tokens": req["max_new_tokens"], "do_sample": False,
              "pad_token_id": tm.processor.pad_token_id, "streamer": streamer}
    worker = threading.Thread(target=tm.model.generate, kwargs=kwargs, daemon=True)
    worker.start()
    try:
        yield from (piece for piece in streamer if piece)
    finally:
        worker.join()


def should_escalate(reply: dict, threshold: float | None) -> bool:
    """Cascade: escalate when pruned's mean token log-probability is below the threshold."""
    from .policy import escalate

    return threshold is not None and escalate(float(reply["mean_logprob"]), float(threshold))


def token_compute_s(reply: dict) -> float:
    """Replica seconds a reply used (priced per replica-hour by `cost.request_cost`)."""
    return float(reply.get("compute_s", 0.0))
