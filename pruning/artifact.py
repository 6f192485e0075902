"""Pruned-model artifacts: an ordinary model directory plus a `pruning.json` manifest.

    model.safetensors   weights of the pruned model (safetensors; no pickle anywhere)
    config.json         HF config; `num_hidden_layers` and `tierserve_layers` give the new shapes
    tokenizer / image-processor files
    pruning.json        format version, Structure (original indices), criterion, budget, source
                        model + sha256 of its weight files, task, library versions, cost report,
                        sha256 of model.safetensors, optional "quantization": "int8-dynamic"

`load_pruned` builds the model from the config at its ORIGINAL depth without initialising
weights, re-applies the recorded Structure through the adapter (the same code that pruned it),
then loads the safetensors strictly: a missing, unexpected or mis-shaped tensor is an error.
A directory without `pruning.json` loads as a plain model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .adapters import adapter_for
from .quantize import INT8_DYNAMIC, is_quantized, quantize
from .storage import is_local, resolve, upload
from .structure import Budget, Structure
from .surgery import apply_structure
from .tasks import Task, TaskModel, load_task_model

__all__ = ["ArtifactError", "FORMAT", "runtime_graph", "FORMAT_VERSION", "MANIFEST", "WEIGHTS", "load_pruned",
           "read_manifest", "save_pruned", "sha256_file", "weights_sha256"]

FORMAT = "tierserve-pruned"
FORMAT_VERSION = 1
MANIFEST = "pruning.json"
WEIGHTS = "model.safetensors"
_REQUIRED = ("format", "format_version", "task", "model_class", "structure", "weights")


class ArtifactError(ValueError):
    """A pruned-model directory that can't be saved or loaded; the message names file and field."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_sha256(model_dir: str | Path) -> dict[str, str]:
    """sha256 of each weight file (*.safetensors, *.bin, *.pt, *.pth) in a model directory (or of
    the one file, when `model_dir` is a file)."""
    d = Path(model_dir)
    if d.is_file():  # a single-file checkpoint (GGUF)
        return {d.name: sha256_file(d)}
    files = sorted(p for ext in ("*.safetensors", "*.bin", "*.pt", "*.pth") for p in d.glob(ext))
    return {p.name: sha256_file(p) for p in files}


def _versions() -> dict[str, str]:
    import transformers

    import tierserve

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "tierserve": tierserve.__version__}


def _budget_dict(budget: Budget | dict | None) -> dict | None:
    if budget is None or isinstance(budget, dict):
        return budget
    d = dataclasses.asdict(budget)
    d["structures"] = list(d["structures"])
    return d


def _source(source: str | Path | None) -> dict:
    if source is None:
        return {"uri": None, "weights_sha256": {}}
    hashes = weights_sha256(resolve(source)) if is_local(source) else {}
    return {"uri": str(source), "weights_sha256": hashes}


def save_pruned(task_model: TaskModel, out: str | Path, *, structure: Structure,
                source: str | Path | None, criterion: str | None,
                budget: Budget | dict | None, report: dict | None = None,
                quantization: str | None = None, extra: dict | None = None) -> str:
    """Write `task_model` (already pruned to `structure`, fp weights) to `out`; returns where.

    `out` may be a path or any URI `storage.upload` takes. `quantization` is recorded and
    re-applied at load (quantized modules themselves are never saved).
    """
    model = task_model.model
    if is_quantized(model):
        raise ArtifactError("save the pruned fp32 model and pass quantization='int8-dynamic'; "
                            "quantized modules are re-created at load, never saved")
    if quantization not in (None, INT8_DYNAMIC):
        raise ArtifactError(f"quantization {quantization!r}: supported are None, {INT8_DYNAMIC!r}")
    local = resolve(out, must_exist=False) if is_local(out) else None
    with contextlib.ExitStack() as stack:
        if local is None:
            local = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        local.mkdir(parents=True, exist_ok=True)
        _write_dir(task_model, local, structure)
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "task": task_model.task.value,
            "model_class": type(model).__name__, "cross_encoder": task_model.cross_encoder,
            "max_length": task_model.max_length, "structure": structure.to_dict(),
            "layer_shapes": adapter_for(model).layer_shapes(), "criterion": criterion,
            "budget": _budget_dict(budget), "source": _source(source),
            "weights": {WEIGHTS: sha256_file(local / WEIGHTS)}, "quantization": quantization,
            "versions": _versions(), "report": report, **(extra or {}),
        }
        tmp = local / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        tmp.replace(local / MANIFEST)
        return upload(local, out) if not is_local(out) else str(local)


def _write_dir(task_model: TaskModel, local: Path, structure: Structure) -> None:
    from safetensors.torch import save_model

    model = task_model.model
    adapter = adapter_for(model)
    want = [{"heads": len(structure.layers[i].heads), "intermediate": len(structure.layers[i].neurons)}
            for i in structure.kept_layers]
    if adapter.layer_shapes() != want:
        raise ArtifactError(f"model layers {adapter.layer_shapes()} don't match the structure's "
                            f"{want}; prune with apply_structure(adapter, structure) first")
    stale = [p.name for p in local.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    if stale:
        raise ArtifactError(f"{local}: holds pickle-format files {stale}; save to a clean directory")
    adapter.write_config()
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(str(local))
    save_model(model, str(local / WEIGHTS), metadata={"format": "pt"})
    task_model.save_preprocessor(local)


def read_manifest(model_dir: str | Path) -> dict[str, Any] | None:
    """The parsed `pruning.json` of a local directory, None if it has none; validated."""
    path = Path(model_dir) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from exc
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path}: expected a JSON object")
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise ArtifactError(f"{path}: missing field(s) {', '.join(missing)}")
    if manifest["format"] != FORMAT or manifest["format_version"] != FORMAT_VERSION:
        raise ArtifactError(f"{path}: format {manifest['format']!r} version "
                            f"{manifest['format_version']!r}; this tierserve reads {FORMAT!r} "
                            f"version {FORMAT_VERSION}")
    try:
        Structure.from_dict(manifest["structure"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{path}: field 'structure' is malformed ({exc!r})") from exc
    return manifest


def _model_class(manifest: dict, task: Task, path: Path) -> type[nn.Module]:
    import transformers

    name = str(manifest["model_class"])
    cls = getattr(transformers, name, None)
    if cls is None or not isinstance(cls, type) or not issubclass(cls, transformers.PreTrainedModel):
        raise ArtifactError(f"{path / MANIFEST}: field 'model_class' {name!r} is not a "
                            "transformers model class")
    head = {Task.sequence_classification: "ForSequenceClassification",
            Task.image_classification: "ForImageClassification",
            Task.text_generation: "ForCausalLM"}.get(task)
    if task is Task.rerank and manifest.get("cross_encoder"):
        head = "ForSequenceClassification"
    if (head is None and "For" in name) or (head is not None and not name.endswith(head)):
        raise ArtifactError(f"{path / MANIFEST}: a {name} artifact can't serve task '{task}' "
                            f"(saved for task '{manifest['task']}')")
    return cls


def _check_weights(model: nn.Module, weights: Path) -> None:
    from safetensors import safe_open

    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    with safe_open(str(weights), framework="pt") as f:
        stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    problems = [f"tensor '{k}' has shape {stored[k]} in {WEIGHTS} but {expected[k]} from "
                f"{MANIFEST}'s structure" for k in stored if k in expected and stored[k] != expected[k]]
    unexpected = sorted(set(stored) - set(expected))
    if unexpected:
        problems.append(f"unexpected tensors {unexpected[:5]}")
    if problems:
        raise ArtifactError(f"{weights.parent}: weights don't match the manifest: "
                            + "; ".join(problems[:4]))


def _build(path: Path, manifest: dict, task: Task) -> nn.Module:
    from safetensors.torch import load_model
    from transformers import AutoConfig

    cls = _model_class(manifest, task, path)
    structure = Structure.from_dict(manifest["structure"])
    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    config.num_hidden_layers = len(structure.layers)  # original depth; surgery removes layers
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - older transformers
        no_init_weights = contextlib.nullcontext
    with no_init_weights():
        model = cls(config)
    model.tie_weights()  # no_init_weights skips tying; tied LM heads are saved once
    apply_structure(adapter_for(model), structure)
    weights = path / WEIGHTS
    if not weights.exists():
        raise ArtifactError(f"{path}: {WEIGHTS} is missing")
    recorded = manifest["weights"].get(WEIGHTS)
    if recorded and sha256_file(weights) != recorded:
        raise ArtifactError(f"{weights}: sha256 differs from {MANIFEST}'s weights.{WEIGHTS}")
    _check_weights(model, weights)
    try:
        load_model(model, str(weights), strict=True)
    except RuntimeError as exc:
        raise ArtifactError(f"{weights}: does not match the manifest's structure ({exc})") from exc
    return model.eval()


def load_pruned(path_or_uri: str | Path, task: Task | str, *, max_length: int | None = None,
                dtype: torch.dtype = torch.float32, quantized: bool = True) -> TaskModel:
    """Load a pruned artifact (or a plain model directory) as a `TaskModel`, no pickle involved.

    `quantized=False` skips re-applying the manifest's quantization (to get the fp32 model).
    """
    from transformers import AutoImageProcessor, AutoTokenizer

    task = Task(task)
    path = resolve(path_or_uri)
    manifest = read_manifest(path)
    if manifest is None:
        return load_task_model(path, task, max_length=max_length or 128, dtype=dtype)
    model = _build(path, manifest, task).to(dtype)
    if quantized:
        quantize(model, manifest.get("quantization"))
    proc_cls = AutoImageProcessor if task is Task.image_classification else AutoTokenizer
    processor = proc_cls.from_pretrained(str(path), local_files_only=True)
    if task is Task.text_generation:
        from .tasks import lm_tokenizer

        processor = lm_tokenizer(processor)
    return TaskModel(task=task, model=model, processor=processor,
                     cross_encoder=bool(manifest.get("cross_encoder", False)),
                     max_length=max_length or int(manifest.get("max_length", 128)))


def runtime_graph(path_or_uri: str | Path, tier: str) -> tuple[Path, bool]:
    """The ONNX graph a tier serves from an artifact (pruning.json's `runtime.graphs`), checked
    against its recorded sha256; returns (graph file, INT8?). The job writes graphs only for
    the graph runtimes (onnxruntime, openvino), after their parity was measured (served.py)."""
    path = resolve(path_or_uri)
    manifest = read_manifest(path) or {}
    runtime = manifest.get("runtime") or {}
    rel = (runtime.get("graphs") or {}).get(tier)
    if runtime.get("name") not in ("onnxruntime", "openvino") or not rel:
        raise ArtifactError(f"{path / MANIFEST}: no ONNX graph for tier {tier!r} (runtime "
                            f"{runtime.get('name')!r}); re-run the job with runtime onnxruntime")
    graph = (path / rel).resolve()
    if not graph.is_relative_to(path.resolve()) or not graph.is_file():
        raise ArtifactError(f"{path / MANIFEST}: runtime.graphs.{tier} {rel!r} is not a file "
                            "inside the artifact")
    recorded = (runtime.get("sha256") or {}).get(tier)
    if not recorded or sha256_file(graph) != recorded:
        raise ArtifactError(f"{graph}: sha256 differs from {MANIFEST}'s runtime.sha256.{tier}")
    return graph, rel.endswith(".int8.onnx")
