"""Shared fixtures. The real components live in tests/fixtures/, loaded as plugins."""

import os

# Ray 2.60 turns on token auth for local clusters; the tests talk to their own loopback cluster.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = [
    "fixtures.assets",
    "fixtures.controlplane",
    "fixtures.ray_cluster",
    "fixtures.prometheus",
]
