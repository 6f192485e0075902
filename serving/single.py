"""The fair baseline for the router's overhead: ONE model tier behind the same HTTP
proxy, answering `/v1/embed` and `/v1/rerank` itself, through the same FastAPI surface (schemas,
`Limits` middleware) and the same batched tier code, but with no router hop.

    build_single({"spec": ..., "artifact": "<dir with model/>"}) -> Application

`benchmarks/serving.py --only overhead` sends the same requests to this app and to the routed
app (`X-Tier: pruned`): routed - single at p50 is the cost of the router and its extra hop.

(No `from __future__ import annotations`: FastAPI reads the endpoint annotations at runtime.)
"""

import math
import time

import numpy as np
from fastapi import FastAPI, Request, Response
from ray import serve
from ray.serve import Application

from tierserve.pruning.spec import parse_spec

from .api import EmbedRequest, Limits, RerankRequest
from .stages import STAGES_HEADER, add_stages, stage_header
from .tier import Tier

__all__ = ["build_single", "single_api"]

single_api = FastAPI(title="tierserve single tier (baseline)")
single_api.add_middleware(Limits)


@serve.deployment(name="single")
@serve.ingress(single_api)
class Single(Tier.func_or_class):
    """A pruned tier that is its own ingress."""

    async def _timed(self, req: dict, request: Request, response: Response) -> dict:
        """The tier's reply, with the same stage headers as the router's (`pruned_replica`, and
        this endpoint's own time around it), so the benchmark can compare stage by stage."""
        t0 = time.perf_counter()
        reply = await self.infer(req)
        waited, stages = time.perf_counter() - t0, {}
        add_stages(stages, "pruned", waited, reply)
        response.headers[STAGES_HEADER] = stage_header(stages)
        request.state.router_ms = 1000 * (time.perf_counter() - t0 - waited)  # Limits sends it
        return reply

    @single_api.post("/v1/embed")
    async def embed(self, body: EmbedRequest, request: Request, response: Response) -> dict:
        reply = await self._timed({"op": "embed", "texts": body.texts}, request, response)
        return {"tier": self.tier, "embeddings": np.asarray(reply["outputs"]).tolist(),
                "input_tokens": reply["input_tokens"], "truncated": bool(reply["truncated"])}

    @single_api.post("/v1/rerank")
    async def rerank(self, body: RerankRequest, request: Request, response: Response) -> dict:
        reply = await self._timed({"op": "rerank", "texts": [body.query, *body.documents]},
                                  request, response)
        scores = np.asarray(reply["outputs"])
        return {"tier": self.tier, "scores": scores.tolist(),
                "ranking": [int(i) for i in np.argsort(-scores, kind="stable")]}


def build_single(args: dict) -> Application:
    spec = parse_spec(args["spec"])
    t = spec.serving.pruned
    return Single.options(ray_actor_options={"num_cpus": t.cpus}).bind(
        "pruned", args["artifact"].rstrip("/") + "/model", spec.model.task.value,
        max_length=spec.model.max_length, max_batch_size=t.max_batch_size,
        threads=max(1, math.floor(t.cpus)))
