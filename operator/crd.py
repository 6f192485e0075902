"""Generate the PrunedModel CRD from the pydantic spec and status models.

    tierserve crd > charts/tierserve/crds/prunedmodels.tierserve.io.yaml

pydantic writes JSON Schema (2020-12); the apiserver wants a *structural* OpenAPI v3.0 schema
without CEL (Kubernetes 1.20 in the tests). `structural()` converts one into the other: `$ref`s are
inlined, `Optional[X]` becomes `X` + `nullable`, enums and `const` become `enum`, exclusive bounds
become the v3.0 boolean form, free-form dicts get `x-kubernetes-preserve-unknown-fields`, and
everything the apiserver rejects (`title`, `$defs`, `default` of nested objects...) is dropped.
The checked-in copy is kept equal to `crd_manifest()` by tests/test_crd.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tierserve.pruning.spec import PrunedModelSpec

from .status import PrunedModelStatus

__all__ = ["CRD_PATH", "GROUP", "KIND", "PLURAL", "VERSION", "crd_manifest", "crd_yaml", "structural"]

GROUP, VERSION, KIND, PLURAL, SHORT = "tierserve.io", "v1alpha1", "PrunedModel", "prunedmodels", "pm"
CRD_PATH = Path("charts/tierserve/crds") / f"{PLURAL}.{GROUP}.yaml"

_KEEP = {"type", "properties", "items", "required", "enum", "minimum", "maximum", "minLength",
         "maxLength", "minItems", "maxItems", "pattern", "description", "format", "nullable"}


def _deref(node: dict, defs: dict) -> dict:
    while "$ref" in node:
        ref = defs[node["$ref"].rsplit("/", 1)[-1]]
        node = {**ref, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """One pydantic JSON Schema node -> one structural OpenAPI v3.0 node."""
    node = _deref(node, defs)
    nullable = False
    variants = node.get("anyOf") or node.get("oneOf")
    if variants:
        real = [v for v in variants if v.get("type") != "null"]
        nullable = len(real) < len(variants)
        if len(real) != 1:
            raise ValueError(f"cannot express a union of {len(real)} types structurally: {node}")
        node = {**{k: v for k, v in node.items() if k not in ("anyOf", "oneOf")},
                **_deref(real[0], defs)}
    out: dict[str, Any] = {k: v for k, v in node.items() if k in _KEEP}
    if "const" in node:
        out["enum"] = [node["const"]]
    if "enum" in out and "type" not in out:
        out["type"] = "string" if all(isinstance(e, str) for e in out["enum"]) else "number"
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in node:
            out[plain], out[bound] = node[bound], True
    if "properties" in node:
        out["type"] = "object"
        out["properties"] = {k: structural(v, defs) for k, v in node["properties"].items()}
    elif out.get("type") == "object" or node.get("additionalProperties") is not None:
        out["type"] = "object"
        out["x-kubernetes-preserve-unknown-fields"] = True
    if "items" in node:
        out["items"] = structural(node["items"], defs)
    if "type" not in out:  # `Any`: a value of any shape
        out["x-kubernetes-preserve-unknown-fields"] = True
    if nullable:
        out["nullable"] = True
    return out


def _schema(model) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return structural(raw, raw.get("$defs", {}))


def crd_manifest() -> dict[str, Any]:
    """The whole apiextensions.k8s.io/v1 CustomResourceDefinition."""
    spec_schema = _schema(PrunedModelSpec)
    spec_schema["description"] = "What to prune, how, the gates it must pass, and how to serve it"
    status_schema = _schema(PrunedModelStatus)
    columns = [
        ("Phase", "string", ".status.phase", "Pending/Pruning/Validating/GatesFailed/Deploying/Serving/Failed"),
        ("Serving", "integer", ".status.serving.generation", "Generation that serves traffic"),
        ("Budget", "number", ".status.serving.budget", "Encoder FLOPs removed by the serving version"),
        ("Quality", "number", ".status.serving.quality", "Headline metric of the serving version, pruned / full"),
        ("Candidate", "string", ".status.candidate.outcome", "Latest generation while another serves (or none yet)"),
        ("Cand. quality", "number", ".status.candidate.quality", "Headline quality of that candidate"),
        ("Pruned share", "number", ".status.prunedShare", "Share of live traffic served by the pruned tier"),
        ("Savings", "number", ".status.savingsUsd", "Estimated USD saved against an all-full deployment"),
        ("Age", "date", ".metadata.creationTimestamp", None),
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}",
                     "labels": {"app.kubernetes.io/part-of": "tierserve"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": KIND, "plural": PLURAL, "singular": KIND.lower(),
                      "shortNames": [SHORT], "listKind": f"{KIND}List", "categories": ["tierserve"]},
            "versions": [{
                "name": VERSION, "served": True, "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": n, "type": t, "jsonPath": p, **({"description": d} if d else {})}
                    for n, t, p, d in columns],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "A model to prune structurally, gate on your data, and serve in tiers",
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string"}, "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec_schema, "status": status_schema,
                    },
                }},
            }],
        },
    }


def crd_yaml() -> str:
    header = ("# Generated by `tierserve crd` from tierserve.pruning.spec and tierserve.operator.status.\n"
              "# Do not edit: tests/test_crd.py fails when this file drifts from the models.\n")
    return header + yaml.safe_dump(crd_manifest(), sort_keys=False, width=100)
