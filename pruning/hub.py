"""`hf://ORG/NAME[@REVISION]`: a model snapshot from the Hugging Face Hub, through
`huggingface_hub.snapshot_download` and its ordinary cache layout
(`<cache>/models--ORG--NAME/{blobs,refs,snapshots/<commit>}`).

What it honours, read at call time:
- `HF_TOKEN`: sent to the Hub for private and gated models (in the cluster it comes from the
  Secret named by `spec.model.hfTokenSecret`, through the pod's `secretKeyRef` env). It is never
  logged and never part of an error message.
- `HF_HUB_OFFLINE=1`: no network; the snapshot must already be in the cache.
- the cache directory: the argument, else `HF_HUB_CACHE` (or `HF_HOME`/hub), else
  `~/.cache/huggingface/hub`. In the cluster the operator points `HF_HUB_CACHE` at the artifact
  PVC (`spec.model.cacheDir` overrides), so a model is downloaded once per claim.
- `HF_ENDPOINT`: another Hub (a mirror or a proxy).

Errors (`HubError`, a ValueError; `storage.resolve` raises them as `StorageError`) say which
case it is: the model or revision does not exist,
the model is gated or private (401/403: accept its terms on the Hub and give a token), the Hub is
unreachable, or the snapshot is not cached while offline.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["HubError", "HubRef", "hub_env", "parse_hf", "snapshot"]

_TRUE = {"1", "true", "yes", "on"}
TOKEN_HINT = "set HF_TOKEN (in the cluster: spec.model.hfTokenSecret)"


class HubError(ValueError):
    """An hf:// URI that can't be resolved; the message names the URI and the case."""


@dataclass(frozen=True)
class HubRef:
    repo_id: str  # ORG/NAME
    revision: str | None  # a branch, tag or commit; None: the default branch


def parse_hf(uri: str) -> HubRef:
    """`hf://ORG/NAME[@REVISION]` -> HubRef; a clear error for anything else."""
    rest = uri.split("://", 1)[1].strip("/") if "://" in uri else ""
    repo, at, revision = rest.partition("@")
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts) or (at and not revision):
        raise HubError(f"{uri}: expected hf://ORG/NAME or hf://ORG/NAME@REVISION")
    return HubRef(repo, revision or None)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def _cache(cache_dir: str | Path | None) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface"
    return Path(home).expanduser() / "hub"


def _chain(err: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while err is not None and err not in seen:
        seen.append(err)
        err = err.__cause__ or err.__context__
    return seen


def _explain(uri: str, ref: HubRef, cache: Path, err: Exception) -> HubError:
    """The HubError for a failed snapshot_download: missing, gated, unreachable, offline."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    chain = _chain(err)  # snapshot_download wraps the Hub's answer in LocalEntryNotFoundError
    err = next((e for e in chain if isinstance(e, HfHubHTTPError)), err)
    status = getattr(getattr(err, "response", None), "status_code", None)
    if isinstance(err, GatedRepoError) or status in (401, 403):
        return HubError(f"{uri}: gated or private model (HTTP {status}): accept its terms on "
                            f"the Hub with your account and {TOKEN_HINT}")
    if isinstance(err, RevisionNotFoundError):
        return HubError(f"{uri}: model {ref.repo_id} has no revision '{ref.revision}'")
    if isinstance(err, RepositoryNotFoundError):
        return HubError(f"{uri}: no model {ref.repo_id} on the Hub (if it is private, "
                            f"{TOKEN_HINT})")
    if isinstance(err, LocalEntryNotFoundError) and _offline():
        return HubError(f"{uri}: not in the Hugging Face cache {cache} and HF_HUB_OFFLINE=1 "
                            "forbids downloading it; run once online or pre-populate the cache")
    if isinstance(err, LocalEntryNotFoundError | HfHubHTTPError | OSError):
        endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
        return HubError(f"{uri}: the Hugging Face Hub ({endpoint}) is unreachable and the "
                            f"snapshot is not in the cache {cache}: {type(err).__name__}")
    return HubError(f"{uri}: {type(err).__name__}")


def snapshot(uri: str, *, cache_dir: str | Path | None = None) -> Path:
    """The local snapshot directory of `uri`, downloaded into the Hub cache when missing."""
    from huggingface_hub import constants, snapshot_download

    ref = parse_hf(uri)
    cache = _cache(cache_dir)
    # huggingface_hub reads HF_HUB_OFFLINE once, at import; the environment now is what counts
    constants.HF_HUB_OFFLINE = _offline()
    try:
        path = snapshot_download(
            ref.repo_id, revision=ref.revision, cache_dir=str(cache),
            token=os.environ.get("HF_TOKEN") or False, local_files_only=_offline(),
            endpoint=os.environ.get("HF_ENDPOINT") or None)
    except Exception as err:  # noqa: BLE001 - every failure becomes a named HubError
        raise _explain(uri, ref, cache, err) from None
    return Path(path)


def _mounted(uri: str) -> str:
    """pvc://CLAIM/PATH -> where the operator mounts it in pods (/mnt/pvc/CLAIM/PATH)."""
    return "/mnt/pvc/" + uri[len("pvc://"):].strip("/") if uri.startswith("pvc://") else uri


def hub_env(model: dict, artifact_root: str | None = None) -> list[dict]:
    """Container env for pods that resolve `spec.model` (a camelCase dict): `HF_TOKEN` from the
    Secret in `hfTokenSecret` by `secretKeyRef` (the kubelet reads it; the operator never does)
    and `HF_HUB_CACHE` from `cacheDir`, else `hf-cache` under a pvc:// artifact root (the claim
    the pods mount). `HF_HUB_OFFLINE=0` lifts the image's offline default for these pods only.
    Empty for models that are not hf://."""
    if not str(model.get("uri", "")).lower().startswith("hf://"):
        return []
    env: list[dict] = [{"name": "HF_HUB_OFFLINE", "value": "0"}]
    secret = model.get("hfTokenSecret")
    if secret:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": secret["name"], "key": secret.get("key") or "token"}}})
    cache = model.get("cacheDir")
    if not cache and artifact_root and artifact_root.startswith("pvc://"):
        cache = artifact_root.rstrip("/") + "/hf-cache"
    if cache:
        env.append({"name": "HF_HUB_CACHE", "value": _mounted(cache)})
    return env
