"""Shared helpers of the operator tests (tests/test_operator_*.py): CRDs, the chart's RBAC, the
operator as a real `kopf run` subprocess under its ServiceAccount, and small waits on the API.

The only double here is `manifests/kuberay-crds.yaml` (KubeRay's CRDs, structural schema only);
the tests play the KubeRay controller by patching RayJob/RayService status.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from fixtures.procs import ManagedProcess, free_port

ROOT = Path(__file__).resolve().parents[1]
CRD = ROOT / "charts" / "tierserve" / "crds" / "prunedmodels.tierserve.io.yaml"
KUBERAY_CRDS = Path(__file__).parent / "manifests" / "kuberay-crds.yaml"
CHART = ROOT / "charts" / "tierserve"
RBAC_KINDS = {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
T = TypeVar("T")


def wait_for(probe: Callable[[], T], timeout: float, what: str, interval: float = 0.5) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - "not yet"
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def install_crds(cp) -> None:
    """The PrunedModel CRD (checked-in chart copy) and the KubeRay CRD double; idempotent."""
    cp.kubectl("apply", "-f", str(CRD), "-f", str(KUBERAY_CRDS))
    cp.kubectl("wait", "--for=condition=established", "--timeout=60s",
               "crd/prunedmodels.tierserve.io", "crd/rayjobs.ray.io", "crd/rayservices.ray.io")


def render_rbac(namespace: str) -> list[dict[str, Any]]:
    """The chart's ServiceAccounts and RBAC for a release watching only `namespace`."""
    import helm_python as helm

    values = {"watchNamespaces": [namespace]}
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name=namespace, namespace=namespace, is_install=True)
    docs = [d for path, text in sorted(manifests.items()) if path.endswith(".yaml")
            for d in yaml.safe_load_all(text) if d]
    return [d for d in docs if d["kind"] in RBAC_KINDS]


def install_operator_rbac(cp, namespace: str) -> Path:
    """Apply the chart's RBAC; a kubeconfig of the operator's ServiceAccount."""
    docs = render_rbac(namespace)
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    (sa,) = [d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"
             and d["metadata"]["name"].endswith("-operator")]
    return cp.serviceaccount_kubeconfig(namespace, sa)


class Operator:
    """`kopf run --standalone -m tierserve.operator.handlers --namespace=NS` as a subprocess."""

    def __init__(self, kubeconfig: Path, namespace: str, log_dir: Path, **env: str) -> None:
        self.kubeconfig, self.namespace, self.log_dir = kubeconfig, namespace, log_dir
        # the tests' data lie under the temp dir and the checkout: the operator may read them
        roots = os.pathsep.join([tempfile.gettempdir(), str(ROOT)])
        self.env = {"KUBECONFIG": str(kubeconfig), "TIERSERVE_POLL_SECONDS": "1",
                    "PYTHONUNBUFFERED": "1", "TIERSERVE_DATA_ROOTS": roots, **env}
        self.proc: ManagedProcess | None = None
        self.starts = 0

    def start(self) -> Operator:
        self.starts += 1
        port = free_port()
        argv = [sys.executable, "-m", "kopf", "run", "--standalone", "-m",
                "tierserve.operator.handlers", f"--namespace={self.namespace}",
                f"--liveness=http://127.0.0.1:{port}/healthz"]
        self.proc = ManagedProcess(f"operator-{self.starts}", argv,
                                   self.log_dir / f"operator-{self.starts}.log", env=self.env,
                                   cwd=self.log_dir).start()
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, as a crashed or evicted operator pod."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=10)

    def log(self) -> str:
        return "\n".join((self.log_dir / f"operator-{i}.log").read_text(errors="replace")
                         for i in range(1, self.starts + 1))


def get_json(cp, *args: str) -> Any:
    return json.loads(cp.kubectl("get", *args, "-o", "json").stdout)


def pm_status(cp, ns: str, name: str) -> dict[str, Any]:
    return get_json(cp, "-n", ns, "prunedmodel", name).get("status") or {}


def phase_is(cp, ns: str, name: str, *phases: str) -> dict[str, Any] | None:
    st = pm_status(cp, ns, name)
    return st if st.get("phase") in phases else None


def events_for(cp, ns: str, name: str) -> list[tuple[str, str]]:
    items = get_json(cp, "-n", ns, "events", f"--field-selector=involvedObject.name={name}")["items"]
    items.sort(key=lambda e: e.get("firstTimestamp") or e["metadata"]["creationTimestamp"])
    return [(e["type"], e["reason"]) for e in items]


def cond(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in status.get("conditions") or [] if c["type"] == ctype)


def small_debian(out: Path, per_split: int = 120, extra_docs: int = 300) -> dict[str, str]:
    """A real subset of examples/data/debian (the first queries of each split, their relevant
    documents and some others as distractors), so the job's full-corpus evaluation stays short."""
    src = ROOT / "examples" / "data" / "debian"

    def rows(name: str) -> list[dict]:
        with gzip.open(src / f"{name}.jsonl.gz", "rt") as fh:
            return [json.loads(line) for line in fh]

    seen: dict[str, int] = {}
    queries = []
    for q in rows("queries"):
        seen[q["split"]] = seen.get(q["split"], 0) + 1
        if seen[q["split"]] <= per_split:
            queries.append(q)
    ids = {q["id"] for q in queries}
    qrels = [r for r in rows("qrels") if r["query_id"] in ids]
    wanted = {r["doc_id"] for r in qrels}
    corpus = rows("corpus")
    docs = [d for d in corpus if d["id"] in wanted]
    docs += [d for d in corpus if d["id"] not in wanted][:extra_docs]
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, items in (("queries", queries), ("corpus", docs), ("qrels", qrels)):
        paths[name] = str(out / f"{name}.jsonl.gz")
        with gzip.open(paths[name], "wt") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in items)
    return paths


def tiny_spec(data_dir: Path, **pruning: Any) -> dict[str, Any]:
    """examples/minilm-pass.yaml on `small_debian` data with small limits (a fast real job)."""
    doc = yaml.safe_load((ROOT / "examples" / "minilm-pass.yaml").read_text())
    data = doc["spec"]["data"]
    paths = small_debian(data_dir)
    for src in (data["calibration"], data["evaluation"]):
        src.update(paths)
    data["evaluation"]["limit"] = 100
    # a small latency probe, and the loosest latency gate (omitted, it would be 1.0): on a loaded
    # 2-core machine the ratio at this size is noise; quality and size gates judge the real model
    doc["spec"]["pruning"].update({"calibrationSamples": 32, **pruning})
    doc["spec"]["pruning"]["budget"].update({"seqLen": 32, "batch": 8})
    doc["spec"]["gates"]["maxLatencyRatio"] = 2.0
    doc["spec"]["serving"] = {"full": {"cpus": 0.5}, "pruned": {"cpus": 0.5}}  # 2-CPU Ray head
    return doc["spec"]


def manifest(name: str, spec: dict[str, Any], annotations: dict[str, str] | None = None) -> str:
    meta: dict[str, Any] = {"name": name}
    if annotations:
        meta["annotations"] = annotations
    return yaml.safe_dump({"apiVersion": "tierserve.io/v1alpha1", "kind": "PrunedModel",
                           "metadata": meta, "spec": spec})


# -- the CRD's own schema, as a validator of what the operator writes ---------------------------
def _to_jsonschema(node: Any) -> Any:
    """Structural OpenAPI v3.0 (the CRD) -> JSON Schema draft 4: `nullable` becomes a null type;
    objects with `properties` and no preserve-unknown-fields refuse unknown keys (the apiserver
    would silently prune them)."""
    if isinstance(node, list):
        return [_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _to_jsonschema(v) for k, v in node.items()
           if k not in ("nullable", "x-kubernetes-preserve-unknown-fields")}
    if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


def status_validator():
    """A jsonschema validator of `.status` from the checked-in CRD."""
    import jsonschema

    crd = yaml.safe_load(CRD.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    return jsonschema.Draft4Validator(_to_jsonschema(schema))


def status_errors(status: dict[str, Any]) -> list[str]:
    """Why `status` (a merge patch: null = delete) breaks the CRD's schema; [] when it is valid.
    Strict JSON too: a NaN or Infinity anywhere is an error."""
    try:
        json.dumps(status, allow_nan=False)
    except ValueError as err:
        return [f"not JSON: {err}"]
    body = {k: v for k, v in status.items() if v is not None}
    return [f"{'/'.join(map(str, e.path))}: {e.message}"
            for e in status_validator().iter_errors(body)]


def patch_log_errors(path: Path) -> list[str]:
    """Every status patch the operator recorded (TIERSERVE_PATCH_LOG), checked against the CRD."""
    if not path.exists():
        return []
    bad = []
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        bad += [f"{entry['name']}: {e}" for e in status_errors(entry["status"])]
    return bad
