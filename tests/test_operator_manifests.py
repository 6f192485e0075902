"""The real apiserver accepts every manifest in examples/ and rejects the invalid corpus in
tests/manifests/invalid/, each with a message that names the bad field (its `# expect:` line)."""

from __future__ import annotations

from pathlib import Path

import pytest
from operator_harness import ROOT, install_crds

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

INVALID = sorted((Path(__file__).parent / "manifests" / "invalid").glob("*.yaml"))
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.yaml")
                  if "kind: PrunedModel" in p.read_text())


def test_the_corpus_is_not_empty():
    assert len(INVALID) >= 15 and EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_accepted(control_plane, namespace, path):
    install_crds(control_plane)
    out = control_plane.kubectl("apply", "-n", namespace, "-f", str(path)).stdout
    assert "prunedmodel.tierserve.io/" in out and "created" in out


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_manifests_are_rejected_naming_the_field(control_plane, namespace, path):
    install_crds(control_plane)
    expect = path.read_text().splitlines()[0].removeprefix("# expect:").strip()
    # --validate=false: no client-side check, the apiserver itself must reject it
    res = control_plane.kubectl("apply", "--validate=false", "-n", namespace, "-f", str(path),
                                check=False)
    assert res.returncode != 0, res.stdout
    assert "is invalid" in res.stderr and expect in res.stderr, res.stderr
