"""The router's HTTP surface: request/response schemas and the FastAPI app (OpenAPI at /docs).

Limits (from `spec.serving`): a body over `maxRequestBytes` gets 413 before it is parsed; a body
that is not UTF-8 gets 400 saying so (and where); more than `maxItems` texts or documents gets
422; an empty text gets 422; malformed JSON or wrong fields get FastAPI's 422 naming the field;
an endpoint the model's task can't serve gets 400 naming the task. Texts longer than maxLength
tokens are cut: the reply says `truncated: true` and `input_tokens`.
(`Limits` is a plain ASGI middleware: Starlette's BaseHTTPMiddleware costs a task per request.)
"""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import FastAPI
from pydantic import BaseModel, Field

__all__ = ["ClassifyRequest", "EmbedRequest", "Limits", "RerankRequest", "api", "is_openai",
           "openai_error", "refused"]

Text = Field(min_length=1, description="UTF-8 text")
NonEmpty = Annotated[str, Field(min_length=1, description="UTF-8 text, not empty")]


class EmbedRequest(BaseModel):
    texts: list[NonEmpty] = Field(min_length=1, description="Texts to embed")


class RerankRequest(BaseModel):
    query: str = Text
    documents: list[NonEmpty] = Field(min_length=1, description="Candidate documents to score")
    top_n: int | None = Field(None, ge=1, description="Return only the best n in `ranking`")


class ClassifyRequest(BaseModel):
    texts: list[NonEmpty] = Field(min_length=1, description="Texts to classify")


class Routed(BaseModel):
    model: str
    tier: str = Field(description="full | pruned: the tier that answered")
    reason: str = Field(description="split | cascade_confident | cascade_escalated | rule | "
                        "fallback | shadow_fallback")
    confidence: float | None = Field(None, description="cascade: the pruned tier's confidence")
    truncated: bool = Field(False, description="Some text was cut at the model's maxLength tokens")
    input_tokens: int | None = Field(None, description="Tokens the answering tier fed the model")


class EmbedResponse(Routed):
    embeddings: list[list[float]]


class RerankResponse(Routed):
    scores: list[float] = Field(description="One score per document, in request order")
    ranking: list[int] = Field(description="Document indices, best first")


class ClassifyResponse(Routed):
    labels: list[str]
    probabilities: list[list[float]]


api = FastAPI(title="tierserve router", version="v1",
              description="Routes each request to the full or the pruned tier and says which and why.")


class Limits:
    """413 for bodies over the limit (on Content-Length and on the bytes received), 400 for a
    body that is not UTF-8; adds `x-tierserve-router-ms` (the router's own time) to replies."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        limit = getattr(scope["app"].state, "max_request_bytes", None) if "app" in scope else None
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if limit is not None and declared.isdigit() and int(declared) > limit:
            return await _refuse(send, 413, _too_big(int(declared), limit), scope["path"],
                                 scope.get("app"))
        body, more = b"", True
        while more:
            msg = await receive()
            body, more = body + msg.get("body", b""), msg.get("more_body", False)
            if limit is not None and len(body) > limit:
                return await _refuse(send, 413, _too_big(len(body), limit), scope["path"],
                                     scope.get("app"))
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as err:
            return await _refuse(send, 400, (
                f"request body is not valid UTF-8: byte 0x{body[err.start]:02x} at offset "
                f"{err.start} ({err.reason}); send JSON encoded as UTF-8"), scope["path"],
                scope.get("app"))
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def timed_send(msg):
            if msg["type"] == "http.response.start":
                ms = (scope.get("state") or {}).get("router_ms")
                if ms is not None:  # the router's own time, tiers excluded
                    msg["headers"] = [*msg.get("headers", []),
                                      (b"x-tierserve-router-ms", f"{ms:.3f}".encode())]
            await send(msg)

        await self.app(scope, replay, timed_send)


def _too_big(size: int, limit: int) -> str:
    return (f"request body is {size} bytes; this model accepts at most {limit} "
            f"(spec.serving.maxRequestBytes)")


OPENAI_PATHS = ("/v1/embeddings", "/v1/completions", "/v1/chat/completions", "/v1/models")


def is_openai(path: str) -> bool:
    """An OpenAI route (under any route prefix): its errors come in OpenAI's shape."""
    return path.rstrip("/").endswith(OPENAI_PATHS)


def openai_error(message: str, status: int, param: str | None = None,
                 code: str | None = None) -> dict:
    """OpenAI's error object: the `openai` client raises by status and reads `error.message`."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def refused(app, reason: str) -> None:
    """Count a refusal the router never saw (the middleware's 413 / 400, FastAPI's validation
    errors) in `tierserve_rejected_total{reason}`: the router sets `state.on_refused`."""
    hook = getattr(getattr(app, "state", None), "on_refused", None)
    if hook is not None:
        hook(reason)


async def _refuse(send, status: int, detail: str, path: str = "", app=None) -> None:
    refused(app, "too_large" if status == 413 else "invalid")
    body = json.dumps(openai_error(detail, status) if is_openai(path)
                      else {"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


api.add_middleware(Limits)
