"""Shadow comparisons of the router (a mixin of `Router`), off the response path, as background
tasks: at most SHADOW_MAX_INFLIGHT at once, each bounded by SHADOW_TIMEOUT_S. A sampled request
served by pruned is also asked of full (and, while the shadow fallback is tripped, a full-served
one of pruned); the outcome (agree or not) goes to the stats actor's window with the events.

It expects from `Router`: `shadowing`, `background`, `events`, `costs`, `cfg` and `_ask`,
`_confidence`, `_observe_ratio`.
"""

import asyncio
import logging

from .call import brief
from .cost import reply_tokens
from .policy import FULL, PRUNED, RequestInfo, outputs_agree, would_serve_pruned

__all__ = ["SHADOW_MAX_INFLIGHT", "SHADOW_TIMEOUT_S", "Shadowing"]

log = logging.getLogger("tierserve.serving")
SHADOW_TIMEOUT_S = 120.0  # a shadow call may queue behind real traffic; it only bounds the wait
SHADOW_MAX_INFLIGHT = 8  # more would fill the other tier's bounded queue and 503 real requests


class Shadowing:
    """Mixin of `Router`: shadow samples."""

    def _shadow(self, info: RequestInfo, op: str, req: dict, tier: str, reason: str,
                reply: dict) -> None:
        if tier == FULL and reason != "shadow_fallback":
            self.events.shadow.append(True)  # full served it: the served answer agrees
            return
        if self.shadowing >= SHADOW_MAX_INFLIGHT:  # the other tier is behind: skip this sample
            return
        self.shadowing += 1
        task = asyncio.get_running_loop().create_task(self._compare(info, op, req, tier, reply))
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _compare(self, info: RequestInfo, op: str, req: dict, tier: str,
                       reply: dict) -> None:
        other = FULL if tier == PRUNED else PRUNED
        try:  # off the response path: no tight timeout, only a bound
            theirs = await self._ask(other, req, SHADOW_TIMEOUT_S)
        except Exception as err:  # noqa: BLE001 - a failed shadow call is only logged
            log.warning("shadow call to %s failed: %s", other, brief(err))
            return
        finally:
            self.shadowing -= 1
        self.events.spend({other: self.costs.tier_cost(other, theirs["compute_s"],
                                                       reply_tokens(theirs))}, 0.0)
        self.events.count_tokens(other, theirs)
        self._observe_ratio(other, theirs)
        pruned, full = (reply, theirs) if tier == PRUNED else (theirs, reply)
        if tier == FULL:  # tripped: would the policy have let pruned answer?
            conf = self._confidence(op, pruned)
            if not would_serve_pruned(info, self.cfg, conf):
                self.events.shadow.append(True)
                return
        self.events.shadow.extend(outputs_agree(op, pruned["outputs"], full["outputs"],
                                                self.cfg.choices))
