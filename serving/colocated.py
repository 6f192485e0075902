"""The pruned tier served inside the router replica (`spec.serving.router.colocatePruned`):
routine traffic takes one hop (proxy -> router), and only escalations, fallbacks and
full-routed requests take a second (router -> full).

`LocalTier` runs the same `Tier` code (batching, micro-batches off the event loop, cancellation,
`compute_s` / tokens for cost) in the router's process, behind the part of the handle surface
the router uses: `infer.remote(req)` and `ping.remote()` return awaitables with `.cancel()`,
and `options(stream=True).stream.remote(req)` an async iterator with `.cancel()`. A colocated
pruned tier has no replica of its own: it lives and dies with its router replica (the router's
replicas and resources follow `spec.serving.pruned` then, see app.py).
"""

from __future__ import annotations

import asyncio

from .tier import Tier

__all__ = ["LocalTier"]


class _Call:
    """`handle.method.remote(...)` for a local coroutine function: a task (awaitable,
    cancellable like a `DeploymentResponse`)."""

    def __init__(self, fn) -> None:
        self.fn = fn

    def remote(self, *args):
        return asyncio.ensure_future(self.fn(*args))


class _Stream:
    """A local async generator with the `cancel()` of a `DeploymentResponseGenerator`."""

    def __init__(self, gen) -> None:
        self.gen = gen

    def __aiter__(self):
        return self

    def __anext__(self):
        return self.gen.__anext__()

    def cancel(self) -> None:
        asyncio.ensure_future(self.gen.aclose())


class LocalTier:
    def __init__(self, **tier_args) -> None:
        self.tier = Tier.func_or_class(**tier_args, offload=True)  # keep the router's loop free
        self.infer = _Call(self.tier.infer)
        self.ping = _Call(self._ping)
        self.stream = self

    async def _ping(self) -> str:
        return self.tier.ping()

    def options(self, stream: bool = False) -> LocalTier:
        return self

    def remote(self, req: dict) -> _Stream:  # `.options(stream=True).stream.remote(req)`
        return _Stream(self.tier.stream(req))
