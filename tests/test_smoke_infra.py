"""Smoke tests for the real test infrastructure: control plane, Ray head, Prometheus."""

from __future__ import annotations

import json
import textwrap
import time

import pytest
from fixtures.procs import free_port

WIDGET_CRD = textwrap.dedent("""\
    apiVersion: apiextensions.k8s.io/v1
    kind: CustomResourceDefinition
    metadata:
      name: widgets.example.io
    spec:
      group: example.io
      scope: Namespaced
      names: {plural: widgets, singular: widget, kind: Widget}
      versions:
        - name: v1
          served: true
          storage: true
          schema:
            openAPIV3Schema:
              type: object
              required: [spec]
              properties:
                spec:
                  type: object
                  required: [replicas]
                  properties:
                    replicas: {type: integer, minimum: 1}
    """)


def _widget(namespace: str, name: str, replicas: object) -> str:
    return json.dumps({"apiVersion": "example.io/v1", "kind": "Widget",
                       "metadata": {"name": name, "namespace": namespace},
                       "spec": {"replicas": replicas}})


def _wait_gone(probe, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return True
        time.sleep(0.5)
    return False


@pytest.mark.slow
@pytest.mark.k8s
def test_crd_schema_validation_rejects_invalid_objects(control_plane, namespace):
    control_plane.kubectl("apply", "-f", "-", input=WIDGET_CRD)
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                          "crd/widgets.example.io")

    bad = control_plane.kubectl("apply", "-f", "-", input=_widget(namespace, "bad", 0),
                                check=False)
    assert bad.returncode != 0
    assert "spec.replicas" in bad.stderr, bad.stderr
    wrong_type = control_plane.kubectl("apply", "-f", "-", input=_widget(namespace, "t", "two"),
                                       check=False)
    assert wrong_type.returncode != 0
    assert "spec.replicas" in wrong_type.stderr, wrong_type.stderr

    control_plane.kubectl("apply", "-f", "-", input=_widget(namespace, "good", 3))
    got = control_plane.kubectl("get", "widget", "good", "-n", namespace, "-o", "json")
    assert json.loads(got.stdout)["spec"]["replicas"] == 3
    missing = control_plane.kubectl("get", "widget", "bad", "-n", namespace, check=False)
    assert missing.returncode != 0 and "NotFound" in missing.stderr


@pytest.mark.slow
@pytest.mark.k8s
def test_owner_reference_garbage_collection(control_plane, namespace):
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    core = client.CoreV1Api(control_plane.api_client)
    owner = core.create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="owner"), data={"k": "v"}))
    ref = client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner",
                                  uid=owner.metadata.uid)
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="child", owner_references=[ref]), data={"k": "v"}))
    core.read_namespaced_config_map("child", namespace)

    core.delete_namespaced_config_map("owner", namespace)

    def child_gone() -> bool:
        try:
            core.read_namespaced_config_map("child", namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    assert _wait_gone(child_gone, timeout=60), "garbage collector did not delete the child"


@pytest.mark.slow
@pytest.mark.k8s
def test_rbac_serviceaccount_sees_only_what_its_role_allows(control_plane, namespace):
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "cm-reader", "namespace": namespace},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"],
                       "verbs": ["get", "list"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "cm-reader", "namespace": namespace},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                           "name": "cm-reader"},
               "subjects": [{"kind": "ServiceAccount", "name": "reader",
                             "namespace": namespace}]}
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": [role, binding]}))
    sa_cfg = control_plane.serviceaccount_kubeconfig(namespace, "reader")

    allowed = control_plane.kubectl("get", "configmaps", "-n", namespace, kubeconfig=sa_cfg)
    assert allowed.returncode == 0
    denied = control_plane.kubectl("get", "secrets", "-n", namespace, kubeconfig=sa_cfg,
                                   check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower(), denied.stderr
    assert f"system:serviceaccount:{namespace}:reader" in denied.stderr
    other_ns = control_plane.kubectl("get", "configmaps", "-n", "default", kubeconfig=sa_cfg,
                                     check=False)
    assert other_ns.returncode != 0 and "forbidden" in other_ns.stderr.lower()


@pytest.mark.slow
def test_ray_task_and_job_run_on_real_local_cluster(ray_cluster):
    import ray
    from ray.job_submission import JobStatus

    ray_cluster.connect()
    # Ray reports the node IP rather than 127.0.0.1; the port and the session dir prove the
    # driver joined the fixture's cluster and not a fresh local one.
    gcs_port = ray_cluster.gcs_address.rsplit(":", 1)[1]
    assert ray.get_runtime_context().gcs_address.endswith(f":{gcs_port}")
    [node] = ray.nodes()
    assert node["ObjectStoreSocketName"].startswith(str(ray_cluster.temp_dir))

    @ray.remote
    def double(x: int) -> int:
        return 2 * x

    assert ray.get(double.remote(2)) == 4

    jobs = ray_cluster.job_client()
    job_id = jobs.submit_job(entrypoint="python -c \"print('tierserve-job-' + str(6 * 7))\"")
    deadline = time.monotonic() + 120
    status = jobs.get_job_status(job_id)
    while status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.monotonic() < deadline, f"job {job_id} still {status}"
        time.sleep(0.5)
        status = jobs.get_job_status(job_id)
    logs = jobs.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs
    assert "tierserve-job-42" in logs


@pytest.mark.slow
def test_prometheus_scrapes_a_real_exporter(prometheus_factory):
    from prometheus_client import CollectorRegistry, Counter, start_http_server

    registry = CollectorRegistry()
    counter = Counter("tierserve_smoke_events", "smoke-test events", registry=registry)
    counter.inc(7)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        prom = prometheus_factory([f"127.0.0.1:{port}"], job="smoke")
        result = prom.wait_for('tierserve_smoke_events_total{job="smoke"}', timeout=30)
        assert prom.scalar(result) == 7.0
        counter.inc(5)
        result = prom.wait_for('tierserve_smoke_events_total{job="smoke"}', timeout=30,
                               predicate=lambda r: prom.scalar(r) == 12.0)
        assert prom.scalar(result) == 12.0
    finally:
        server.shutdown()
        thread.join(timeout=5)
