"""What the router's parts share about one call to a tier: the request in flight (`Flight`), the
bounded, cancellable tier call (`ask`, `timed_ask`), and how an error is named in one line
(`brief`). Router, guard and shadow all import these from here, so none imports another."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .policy import Decision, RequestInfo
from .stages import add_stages

__all__ = ["Flight", "ask", "await_ref", "brief", "timed_ask"]


async def await_ref(response):
    """Await a Serve response (or any awaitable) inside a coroutine, so `wait_for` can bound it."""
    return await response


def brief(err: BaseException) -> str:
    """One line naming an error (Ray errors span many lines; a timeout has no message)."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[-1][:200]}" if lines else type(err).__name__


@dataclass
class Flight:
    """One request on its way through the router: the decision, the tier and reason so far, the
    reply once there is one, and what it used (replica seconds and tokens, per tier)."""

    info: RequestInfo
    decision: Decision
    req: dict
    tier: str
    reason: str
    conf: float | None = None
    reply: dict | None = None
    compute: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    waited: list[float] = field(default_factory=list)  # seconds awaiting tiers
    size: int = 0  # estimated input tokens: scales the timeouts (capacity.TimeBudget)
    partial: bool = False  # full answered only part of it (top-m documents / unconfident items)
    t0: float = field(default_factory=time.perf_counter)
    stages: dict[str, float] = field(default_factory=dict)  # ms per stage (stages.py)


async def ask(handle, req: dict, timeout: float | None = None) -> dict:
    """`handle.infer(req)`, within `timeout` seconds (None or 0: unbounded). On a timeout or a
    cancellation the call is cancelled too: the tier drops the rest of this work (tier.py)."""
    call = handle.infer.remote(req)
    try:
        return await asyncio.wait_for(await_ref(call), timeout or None)
    except (TimeoutError, asyncio.CancelledError):
        call.cancel()
        raise


Ask = Callable[[str, dict, float | None], Awaitable[dict]]


async def timed_ask(ask_tier: Ask, tier: str, f: Flight, timeout: float | None = None) -> dict:
    """Ask a tier for `f` with `ask_tier(tier, req, timeout)`; the wait splits into the tier's own
    time (`replica_s` in its reply) and the hop around it (handle call, queueing, transfer), in
    `f.stages`."""
    t0 = time.perf_counter()
    try:
        reply = await ask_tier(tier, f.req, timeout)
    finally:
        f.waited.append(time.perf_counter() - t0)
    add_stages(f.stages, tier, f.waited[-1], reply)
    return reply
