"""The router's HTTP surface: request/response schemas and the FastAPI app (OpenAPI at /docs).

Limits (from `spec.serving`): a body over `maxRequestBytes` gets 413 before it is parsed; more than
`maxItems` texts or documents gets 422; malformed JSON or wrong fields get FastAPI's 422 naming
the field; an endpoint the model's task can't serve gets 400 naming the task.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

__all__ = ["ClassifyRequest", "EmbedRequest", "RerankRequest", "api"]

Text = Field(min_length=1, description="UTF-8 text")


class EmbedRequest(BaseModel):
    texts: list[str] = Field(min_length=1, description="Texts to embed")


class RerankRequest(BaseModel):
    query: str = Text
    documents: list[str] = Field(min_length=1, description="Candidate documents to score")
    top_n: int | None = Field(None, ge=1, description="Return only the best n in `ranking`")


class ClassifyRequest(BaseModel):
    texts: list[str] = Field(min_length=1, description="Texts to classify")


class Routed(BaseModel):
    model: str
    tier: str = Field(description="full | pruned: the tier that answered")
    reason: str = Field(description="split | cascade_confident | cascade_escalated | rule | "
                        "fallback | shadow_fallback")
    confidence: float | None = Field(None, description="cascade: the pruned tier's confidence")


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


@api.middleware("http")
async def limit_body(request: Request, call_next):
    """413 for bodies over the limit, checked on Content-Length and on the bytes received."""
    limit = getattr(request.app.state, "max_request_bytes", None)
    if limit is not None and request.method == "POST":
        declared = request.headers.get("content-length")
        size = int(declared) if declared and declared.isdigit() else len(await request.body())
        if size > limit:
            return JSONResponse(status_code=413, content={"detail": (
                f"request body is {size} bytes; this model accepts at most {limit} "
                f"(spec.serving.maxRequestBytes)")})
    response = await call_next(request)
    if hasattr(request.state, "router_ms"):  # the router's own time, tiers excluded
        response.headers["x-tierserve-router-ms"] = f"{request.state.router_ms:.3f}"
    return response
