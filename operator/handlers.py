"""Kopf handlers: thin adapters that call `sync` (fetch, pure reconcile, apply, status).

    kopf run --standalone -m tierserve.operator.handlers --liveness=http://0.0.0.0:8080/healthz \\
        --all-namespaces   # or --namespace=X

Triggers: create/update/resume of a PrunedModel (with Kopf's retries: TemporaryError for
transient errors, PermanentError for an invalid spec); `on.event` of the RayJobs, RayServices and
report ConfigMaps it owns (watched with `on.event` only, so Kopf never annotates or finalizes
objects KubeRay owns); and a level-based resync of every known PrunedModel each
TIERSERVE_POLL_SECONDS, which is how backend (b) follows its Ray jobs and Serve apps and how a
missed event or a failed step is caught up. (Kopf timers would put a finalizer on every object;
the only finalizer here is backend (b)'s, whose Serve apps and Ray jobs live outside Kubernetes.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import kopf

from . import names
from .backends import backend_for
from .config import OperatorConfig
from .crd import GROUP, PLURAL, VERSION
from .k8s import ApiException, post_event
from .raycluster import RayApiError
from .state import Event
from .sync import sync

CFG = OperatorConfig.from_env()
PM = (GROUP, VERSION, PLURAL)
MANAGED = {names.LABEL_MANAGED: "tierserve"}
RETRY_S = 5.0
KNOWN: set[tuple[str, str]] = set()  # (namespace, name) of every PrunedModel seen
log = logging.getLogger("tierserve.operator")


def _emit(pm: dict[str, Any], event: Event) -> None:
    try:
        post_event(pm, event.type, event.reason, event.message)
    except ApiException as err:  # an event is never worth failing a reconcile for
        log.warning("event %s for %s: %s", event.reason, pm["metadata"]["name"], err)


def _sync(namespace: str, name: str) -> Any:
    try:
        return sync(namespace, name, CFG, _emit)
    except (ApiException, RayApiError, OSError) as err:
        raise kopf.TemporaryError(f"transient: {err}", delay=RETRY_S) from err


def _is_raycluster(annotations: kopf.Annotations, **_: Any) -> bool:
    return CFG.for_object(annotations).backend == names.BACKEND_RAYCLUSTER


async def _resync_forever() -> None:
    while True:
        await asyncio.sleep(CFG.poll_seconds)
        for namespace, name in sorted(KNOWN):
            try:
                await asyncio.to_thread(_sync, namespace, name)
            except Exception as err:  # noqa: BLE001 - the loop must live on; the next round retries
                log.warning("resync %s/%s: %s", namespace, name, err)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.persistence.finalizer = names.FINALIZER
    settings.execution.max_workers = 16
    memo.resync = asyncio.get_running_loop().create_task(_resync_forever())


@kopf.on.cleanup()
async def stop_resync(memo: kopf.Memo, **_: Any) -> None:
    memo.resync.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await memo.resync


@kopf.on.resume(*PM)
@kopf.on.create(*PM)
@kopf.on.update(*PM, field="spec")
def reconcile_fn(namespace: str, name: str, **_: Any) -> None:
    decision = _sync(namespace, name)
    if decision is not None and decision.error:
        raise kopf.PermanentError(decision.error)


@kopf.on.event(*PM)
def track_fn(namespace: str, name: str, type: str | None, **_: Any) -> None:
    (KNOWN.discard if type == "DELETED" else KNOWN.add)((namespace, name))


@kopf.on.event("ray.io", "v1", "rayjobs", labels=MANAGED)
@kopf.on.event("ray.io", "v1", "rayservices", labels=MANAGED)
@kopf.on.event("", "v1", "configmaps", labels=MANAGED)
def child_event(namespace: str, labels: kopf.Labels, type: str | None, **_: Any) -> None:
    if type is not None and (owner := labels.get(names.LABEL_MODEL)):
        _sync(namespace, owner)


@kopf.on.delete(*PM, when=_is_raycluster)
def cleanup_fn(body: kopf.Body, **_: Any) -> None:
    try:
        backend_for(dict(body), CFG).cleanup(dict(body))
    except RayApiError as err:
        raise kopf.TemporaryError(f"cleanup: {err}", delay=RETRY_S) from err
