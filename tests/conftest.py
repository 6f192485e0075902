"""Shared fixtures. The real components live in tests/fixtures/, loaded as plugins."""

import os
import sys
from pathlib import Path

# `.venv/bin/pytest` run without activating the venv (README command 2): the venv's own tools
# (ruff, hadolint, ray, tierserve) are found on PATH as if it were activated.
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])

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
