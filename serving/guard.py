"""The router's guards on the request path (issue 14), as a mixin of `Router`: admission by size
(413), bounded full calls (503 + Retry-After on back-pressure, timeout or a down tier), per-tier
circuits opened by actor-death errors or silent health checks and closed by a probe, and events
in the stats actor before each answer leaves (`_commit`; refusals and streams are sent
fire-and-forget).

It expects from `Router`: `tiers`, `budget`, `circuits`, `opened`, `up`, `events`, `stats`,
`background`, `probe_s`, `retry_after_s` and `_timed_ask` / `_account`.
"""

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING

from fastapi import HTTPException
from ray.serve.exceptions import BackPressureError

from .breaker import MISSES_TO_OPEN, is_death
from .capacity import estimate_tokens
from .metrics import Events
from .policy import FULL, PRUNED

if TYPE_CHECKING:
    from .router import Flight

__all__ = ["Guard", "TierDown", "Unavailable"]

log = logging.getLogger("tierserve.serving")
COMMIT_TIMEOUT_S = 2.0  # a stats actor that does not answer delays replies at most this much


async def _await(response):
    return await response


def _brief(err: BaseException) -> str:
    """One line naming an error (Ray errors span many lines; a timeout has no message)."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[-1][:200]}" if lines else type(err).__name__


class Unavailable(HTTPException):
    """503 + Retry-After: a full queue (back-pressure) or a tier that is down."""

    def __init__(self, detail: str, retry_after_s: float) -> None:
        super().__init__(503, detail, headers={"Retry-After": str(max(0, math.ceil(retry_after_s)))})


class TierDown(Exception):
    """The tier's circuit opened while a call to it waited (its replica is known dead)."""


class Guard:
    """Mixin of `Router`: admission, bounded full calls, circuits, answer-time metrics."""

    async def _commit(self) -> None:
        """Wait until the events buffered so far are in the stats actor (group commit: requests
        answered while a push is in flight share the next one). A router killed after this
        loses nothing it answered; metrics failures never fail the request."""
        fut = getattr(self, "_next_commit", None)
        if fut is None:
            fut = self._next_commit = asyncio.get_running_loop().create_future()
            if not getattr(self, "_pushing", False):
                self._pushing = True
                task = asyncio.get_running_loop().create_task(self._pusher())
                self.background.add(task)
                task.add_done_callback(self.background.discard)
        await asyncio.shield(fut)

    async def _pusher(self) -> None:
        try:
            while (fut := getattr(self, "_next_commit", None)) is not None:
                self._next_commit = None
                ev, self.events = self.events, Events()
                try:
                    self._share(await asyncio.wait_for(_await(self.stats.push.remote(ev)),
                                                       COMMIT_TIMEOUT_S))
                except Exception as err:  # noqa: BLE001 - metrics must never break serving
                    log.warning("stats push failed: %s", _brief(err))
                fut.set_result(None)
        finally:
            self._pushing = False

    def _push_now(self) -> None:
        """Send the buffered events to the stats actor now (fire-and-forget)."""
        ev, self.events = self.events, Events()
        try:
            self.stats.push.remote(ev)
        except Exception as err:  # noqa: BLE001 - metrics must never break serving
            log.warning("stats push failed: %s", _brief(err))

    def _admit(self, texts: list[str]) -> int:
        """The request's estimated input tokens; 413 when no tier could answer it in time."""
        size = estimate_tokens(texts, self.max_length)
        refusal = self.budget.refusal(size)
        if refusal is not None:
            self._reject("too_large")
            raise HTTPException(413, refusal)
        return size

    async def _full(self, f: "Flight") -> dict:
        """Ask full, bounded in time; 503 + Retry-After when it is down, full or too slow."""
        if self.circuits[FULL].is_open:
            self._reject("tier_down")
            raise Unavailable(f"the full tier is down ({self.circuits[FULL].reason}); the router "
                              "is probing it and will serve again when it answers",
                              self.retry_after_s)
        bound = self.budget.full(f.size)
        try:
            reply = await self._race(FULL, f, bound)
        except TierDown:
            self._reject("tier_down")
            raise Unavailable(f"the full tier went down ({self.circuits[FULL].reason}) while "
                              "this request waited", self.retry_after_s) from None
        except BackPressureError:
            self._reject("backpressure")
            raise Unavailable("the full tier's queue is full (spec.serving.full."
                              "maxQueuedRequests): retry later", self.retry_after_s) from None
        except TimeoutError as err:
            self._failed(FULL, err)
            self._reject("tier_down")
            raise Unavailable(f"the full tier did not answer within {bound:.1f} s (spec.serving."
                              "fullTimeoutS + timeoutSPerKTokens per 1000 tokens)",
                              self.retry_after_s) from None
        except Exception as err:
            if not is_death(err):
                raise
            self._failed(FULL, err)
            self._reject("tier_down")
            raise Unavailable(f"the full tier's replica died ({_brief(err)})",
                              self.retry_after_s) from None
        self._answered(FULL)
        self._account(f, FULL, reply)
        return reply

    async def _race(self, tier: str, f: "Flight", bound: float | None) -> dict:
        """Ask `tier` within `bound`, but give up at once (`TierDown`) when its circuit opens
        meanwhile: no request keeps waiting on a replica that is known to be dead."""
        ask = asyncio.ensure_future(self._timed_ask(tier, f, bound))
        down = asyncio.ensure_future(self.opened[tier].wait())
        try:
            await asyncio.wait({ask, down}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            down.cancel()
            gone = not ask.done()
            if gone:
                ask.cancel()
        if gone:
            raise TierDown(self.circuits[tier].reason)
        return ask.result()

    def _reject(self, reason: str) -> None:
        """A refused request is an answer too: counted in the stats actor now."""
        self.events.add("rejected", reason)
        self._push_now()

    def _failed(self, tier: str, err: BaseException) -> None:
        """A call failed: an actor-death error opens the tier's circuit at once; timeouts count
        as unanswered health checks (`MISSES_TO_OPEN` in a row open it; any answer resets)."""
        if is_death(err):
            self._trip(tier, _brief(err))
        elif isinstance(err, TimeoutError) and self.circuits[tier].missed() >= MISSES_TO_OPEN:
            self._trip(tier, f"{MISSES_TO_OPEN} calls or health checks in a row got no answer")

    def _answered(self, tier: str) -> None:
        self.circuits[tier].answered()

    def _trip(self, tier: str, reason: str) -> None:
        if self.circuits[tier].trip(time.monotonic(), reason):
            log.warning("%s tier circuit OPEN (%s): %s", tier, reason,
                        "serving from full" if tier == PRUNED else "503 until it answers")
            self.up[tier] = False
            self.events.circuit_open[tier] = True
            self.opened[tier].set()
            task = asyncio.get_running_loop().create_task(self._probe(tier))
            self.background.add(task)
            task.add_done_callback(self.background.discard)

    async def _probe(self, tier: str) -> None:
        """Half-open: ping the tier every `circuitProbeS`; the first answer closes the circuit."""
        while self.circuits[tier].is_open:
            await asyncio.sleep(self.probe_s)
            try:
                await asyncio.wait_for(_await(self.tiers[tier].ping.remote()),
                                       max(1.0, 2 * self.probe_s))
            except Exception:  # noqa: BLE001 - still down: keep probing
                continue
            open_s = self.circuits[tier].open_for(time.monotonic())
            self.circuits[tier].close()
            self.opened[tier] = asyncio.Event()
            self.up[tier], self.events.circuit_open[tier] = True, False
            log.warning("%s tier circuit closed after %.1f s: it answers again", tier, open_s)
