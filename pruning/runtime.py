"""The runtime a tier serves on: ONNX Runtime (the default for encoder tasks) or eager PyTorch.

A user who does not use tierserve serves the same encoder through ONNX Runtime (Infinity,
fastembed, TEI's CPU path), so both tiers run there by default and every number the job reports
(quality gates, latency gate, cost ratio, cascade calibration) is measured on the runtime that
will serve. Decoder LMs keep eager PyTorch.

OpenVINO is offered as a second runtime for the same graphs (`OpenVinoSession`, below).

`GraphTaskModel` is a `TaskModel` whose `outputs(batch)` runs a session over the exported graph (export.py: pooling and normalisation are inside the graph), so evaluation,
calibration and the tiers call it exactly as they call an eager model. It keeps the eager module
in `model` for what is read from it: the config (labels, shapes for the FLOPs ideal) and the
forward's argument names. Graphs are protobuf files, never pickles.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from .tasks import Task, TaskModel

__all__ = ["OpenVinoSession", "openvino_version", "GRAPH_RUNTIMES", "ONNXRUNTIME", "OPENVINO", "RUNTIMES", "TORCH", "runtime_version", "GraphTaskModel", "ServingRuntimeError", "default_runtime",
           "graph_model", "ort_version", "providers_for", "serving_runtime", "session"]

log = logging.getLogger("tierserve.runtime")

ONNXRUNTIME, OPENVINO, TORCH = "onnxruntime", "openvino", "torch"
RUNTIMES = (ONNXRUNTIME, OPENVINO, TORCH)
GRAPH_RUNTIMES = (ONNXRUNTIME, OPENVINO)  # both serve the exported ONNX graph
CUDA_EP, CPU_EP = "CUDAExecutionProvider", "CPUExecutionProvider"


class ServingRuntimeError(RuntimeError):
    """The serving runtime cannot be used (missing package, bad graph file)."""


def default_runtime(task: Task | str) -> str:
    """onnxruntime for encoder tasks; decoders keep torch (no exported generate loop yet)."""
    return TORCH if Task(task) is Task.text_generation else ONNXRUNTIME


def runtime_version(runtime: str) -> str:
    """The installed version of a graph runtime (a clear error when it is missing)."""
    if runtime == OPENVINO:
        return openvino_version()
    return ort_version()


def serving_runtime(spec) -> str:
    """The runtime a spec's tiers serve on: `spec.serving.runtime`, else the task's default."""
    return spec.serving.runtime or default_runtime(spec.model.task)


def ort_version() -> str:
    try:
        import onnxruntime
    except ImportError as exc:
        raise ServingRuntimeError("runtime onnxruntime needs the `onnxruntime` package "
                            "(pip install onnxruntime); or set spec.serving.runtime: torch") from exc
    return onnxruntime.__version__


def providers_for(gpus: float, available: list[str]) -> list[str]:
    """Execution providers in order of preference: CUDA when the tier has GPUs and ONNX Runtime
    sees one (then CPU as ORT's fallback for unsupported nodes), else the CPU alone."""
    if gpus > 0 and CUDA_EP in available:
        return [CUDA_EP, CPU_EP]
    if gpus > 0:
        log.warning("tier asks for %s GPU(s) but ONNX Runtime has no %s here (providers %s): "
                    "running on CPU", gpus, CUDA_EP, available)
    return [CPU_EP]


def session(graph: str | Path | bytes, *, threads: int = 1, gpus: float = 0.0,
            runtime: str = ONNXRUNTIME):
    """An inference session over one graph (a file, or its bytes): `threads` intra-op threads
    (the tier's cpus), one inter-op thread, every graph optimisation on. `runtime` openvino:
    an OpenVINO compiled model behind the same surface (`OpenVinoSession`)."""
    if runtime == OPENVINO:
        return OpenVinoSession(graph, threads=threads, gpus=gpus)
    ort_version()
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: ORT's warnings would flood the tier's log
    providers = providers_for(gpus, ort.get_available_providers())
    where = "graph bytes" if isinstance(graph, bytes) else str(graph)
    try:
        return ort.InferenceSession(graph if isinstance(graph, bytes) else str(graph), opts,
                                    providers=providers)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph types
        raise ServingRuntimeError(f"{where}: ONNX Runtime cannot load it "
                                  f"({type(exc).__name__}: {str(exc)[:300]})") from exc


# -- OpenVINO ------------------------------------------------------------------------------------
# The same exported graph compiled by OpenVINO's CPU (or GPU) plugin. On a Zen 4 CPU with 1
# thread it ran MiniLM's fp32 graph 1.2-2.5x faster than ONNX Runtime: its CPU plugin infers in
# bfloat16 where the CPU has it, and the runtime_parity gate decides whether that may serve.
# ONNX Runtime's INT8 graph ran 1.7-2.5x slower on OpenVINO than on ONNX Runtime, so INT8 stays
# there (the spec refuses runtime openvino with quantization int8-dynamic). `OpenVinoSession`
# answers the part of `onnxruntime.InferenceSession` the tiers use: `get_inputs()` (objects with
# `.name`), `run(None, feeds) -> [outputs]` and `get_providers()`.
def openvino_version() -> str:
    try:
        import openvino
    except ImportError as exc:
        raise ServingRuntimeError("runtime openvino needs the `openvino` package (pip install "
                                  "'tierserve[openvino]'); or set spec.serving.runtime: "
                                  "onnxruntime") from exc
    return openvino.__version__


GRAPH_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "pixel_values")


class OpenVinoSession:
    def __init__(self, graph: str | Path | bytes, *, threads: int = 1, gpus: float = 0.0) -> None:
        openvino_version()
        import openvino as ov

        core = ov.Core()
        device = "GPU" if gpus > 0 and "GPU" in core.available_devices else "CPU"
        if gpus > 0 and device == "CPU":
            log.warning("tier asks for %s GPU(s) but OpenVINO sees no GPU device (%s): running "
                        "on CPU", gpus, core.available_devices)
        config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        if device == "CPU":
            config["INFERENCE_NUM_THREADS"] = max(1, int(threads))
        with tempfile.TemporaryDirectory() as tmp:
            if isinstance(graph, bytes):  # unpickled in a Ray task: the graph travelled as bytes
                path = Path(tmp) / "graph.onnx"
                path.write_bytes(graph)
                graph = path
            self.compiled = core.compile_model(str(graph), device, config)
        self.device = device
        self.precision = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        # an input tensor can carry several names (a traced graph adds its first consumer's):
        # the graph's own input name is the one the feeds use
        self._inputs = [SimpleNamespace(name=_input_name(i.get_names())) for i in self.compiled.inputs]
        self._request = self.compiled.create_infer_request()

    def get_inputs(self) -> list[SimpleNamespace]:
        return self._inputs

    def get_providers(self) -> list[str]:
        return [f"OpenVINO {self.device} ({self.precision})"]

    def run(self, _outputs, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = self._request.infer(feeds)
        return [np.array(result[self.compiled.outputs[0]], copy=True)]


@dataclass
class GraphTaskModel(TaskModel):
    """A `TaskModel` answering from a graph session (see the module doc): ONNX Runtime, or
    OpenVINO with `runtime="openvino"`.

    The session is made on first use with `threads` intra-op threads (0: as many as torch uses
    in this process then). Pickled (the job's evaluation runs as Ray tasks), it carries the
    graph's bytes instead of the session, so a task on another node needs no shared disk.
    """

    graph: str = ""  # the graph file
    quantized: bool = False  # an INT8 graph (its weights are not `model`'s)
    threads: int = 0
    gpus: float = 0.0
    runtime: str = ONNXRUNTIME  # onnxruntime | openvino
    _session: Any = field(default=None, repr=False)
    _bytes: bytes | None = field(default=None, repr=False)

    @property
    def session(self):
        if self._session is None:
            threads = self.threads or torch.get_num_threads()
            self._session = session(self._bytes or self.graph, threads=threads, gpus=self.gpus,
                                    runtime=self.runtime)
        return self._session

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def outputs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The exported task forward: (B, d) unit embeddings or (B, C) logits, on the CPU."""
        s = self.session
        feeds = {i.name: _array(batch[i.name]) for i in s.get_inputs()}
        return torch.from_numpy(s.run(None, feeds)[0])

    def __getstate__(self) -> dict:
        state = {**self.__dict__, "_session": None}
        if state["_bytes"] is None:
            state["_bytes"] = Path(self.graph).read_bytes()
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


def _input_name(names: set[str]) -> str:
    known = [n for n in GRAPH_INPUTS if n in names]
    return known[0] if known else sorted(names)[0]


def _array(t: torch.Tensor) -> np.ndarray:
    a = t.detach().cpu().numpy()
    return a.astype(np.int64, copy=False) if a.dtype.kind in "iub" else a


def graph_model(eager: TaskModel, graph: str | Path, *, threads: int = 0, gpus: float = 0.0,
                quantized: bool = False, runtime: str = ONNXRUNTIME) -> GraphTaskModel:
    """`eager`'s task on `graph` (an export of it, export.py), with its preprocessor."""
    tm = GraphTaskModel(task=eager.task, model=eager.model, processor=eager.processor,
                      cross_encoder=eager.cross_encoder, max_length=eager.max_length,
                      graph=str(graph), quantized=quantized, threads=threads, gpus=gpus,
                      runtime=runtime)
    tm.session  # noqa: B018 - load now: a bad graph fails here, not on the first request
    return tm
