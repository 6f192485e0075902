"""The router ingress: a thin Serve deployment around the pure policy (`policy.py`).

Per request: admit (size vs time budget, 413) -> decide (`choose_tier`) -> ask the tier, within
a timeout that scales with the request (cancelled when it expires) -> cascade: escalate on low
confidence -> on a pruned error, timeout or open circuit, ask full (`fallback`) -> answer, naming
the tier and the reason, once the metrics are in the stats actor. Admission, bounded full calls,
circuits and the metrics commit live in `guard.py` (a mixin). Shadow comparisons run as
background tasks (at most SHADOW_MAX_INFLIGHT at once), never on the response path.

`/v1/generate` (decoder LMs) routes the same way; its cascade confidence is the pruned answer's
mean token log-probability. A streamed request is decided before its first byte: under cascade
the pruned answer is generated whole and judged, then sent as one piece when confident, while an
escalated (or full-routed) request streams full's pieces as they are decoded; a split or rule
request streams its tier live, falling back to full when pruned fails before its first piece.

(No `from __future__ import annotations` here: FastAPI reads the endpoint annotations at
runtime, in a replica that receives this class by value.)
"""

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import replace

import numpy as np
from fastapi import HTTPException, Request, Response
from fastapi.responses import StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from ray import serve
from ray.serve.exceptions import BackPressureError

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
from .breaker import MISSES_TO_OPEN, Circuit
from .call import Flight, ask, await_ref, brief
from .capacity import TimeBudget
from .cost import CostModel, LiveRatio, reply_tokens, request_cost
from .escalation import (
    escalated_items,
    item_subrequest,
    merge_items,
    merge_rerank,
    rerank_subrequest,
)
from .generate import GenerateRequest, GenerateResponse, answer_fields, sse
from .guard import COMMIT_TIMEOUT_S, Guard, Unavailable
from .metrics import FLUSH_S, Events, stats_actor
from .openai_api import OpenAIRoutes
from .policy import (
    FULL,
    PRUNED,
    PolicyConfig,
    RequestInfo,
    choose_tier,
    escalate,
    request_confidence,
)
from .shadow import Shadowing
from .stages import STAGES_HEADER, stage_header

__all__ = ["Router", "Unavailable"]

log = logging.getLogger("tierserve.serving")
HEALTH_EVERY = 8  # flushes between tier health checks
PING_TIMEOUT_S = 2.0  # a health ping; a tier that answered anything within it is alive
_OPS = {"embedding": {"embed", "rerank"}, "rerank": {"rerank"},
        "sequence-classification": {"classify"}, "image-classification": set(),
        "text-generation": {"generate"}}


_OPENAI_ROUTES = {"embed": ("/v1/embeddings",),
                  "generate": ("/v1/completions", "/v1/chat/completions")}


def served_routes(task: str, openai: bool = False) -> list[str]:
    """The routes a task's model serves: OpenAI's (and the native ones OpenAI has no route for)
    with `openai`, else the native ones."""
    ops = sorted(_OPS.get(task, ()))
    if not openai:
        return [f"/v1/{o}" for o in ops]
    return [r for o in ops for r in _OPENAI_ROUTES.get(o, ())] + [
        f"/v1/{o} (tierserve)" for o in ops if o not in _OPENAI_ROUTES]


def _inputs(reply: dict) -> dict:
    """What the reply says about the request's inputs: were texts cut, how many tokens ran."""
    return {"truncated": bool(reply.get("truncated")), "input_tokens": reply.get("input_tokens")}


def _tokenizer(spec):
    from transformers import AutoTokenizer

    from tierserve.pruning.gguf import model_dir
    from tierserve.pruning.storage import resolve

    return AutoTokenizer.from_pretrained(str(model_dir(resolve(spec.model.uri))),
                                         local_files_only=True)


@serve.deployment(name="router", ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class Router(Guard, Shadowing, OpenAIRoutes):  # guard.py, shadow.py, openai_api.py
    def __init__(self, full, pruned, config: dict) -> None:
        spec = parse_spec(config["spec"])
        s = spec.serving
        self.name, self.task = config["name"], spec.model.task.value
        if pruned is None:  # spec.serving.router.colocatePruned: pruned runs in this replica
            from .colocated import LocalTier

            pruned = LocalTier(**config["colocated"])
        self.tiers = {FULL: full, PRUNED: pruned}
        self.cfg = PolicyConfig.from_spec(s, config.get("calibration"), config.get("gates"))
        self.timeout_s, self.max_items = s.pruned_timeout_s, s.max_items
        self.budget = TimeBudget(s.pruned_timeout_s, s.full_timeout_s, s.timeout_s_per_k_tokens,
                                 s.max_timeout_s)
        self.max_length, self.retry_after_s = spec.model.max_length, s.router.retry_after_s
        self.probe_s, self.commit_metrics = s.circuit_probe_s, s.router.commit_metrics
        self.shadowing = 0  # shadow calls in flight (at most SHADOW_MAX_INFLIGHT)
        self.circuits = {FULL: Circuit(), PRUNED: Circuit()}
        self.opened = {FULL: asyncio.Event(), PRUNED: asyncio.Event()}  # set while open
        self.costs = CostModel.from_config(spec.cost, config)
        ideal = ((config.get("calibration") or {}).get("cost_ratio") or {}).get("ideal")
        self.live_ratio = LiveRatio(lo=ideal or 1e-3)  # refreshed from both tiers' replies
        api.state.max_request_bytes = s.max_request_bytes
        api.state.on_refused = self._reject  # refusals made before a route runs (api.py)
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
        self._open_journal(self.name)  # guard.py / journal.py

    # -- endpoints ------------------------------------------------------------------------------
    @api.post("/v1/embed", response_model=EmbedResponse)
    async def embed(self, body: EmbedRequest, request: Request, response: Response) -> dict:
        self._check("embed", len(body.texts), "texts")
        reply, tier, reason, conf = await self._route("embed", body.texts, request,
                                                      response=response)
        return {**self._routed(tier, reason, conf), **_inputs(reply),
                "embeddings": np.asarray(reply["outputs"]).tolist()}

    @api.post("/v1/rerank", response_model=RerankResponse)
    async def rerank(self, body: RerankRequest, request: Request, response: Response) -> dict:
        self._check("rerank", len(body.documents), "documents")
        reply, tier, reason, conf = await self._route("rerank", [body.query, *body.documents],
                                                      request, response=response)
        scores = np.asarray(reply["outputs"])
        ranking = [int(i) for i in np.argsort(-scores, kind="stable")]
        return {**self._routed(tier, reason, conf), **_inputs(reply), "scores": scores.tolist(),
                "ranking": ranking[:body.top_n] if body.top_n else ranking}

    @api.post("/v1/classify", response_model=ClassifyResponse)
    async def classify(self, body: ClassifyRequest, request: Request, response: Response) -> dict:
        self._check("classify", len(body.texts), "texts")
        reply, tier, reason, conf = await self._route("classify", body.texts, request,
                                                      response=response)
        logits = np.asarray(reply["outputs"], dtype=np.float64)  # (n, C)
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        names = reply.get("labels") or [str(i) for i in range(logits.shape[1])]
        return {**self._routed(tier, reason, conf), **_inputs(reply),
                "probabilities": probs.tolist(),
                "labels": [names[int(i)] for i in logits.argmax(1)]}

    @api.post("/v1/generate", response_model=GenerateResponse)
    async def generate(self, body: GenerateRequest, request: Request, response: Response):
        self._check("generate", 1, "prompts")
        req = {"max_new_tokens": body.max_new_tokens}
        if body.stream:
            return await self._stream([body.prompt], req, request)
        reply, tier, reason, conf = await self._route("generate", [body.prompt], request, req,
                                                      response=response)
        return {**self._routed(tier, reason, conf), **answer_fields(reply)}

    @api.get("/healthz")
    async def healthz(self) -> dict:
        self._start()
        return {"status": "ok" if any(self.up.values()) else "down", "model": self.name,
                "policy": self.cfg.policy, "threshold": self.cfg.threshold,
                "confidence": self.cfg.confidence, "tiers": self.up,
                "circuits": {t: c.reason or "closed" for t, c in self.circuits.items()},
                **self.shared}

    @api.get("/metrics")
    async def metrics(self) -> Response:
        self._start()
        await self._drain()  # this replica's replies are counted (guard.py)
        return Response(await self.stats.render.remote(), media_type=CONTENT_TYPE_LATEST)

    # -- routing --------------------------------------------------------------------------------
    def _check(self, op: str, n: int, what: str, route: str | None = None) -> None:
        """400 naming the route called (`route`, default /v1/`op`) and the ones this model's
        task serves, in the style of the call (OpenAI routes for an OpenAI route)."""
        if op not in _OPS.get(self.task, set()):
            called = route or f"/v1/{op}"
            served = served_routes(self.task, openai=route is not None)
            raise HTTPException(400, f"{called} is not served for task {self.task}; this model "
                                f"serves {', '.join(served) or 'no route of this kind'}")
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
                           h.get("x-tenant"), h.get("x-priority"), tokens,
                           tier_key=h.get("x-tier-key"))

    async def _ask(self, tier: str, req: dict, timeout: float | None = None) -> dict:
        try:
            return await ask(self.tiers[tier], req, timeout)  # cancelled when it expires (call.py)
        except TimeoutError:
            self.events.add("cancelled", tier)
            raise

    def _confidence(self, op: str, reply: dict) -> float:
        if op == "generate":  # the pruned answer's mean token log-probability
            return float(reply["mean_logprob"])
        return request_confidence(self.cfg.confidence, reply["outputs"])

    async def _first(self, op: str, texts: list[str], request: Request, extra: dict | None,
                     stream: bool = False) -> Flight:
        """Decide, and ask pruned first when the decision says so. `Flight.reply` stays None
        when `Flight.tier` must still be asked (full; or pruned, streamed live)."""
        info = self._info(op, texts, request)
        d = choose_tier(info, self.cfg, self.shared["shadow_fallback_active"])
        f = Flight(info, d, {"op": op, "texts": texts, **(extra or {})}, d.tier, d.reason)
        f.size = self._admit(texts)
        f.stages["decide"] = 1000 * (time.perf_counter() - f.t0)
        if f.tier == PRUNED and self.circuits[PRUNED].is_open:  # known dead: no wait at all
            self.events.fallbacks += 1
            f.tier, f.reason = FULL, "fallback"
        elif f.tier == PRUNED and (d.cascade or not stream):
            sent = time.monotonic()
            try:
                f.reply = await self._race(PRUNED, f, self.budget.pruned(f.size))
                self._answered(PRUNED)
                self._account(f, PRUNED, f.reply)
            except Exception as err:  # noqa: BLE001 - any pruned failure is served by full
                log.warning("pruned tier failed (%s); serving from full", brief(err))
                self._failed(PRUNED, err, sent)
                self.events.fallbacks += 1
                f.tier, f.reason = FULL, "fallback"
            if f.reply is not None and d.cascade:
                f.conf = self._confidence(op, f.reply)
                if escalate(f.conf, self.cfg.threshold):
                    self.events.escalations += 1
                    f.tier, f.reason = FULL, "cascade_escalated"
                    f.reply = await self._escalate_part(op, f)
        return f

    async def _escalate_part(self, op: str, f: Flight) -> dict | None:
        """Partial escalation (`escalation.py`): rerank -> full re-scores pruned's best m
        documents; classify -> full answers only the unconfident items. The merged reply, or
        None when full must redo the whole request."""
        pruned, texts = f.reply, f.req["texts"]
        if op == "rerank":
            m = self.cfg.escalate_top_m
            if not m or m >= len(texts) - 1:
                self.events.add("escalated_items", op, len(texts) - 1)  # full scores them all
                return None
            sub, _ = rerank_subrequest(texts, pruned["outputs"], m)

            def merge(out):
                return merge_rerank(pruned["outputs"], out)
        elif op == "classify":
            items = escalated_items(self.cfg.confidence, pruned["outputs"], self.cfg.threshold)
            if len(items) >= len(texts):
                self.events.add("escalated_items", op, len(texts))
                return None
            sub = item_subrequest(texts, items)

            def merge(out):
                return merge_items(pruned["outputs"], out, items)
        else:
            return None
        whole, f.req = f.req, {**f.req, "texts": sub}
        try:
            reply = await self._full(f)
        finally:
            f.req = whole
        f.partial, n = True, len(sub) - (op == "rerank")  # rerank: the query is not an item
        self.events.add("escalated_items", op, n)
        return {**pruned, "outputs": merge(reply["outputs"]), "escalated": n}

    def _account(self, f: Flight, tier: str, reply: dict) -> None:
        """A tier's reply: its replica time and tokens go to this request's cost and metrics."""
        f.compute[tier] = f.compute.get(tier, 0.0) + reply["compute_s"]
        f.tokens[tier] = f.tokens.get(tier, 0) + reply_tokens(reply)
        self.events.count_tokens(tier, reply)
        self._observe_ratio(tier, reply)
        if reply.get("truncated"):
            self.events.add("truncated", tier, int(reply["truncated"]))

    def _finish(self, f: Flight) -> None:
        """Count an answered request (then `_commit` it, or `_push_now` for a stream)."""
        self.events.request(f.tier, f.reason, time.perf_counter() - f.t0)
        cost = request_cost(self.costs, f.compute, f.tokens, full_complete=not f.partial)
        self.events.spend(cost.by_tier, cost.counterfactual)

    def _observe_ratio(self, tier: str, reply: dict) -> None:
        """Refresh the cost ratio from both tiers' measured replica time per token."""
        self.live_ratio.observe(tier, float(reply.get("compute_s", 0.0)), reply_tokens(reply))
        live = self.live_ratio.ratio()
        if live is not None:
            self.costs = replace(self.costs, latency_ratio=live[0], ratio_source=live[1])
        self.events.cost_ratio = (self.costs.latency_ratio, self.costs.ratio_source)

    async def _route(self, op: str, texts: list[str], request: Request,
                     extra: dict | None = None, response: Response | None = None):
        self._start()
        f = await self._first(op, texts, request, extra)
        if f.reply is None:
            f.reply = await self._full(f)
        self._finish(f)
        t_commit = time.perf_counter()
        self._commit()  # in the replica's journal before the reply leaves (guard.py)
        f.stages["commit"] = 1000 * (time.perf_counter() - t_commit)
        request.state.router_ms = 1000 * (time.perf_counter() - f.t0 - sum(f.waited))
        if response is not None:  # native replies name the tier as the OpenAI routes do
            response.headers[STAGES_HEADER] = stage_header(f.stages)
            response.headers["x-tierserve-tier"] = f.tier
            response.headers["x-tierserve-reason"] = f.reason
        if f.decision.shadow:
            self._shadow(f.info, op, f.req, f.tier, f.reason, f.reply)
        return f.reply, f.tier, f.reason, f.conf

    # -- streaming (generate) -------------------------------------------------------------------
    async def _stream(self, texts: list[str], extra: dict, request: Request) -> StreamingResponse:
        self._start()
        f = await self._first("generate", texts, request, extra, stream=True)
        if f.reply is not None:  # cascade, confident: pruned's judged answer, as one piece
            self._finish(f)
            self._push_now()
            events = self._judged(f)
        else:
            first, pieces = None, None
            if f.tier == PRUNED:
                try:
                    first, pieces = await self._open(PRUNED, f.req, self.budget.pruned(f.size))
                except Exception as err:  # noqa: BLE001 - no byte sent yet: full answers
                    log.warning("pruned tier failed (%s); streaming from full", brief(err))
                    self.events.fallbacks += 1
                    f.tier, f.reason = FULL, "fallback"
            if pieces is None:
                first, pieces = await self._open(FULL, f.req, self.budget.full(f.size))
            events = self._live(f, first, pieces)
        headers = {"x-tierserve-tier": f.tier, "x-tierserve-reason": f.reason}
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)

    async def _open(self, tier: str, req: dict, timeout: float | None):
        """Start a tier's stream and wait for its first item (at most `timeout` seconds)."""
        gen = self.tiers[tier].options(stream=True).stream.remote(req)
        try:
            first = await asyncio.wait_for(gen.__anext__(), timeout)
        except BaseException:
            gen.cancel()
            raise
        return first, gen

    async def _judged(self, f: Flight):
        yield sse({"text": f.reply["text"]})
        yield sse(self._done(f, f.reply))

    async def _live(self, f: Flight, first: dict, pieces):
        item = first
        try:
            while not item.get("done"):
                yield sse({"text": item["text"]})
                item = await pieces.__anext__()
        except StopAsyncIteration:  # ended without its summary: nothing more to say
            return
        except Exception as err:  # noqa: BLE001 - bytes are out: end the stream with the error
            log.warning("%s tier failed mid-stream: %s", f.tier, brief(err))
            yield sse({"error": brief(err), "tier": f.tier})
            return
        self._account(f, f.tier, item)
        self._finish(f)
        self._push_now()
        yield sse(self._done(f, item))

    def _done(self, f: Flight, reply: dict) -> dict:
        return {"done": True, **self._routed(f.tier, f.reason, f.conf), **answer_fields(reply)}

    # -- background: metrics push, shared shadow state, tier health -----------------------------
    def _start(self) -> None:
        if self.flusher is None:
            self.flusher = asyncio.get_running_loop().create_task(self._flush_forever())

    async def _flush_forever(self) -> None:
        n = 0
        while True:
            if n % HEALTH_EVERY == 0:
                await self._recover()  # dead replicas' journals first (guard.py)
                await self._health()
            n += 1
            self._commit()  # health, shadow outcomes: shipped by the pusher
            if not self._pushing:  # nothing on its way: fetch the shared shadow state
                try:
                    self._share(await asyncio.wait_for(await_ref(self.stats.state.remote()),
                                                       COMMIT_TIMEOUT_S))
                except Exception as err:  # noqa: BLE001 - metrics must never break serving
                    log.warning("stats actor did not answer: %s", brief(err))
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
            if self.circuits[tier].is_open:
                continue  # its probe is pinging it already
            try:
                await asyncio.wait_for(await_ref(handle.ping.remote()), PING_TIMEOUT_S)
                self.up[tier] = True
                self.circuits[tier].answered()
            except (TimeoutError, BackPressureError):  # busy, or gone: silence, twice, opens
                recent = time.monotonic() - PING_TIMEOUT_S
                if not self.circuits[tier].silent_since(recent):
                    continue  # it answered calls meanwhile: busy, not down (breaker.py)
                self.up[tier] = False
                if self.circuits[tier].missed(recent) >= MISSES_TO_OPEN:
                    self._trip(tier, f"no answer to {MISSES_TO_OPEN} health checks")
            except Exception as err:  # noqa: BLE001 - it answered with an error, or died
                self.up[tier] = False
                self._trip(tier, f"health check: {brief(err)}")
        self.events.tier_up = dict(self.up)

    def __del__(self) -> None:
        flusher = getattr(self, "flusher", None)
        if flusher is not None:
            with contextlib.suppress(Exception):
                flusher.cancel()
