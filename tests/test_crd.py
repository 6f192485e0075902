"""The PrunedModel CRD is generated from the pydantic models, checked in, and accepted by a real
apiserver, which then enforces the same constraints the job's parser does."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tierserve.operator.crd import CRD_PATH, crd_manifest, crd_yaml, structural

EXAMPLE = "examples/minilm-pass.yaml"


def test_checked_in_crd_matches_the_models(repo_root):
    on_disk = (repo_root / CRD_PATH).read_text()
    assert on_disk == crd_yaml(), (
        f"{CRD_PATH} drifted from tierserve.pruning.spec / tierserve.operator.status; "
        "regenerate with `tierserve crd --write`")


def test_cli_prints_the_same_crd(repo_root):
    out = subprocess.run([sys.executable, "-m", "tierserve.cli", "crd"], cwd=repo_root,
                         capture_output=True, text=True, check=True).stdout
    assert yaml.safe_load(out) == crd_manifest()


def test_structural_conversion_of_pydantic_constructs():
    defs = {"Inner": {"type": "object", "title": "Inner",
                      "properties": {"k": {"const": "x", "title": "K"}}}}
    node = {"type": "object", "properties": {
        "opt": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}], "default": None},
        "frac": {"type": "number", "exclusiveMinimum": 0.0, "exclusiveMaximum": 1.0},
        "ref": {"$ref": "#/$defs/Inner"},
        "free": {"type": "object", "additionalProperties": True},
        "any": {},
        "choice": {"enum": ["a", "b"]},
    }}
    out = structural(node, defs)["properties"]
    assert out["opt"] == {"type": "integer", "minimum": 1, "nullable": True}
    assert out["frac"] == {"type": "number", "minimum": 0.0, "exclusiveMinimum": True,
                           "maximum": 1.0, "exclusiveMaximum": True}
    assert out["ref"] == {"type": "object", "properties": {"k": {"enum": ["x"], "type": "string"}}}
    assert out["free"]["x-kubernetes-preserve-unknown-fields"] is True
    assert out["any"] == {"x-kubernetes-preserve-unknown-fields": True}
    assert out["choice"] == {"enum": ["a", "b"], "type": "string"}
    with pytest.raises(ValueError, match="union"):
        structural({"anyOf": [{"type": "integer"}, {"type": "string"}]}, {})


def test_schema_carries_the_spec_constraints():
    spec = crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    p = spec["properties"]
    assert spec["required"] == ["model", "data"]
    from tierserve.pruning.tasks import Task

    assert p["model"]["properties"]["task"]["enum"] == [t.value for t in Task]
    assert "image-classification" in p["model"]["properties"]["task"]["enum"]
    assert p["pruning"]["properties"]["criterion"]["enum"] == ["magnitude", "taylor", "fisher", "activation"]
    target = p["pruning"]["properties"]["budget"]["properties"]["target"]
    assert (target["minimum"], target["exclusiveMinimum"], target["maximum"]) == (0.0, True, 1.0)
    gate = p["gates"]["properties"]["quality"]["items"]
    assert gate["required"] == ["metric"] and gate["properties"]["metric"]["pattern"].startswith("^(")


@pytest.mark.k8s
@pytest.mark.slow
def test_apiserver_accepts_crd_and_serves_printer_columns(control_plane, namespace, repo_root):
    control_plane.kubectl("apply", "-f", str(repo_root / CRD_PATH))
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                          "crd/prunedmodels.tierserve.io")
    control_plane.kubectl("apply", "-n", namespace, "-f", str(repo_root / EXAMPLE))
    status = {"status": {"phase": "Serving", "budget": 0.3, "quality": 0.97,
                         "serving": {"generation": 1, "key": "k", "budget": 0.3, "quality": 0.97},
                         "prunedShare": 0.8, "savingsUsd": 12.5, "observedGeneration": 1,
                         "conditions": [{"type": "Ready", "status": "True", "reason": "Serving",
                                         "message": "both tiers up",
                                         "lastTransitionTime": "2026-11-23T12:00:00Z"}]}}
    control_plane.kubectl("patch", "-n", namespace, "pm", "minilm-pass", "--subresource=status",
                          "--type=merge", "-p", json.dumps(status), check=False)
    got = json.loads(control_plane.kubectl("get", "-n", namespace, "pm", "minilm-pass",
                                           "-o", "json").stdout)
    if "status" not in got:  # kubectl 1.20 has no --subresource: write through the API instead
        from kubernetes import client

        client.CustomObjectsApi(control_plane.api_client).patch_namespaced_custom_object_status(
            "tierserve.io", "v1alpha1", namespace, "prunedmodels", "minilm-pass", status)
    table = control_plane.kubectl("get", "-n", namespace, "prunedmodels").stdout
    header, row = table.splitlines()[:2]
    for column in ("PHASE", "SERVING", "BUDGET", "QUALITY", "CANDIDATE", "PRUNED SHARE",
                   "SAVINGS", "AGE"):
        assert column in header
    # budget and quality are the SERVING version's; the candidate columns are empty here
    assert row.split()[:7] == ["minilm-pass", "Serving", "1", "0.3", "0.97", "0.8", "12.5"]
    # The schema enforces the spec's constraints: the apiserver names the field it rejects.
    bad = yaml.safe_load((repo_root / EXAMPLE).read_text())
    bad["metadata"]["name"] = "bad-target"
    bad["spec"]["pruning"]["budget"]["target"] = 1.5
    res = control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(bad),
                                check=False)
    assert res.returncode != 0 and "spec.pruning.budget.target" in res.stderr


def test_readme_manifest_is_a_valid_spec(repo_root):
    import re

    from tierserve.pruning.spec import parse_spec

    text = (repo_root / "README.md").read_text()
    doc = yaml.safe_load(re.search(r"```yaml\n(.*?)```", text, re.S).group(1))
    spec = parse_spec(doc)
    assert spec.serving.policy == "cascade" and spec.serving.pruned.max_replicas == 8
