"""The fair baseline for the router's overhead (issue 14): ONE model tier behind the same HTTP
proxy, answering `/v1/embed` and `/v1/rerank` itself, through the same FastAPI surface (schemas,
`Limits` middleware) and the same batched tier code, but with no router hop.

    build_single({"spec": ..., "artifact": "<dir with model/>"}) -> Application

`benchmarks/serving.py --only overhead` sends the same requests to this app and to the routed
app (`X-Tier: pruned`): routed - single at p50 is the cost of the router and its extra hop.

(No `from __future__ import annotations`: FastAPI reads the endpoint annotations at runtime.)
"""

import math

import numpy as np
from fastapi import FastAPI
from ray import serve
from ray.serve import Application

from tierserve.pruning.spec import parse_spec

from .api import EmbedRequest, Limits, RerankRequest
from .tier import Tier

__all__ = ["build_single", "single_api"]

single_api = FastAPI(title="tierserve single tier (baseline)")
single_api.add_middleware(Limits)


@serve.deployment(name="single")
@serve.ingress(single_api)
class Single(Tier.func_or_class):
    """A pruned tier that is its own ingress."""

    @single_api.post("/v1/embed")
    async def embed(self, body: EmbedRequest) -> dict:
        reply = await self.infer({"op": "embed", "texts": body.texts})
        return {"tier": self.tier, "embeddings": np.asarray(reply["outputs"]).tolist(),
                "input_tokens": reply["input_tokens"], "truncated": bool(reply["truncated"])}

    @single_api.post("/v1/rerank")
    async def rerank(self, body: RerankRequest) -> dict:
        reply = await self.infer({"op": "rerank", "texts": [body.query, *body.documents]})
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
