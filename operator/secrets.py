"""`spec.model.hfTokenSecret` may name only a Secret that is marked for it.

The job's and the Serve pods get HF_TOKEN from that Secret by `secretKeyRef` (pruning/hub.py):
the kubelet reads it, so without a check any PrunedModel author could mount any Secret of the
namespace into pods that run code of their choosing. The operator's TIERSERVE_HF_SECRET_LABEL
(default `tierserve.io/hf-token=true`; `key=value`, or `key` for any value) names the label or
annotation the Secret must carry; a missing Secret, or one without the mark, is InvalidSpec
naming the field, and no job is launched.

The operator reads the Secret's metadata only: one GET asking for PartialObjectMetadata, so its
data never reaches the operator (RBAC `get` on secrets, granted per watched namespace).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from . import k8s
from .config import OperatorConfig

__all__ = ["FIELD", "check_hf_secret", "get_partial", "marked", "read_metadata"]

FIELD = "spec.model.hfTokenSecret"
METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
_SECRET_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def marked(meta: dict[str, Any], mark: str) -> bool:
    """`meta` carries `mark` (`key=value`, or a bare `key`: any value) as a label or annotation."""
    key, sep, value = mark.partition("=")
    for found in (meta.get("labels") or {}, meta.get("annotations") or {}):
        if key.strip() in found and (not sep or found[key.strip()] == value.strip()):
            return True
    return False


def get_partial(namespace: str, name: str) -> dict[str, Any] | None:
    """The Secret as PartialObjectMetadata (no `data`); None when it does not exist."""
    c = k8s.api()
    path = f"/api/v1/namespaces/{quote(namespace, safe='')}/secrets/{quote(name, safe='')}"
    params = c.param_serialize("GET", path, header_params={"Accept": METADATA_ONLY},
                               auth_settings=["BearerToken"])
    try:
        resp = c.call_api(*params, _request_timeout=30)
        resp.read()
        return c.response_deserialize(resp, {"2XX": "object"}).data
    except k8s.ApiException as err:
        if err.status == 404:
            return None
        raise  # forbidden, unreachable: a retry, not a verdict on the spec


def read_metadata(namespace: str, name: str) -> dict[str, Any] | None:
    """The Secret's `metadata` (never its data); None when it does not exist."""
    doc = get_partial(namespace, name)
    return None if doc is None else (doc.get("metadata") or {})


def check_hf_secret(pm: dict[str, Any], cfg: OperatorConfig) -> str | None:
    """Why the PrunedModel's hfTokenSecret may not be used (the message names the field); None
    when it names none, or a Secret of its namespace that carries `cfg.hf_secret_label`."""
    ref = ((pm.get("spec") or {}).get("model") or {}).get("hfTokenSecret")
    if not ref:
        return None
    ns, name = pm["metadata"]["namespace"], str(ref.get("name") or "")
    if len(name) > 253 or not _SECRET_NAME.fullmatch(name):
        return f"{FIELD}.name: {name[:80]!r} is not a Secret name"
    meta = read_metadata(ns, name)
    if meta is None:
        return f"{FIELD}: Secret {ns}/{name} does not exist"
    if not marked(meta, cfg.hf_secret_label):
        return (f"{FIELD}: Secret {ns}/{name} lacks the label or annotation "
                f"{cfg.hf_secret_label} that marks Secrets PrunedModels may mount as HF_TOKEN "
                "(TIERSERVE_HF_SECRET_LABEL)")
    return None
