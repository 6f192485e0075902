"""The Helm chart `charts/tierserve`: rendered and linted with Helm's own Go SDK (helm-python-sdk),
then applied to the real kube-apiserver (server-side dry-run of every object; a real apply of the
RBAC, exercised with the operator's and the job's own ServiceAccount tokens).

The test apiserver has no prometheus-operator: `_install_monitoring_crds` installs minimal
structural CRDs for PodMonitor and PrometheusRule (no field schema), so their dry-run checks the
envelope (group, version, kind, metadata) but not the spec; the spec of the PrometheusRule is
checked by promtool in tests/test_dashboard.py.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="helm-python-sdk: pip install -e .[test]")

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "tierserve"
RELEASE_NS = "tierserve-system"

# Contract 5: exactly these (apiGroup, resource) -> verbs, and nothing else.
CONTRACT_RULES: dict[tuple[str, str], set[str]] = {
    ("tierserve.io", "prunedmodels"): {"get", "list", "watch", "patch"},
    ("tierserve.io", "prunedmodels/status"): {"get", "patch", "update"},
    ("ray.io", "rayjobs"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    ("ray.io", "rayservices"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    ("", "configmaps"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("rbac.authorization.k8s.io", "roles"): {"get", "create", "patch", "delete"},
    ("rbac.authorization.k8s.io", "rolebindings"): {"get", "create", "patch", "delete"},
    ("", "serviceaccounts"): {"get"},
    ("", "secrets"): {"get"},  # hfTokenSecret's mark, read as metadata only (operator/secrets.py)
    ("", "namespaces"): {"list", "watch"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
}
CLUSTER_SCOPED = {("", "namespaces"), ("apiextensions.k8s.io", "customresourcedefinitions")}
NAMESPACED = {k: v for k, v in CONTRACT_RULES.items() if k not in CLUSTER_SCOPED}
ALL_MONITORING = {"monitoring": {"podMonitor": {"enabled": True},
                                 "prometheusRule": {"enabled": True}}}


def render(values: dict[str, Any] | None = None, *, name: str = "ts",
           namespace: str = RELEASE_NS) -> list[dict[str, Any]]:
    """Every object the chart renders (schema-validated first, as `helm install` does)."""
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(values or {})
        manifests = chart.render(values or {}, name=name, namespace=namespace, is_install=True)
    docs = []
    for path, text in sorted(manifests.items()):
        if path.endswith(".yaml"):
            docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def granted(rules: list[dict]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def operator_container(docs: list[dict]) -> dict:
    (deploy,) = by_kind(docs, "Deployment")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    return container


# -- pure: lint, schema, render -----------------------------------------------------------------
@pytest.mark.parametrize("values", [{}, {"watchNamespaces": ["team-a", "team-b"], **ALL_MONITORING}])
def test_chart_lints_clean_in_strict_mode(values: dict) -> None:
    report = helm.lint(CHART, values, strict=True, namespace=RELEASE_NS, kube_version="v1.20.2")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize("bad", [
    {"operator": {"backend": "docker"}},
    {"watchNamespaces": ["Team_A"]},
    {"replicaCount": 2},  # unknown keys are typos: rejected, never ignored
    {"operator": {"extraEnv": [{"name": "TIERSERVE_BACKEND", "value": "x"}]}},
    {"monitoring": {"podMonitor": {"interval": "often"}}},
    {"operator": {"artifactRoot": "relative/dir"}},
    {"serve": {"httpPort": 0}},
    {"serve": {"httpPort": "8000"}},
    {"operator": {"hfTokenSecretLabel": ""}},
    {"operator": {"hfTokenSecretLabel": "a=b=c"}},
    {"operator": {"extraEnv": [{"name": "TIERSERVE_SERVE_PORT", "value": "1"}]}},
    {"jobServiceAccount": {"namespaces": ["x"]}},  # gone with the all-namespaces mode
])
def test_schema_rejects_bad_values(bad: dict) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError):
        chart.validate_schema(bad)


def test_raycluster_backend_needs_a_dashboard_address() -> None:
    with pytest.raises(helm.HelmError, match="rayDashboard is required"):
        render({"operator": {"backend": "raycluster"}})
    env = {e["name"]: e["value"] for e in operator_container(render(
        {"operator": {"backend": "raycluster", "rayDashboard": "http://ray-head:8265"}}))["env"]}
    assert env["TIERSERVE_BACKEND"] == "raycluster"
    assert env["TIERSERVE_RAY_DASHBOARD"] == "http://ray-head:8265"


def test_operator_deployment_runs_kopf_per_contract_and_hardened() -> None:
    docs = render({"operator": {"jobImage": "registry.local/tierserve:cuda",
                                "artifactRoot": "pvc://models/tierserve"}})
    c = operator_container(docs)
    assert c["command"] == ["kopf", "run", "--standalone", "-m", "tierserve.operator.handlers",
                            "--liveness=http://0.0.0.0:8080/healthz", f"--namespace={RELEASE_NS}"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["TIERSERVE_BACKEND"] == "kuberay"
    assert env["TIERSERVE_IMAGE"] == "registry.local/tierserve:cuda"
    assert env["TIERSERVE_JOB_SERVICE_ACCOUNT"] == "tierserve-job"
    assert env["TIERSERVE_ARTIFACT_ROOT"] == "pvc://models/tierserve"
    assert "TIERSERVE_ARTIFACT_ROOT" not in {e["name"] for e in operator_container(render())["env"]}
    for probe in (c["livenessProbe"], c["readinessProbe"]):
        assert probe["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {"name": "health", "containerPort": 8080, "protocol": "TCP"} in c["ports"]
    assert c["resources"]["limits"] and c["resources"]["requests"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] and sc["runAsNonRoot"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    (deploy,) = by_kind(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert any(v["name"] == "tmp" and "emptyDir" in v for v in pod["volumes"])
    assert deploy["spec"]["replicas"] == 1 and deploy["spec"]["strategy"]["type"] == "Recreate"
    assert pod["serviceAccountName"] == "ts-tierserve-operator"


def test_default_watches_the_release_namespace_alone_with_a_role_there() -> None:
    """No all-namespaces mode: empty watchNamespaces is the release namespace, granted by a Role;
    the only ClusterRole holds the cluster-scoped reads."""
    docs = render()
    cmd = operator_container(docs)["command"]
    assert "--all-namespaces" not in cmd
    assert [a for a in cmd if a.startswith("--namespace")] == [f"--namespace={RELEASE_NS}"]
    (cluster_role,) = by_kind(docs, "ClusterRole")
    assert set(granted(cluster_role["rules"])) == CLUSTER_SCOPED
    (role,) = by_kind(docs, "Role")
    assert role["metadata"]["namespace"] == RELEASE_NS and granted(role["rules"]) == NAMESPACED
    (binding,) = by_kind(docs, "RoleBinding")
    assert binding["metadata"]["namespace"] == RELEASE_NS
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "ts-tierserve-operator",
                                    "namespace": RELEASE_NS}]
    jobs = [sa for sa in by_kind(docs, "ServiceAccount") if sa["metadata"]["name"] == "tierserve-job"]
    assert [sa["metadata"]["namespace"] for sa in jobs] == [RELEASE_NS]


@pytest.mark.parametrize("values,namespace", [
    ({"watchNamespaces": ["team-a", "kube-system"]}, RELEASE_NS),
    ({"watchNamespaces": ["kube-public"]}, RELEASE_NS),
    ({}, "kube-system"),  # the default (the release namespace) is refused there too
    ({"rbac": {"create": False}, "watchNamespaces": ["kube-system"]}, RELEASE_NS),
])
def test_system_namespaces_are_refused(values: dict, namespace: str) -> None:
    with pytest.raises(helm.HelmError, match="is refused; the operator is never granted rights"):
        render(values, namespace=namespace)


def test_grants_only_in_listed_namespaces() -> None:
    docs = render({"watchNamespaces": ["team-a"], **ALL_MONITORING})
    for d in docs:
        if d["kind"] in ("Role", "RoleBinding"):
            assert d["metadata"]["namespace"] == "team-a", d["metadata"]
    # only cluster-scoped reads cluster-wide: configmaps, roles, secrets... never
    cluster = [r for d in by_kind(docs, "ClusterRole") for r in d["rules"]]
    assert set(granted(cluster)) == CLUSTER_SCOPED
    (pm,) = by_kind(docs, "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}


def test_serve_port_and_hf_secret_label_reach_the_operator() -> None:
    env = {e["name"]: e["value"] for e in operator_container(render())["env"]}
    assert env["TIERSERVE_SERVE_PORT"] == "8000"  # explicit, never Ray's implicit default
    assert env["TIERSERVE_HF_SECRET_LABEL"] == "tierserve.io/hf-token=true"
    env = {e["name"]: e["value"] for e in operator_container(render({
        "serve": {"httpPort": 8123},
        "operator": {"hfTokenSecretLabel": "example.com/hf-ok"}}))["env"]}
    assert env["TIERSERVE_SERVE_PORT"] == "8123"
    assert env["TIERSERVE_HF_SECRET_LABEL"] == "example.com/hf-ok"
    from tierserve.operator.config import OperatorConfig

    cfg = OperatorConfig.from_env(env)
    assert (cfg.serve_port, cfg.hf_secret_label) == (8123, "example.com/hf-ok")


def test_watch_namespaces_mode_uses_a_role_per_namespace() -> None:
    docs = render({"watchNamespaces": ["team-a", "team-b"]})
    cmd = operator_container(docs)["command"]
    assert "--all-namespaces" not in cmd
    assert [a for a in cmd if a.startswith("--namespace")] == ["--namespace=team-a",
                                                               "--namespace=team-b"]
    (cluster_role,) = by_kind(docs, "ClusterRole")
    assert set(granted(cluster_role["rules"])) == CLUSTER_SCOPED
    roles = by_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert granted(role["rules"]) == NAMESPACED
    bindings = by_kind(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    jobs = [sa["metadata"]["namespace"] for sa in by_kind(docs, "ServiceAccount")
            if sa["metadata"]["name"] == "tierserve-job"]
    assert sorted(jobs) == ["team-a", "team-b"]


@pytest.mark.parametrize("values", [{}, {"watchNamespaces": ["team-a"]}])
def test_secrets_get_only_in_roles_and_no_wildcards(values: dict) -> None:
    docs = render({**values, **ALL_MONITORING})
    rules = [r for d in docs if d["kind"] in ("Role", "ClusterRole") for r in d["rules"]]
    assert rules
    for rule in rules:
        assert "*" not in rule["resources"] + rule["verbs"] + rule["apiGroups"], rule
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
    for d in by_kind(docs, "ClusterRole"):
        assert all("secrets" not in r["resources"] for r in d["rules"]), d
    secret_rules = [r for d in by_kind(docs, "Role") for r in d["rules"]
                    if "secrets" in r["resources"]]
    assert secret_rules and all(r["resources"] == ["secrets"] and r["verbs"] == ["get"]
                                for r in secret_rules)


def test_monitoring_objects_carry_the_generated_dashboard_and_rules() -> None:
    docs = render(ALL_MONITORING)
    (cm,) = by_kind(docs, "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["tierserve-dashboard.json"])
    generated = json.loads((CHART / "files" / "tierserve-dashboard.json").read_text())
    assert dashboard == generated and dashboard["panels"]
    (rule,) = by_kind(docs, "PrometheusRule")
    file_groups = yaml.safe_load((CHART / "files" / "tierserve-rules.yaml").read_text())["groups"]
    assert rule["spec"]["groups"] == file_groups
    (pm,) = by_kind(docs, "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"matchNames": [RELEASE_NS]}  # watched only
    off = render({"monitoring": {"dashboard": {"enabled": False}}})
    assert not {"ConfigMap", "PodMonitor", "PrometheusRule"} & {d["kind"] for d in off}


# -- the real apiserver ------------------------------------------------------------------------
def _monitoring_crd(kind: str, plural: str) -> dict:
    schema = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.monitoring.coreos.com"},
            "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
                     "names": {"kind": kind, "plural": plural, "listKind": f"{kind}List",
                               "singular": kind.lower()},
                     "versions": [{"name": "v1", "served": True, "storage": True,
                                   "schema": {"openAPIV3Schema": schema}}]}}


def _install_monitoring_crds(cp) -> None:
    """Minimal structural stand-ins for prometheus-operator's CRDs (envelope only, no spec)."""
    crds = [_monitoring_crd("PodMonitor", "podmonitors"),
            _monitoring_crd("PrometheusRule", "prometheusrules")]
    cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
               input=yaml.safe_dump_all(crds))
    cp.kubectl("wait", "--for=condition=established", "--timeout=60s",
               *(f"crd/{c['metadata']['name']}" for c in crds))


def _create_namespaces(cp, *names: str) -> None:
    for ns in names:
        cp.kubectl("create", "namespace", ns)


@pytest.fixture
def ns_prefix() -> str:
    return f"ts{uuid.uuid4().hex[:6]}"


@pytest.mark.slow
@pytest.mark.k8s
@pytest.mark.parametrize("mode", ["release-namespace", "watch-namespaces"])
def test_every_rendered_object_passes_server_side_dry_run(control_plane, ns_prefix, mode) -> None:
    cp = control_plane
    _install_monitoring_crds(cp)
    release_ns, watched = f"{ns_prefix}-sys", [f"{ns_prefix}-a", f"{ns_prefix}-b"]
    _create_namespaces(cp, release_ns, *watched)
    values = {**ALL_MONITORING, **({"watchNamespaces": watched} if mode != "release-namespace"
                                   else {})}
    docs = render(values, name=f"{ns_prefix}-rel", namespace=release_ns)
    crd = (CHART / "crds" / "prunedmodels.tierserve.io.yaml").read_text()
    out = cp.kubectl("apply", "--server-side", "--dry-run=server", "--force-conflicts",
                     "-f", "-", input=crd + "\n---\n" + yaml.safe_dump_all(docs)).stdout
    applied = [line for line in out.splitlines() if "serverside-applied (server dry run)" in line]
    assert len(applied) == len(docs) + 1, out
    for kind in ("deployment.apps", "podmonitor.monitoring.coreos.com",
                 "prometheusrule.monitoring.coreos.com", "configmap", "serviceaccount",
                 "clusterrole.rbac.authorization.k8s.io",
                 "customresourcedefinition.apiextensions.k8s.io"):
        assert any(line.startswith(kind + "/") for line in applied), (kind, out)


def _can_i(cp, kubeconfig: Path, verb: str, resource: str, ns: str | None) -> bool:
    resource, _, sub = resource.partition("/")
    args = ["auth", "can-i", verb, resource] + (["-n", ns] if ns else [])
    res = cp.kubectl(*args, *([f"--subresource={sub}"] if sub else []), kubeconfig=kubeconfig,
                     check=False)
    assert res.stdout.strip() in ("yes", "no"), res
    assert "doesn't have a resource type" not in res.stderr, res.stderr  # kubectl must map it
    return res.stdout.strip() == "yes"


def _resource(group: str, resource: str) -> str:
    """`kind.group[/subresource]`, as `kubectl auth can-i` takes it (subresource split off)."""
    name, _, sub = resource.partition("/")
    full = f"{name}.{group}" if group else name
    return f"{full}/{sub}" if sub else full


def _install_resource_crds(cp) -> None:
    """The chart's PrunedModel CRD and the operator tests' KubeRay CRD double (structural
    schemas only), so kubectl can map `prunedmodels` and `rayjobs` for `auth can-i`."""
    kuberay = ROOT / "tests" / "manifests" / "kuberay-crds.yaml"
    cp.kubectl("apply", "-f", str(CHART / "crds" / "prunedmodels.tierserve.io.yaml"),
               "-f", str(kuberay))
    cp.kubectl("wait", "--for=condition=established", "--timeout=60s",
               "crd/prunedmodels.tierserve.io", "crd/rayjobs.ray.io", "crd/rayservices.ray.io")


@pytest.mark.slow
@pytest.mark.k8s
def test_applied_rbac_lets_the_operator_do_its_job_and_nothing_more(control_plane,
                                                                   ns_prefix) -> None:
    """Apply the chart's accounts and RBAC for real (watchNamespaces mode), then act with the
    operator's token: every contract verb is allowed in the watched namespace, nothing outside it,
    of secrets only `get` in the watched namespace (never list/watch, never elsewhere, never in
    kube-system); and the operator can hand the job account rights on exactly one ConfigMap."""
    cp = control_plane
    _install_resource_crds(cp)
    release_ns, watched, other = f"{ns_prefix}-sys", f"{ns_prefix}-a", f"{ns_prefix}-x"
    _create_namespaces(cp, release_ns, watched, other)
    docs = render({"watchNamespaces": [watched]}, name=f"{ns_prefix}-rel", namespace=release_ns)
    rbac = [d for d in docs if d["kind"] in ("ServiceAccount", "Role", "RoleBinding",
                                             "ClusterRole", "ClusterRoleBinding")]
    cp.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(rbac))
    sa = f"{ns_prefix}-rel-tierserve-operator"
    op = cp.serviceaccount_kubeconfig(release_ns, sa)
    for (group, resource), verbs in CONTRACT_RULES.items():
        scope = None if (group, resource) in CLUSTER_SCOPED else watched
        for verb in verbs:
            assert _can_i(cp, op, verb, _resource(group, resource), scope), (verb, resource)
        if scope:
            assert not _can_i(cp, op, "get", _resource(group, resource), other), resource
    for verb in ("list", "watch", "create", "update", "patch", "delete"):
        assert not _can_i(cp, op, verb, "secrets", watched), verb
    for ns in (other, "kube-system", "default"):
        assert not _can_i(cp, op, "get", "secrets", ns), ns
    for resource in ("configmaps", "roles.rbac.authorization.k8s.io",
                     "rolebindings.rbac.authorization.k8s.io"):
        assert not _can_i(cp, op, "create", resource, "kube-system"), resource
    assert not _can_i(cp, op, "delete", "prunedmodels.tierserve.io", watched)
    assert not _can_i(cp, op, "create", "pods", watched)
    _operator_grants_job_its_report_only(cp, op, watched)


def _operator_grants_job_its_report_only(cp, op_kubeconfig: Path, ns: str) -> None:
    """What the operator does per job (contract 5), done with the operator's own token: the
    apiserver's escalation check passes only because the chart granted the same verbs."""
    cm_objs = [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": n, "namespace": ns}}
               for n in ("m-report-0123abcd", "other-config")]
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "m-report-writer-0123abcd", "namespace": ns},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"],
                       "resourceNames": ["m-report-0123abcd"],
                       "verbs": ["get", "patch", "update"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "m-report-writer-0123abcd", "namespace": ns},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                           "name": "m-report-writer-0123abcd"},
               "subjects": [{"kind": "ServiceAccount", "name": "tierserve-job",
                             "namespace": ns}]}
    cp.kubectl("create", "-f", "-", kubeconfig=op_kubeconfig,
               input=yaml.safe_dump_all([*cm_objs, role, binding]))
    job = cp.serviceaccount_kubeconfig(ns, "tierserve-job")  # the chart made it; reuses it
    patch = '{"data": {"report.json": "{}"}}'
    cp.kubectl("-n", ns, "patch", "configmap", "m-report-0123abcd", "-p", patch, kubeconfig=job)
    denied = cp.kubectl("-n", ns, "patch", "configmap", "other-config", "-p", patch,
                        kubeconfig=job, check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()
    assert not _can_i(cp, job, "list", "configmaps", ns)
    assert not _can_i(cp, job, "get", "secrets", ns)
