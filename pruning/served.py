"""The tiers as they will serve: the job judges these, never a stand-in.

    served = serve_tiers(spec, full, pruned, quant, art / "model" / "onnx", examples)
    judge(spec, served.full, served.pruned, evaluation)      # gates on the serving runtime

Runtime onnxruntime (encoders' default, runtime.py): both models are exported (export.py), each
graph is checked against its eager model on the evaluation texts (`runtime_parity`, always on),
and with `quantization.mode: int8-dynamic` the pruned graph is quantized by ONNX Runtime. The
returned models answer from ORT sessions with the job's thread count. Runtime torch: the eager
models, with torch's INT8 dynamic quantization when asked (quantize.py).

The `runtime` section goes into the report and into the artifact's pruning.json, where the tiers
read which graph to load and its sha256.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .artifact import sha256_file
from .data import RetrievalData
from .gates import GateResult
from .quality import latency_pair
from .runtime import GRAPH_RUNTIMES, ONNXRUNTIME, graph_model, runtime_version, serving_runtime
from .spec import PrunedModelSpec
from .tasks import TaskModel

__all__ = ["GRAPH_DIR", "ServedTiers", "onnx_tiers", "parity_examples", "serve_tiers",
           "torch_tiers"]

GRAPH_DIR = "onnx"  # inside the pruned artifact's model directory
PARITY_EXAMPLES = 256


@dataclass
class ServedTiers:
    full: TaskModel
    pruned: TaskModel
    runtime: dict  # report and manifest section
    gate: GateResult | None = None  # runtime_parity (onnxruntime only)
    quantization: dict | None = None  # the report's quantization section


def parity_examples(data, tm: TaskModel, n: int = PARITY_EXAMPLES) -> list:
    """Up to `n` evaluation inputs of the kinds the tier will see: query and document texts
    (cross-encoders: query-document pairs), or the texts / images to classify."""
    if isinstance(data, RetrievalData):
        if tm.cross_encoder:
            return list(zip(data.queries, data.corpus, strict=False))[:n]
        half = n // 2
        return list(data.queries[:half]) + list(data.corpus[:n - min(half, len(data.queries))])
    texts = list(getattr(data, "texts", []) or [])
    pairs = list(getattr(data, "pairs", []) or [])
    return (texts + pairs)[:n]


def serve_tiers(spec: PrunedModelSpec, full: TaskModel, pruned: TaskModel, quant: str | None,
                graph_dir: Path, examples: list) -> ServedTiers:
    b, runtime = spec.pruning.budget, serving_runtime(spec)
    if runtime not in GRAPH_RUNTIMES:
        return torch_tiers(full, pruned, quant, (b.batch, b.seq_len))
    gpus = spec.serving.pruned.gpus if next(full.model.parameters()).is_cuda else 0.0
    return onnx_tiers(full, pruned, quant, Path(graph_dir), examples, (b.batch, b.seq_len), gpus,
                      runtime=runtime)


def torch_tiers(full: TaskModel, pruned: TaskModel, quant: str | None,
                shape: tuple[int, int] = (32, 128)) -> ServedTiers:
    """Eager tiers; with `quant`, torch's INT8 dynamic quantization of the pruned one."""
    runtime = {"name": "torch", "torch": torch.__version__, "threads": torch.get_num_threads()}
    if quant is None:
        return ServedTiers(full, pruned, runtime)
    from .quantize import quantize, state_size_bytes

    q = replace(pruned, model=quantize(copy.deepcopy(pruned.model).cpu(), quant))  # CPU kernels
    fp, qb = state_size_bytes(pruned.model), state_size_bytes(q.model)
    return ServedTiers(full, q, runtime, quantization=_quant_section(shape, quant, pruned, q, fp, qb))


def _quant_section(shape, mode, fp32: TaskModel, int8: TaskModel, fp_bytes, q_bytes) -> dict:
    """INT8's own effect: size and (batch, seq) latency against its fp32 twin."""
    lat = latency_pair(fp32, int8, *shape)
    return {"mode": mode, "pruned_fp32_bytes": fp_bytes, "pruned_int8_bytes": q_bytes,
            "size_ratio": q_bytes / fp_bytes, "pruned_fp32_p50_s": lat["full_p50_s"],
            "pruned_int8_p50_s": lat["pruned_p50_s"], "latency_ratio": lat["ratio"]}


def onnx_tiers(full: TaskModel, pruned: TaskModel, quant: str | None, graph_dir: Path,
               examples: list, shape: tuple[int, int] = (32, 128),
               gpus: float = 0.0, runtime: str = ONNXRUNTIME) -> ServedTiers:
    """Both models exported to `graph_dir`, checked on `examples`, the pruned one quantized with
    `quant`; the returned tiers answer from `runtime` sessions (see the module doc)."""
    from .export import check_parity, export_graph, parity_gate, quantize_graph

    if quant is not None and runtime != ONNXRUNTIME:
        raise ValueError(f"quantization {quant} runs on onnxruntime, not {runtime}")
    version = runtime_version(runtime)
    files = {"full": graph_dir / "full.onnx", "pruned": graph_dir / "pruned.onnx"}
    exports = {t: export_graph(tm, files[t]) for t, tm in (("full", full), ("pruned", pruned))}
    graphs = {t: graph_model(tm, files[t], gpus=gpus, runtime=runtime)
              for t, tm in (("full", full), ("pruned", pruned))}
    parities = [check_parity(full, graphs["full"], examples, tier="full"),
                check_parity(pruned, graphs["pruned"], examples, tier="pruned")]
    served_pruned, quant_section = graphs["pruned"], None
    if quant is not None:
        files["pruned"] = graph_dir / "pruned.int8.onnx"
        quantize_graph(graph_dir / "pruned.onnx", files["pruned"])
        served_pruned = graph_model(pruned, files["pruned"], gpus=gpus, quantized=True)
        quant_section = _quant_section(shape, quant, graphs["pruned"], served_pruned,
                                       exports["pruned"]["bytes"],
                                       files["pruned"].stat().st_size)
    runtime = {
        "name": runtime, runtime: version, "opset": exports["full"]["opset"],
        "exporter": exports["full"]["exporter"], "inputs": exports["full"]["inputs"],
        "provider": served_pruned.provider, "threads": torch.get_num_threads(),
        "graphs": {t: f"{GRAPH_DIR}/{f.name}" for t, f in files.items()},
        "sha256": {t: sha256_file(f) for t, f in files.items()},
        "parity": [p.to_dict() for p in parities],
    }
    return ServedTiers(graphs["full"], served_pruned, runtime, parity_gate(parities),
                       quant_section)
