"""`report.json` as a typed, versioned model: the job writes through it, the operator, the Serve
app and `tierserve run` read through it.

    PruningReport.read(doc | path)   validate a report (old ones without schemaVersion included)
    report.to_doc()                  the JSON-ready dict written to report.json
    report_schema_json()             its JSON schema, checked in at docs/schemas/report.schema.json
                                     (`tierserve report-schema --write`; a test catches drift)

Field names are the report's historical snake_case keys (`quality_kept`, `encoder_flops_removed`),
except the Kubernetes-style `apiVersion`/`kind`/`schemaVersion`, so existing report files and the
operator's status fields keep working. Every section is optional: a job that found no budget writes
only `gates`, `search` and `message`, and the operator reads a compact report without the bulky
`plan`/`prune`/`search`/`versions`/`inputs` sections. The job always writes `task`, `status` and
`deployable`; readers treat a missing `deployable` as false.

Non-finite floats (NaN Spearman of a constant model, an infinite threshold) are written as null:
report.json is strict JSON. Sections other engineers extend while this schema is young accept
extra keys (`prune`, `latency`, `search` points, `calibration`, `cost`, `distillation`, `versions`);
every other section is closed, so a typo'd key fails the job instead of vanishing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["API_VERSION", "SCHEMA_PATH", "SCHEMA_VERSION", "PruningReport", "ReportError",
           "report_schema", "report_schema_json"]

API_VERSION = "tierserve.io/v1alpha1"
SCHEMA_VERSION = 1  # bump when a field changes meaning or is removed; adding optional ones is free
SCHEMA_PATH = Path("docs/schemas/report.schema.json")  # relative to the repository root

Num = int | float  # keeps integers (byte and FLOP counts) integers on the way out
Value = float | None  # a measured number; None = not measured or not finite


class ReportError(ValueError):
    """A report.json that does not match the schema; the message names the field."""


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, ser_json_inf_nan="null")


class _Open(BaseModel):
    """A section other stages are still growing: unknown keys are kept as they are."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, ser_json_inf_nan="null")


class BudgetSection(_Closed):
    requested: dict[str, Any] = Field(default_factory=dict, description="spec.pruning.budget")
    achieved_target: Value = None
    encoder_flops_removed: Value = None
    encoder_params_removed: Value = None


class PlanScope(_Closed):
    flops_before: Num
    flops_after: Num
    flops_removed_fraction: float
    params_before: Num
    params_after: Num
    params_removed_fraction: float


class PlanSection(_Closed):
    seq_len: int
    encoder: PlanScope
    whole: PlanScope
    layers_kept: list[int]
    heads_per_layer: list[int]
    neurons_per_layer: list[int]
    heads_kept: int
    neurons_kept: int
    embedding_params: int


class PruneSection(_Open):
    """The engine's own account: recovery errors, timings, criterion (extended by recovery)."""

    seconds: dict[str, float] = Field(default_factory=dict)
    criterion: str | None = None
    calibration_examples: int | None = None


class MetricsSection(_Closed):
    full: dict[str, Value] = Field(default_factory=dict)
    pruned: dict[str, Value] = Field(default_factory=dict)
    quality_kept: dict[str, Value] = Field(default_factory=dict, description="pruned / full")


class SlicesSection(_Closed):
    full: dict[str, dict[str, Value]] = Field(default_factory=dict)
    pruned: dict[str, dict[str, Value]] = Field(default_factory=dict)


class LatencySection(_Open):
    """p50 of one forward (decoders: per token, prefill and decode phases)."""

    batch: int | None = None
    seq_len: int | None = None
    full_p50_s: Value = None
    pruned_p50_s: Value = None
    ratio: Value = None
    device: str | None = Field(None, description="where it was measured: cpu, cuda:0, ...")
    prefill: dict[str, Value] | None = None
    decode: dict[str, Value] | None = None


class SizeSection(_Closed):
    full_bytes: int
    pruned_bytes: int
    ratio: float


class QuantizationSection(_Closed):
    mode: str
    pruned_fp32_bytes: int
    pruned_int8_bytes: int
    size_ratio: float
    pruned_fp32_p50_s: Value = None
    pruned_int8_p50_s: Value = None
    latency_ratio: Value = None


class RuntimeSection(_Open):
    """The runtime both tiers serve on, and the proof that its graphs answer as eager does."""

    name: str = Field(description="onnxruntime | openvino | torch")
    onnxruntime: str | None = Field(None, description="ONNX Runtime version")
    openvino: str | None = Field(None, description="OpenVINO version")
    opset: int | None = None
    provider: str | None = Field(None, description="execution provider the job measured on")
    threads: int | None = None
    graphs: dict[str, str] | None = Field(None, description="tier -> graph file in the artifact")
    sha256: dict[str, str] | None = None
    parity: list[dict[str, Any]] | None = None


class GateRow(_Closed):
    name: str | None = Field(None, description="e.g. 'ndcg@10 >= 0.95 x full [slice=games]'")
    metric: str
    slice: str | None = None
    value: Value = Field(None, description="null: not measured")
    threshold: Value = Field(None, description="null: no threshold (e.g. the slice is missing)")
    comparison: str | None = Field(None, description=">= or <=")
    passed: bool
    detail: str = ""


class SearchPoint(_Open):
    target: float
    passed: bool
    error: str | None = None
    failed_gates: list[str] | None = None
    achieved: Value = None
    metrics: dict[str, Value] | None = None
    latency_ratio: Value = None


class CalibrationSection(_Open):
    """The cascade's calibrated threshold (calibration.py grows this block)."""

    policy: str | None = None
    confidence: str | None = None
    threshold: Value = None
    target_agreement: Value = None
    source: str | None = None
    request: str | None = None
    validation: dict[str, Any] | None = None


class CurvePoint(_Open):
    step: int
    loss: Value = None
    val_agreement: Value = None


class DistillationSection(_Open):
    steps: int | None = None
    seconds: Value = None
    device: str | None = None
    workers: int | None = None
    backend: str | None = Field(None, description="in-process | ray-train")
    best_step: int | None = None
    resumed_from: int | None = None
    curve: list[CurvePoint] = Field(default_factory=list)


class CostSection(_Open):
    """How cost figures were priced (cost ratio in use and where it came from)."""


class OverlapPair(_Closed):
    judged: str = Field(description="e.g. spec.data.evaluation")
    training: str = Field(description="e.g. spec.data.calibration")
    rows: int = Field(description="judged rows checked")
    by_id: int
    by_text: int
    examples: list[str] = Field(default_factory=list, description="ids of a few overlapping rows")


class OverlapSection(_Closed):
    """Judged (evaluation, validation) rows that are also calibration/distillation rows."""

    by_id: int = Field(description="judged rows whose id is a training row's id")
    by_text: int = Field(description="judged rows whose normalized text is a training row's")
    allowed: bool = Field(False, description="spec.data.allowOverlap was set")
    reason: str | None = Field(None, description="spec.data.allowOverlap.reason")
    pairs: list[OverlapPair] = Field(default_factory=list, description="each pair with overlap")


class DataSection(_Closed):
    """What the job checked about its data before pruning (leakage.py)."""

    overlap: OverlapSection | None = None


class ArtifactSection(_Closed):
    path: str | None = None
    uri: str | None = None


class PruningReport(_Closed):
    """One pruning job's report.json."""

    api_version: Literal["tierserve.io/v1alpha1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["PruningReport"] = "PruningReport"
    schema_version: int = Field(SCHEMA_VERSION, alias="schemaVersion", ge=1, le=SCHEMA_VERSION)
    name: str | None = None
    key: str | None = Field(None, description="artifact key: hash of the spec and input files")
    task: str | None = None
    deployable: bool = False
    status: str | None = Field(None, description="passed | gates_failed")
    complete: bool = False
    reused: bool | None = None
    message: str | None = None
    spec: dict[str, Any] | None = None
    inputs: dict[str, Any] | None = None
    data: DataSection | None = None
    budget: BudgetSection | None = None
    plan: PlanSection | None = None
    prune: PruneSection | None = None
    metrics: MetricsSection | None = None
    slices: SlicesSection | None = None
    latency: LatencySection | None = None
    size: SizeSection | None = None
    quantization: QuantizationSection | None = None
    runtime: RuntimeSection | None = None
    gates: list[GateRow] = Field(default_factory=list)
    search: list[SearchPoint] = Field(default_factory=list)
    calibration: CalibrationSection | None = None
    distillation: DistillationSection | None = None
    cost: CostSection | None = None
    artifact: ArtifactSection | None = None
    versions: dict[str, Any] | None = None
    evaluated_on: str | None = None
    seconds: Value = None

    @model_validator(mode="before")
    @classmethod
    def _versioned(cls, doc: Any) -> Any:
        """Reports from before the schema had no schemaVersion: they are version 1."""
        if isinstance(doc, dict) and "schemaVersion" not in doc:
            doc = {**doc, "schemaVersion": SCHEMA_VERSION}
        return doc

    @classmethod
    def read(cls, doc: dict[str, Any] | str | Path) -> PruningReport:
        """Validate a report dict (or a report.json path); ReportError names the bad field."""
        if not isinstance(doc, dict):
            doc = json.loads(Path(doc).read_text())
        try:
            return cls.model_validate(doc)
        except ValueError as err:
            first = err.errors()[0] if hasattr(err, "errors") else {"loc": (), "msg": str(err)}
            where = ".".join(str(p) for p in first["loc"]) or "report"
            raise ReportError(f"report.json {where}: {first['msg']}") from None

    def to_doc(self) -> dict[str, Any]:
        """Strict-JSON dict with the historical keys; sections never set are left out."""
        text = self.model_dump_json(by_alias=True, exclude_unset=True, fallback=str)
        return json.loads(text)

    def to_json(self) -> str:
        """report.json's text: sorted keys, indented, no NaN/Infinity."""
        return json.dumps(self.to_doc(), indent=2, sort_keys=True, allow_nan=False) + "\n"

    @property
    def artifact_model_uri(self) -> str | None:
        """URI (else path) of the pruned model directory, or None before the job finished."""
        art = self.artifact
        base = art and (art.uri or art.path)
        return base.rstrip("/") + "/model" if base else None

    def headline(self) -> str | None:
        """The metric status shows: the first gated metric with a kept ratio, else the first."""
        kept = self.metrics.quality_kept if self.metrics else {}
        gated = next((g.metric for g in self.gates if g.metric in kept), None)
        return gated or next(iter(kept), None)


def report_schema() -> dict[str, Any]:
    """The JSON schema of report.json (as it is written: by alias, serialization mode)."""
    schema = PruningReport.model_json_schema(by_alias=True, mode="serialization")
    schema["$id"] = "https://tierserve.io/schemas/report.schema.json"
    return schema


def report_schema_json() -> str:
    """The checked-in schema file's exact text."""
    return json.dumps(report_schema(), indent=2, sort_keys=True) + "\n"
