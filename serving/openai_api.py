"""OpenAI-compatible endpoints on the router, so existing clients (the `openai` library,
LangChain, anything that speaks text-embeddings-inference's or vLLM's API) can use tierserve.

    POST /v1/embeddings         -> the router's "embed" route   (encoding_format float | base64)
    POST /v1/completions        -> its "generate" route, a raw prompt (no chat template)
    POST /v1/chat/completions   -> its "generate" route, the messages through the tokenizer's
                                   chat template (in the tier, as the job's calibration does)
    GET  /v1/models             -> this app's model

Every request is routed by the same policy as `/v1/embed` and `/v1/generate` (split, cascade,
rules, shadow, fallback; `X-Tier`, `X-Tenant`, `X-Priority` headers as there), and every answer
names the tier in the `x-tierserve-tier` / `x-tierserve-reason` headers (and in a `tierserve`
field of JSON bodies). `usage` counts tokens as the tiers fed and produced them (the chat
template included in `prompt_tokens`).

Generation: `max_tokens` (or `max_completion_tokens`) bounds new tokens; `temperature` omitted or
0 decodes greedily (what the cascade threshold was calibrated on), > 0 samples; `stop` strings
end the answer where they first appear (checked on the decoded text; the tier may decode a few
tokens past them); `stream: true` answers Server-Sent Events in OpenAI's chunk format ending
with `data: [DONE]`, with a usage chunk when `stream_options.include_usage` is set. One choice
per request (`n: 1`).

Errors come in OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`) with OpenAI's
status codes: 400 an invalid request (a body that does not parse, a wrong or missing field with
the field in `param`, too many items, an empty text) or an endpoint this model's task does not
serve (naming the routes it does serve), 404 another `model`, 413 a body over
`maxRequestBytes`, 503 + Retry-After when a tier is saturated or down.

`OpenAIRoutes` is a mixin of `router.Router`: its methods are FastAPI routes on the router's app
and call the router's own routing (`_check`, `_route`, `_stream`). (No `from __future__ import
annotations`: FastAPI reads these annotations at runtime.)
"""

import base64
import json
import time
import uuid
from typing import Literal

import numpy as np
from fastapi import HTTPException, Request
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .api import api, is_openai, openai_error, refused

__all__ = ["ChatRequest", "CompletionRequest", "EmbeddingsRequest", "OpenAIRoutes",
           "cut_at_stop", "held_back"]

MAX_NEW = 512  # the most new tokens one request may ask for (as /v1/generate)


class _Open(BaseModel):  # clients send fields we do not use (user, seed, ...): ignored
    model_config = ConfigDict(extra="ignore")


class EmbeddingsRequest(_Open):
    input: str | list[str] = Field(description="A text or a list of texts")
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"


class _Generation(_Open):
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1, le=MAX_NEW)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict | None = None
    n: int = Field(1, ge=1, le=1, description="One choice per request")

    def stops(self) -> list[str]:
        items = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in items if s]


class CompletionRequest(_Generation):
    prompt: str | list[str] = Field(description="One prompt (a list of one is accepted)")


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: only text is understood
            return "".join(p.get("text", "") for p in self.content if p.get("type") == "text")
        return self.content or ""


class ChatRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_NEW)


# -- pure helpers -------------------------------------------------------------------------------
def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """`text` up to the first stop string, and whether one was found."""
    at = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:at], True) if at >= 0 else (text, False)


def held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters of `text` could begin a stop string (not safe to send)."""
    return max((k for s in stops for k in range(min(len(s) - 1, len(text)), 0, -1)
                if s.startswith(text[-k:])), default=0)


def _finish_reason(reply: dict, max_new: int, stopped: bool) -> str:
    return "stop" if stopped or reply["output_tokens"] < max_new else "length"


def _usage(reply: dict) -> dict:
    p, c = int(reply["input_tokens"]), int(reply["output_tokens"])
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _b64(vector) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


def _chunk(kind: str, rid: str, model: str, piece: str | None, finish: str | None) -> dict:
    if kind == "chat":
        delta = {} if piece is None else {"role": "assistant", "content": piece}
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()),
                "model": model, "choices": [choice]}
    choice = {"index": 0, "text": piece or "", "logprobs": None, "finish_reason": finish}
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [choice]}


INVALID = (400, 404, 422)  # statuses counted as tierserve_rejected_total{reason="invalid"}


def _error(exc: HTTPException) -> JSONResponse:
    """An HTTPException in OpenAI's error shape (the client reads `error.message`). OpenAI
    answers an invalid request with 400: our 422s (request limits) become 400 here."""
    status = 400 if exc.status_code == 422 else exc.status_code
    code = "model_not_found" if exc.status_code == 404 else None
    detail = str(exc.detail)
    param = detail.split(":", 1)[0] if exc.status_code == 422 and ":" in detail[:40] else None
    return JSONResponse(openai_error(detail, status, param, code), status_code=status,
                        headers=exc.headers)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException):
    """Every route's HTTPException: a 400 / 404 / 422 (a bad request the router refused) counts
    as `invalid` (413 and 503 were counted where they were raised, guard.py); OpenAI's routes
    answer in OpenAI's shape, the native ones in FastAPI's."""
    if exc.status_code in INVALID:
        refused(request.app, "invalid")
    if is_openai(request.url.path):
        return _error(exc)
    return await http_exception_handler(request, exc)


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError):
    """A body that does not parse or has wrong fields: OpenAI's 400 on the OpenAI routes (the
    field in `param`), FastAPI's 422 naming the field everywhere else. Counted as `invalid`."""
    refused(request.app, "invalid")
    if not is_openai(request.url.path):
        return await request_validation_exception_handler(request, exc)
    errors = exc.errors()
    where = [".".join(str(x) for x in e.get("loc", ()) if x != "body") for e in errors]
    message = "; ".join(f"{w or 'body'}: {e.get('msg', 'invalid')}" for w, e in zip(
        where, errors, strict=True)) or "invalid request body"
    return JSONResponse(openai_error(message, 400, where[0] if where and where[0] else None),
                        status_code=400)


def _event(payload: dict | str) -> bytes:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n".encode()


class _Relay:
    """Turns the router's generate stream (`data: {"text"}` ... `data: {"done": true, ...}`)
    into OpenAI chunks, applying stop strings on the way."""

    def __init__(self, kind: str, model: str, stops: list[str], max_new: int, usage: bool):
        self.kind, self.model, self.stops, self.max_new = kind, model, stops, max_new
        self.usage, self.rid = usage, f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
        self.text, self.sent, self.stopped = "", 0, False

    def _piece(self, piece: str) -> str:
        if self.stopped:
            return ""
        self.text += piece
        cut, self.stopped = cut_at_stop(self.text, self.stops)
        end = len(cut) if self.stopped else len(self.text) - held_back(self.text, self.stops)
        out, self.sent = self.text[self.sent:end], max(self.sent, end)
        return out

    async def events(self, body):
        async for raw in body:
            for line in (raw.decode() if isinstance(raw, bytes) else raw).splitlines():
                if line.startswith("data: "):
                    for out in self._on(json.loads(line[len("data: "):])):
                        yield out
        yield _event("[DONE]")

    def _on(self, item: dict) -> list[bytes]:
        if "error" in item:
            return [_event({"error": {"message": item["error"], "type": "server_error"}})]
        if not item.get("done"):
            piece = self._piece(item.get("text", ""))
            return [_event(_chunk(self.kind, self.rid, self.model, piece, None))] if piece else []
        rest = "" if self.stopped else self.text[self.sent:]  # held back, and no stop followed
        reply = {"output_tokens": item["tokens"], "input_tokens": item["prompt_tokens"]}
        out = [_event(_chunk(self.kind, self.rid, self.model, rest, None))] if rest else []
        finish = _finish_reason(reply, self.max_new, self.stopped)
        out.append(_event(_chunk(self.kind, self.rid, self.model, None if self.kind == "chat"
                                 else "", finish)))
        if self.usage:
            out.append(_event({**_chunk(self.kind, self.rid, self.model, None, None),
                               "choices": [], "usage": _usage(reply)}))
        return out


# -- the routes (a mixin of router.Router) ------------------------------------------------------
class OpenAIRoutes:
    @api.get("/v1/models")
    async def openai_models(self) -> dict:
        return {"object": "list", "data": [{"id": self.name, "object": "model", "created": 0,
                                            "owned_by": "tierserve"}]}

    @api.post("/v1/embeddings")
    async def openai_embeddings(self, body: EmbeddingsRequest, request: Request):
        return await self._openai_embed(body, request)

    @api.post("/v1/completions")
    async def openai_completions(self, body: CompletionRequest, request: Request):
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1 or not prompts[0]:
            raise HTTPException(422, "prompt: one non-empty prompt per request")
        return await self._openai_generate("text", body, prompts[0], {"chat": False}, request)

    @api.post("/v1/chat/completions")
    async def openai_chat(self, body: ChatRequest, request: Request):
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        if not any(m["content"] for m in messages):
            raise HTTPException(422, "messages: no text content")
        last = next(m["content"] for m in reversed(messages) if m["content"])
        return await self._openai_generate("chat", body, last, {"messages": messages}, request)

    # -- helpers --------------------------------------------------------------------------------
    async def _openai_embed(self, body: EmbeddingsRequest, request: Request) -> JSONResponse:
        self._openai_model(body.model)
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts or not all(texts):
            raise HTTPException(422, "input: every text must be a non-empty string")
        self._check("embed", len(texts), "texts", route="/v1/embeddings")
        reply, tier, reason, conf = await self._route("embed", texts, request)
        vectors = np.asarray(reply["outputs"], dtype=np.float32)
        encode = _b64 if body.encoding_format == "base64" else (lambda v: v.tolist())
        tokens = int(reply.get("input_tokens") or 0)
        return self._openai_json({
            "object": "list", "model": self.name,
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)}
                     for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}, tier, reason, conf)

    def _openai_model(self, model: str | None) -> None:
        if model and model != self.name:
            raise HTTPException(404, f"model '{model}' is not served here; GET /v1/models lists "
                                f"'{self.name}'")

    def _openai_json(self, content: dict, tier: str, reason: str, conf) -> JSONResponse:
        content["tierserve"] = {"tier": tier, "reason": reason, "confidence": conf}
        return JSONResponse(content, headers={"x-tierserve-tier": tier,
                                              "x-tierserve-reason": reason})

    async def _openai_generate(self, kind: str, body: _Generation, text: str, how: dict,
                               request: Request):
        self._openai_model(body.model)
        self._check("generate", 1, "prompts",
                    route="/v1/chat/completions" if kind == "chat" else "/v1/completions")
        max_new = getattr(body, "max_completion_tokens", None) or body.max_tokens or 16
        extra = {"max_new_tokens": max_new, "temperature": body.temperature or 0.0, **how}
        if body.stream:
            routed = await self._stream([text], extra, request)
            usage = bool((body.stream_options or {}).get("include_usage"))
            relay = _Relay(kind, self.name, body.stops(), max_new, usage)
            return StreamingResponse(relay.events(routed.body_iterator),
                                     media_type="text/event-stream",
                                     headers={k: v for k, v in routed.headers.items()
                                              if k.startswith("x-tierserve-")})
        reply, tier, reason, conf = await self._route("generate", [text], request, extra)
        answer, stopped = cut_at_stop(reply["text"], body.stops())
        finish = _finish_reason(reply, max_new, stopped)
        rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
        if kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": answer},
                      "finish_reason": finish}
        else:
            choice = {"index": 0, "text": answer, "logprobs": None, "finish_reason": finish}
        return self._openai_json({
            "id": rid, "object": "chat.completion" if kind == "chat" else "text_completion",
            "created": int(time.time()), "model": self.name, "choices": [choice],
            "usage": _usage(reply)}, tier, reason, conf)
