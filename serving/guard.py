"""The router's guards on the request path, as a mixin of `Router`: admission by size
(413), bounded full calls (503 + Retry-After on back-pressure, timeout or a down tier), per-tier
circuits opened by actor-death errors or silent health checks and closed by a probe, and each
answer's metric events in the replica's write-ahead journal before it leaves (`_commit`,
journal.py), shipped to the stats actor in the background and replayed from a dead replica's
journal by its successor (`_recover`).

It expects from `Router`: `tiers`, `budget`, `circuits`, `opened`, `up`, `events`, `stats`,
`background`, `probe_s`, `retry_after_s` and `_ask` / `_account`. What it shares with the router
about a call (`Flight`, `timed_ask`, `brief`) lives in `call.py`.
"""

import asyncio
import contextlib
import logging
import math
import os
import time
import uuid

from fastapi import HTTPException
from ray.serve.exceptions import BackPressureError

from .breaker import MISSES_TO_OPEN, is_death
from .call import Flight, await_ref, brief, timed_ask
from .capacity import estimate_tokens
from .journal import RECOVER_EVERY_S, Journal, journal_dir, orphans
from .metrics import Events
from .policy import FULL, PRUNED

__all__ = ["Guard", "TierDown", "Unavailable"]

log = logging.getLogger("tierserve.serving")
COMMIT_TIMEOUT_S = 2.0  # one push to the stats actor (replies never wait on it)
PUSH_RETRY_S = 1.0
# The pusher waits this long after a reply before shipping, so the actor call (pickling, the
# core worker's send, the reply) runs after the reply has left rather than beside it, and replies
# that close together share one push. Metrics lag by about this much; `/metrics` drains first.
PUSH_COALESCE_S = 0.05


class Unavailable(HTTPException):
    """503 + Retry-After: a full queue (back-pressure) or a tier that is down."""

    def __init__(self, detail: str, retry_after_s: float) -> None:
        super().__init__(503, detail, headers={"Retry-After": str(max(0, math.ceil(retry_after_s)))})


class TierDown(Exception):
    """The tier's circuit opened while a call to it waited (its replica is known dead)."""


class Guard:
    """Mixin of `Router`: admission, bounded full calls, circuits, answer-time metrics."""

    def _open_journal(self, model: str) -> None:
        """This replica's write-ahead journal (journal.py), or None when it cannot be opened
        (events then reach the actor fire-and-forget, and a killed router may lose the last ones).
        `source` names this replica's batches for the stats actor either way."""
        self.journal, self.seq, self._pending = None, 0, Events()
        self.source = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._head: tuple[Events, int] | None = None  # the batch on its way to the actor
        self._recovered_at = -math.inf
        self._push_task: asyncio.Task | None = None  # the pusher, while it runs
        self._push_soon = asyncio.Event()  # set: skip the coalescing wait (`_drain`)
        if not self.commit_metrics:
            return
        try:
            import ray

            node = ray.get_runtime_context().get_node_id()
            self.journal = Journal(journal_dir(model, node), self.source)
        except Exception as err:  # noqa: BLE001 - metrics must never break serving
            log.warning("metrics journal unavailable (%s): a killed router may lose the events of "
                        "its last replies", brief(err))

    def _commit(self) -> None:
        """Record the events buffered so far before the reply leaves: one append to the journal
        (a router killed after this loses nothing it answered; journal.py), then hand them to
        the pusher. Never fails the request."""
        ev, self.events = self.events, Events()
        if ev.empty():
            return
        self.seq += 1
        if self.journal is not None:
            try:
                self.journal.append(self.seq, ev)
            except OSError as err:  # noqa: BLE001 - a full disk must not fail replies
                log.warning("metrics journal write failed: %s", brief(err))
        self._pending.merge(ev)
        self._kick()

    _push_now = _commit  # refusals and streams: recorded the same way

    @property
    def _pushing(self) -> bool:
        return self._push_task is not None and not self._push_task.done()

    def _kick(self) -> None:
        if not self._pushing:
            self._push_task = asyncio.get_running_loop().create_task(self._pusher())
            self.background.add(self._push_task)
            self._push_task.add_done_callback(self.background.discard)

    async def _drain(self) -> None:
        """Ship this replica's recorded events now and wait for the stats actor to apply them
        (bounded by `COMMIT_TIMEOUT_S`): `/metrics` then counts every reply this replica sent."""
        self._commit()
        if self._pushing:
            self._push_soon.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._push_task), COMMIT_TIMEOUT_S)
            except Exception as err:  # noqa: BLE001 - /metrics answers with what the actor has
                log.warning("metrics not drained within %.0f s (%s); /metrics may lag",
                            COMMIT_TIMEOUT_S, brief(err))

    async def _pusher(self) -> None:
        """Ship batches to the stats actor in order, each tagged `(source, upto)` so a resend is
        applied once; a failed push is retried (the journal keeps it meanwhile). Each batch
        waits `PUSH_COALESCE_S` first (not when `_drain` asks)."""
        while True:
            if self._head is None:
                if self._pending.empty():
                    return
                if not self._push_soon.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._push_soon.wait(), PUSH_COALESCE_S)
                self._push_soon.clear()
                self._head, self._pending = (self._pending, self.seq), Events()
            ev, upto = self._head
            try:
                state = await asyncio.wait_for(
                    await_ref(self.stats.push.remote(ev, self.source, upto)), COMMIT_TIMEOUT_S)
            except Exception as err:  # noqa: BLE001 - metrics must never break serving
                log.warning("stats push failed, retrying in %.0f s: %s", PUSH_RETRY_S,
                            brief(err))
                await asyncio.sleep(PUSH_RETRY_S)
                continue
            self._head = None
            self._share(state)
            if self.journal is not None:
                with contextlib.suppress(OSError):
                    self.journal.acked(upto)

    async def _recover(self) -> None:
        """Replay journals of dead router replicas on this node (journal.py): what the actor has
        not applied yet, once. At start, then every `RECOVER_EVERY_S`."""
        now = time.monotonic()
        if self.journal is None or now - self._recovered_at < RECOVER_EVERY_S:
            return
        self._recovered_at = now
        for orphan in orphans(self.journal.dir, own=self.source):
            try:
                after = await asyncio.wait_for(
                    await_ref(self.stats.applied_upto.remote(orphan.source)), COMMIT_TIMEOUT_S)
                ev, last = orphan.entries(after)
                if last > after:
                    push = self.stats.push.remote(ev, orphan.source, last)
                    await asyncio.wait_for(await_ref(push), COMMIT_TIMEOUT_S)
                    log.warning("replayed %d metric batch(es) of a dead router replica (%s)",
                                last - after, orphan.source)
                self.stats.forget.remote(orphan.source)
                orphan.done()
            except Exception as err:  # noqa: BLE001 - kept for the next round
                os.close(orphan.lock_fd)
                self._recovered_at = -math.inf
                log.warning("could not replay journal %s: %s", orphan.source, brief(err))

    def _admit(self, texts: list[str]) -> int:
        """The request's estimated input tokens; 413 when no tier could answer it in time."""
        size = estimate_tokens(texts, self.max_length)
        refusal = self.budget.refusal(size)
        if refusal is not None:
            self._reject("too_large")
            raise HTTPException(413, refusal)
        return size

    async def _full(self, f: Flight) -> dict:
        """Ask full, bounded in time; 503 + Retry-After when it is down, full or too slow."""
        if self.circuits[FULL].is_open:
            self._reject("tier_down")
            raise Unavailable(f"the full tier is down ({self.circuits[FULL].reason}); the router "
                              "is probing it and will serve again when it answers",
                              self.retry_after_s)
        bound, sent = self.budget.full(f.size), time.monotonic()
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
            self._failed(FULL, err, sent)
            self._reject("tier_down")
            raise Unavailable(f"the full tier did not answer within {bound:.1f} s (spec.serving."
                              "fullTimeoutS + timeoutSPerKTokens per 1000 tokens)",
                              self.retry_after_s) from None
        except Exception as err:
            if not is_death(err):
                raise
            self._failed(FULL, err)
            self._reject("tier_down")
            raise Unavailable(f"the full tier's replica died ({brief(err)})",
                              self.retry_after_s) from None
        self._answered(FULL)
        self._account(f, FULL, reply)
        return reply

    async def _race(self, tier: str, f: Flight, bound: float | None) -> dict:
        """Ask `tier` within `bound`, but give up at once (`TierDown`) when its circuit opens
        meanwhile: no request keeps waiting on a replica that is known to be dead."""
        ask = asyncio.ensure_future(timed_ask(self._ask, tier, f, bound))
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

    def _failed(self, tier: str, err: BaseException, sent: float | None = None) -> None:
        """A call failed: an actor-death error opens the tier's circuit at once; a timeout of a
        call sent at `sent` (monotonic) counts as an unanswered health check (breaker.py:
        `MISSES_TO_OPEN` timeouts since the tier's last answer, one of them silent for its whole
        bound, open it; any answer resets)."""
        if is_death(err):
            self._trip(tier, brief(err))
        elif isinstance(err, TimeoutError) and self.circuits[tier].missed(sent) >= MISSES_TO_OPEN:
            self._trip(tier, f"{MISSES_TO_OPEN} calls or health checks timed out since its "
                       "last answer")

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
                await asyncio.wait_for(await_ref(self.tiers[tier].ping.remote()),
                                       max(1.0, 2 * self.probe_s))
            except Exception:  # noqa: BLE001 - still down: keep probing
                continue
            open_s = self.circuits[tier].open_for(time.monotonic())
            self.circuits[tier].close()
            self.opened[tier] = asyncio.Event()
            self.up[tier], self.events.circuit_open[tier] = True, False
            log.warning("%s tier circuit closed after %.1f s: it answers again", tier, open_s)
