"""The router ingress: a thin Serve deployment around the pure policy (`policy.py`).

Per request: decide (`choose_tier`) -> ask the tier -> cascade: escalate on low confidence ->
on a pruned error or timeout, ask full (`fallback`) -> answer, naming the tier and the reason ->
record metrics and cost in a local buffer that a background task pushes to the stats actor.
Shadow comparisons run as background tasks, never on the response path.

(No `from __future__ import annotations` here: FastAPI reads the endpoint annotations at
runtime, in a replica that receives this class by value.)
"""

import asyncio
import contextlib
import logging
import random
import time

import numpy as np
from fastapi import HTTPException, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from ray import serve

from tierserve.pruning.spec import parse_spec

from .api import (
    ClassifyRequest,
    ClassifyResponse,
    EmbedRequest,
    EmbedResponse,
    RerankRequest,
    RerankResponse,
    api,
)
from .cost import CostModel, request_cost
from .metrics import FLUSH_S, Events, stats_actor
from .policy import (
    FULL,
    PRUNED,
    PolicyConfig,
    RequestInfo,
    choose_tier,
    escalate,
    outputs_agree,
    request_confidence,
    would_serve_pruned,
)

__all__ = ["Router"]

log = logging.getLogger("tierserve.serving")
HEALTH_EVERY = 8  # flushes between tier health checks
SHADOW_TIMEOUT_S = 120.0  # a shadow call may queue behind real traffic; it only bounds the wait
_OPS = {"embedding": {"embed", "rerank"}, "rerank": {"rerank"},
        "sequence-classification": {"classify"}, "image-classification": set()}


async def _await(response):
    return await response


def _brief(err: BaseException) -> str:
    """One line naming an error (Ray errors span many lines; a timeout has no message)."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[-1][:200]}" if lines else type(err).__name__


def _tokenizer(spec):
    from transformers import AutoTokenizer

    from tierserve.pruning.storage import resolve

    return AutoTokenizer.from_pretrained(str(resolve(spec.model.uri)), local_files_only=True)


@serve.deployment(name="router", ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class Router:
    def __init__(self, full, pruned, config: dict) -> None:
        spec = parse_spec(config["spec"])
        s = spec.serving
        self.name, self.task = config["name"], spec.model.task.value
        self.tiers = {FULL: full, PRUNED: pruned}
        self.cfg = PolicyConfig.from_spec(s, config.get("calibration"))
        self.timeout_s, self.max_items = s.pruned_timeout_s, s.max_items
        self.costs = CostModel.from_spec(spec.cost, config.get("latency_ratio"))
        api.state.max_request_bytes = s.max_request_bytes
        self.tokenizer = _tokenizer(spec) if s.rules.max_pruned_tokens else None
        self.gate = s.target_agreement
        self.stats = stats_actor(self.name, s.target_agreement, s.shadow_window,
                                 s.shadow_hysteresis)
        if config.get("metrics_port"):
            self.stats.serve_http.remote(int(config["metrics_port"]))
        self.events, self.shared = Events(), {"shadow_fallback_active": False}
        self.up = {FULL: True, PRUNED: True}
        self.flusher: asyncio.Task | None = None
        self.background: set[asyncio.Task] = set()

    # -- endpoints ------------------------------------------------------------------------------
    @api.post("/v1/embed", response_model=EmbedResponse)
    async def embed(self, body: EmbedRequest, request: Request) -> dict:
        self._check("embed", len(body.texts), "texts")
        reply, tier, reason, conf = await self._route("embed", body.texts, request)
        return {**self._routed(tier, reason, conf), "embeddings": reply["outputs"]}

    @api.post("/v1/rerank", response_model=RerankResponse)
    async def rerank(self, body: RerankRequest, request: Request) -> dict:
        self._check("rerank", len(body.documents), "documents")
        reply, tier, reason, conf = await self._route("rerank", [body.query, *body.documents],
                                                      request)
        scores = reply["outputs"]
        ranking = [int(i) for i in np.argsort(-np.asarray(scores), kind="stable")]
        return {**self._routed(tier, reason, conf), "scores": scores,
                "ranking": ranking[:body.top_n] if body.top_n else ranking}

    @api.post("/v1/classify", response_model=ClassifyResponse)
    async def classify(self, body: ClassifyRequest, request: Request) -> dict:
        self._check("classify", len(body.texts), "texts")
        reply, tier, reason, conf = await self._route("classify", body.texts, request)
        logits = np.asarray(reply["outputs"], dtype=np.float64)  # (n, C)
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        names = reply.get("labels") or [str(i) for i in range(logits.shape[1])]
        return {**self._routed(tier, reason, conf), "probabilities": probs.tolist(),
                "labels": [names[int(i)] for i in logits.argmax(1)]}

    @api.get("/healthz")
    async def healthz(self) -> dict:
        self._start()
        return {"status": "ok" if any(self.up.values()) else "down", "model": self.name,
                "policy": self.cfg.policy, "tiers": self.up, **self.shared}

    @api.get("/metrics")
    async def metrics(self) -> Response:
        self._start()
        return Response(await self.stats.render.remote(), media_type=CONTENT_TYPE_LATEST)

    # -- routing --------------------------------------------------------------------------------
    def _check(self, op: str, n: int, what: str) -> None:
        if op not in _OPS.get(self.task, set()):
            raise HTTPException(400, f"/v1/{op} is not served for task {self.task}; this model "
                                f"serves {sorted('/v1/' + o for o in _OPS.get(self.task, ()))}")
        if n > self.max_items:
            raise HTTPException(422, f"{n} {what} in one request; the limit is {self.max_items} "
                                f"(spec.serving.maxItems)")

    def _routed(self, tier: str, reason: str, conf: float | None) -> dict:
        return {"model": self.name, "tier": tier, "reason": reason, "confidence": conf}

    def _info(self, op: str, texts: list[str], request: Request) -> RequestInfo:
        h = request.headers
        tokens = None
        if self.tokenizer is not None:
            tokens = max(len(ids) for ids in self.tokenizer(texts)["input_ids"])
        return RequestInfo(op, random.random(), random.random(), h.get("x-tier"),
                           h.get("x-tenant"), h.get("x-priority"), tokens)

    async def _ask(self, tier: str, req: dict, timeout: float | None = None) -> dict:
        call = self.tiers[tier].infer.remote(req)
        return await (asyncio.wait_for(_await(call), timeout) if timeout else call)

    async def _timed_ask(self, tier: str, req: dict, waited: list[float],
                         timeout: float | None = None) -> dict:
        t0 = time.perf_counter()
        try:
            return await self._ask(tier, req, timeout)
        finally:
            waited.append(time.perf_counter() - t0)

    async def _route(self, op: str, texts: list[str], request: Request):
        self._start()
        t0 = time.perf_counter()
        info = self._info(op, texts, request)
        d = choose_tier(info, self.cfg, self.shared["shadow_fallback_active"])
        req = {"op": op, "texts": texts}
        compute: dict[str, float] = {}
        waited: list[float] = []  # seconds spent awaiting tiers, to report the router's own time
        tier, reason, conf = d.tier, d.reason, None
        if tier == PRUNED:
            try:
                reply = await self._timed_ask(PRUNED, req, waited, self.timeout_s)
                compute[PRUNED] = reply["compute_s"]
            except Exception as err:  # noqa: BLE001 - any pruned failure is served by full
                log.warning("pruned tier failed (%s); serving from full", _brief(err))
                self.events.fallbacks += 1
                tier, reason, reply = FULL, "fallback", None
            if reply is not None and d.cascade:
                conf = request_confidence(self.cfg.confidence, reply["outputs"])
                if escalate(conf, self.cfg.threshold):
                    self.events.escalations += 1
                    tier, reason, reply = FULL, "cascade_escalated", None
        if tier == FULL:
            reply = await self._timed_ask(FULL, req, waited)
            compute[FULL] = compute.get(FULL, 0.0) + reply["compute_s"]
        elapsed = time.perf_counter() - t0
        self.events.request(tier, reason, elapsed)
        request.state.router_ms = 1000 * (elapsed - sum(waited))
        cost = request_cost(self.costs, compute)
        self.events.spend(cost.by_tier, cost.counterfactual)
        if d.shadow:
            self._shadow(info, op, req, tier, reason, reply)
        return reply, tier, reason, conf

    # -- shadow ---------------------------------------------------------------------------------
    def _shadow(self, info: RequestInfo, op: str, req: dict, tier: str, reason: str,
                reply: dict) -> None:
        if tier == FULL and reason != "shadow_fallback":
            self.events.shadow.append(True)  # full served it: the served answer agrees
            return
        task = asyncio.get_running_loop().create_task(self._compare(info, op, req, tier, reply))
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _compare(self, info: RequestInfo, op: str, req: dict, tier: str,
                       reply: dict) -> None:
        other = FULL if tier == PRUNED else PRUNED
        try:  # off the response path: no tight timeout, only a bound
            theirs = await self._ask(other, req, SHADOW_TIMEOUT_S)
        except Exception as err:  # noqa: BLE001 - a failed shadow call is only logged
            log.warning("shadow call to %s failed: %s", other, _brief(err))
            return
        self.events.spend({other: self.costs.tier_cost(other, theirs["compute_s"])}, 0.0)
        pruned, full = (reply, theirs) if tier == PRUNED else (theirs, reply)
        if tier == FULL:  # tripped: would the policy have let pruned answer?
            conf = request_confidence(self.cfg.confidence, pruned["outputs"])
            if not would_serve_pruned(info, self.cfg, conf):
                self.events.shadow.append(True)
                return
        self.events.shadow.extend(outputs_agree(op, pruned["outputs"], full["outputs"]))

    # -- background: metrics push, shared shadow state, tier health -----------------------------
    def _start(self) -> None:
        if self.flusher is None:
            self.flusher = asyncio.get_running_loop().create_task(self._flush_forever())

    async def _flush_forever(self) -> None:
        n = 0
        while True:
            if n % HEALTH_EVERY == 0:
                await self._health()
            n += 1
            ev, self.events = self.events, Events()
            try:
                self._share(await self.stats.push.remote(ev))
            except Exception as err:  # noqa: BLE001 - metrics must never break serving
                log.warning("stats push failed: %s", _brief(err))
            await asyncio.sleep(FLUSH_S)

    def _share(self, state: dict) -> None:
        """Adopt the stats actor's shared state; log when the shadow switch flips."""
        was, now = self.shared["shadow_fallback_active"], state["shadow_fallback_active"]
        if was != now:
            log.warning("%s: shadow fallback %s (live agreement %s, gate %s)", self.name,
                        "ACTIVE: all traffic to full" if now else "recovered",
                        state.get("shadow_agreement"), self.gate)
        self.shared = state

    async def _health(self) -> None:
        for tier, handle in self.tiers.items():
            try:
                await asyncio.wait_for(_await(handle.ping.remote()), 2.0)
                self.up[tier] = True
            except Exception:  # noqa: BLE001 - down is down, whatever the error
                self.up[tier] = False
        self.events.tier_up = dict(self.up)

    def __del__(self) -> None:
        flusher = getattr(self, "flusher", None)
        if flusher is not None:
            with contextlib.suppress(Exception):
                flusher.cancel()
