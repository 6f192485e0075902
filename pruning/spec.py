"""The PrunedModel spec as code: one pydantic model read by the job, the operator and the CRD.

The CRD's openAPIV3Schema is generated from `PrunedModelSpec` (see `crd_schema`), so the schema
the apiserver enforces, the job's parser and the operator's reader never drift apart. Field names
are camelCase as in every Kubernetes API; Python attributes are snake_case.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from .tasks import Task

__all__ = [
    "Criterion", "DataSpec", "Gate", "PrunedModelSpec", "SpecError", "load_spec", "parse_spec",
]

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class SpecError(ValueError):
    """An invalid PrunedModel spec. The message names the field (e.g. `spec.pruning.budget.target`)."""


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid",
                              frozen=True, use_enum_values=False)


class Criterion(StrEnum):
    magnitude = "magnitude"
    taylor = "taylor"
    fisher = "fisher"
    activation = "activation"


class Structure(StrEnum):
    heads = "heads"
    neurons = "neurons"
    layers = "layers"


class SecretKeyRef(_Model):
    name: str = Field(min_length=1, description="Secret in the PrunedModel's namespace")
    key: str = Field("token", min_length=1, description="Key of the Secret holding the value")


class ModelSpec(_Model):
    uri: str = Field(min_length=1, description=(
        "Model directory: a path, file://, pkg://PACKAGE/DIR, pvc://, hf://ORG/NAME[@REVISION], s3://"))
    task: Task
    trust_remote_code: bool = Field(False, description="Run code shipped with the model. Off unless you trust it.")
    max_length: int = Field(128, ge=8, le=8192, description="Tokens per input")
    hf_token_secret: SecretKeyRef | None = Field(None, description=(
        "hf://: Secret with a Hugging Face token (gated/private models), passed to the job and "
        "Serve pods as HF_TOKEN through secretKeyRef; the operator never reads it"))
    cache_dir: str | None = Field(None, min_length=1, description=(
        "hf://: Hub cache directory (a path or pvc://CLAIM/PATH); default: HF_HUB_CACHE, in the "
        "cluster the artifact PVC"))


MAX_ROWS = 10_000_000  # data limits above this are typos, not datasets a job can evaluate


class DataSource(_Model):
    """One labelled set. Classification: `uri` (+ fields). Retrieval: `queries`, `corpus`, `qrels`."""

    uri: str | None = Field(None, min_length=1, description=(
        "JSONL/Parquet with text (or image) and label; for embedding: similarity pairs"))
    queries: str | None = Field(None, min_length=1)
    corpus: str | None = Field(None, min_length=1)
    qrels: str | None = Field(None, min_length=1)
    split: str | None = Field(None, min_length=1, description="Keep only rows whose `split` field equals this")
    limit: int | None = Field(None, ge=1, le=MAX_ROWS, description="Use at most this many rows (queries for retrieval)")


class AllowOverlap(_Model):
    """Judged rows may also be calibration/distillation rows (the job fails with DataLeak otherwise)."""

    reason: str = Field(min_length=1, pattern=r"\S", description=(
        "Why the overlap is acceptable; recorded in the report (data.overlap.reason)"))


class DataSpec(_Model):
    calibration: DataSource = Field(description="Scores importance and fits the LS rescale")
    validation: DataSource | None = Field(None, description="Calibrates the cascade threshold")
    evaluation: DataSource = Field(description="Held-out rows the gates are judged on")
    distillation: DataSource | None = Field(None, description=(
        "Extra raw texts for distillation (`uri`: JSONL/Parquet with a `text` field)"))
    base_dir: str | None = Field(None, min_length=1, description=(
        "Directory relative data paths resolve against (default: the `tierserve.io/source-dir` "
        "annotation, then the operator's TIERSERVE_DATA_BASE, then the job's working directory)"))
    text_field: str = Field("text", min_length=1)
    label_field: str = Field("label", description="Class label; for similarity pairs, the score")
    pair_field: str = Field("text2", description="Embedding similarity pairs: the second text")
    image_field: str | None = Field(None, description=(
        "Image classification: field with a path (relative to the file), bytes or base64; "
        "default `image`"))
    slice_field: str | None = Field("slice", min_length=1, description="Field naming the content type, for per-slice gates")
    labels: Literal["labels", "self"] = Field(
        "self", description="Importance target: true labels, or the full model's own outputs (label-free)")
    allow_overlap: AllowOverlap | None = Field(None, description=(
        "Evaluation/validation rows may share an id or a text with calibration/distillation rows; "
        "without it such overlap fails the job with DataLeak before pruning"))


class Budget(_Model):
    kind: Literal["flops", "params", "latency"] = "flops"
    target: float = Field(0.5, gt=0.0, lt=1.0, description=(
        "flops/params: fraction of encoder FLOPs/params to remove. latency: wanted pruned/full p50 ratio"))
    seq_len: int = Field(128, ge=1, le=8192)
    batch: int = Field(32, ge=1, le=4096)


class Search(_Model):
    mode: Literal["fixed", "maxSparsity"] = "fixed"
    low: Fraction = Field(0.1, description="maxSparsity: least aggressive budget tried")
    high: Fraction = Field(0.8, description="maxSparsity: most aggressive budget tried")
    steps: int = Field(5, ge=1, le=20, description="maxSparsity: bisection steps")


class PruningSpec(_Model):
    criterion: Criterion = Criterion.fisher
    structures: list[Structure] = Field(default_factory=lambda: [Structure.heads, Structure.neurons], min_length=1)
    budget: Budget = Field(default_factory=Budget)
    multiple: int = Field(8, ge=1, le=256, description="Kept neurons per layer rounded to this")
    search: Search = Field(default_factory=Search)
    calibration_samples: int = Field(512, ge=8, le=100_000)


class RecoverySpec(_Model):
    rescale: bool = Field(True, description="Retraining-free least-squares rescale (Kwon et al. 2022)")
    distill_steps: int = Field(0, ge=0, le=100_000, description=(
        "Distillation steps from the full model (0 with maxSeconds unset: no distillation)"))
    max_seconds: float | None = Field(None, gt=0.0, le=604_800.0, description=(
        "Wall-time budget of distillation; alone it distils until the budget is spent"))
    workers: int = Field(1, ge=1, le=256, description="Ray Train workers (DDP) when the job runs on Ray")
    use_gpu: bool = Field(False, description="Ray Train workers ask for a GPU each")
    precision: Literal["bf16", "fp32"] = Field("fp32", description="bf16: autocast on the job's device")
    objective: Literal["auto", "embedding", "logits", "tokens"] = Field("auto", description=(
        "auto: embedding for bi-encoders, logits for classifiers/cross-encoders, tokens for decoders"))
    hidden_states: bool = Field(False, description="Also match each kept layer's hidden states")
    learning_rate: float = Field(1e-4, gt=0.0, le=1.0, description=(
        "Peak distillation learning rate: linear warm-up over 5% of the budget, then cosine decay"))
    batch_size: int = Field(32, ge=1, le=4096, description="Distillation texts per step and worker")
    temperature: float = Field(2.0, gt=0.0, le=100.0, description="logits/tokens: KD temperature")
    early_stop_patience: int = Field(0, ge=0, le=1000, description=(
        "Stop after this many validations without better validation agreement (0: never)"))
    rounds: int = Field(1, ge=1, le=10, description="prune -> recover rounds toward the target")


class QuantizationSpec(_Model):
    mode: Literal["none", "int8-dynamic"] = "none"


_METRIC = (r"^(accuracy|macro_f1|precision|recall|ndcg@\d+|mrr@\d+|recall@\d+|spearman|agreement"
           r"|agreement_ndcg@\d+|perplexity|next_token_agreement|exact_match"
           # embedding runs (evaluate.quality_signals): full vs pruned vectors, pruned queries
           # searched against the full model's index
           r"|embedding_cosine|cross_tier_ndcg@\d+|cross_tier_mrr@\d+|cross_tier_recall@\d+)$")
LOWER_IS_BETTER = frozenset({"perplexity"})  # gates: value <= max, value <= relative x full


class Gate(_Model):
    """One quality gate. Give `min` (absolute floor) or `relative` (>= relative x full), or both."""

    metric: str = Field(pattern=_METRIC, description=(
        "e.g. ndcg@10, accuracy, agreement; embedding runs also embedding_cosine, cross_tier_ndcg@10"))
    min: float | None = Field(None, ge=-1.0, le=1.0, description=(
        "Absolute floor; within the metric's range ([0, 1], spearman and cosine [-1, 1])"))
    max: float | None = Field(None, ge=1.0, le=1e6, description="Absolute ceiling, for lower-is-better metrics (perplexity)")
    relative: float | None = Field(None, gt=0.0, le=10.0, description=(
        "Floor as a fraction of the full model; for perplexity a ceiling (<= relative x full)"))
    slice: str | None = Field(None, description="Judge only this slice (content type)")
    positive_class: str | None = Field(None, description="precision/recall: the class")

    @model_validator(mode="after")
    def _one_floor(self) -> Gate:
        lower = self.metric in LOWER_IS_BETTER
        if (self.min if lower else self.max) is not None:
            raise ValueError(f"{self.metric}: use `{'max' if lower else 'min'}`, lower is "
                             f"{'better' if lower else 'worse'} for it")
        if self.min is None and self.max is None and self.relative is None:
            raise ValueError("a gate needs `min` (or `max` for perplexity) or `relative`")
        if (self.metric in ("precision", "recall")) != (self.positive_class is not None):
            raise ValueError("`positiveClass` is required for precision/recall gates, and only for them")
        lo, hi = _metric_range(self.metric)
        if self.min is not None and not lo <= self.min <= hi:
            raise ValueError(f"min: {self.min} is outside the range of {self.metric} [{lo}, {hi}]")
        if self.min is not None and self.min <= lo:  # every model meets it: no gate at all
            raise ValueError(f"min: {self.min} is at the floor of {self.metric} ({lo}): a gate "
                             "that always passes; give a floor above it, or drop the gate")
        return self


def _metric_range(metric: str) -> tuple[float, float]:
    """Where a higher-is-better metric's values live (gates outside it could never pass / fail)."""
    return (-1.0, 1.0) if metric in ("spearman", "embedding_cosine") else (0.0, 1.0)


# Omitted, the latency and size gates still judge: a pruned model may be no slower and no larger
# than the full one. There is no "off": 2.0 (the schema's ceiling) is the loosest gate there is.
DEFAULT_MAX_LATENCY_RATIO = 1.0
DEFAULT_MAX_SIZE_RATIO = 1.0


class GatesSpec(_Model):
    quality: list[Gate] = Field(default_factory=list)
    max_latency_ratio: float = Field(DEFAULT_MAX_LATENCY_RATIO, gt=0.0, le=2.0, description=(
        "pruned p50 / full p50 must be <= this; omitted: 1.0 (never slower than full)"))
    max_size_ratio: float = Field(DEFAULT_MAX_SIZE_RATIO, gt=0.0, le=2.0, description=(
        "pruned bytes / full bytes must be <= this; omitted: 1.0 (never larger than full)"))


class TierSpec(_Model):
    replicas: int = Field(1, ge=0, le=1000)
    max_replicas: int | None = Field(None, ge=1, le=1000)
    cpus: float = Field(1.0, ge=0.0, le=512)
    gpus: float = Field(0.0, ge=0.0, le=16, description="> 0: the tier's model runs and batches on CUDA")
    max_batch_size: int = Field(16, ge=1, le=1024)
    max_ongoing_requests: int | None = Field(None, ge=1, le=100_000, description=(
        "Requests one replica works on at once; default 2 x maxBatchSize (one batch running, one filling)"))
    max_queued_requests: int | None = Field(None, ge=1, le=1_000_000, description=(
        "Requests each router replica queues for this tier beyond that; default 2 x maxOngoingRequests "
        "x max replicas. A full queue: pruned-bound requests go to full, full-bound get 503 + Retry-After"))

    @model_validator(mode="after")
    def _max_covers_replicas(self) -> TierSpec:
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise ValueError(f"maxReplicas ({self.max_replicas}) must be >= replicas "
                             f"({self.replicas})")
        return self


class RouterSpec(_Model):
    """The router (ingress) deployment. Its defaults follow the tiers' capacity (docs/serving.md)."""

    replicas: int = Field(1, ge=1, le=1000)
    max_ongoing_requests: int | None = Field(None, ge=1, le=100_000, description=(
        "Requests one router replica admits at once; default: both tiers' ongoing + queued capacity "
        "divided by router replicas (at least 16)"))
    max_queued_requests: int | None = Field(None, ge=1, le=1_000_000, description=(
        "Requests the HTTP proxy queues for the router; default = maxOngoingRequests. Beyond: 503"))
    retry_after_s: float = Field(1.0, ge=0.0, le=3600.0, description="Retry-After on a 503 (rounded up)")
    commit_metrics: bool = Field(True, description=(
        "A reply leaves only once its metric events are in the router replica's write-ahead "
        "journal on local disk ($TIERSERVE_JOURNAL_DIR, default <tmp>/tierserve-journal), which a "
        "restarted replica replays: a killed router loses no answered request; false: no journal, "
        "events go to the stats actor fire-and-forget and a killed router may lose the last ones"))
    colocate_pruned: bool = Field(True, description=(
        "Serve the pruned model inside each router replica: routine traffic takes one hop, only "
        "escalations and full-routed requests a second. The router then takes spec.serving.pruned's "
        "replicas and resources, and there is no separate pruned deployment"))


class RoutingRules(_Model):
    """Rules that force a tier, stacked on top of split or cascade (first match wins)."""

    tier_header: bool = Field(True, description="Honour a client's `X-Tier: full|pruned` header")
    full_tenants: list[str] = Field(default_factory=list, description="`X-Tenant` values sent to full")
    full_priorities: list[str] = Field(default_factory=list, description="`X-Priority` values sent to full")
    max_pruned_tokens: int | None = Field(None, ge=1, description="Inputs longer than this go to full")


class ServingSpec(_Model):
    runtime: Literal["onnxruntime", "openvino", "torch"] | None = Field(None, description=(
        "What both tiers run on. onnxruntime: the job exports full and pruned to ONNX, proves "
        "each graph answers as eager does (runtime_parity gate), quantizes the pruned graph for "
        "quantization.mode int8-dynamic, and judges the graphs; openvino: the same graphs "
        "compiled by OpenVINO (the tierserve[openvino] extra; no int8-dynamic); torch: eager "
        "PyTorch. Unset: onnxruntime for encoder tasks, torch for text-generation"))
    policy: Literal["split", "cascade"] = "cascade"
    pruned_weight: Fraction = Field(0.8, description="split: share of traffic to pruned")
    target_agreement: Fraction = Field(0.99, description="cascade: calibrated agreement with full; shadow: the gate")
    cascade_threshold: float | None = Field(None, description="cascade: override the job's calibrated threshold")
    # -- routing and calibration --
    calibration_delta: float | None = Field(0.05, gt=0.0, lt=0.5, description=(
        "cascade: Learn-then-Test calibration on spec.data.validation (the default); agreement "
        "on new traffic >= targetAgreement with probability >= 1 - this. A validation set too "
        "small for it is refused. null: the empirical cut (no guarantee); so is a job without "
        "spec.data.validation (its calibration rows also fitted the pruning)"))
    escalate_top_m: int | None = Field(None, ge=1, le=10_000, description=(
        "cascade rerank: on escalation full re-scores only pruned's best m documents; "
        "unset: the job's calibrated m"))
    embed_tier: Literal["full", "pruned"] = Field("full", description=(
        "/v1/embed goes to this one tier (vectors of one index never mix models) unless the "
        "report's cross-tier gate passed; then embed may split, sticky per X-Tier-Key"))
    shadow_fraction: Fraction = Field(0.0, description="Share of pruned-served requests also sent to full")
    shadow_window: int = Field(200, ge=10, le=100_000, description="shadow: comparisons in the agreement window")
    shadow_hysteresis: Fraction = Field(0.0, description="shadow: recover at window agreement >= gate + this")
    pruned_timeout_s: float = Field(5.0, gt=0.0, le=600.0, description="Serve from full when pruned takes longer")
    full_timeout_s: float = Field(30.0, gt=0.0, le=3600.0, description="A full call taking longer is a 503")
    timeout_s_per_k_tokens: float = Field(1.0, ge=0.0, le=600.0, description=(
        "Both timeouts grow by this per 1000 input tokens of the request (estimated as chars/4 per "
        "item, at most maxLength)"))
    max_timeout_s: float = Field(120.0, gt=0.0, le=3600.0, description=(
        "A request whose scaled full timeout exceeds this is refused with 413 before any work"))
    circuit_probe_s: float = Field(0.5, gt=0.0, le=60.0, description=(
        "While a tier's circuit is open (replica died/unhealthy), ping it this often; one success closes it"))
    max_request_bytes: int = Field(1_048_576, ge=1024, le=67_108_864, description="Larger bodies get 413")
    max_items: int = Field(256, ge=1, le=10_000, description="Texts (embed, classify) or documents (rerank) per request")
    rules: RoutingRules = Field(default_factory=RoutingRules)
    full: TierSpec = Field(default_factory=TierSpec)
    pruned: TierSpec = Field(default_factory=TierSpec)
    router: RouterSpec = Field(default_factory=RouterSpec)


class CostSpec(_Model):
    usd_per_replica_hour_full: float = Field(0.0, ge=0.0)
    usd_per_replica_hour_pruned: float = Field(0.0, ge=0.0)
    usd_per_request_full: float = Field(0.0, ge=0.0)
    usd_per_request_pruned: float = Field(0.0, ge=0.0)
    usd_per_million_tokens_full: float = Field(0.0, ge=0.0, description="Per million tokens processed (input + output)")
    usd_per_million_tokens_pruned: float = Field(0.0, ge=0.0, description="Per million tokens processed (input + output)")


class PrunedModelSpec(_Model):
    model: ModelSpec
    data: DataSpec
    pruning: PruningSpec = Field(default_factory=PruningSpec)
    recovery: RecoverySpec = Field(default_factory=RecoverySpec)
    quantization: QuantizationSpec = Field(default_factory=QuantizationSpec)
    gates: GatesSpec = Field(default_factory=GatesSpec)
    serving: ServingSpec = Field(default_factory=ServingSpec)
    cost: CostSpec = Field(default_factory=CostSpec)

    @model_validator(mode="after")
    def _runtime_serves_task(self) -> PrunedModelSpec:
        rt = self.serving.runtime
        if rt in ("onnxruntime", "openvino") and self.model.task.value == "text-generation":
            raise ValueError(f"spec.serving.runtime: {rt} serves encoder tasks; "
                             "text-generation runs on torch")
        if rt == "openvino" and self.quantization.mode != "none":
            raise ValueError("spec.quantization.mode: int8-dynamic runs on onnxruntime; "
                             "runtime openvino serves the fp32 graph (bf16 where the CPU has it)")
        return self


def _field_path(loc: tuple) -> str:
    return "spec." + ".".join(str(p) for p in loc) if loc else "spec"


def parse_spec(doc: dict[str, Any]) -> PrunedModelSpec:
    """Accept a bare spec or a whole PrunedModel manifest; raise SpecError naming the bad field."""
    if "kind" in doc:
        if doc.get("kind") != "PrunedModel":
            raise SpecError(f"kind: expected PrunedModel, got {doc.get('kind')!r}")
        doc = doc.get("spec") or {}
    try:
        return PrunedModelSpec.model_validate(doc)
    except ValidationError as err:
        first = err.errors()[0]
        raise SpecError(f"{_field_path(first['loc'])}: {first['msg']}") from None


def load_spec(path: str | Path) -> tuple[PrunedModelSpec, str]:
    """Read YAML/JSON from `path`. Returns (spec, name); relative data URIs stay relative to the file."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise SpecError(f"{path}: cannot read spec: {err}") from None
    if not isinstance(doc, dict):
        raise SpecError(f"{path}: expected a mapping, got {type(doc).__name__}")
    name = (doc.get("metadata") or {}).get("name") or re.sub(r"\W+", "-", path.stem)
    return parse_spec(doc), name
