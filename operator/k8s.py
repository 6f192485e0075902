"""Small Kubernetes I/O helpers for the operator (the `kubernetes` client; Kopf is no client)."""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import threading
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from .crd import GROUP, PLURAL, VERSION

__all__ = ["ApiException", "api", "create_if_absent", "delete", "get", "list_labelled",
           "now", "patch", "patch_status", "post_event", "status_patch"]

# kind -> (group, version, plural); "" group is the core API
KINDS = {
    "ConfigMap": ("", "v1", "configmaps"),
    "Role": ("rbac.authorization.k8s.io", "v1", "roles"),
    "RoleBinding": ("rbac.authorization.k8s.io", "v1", "rolebindings"),
    "RayJob": ("ray.io", "v1", "rayjobs"),
    "RayService": ("ray.io", "v1", "rayservices"),
    "PrunedModel": (GROUP, VERSION, PLURAL),
}


@functools.cache
def api() -> client.ApiClient:
    """One ApiClient: in-cluster credentials, else $KUBECONFIG / ~/.kube/config."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    conf = client.Configuration.get_default_copy()
    conf.connection_pool_maxsize = 32  # one per concurrent handler thread and then some
    return client.ApiClient(conf)


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _path(kind: str, namespace: str, name: str | None = None) -> str:
    group, version, plural = KINDS[kind]
    base = f"/api/{version}" if not group else f"/apis/{group}/{version}"
    return f"{base}/namespaces/{namespace}/{plural}" + (f"/{name}" if name else "")


def _call(method: str, path: str, body: Any = None, query: list | None = None,
          content_type: str = "application/json") -> Any:
    c = api()
    headers = {"Accept": "application/json", "Content-Type": content_type}
    params = c.param_serialize(method, path, query_params=query or [], header_params=headers,
                               body=body, auth_settings=["BearerToken"])
    resp = c.call_api(*params, _request_timeout=30)
    resp.read()
    return c.response_deserialize(resp, {"2XX": "object"}).data


def get(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return _call("GET", _path(kind, namespace, name))
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def list_labelled(kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
    doc = _call("GET", _path(kind, namespace), query=[("labelSelector", selector)])
    return doc.get("items") or []


def create_if_absent(obj: dict[str, Any]) -> bool:
    """Create `obj`; False when it already existed (it is adopted, never created twice)."""
    meta = obj["metadata"]
    try:
        _call("POST", _path(obj["kind"], meta["namespace"]), obj)
    except ApiException as err:
        if err.status == 409:
            return False
        raise
    return True


def patch(kind: str, namespace: str, name: str, body: dict[str, Any]) -> Any:
    return _call("PATCH", _path(kind, namespace, name), body,
                 content_type="application/merge-patch+json")


def delete(kind: str, namespace: str, name: str) -> None:
    try:
        _call("DELETE", _path(kind, namespace, name),
              {"propagationPolicy": "Background"})
    except ApiException as err:
        if err.status != 404:
            raise


def post_event(obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
    """A core/v1 Event about `obj` (works from any thread, unlike kopf.event outside handlers)."""
    meta, ts = obj["metadata"], now()
    event = {"apiVersion": "v1", "kind": "Event",
             "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
             "involvedObject": {"apiVersion": obj["apiVersion"], "kind": obj["kind"],
                                "name": meta["name"], "namespace": meta["namespace"],
                                "uid": meta["uid"]},
             "type": type_, "reason": reason, "message": message[:1000], "count": 1,
             "firstTimestamp": ts, "lastTimestamp": ts,
             "source": {"component": "tierserve-operator"}}
    _call("POST", f"/api/v1/namespaces/{meta['namespace']}/events", event)


def status_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any] | None:
    """A merge patch turning status `old` into `new` (None when equal); dropped keys become null."""
    if old == new:
        return None
    body: dict[str, Any] = dict(new)
    for key in old:
        if key not in new:
            body[key] = None
    return body


_PATCH_LOG_LOCK = threading.Lock()


def _record(namespace: str, name: str, body: dict[str, Any]) -> None:
    """Strict JSON (a NaN/Infinity raises here, not as an apiserver 500); with
    TIERSERVE_PATCH_LOG set, every status patch is appended there (the tests validate each one
    against the CRD's schema)."""
    text = json.dumps(body, allow_nan=False, sort_keys=True)
    if path := os.environ.get("TIERSERVE_PATCH_LOG"):
        with _PATCH_LOG_LOCK, open(path, "a") as fh:
            fh.write(json.dumps({"namespace": namespace, "name": name, "status": json.loads(text)})
                     + "\n")


def patch_status(namespace: str, name: str, body: dict[str, Any]) -> Any:
    _record(namespace, name, body)
    return _call("PATCH", _path("PrunedModel", namespace, name) + "/status", {"status": body},
                 content_type="application/merge-patch+json")
