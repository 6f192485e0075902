"""Shared by the serving tests: a local Serve instance on the `ray_cluster` fixture, deploying."""

from __future__ import annotations

import contextlib

import pytest

__all__ = ["deploy", "serve_url"]


@pytest.fixture(scope="module")
def serve_url(ray_cluster):
    """Serve's HTTP proxy on a free loopback port of the session's Ray; shut down after the module
    (the apps go with it, freeing their CPUs for the next module)."""
    from fixtures.procs import free_ports
    from ray import serve

    ray_cluster.connect()
    # A Serve instance left by an earlier module (e.g. the operator's, started through the REST
    # API) keeps its own HTTP port and would ignore ours: start from a clean Serve.
    with contextlib.suppress(Exception):
        serve.shutdown()
    port = free_ports(1)[0]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    with contextlib.suppress(Exception):
        serve.shutdown()


def deploy(name: str, doc: dict, report: dict | str, **extra) -> None:
    """build_app (contract 2) and run it at route prefix /<name>."""
    from ray import serve

    from tierserve.serving.app import build_app

    app = build_app({"name": name, "spec": doc.get("spec", doc),
                     "report": report, **extra})
    serve.run(app, name=name, route_prefix=f"/{name}")
