"""OpenVINO as a second graph runtime: the same exported ONNX graph, compiled by OpenVINO's CPU
(or GPU) plugin. Measured on a Zen 4 CPU with 1 thread, OpenVINO ran MiniLM's fp32 graph
1.2-2.5x faster than ONNX Runtime: its CPU plugin infers in bfloat16 where the CPU has it, and
the `runtime_parity` gate (min cosine 0.9999) decides whether that precision may serve. ONNX
Runtime's INT8 graph ran 1.7-2.5x slower on OpenVINO than on ONNX Runtime, so INT8 stays there
(the spec refuses `runtime: openvino` with `quantization.mode: int8-dynamic`).

`OpenVinoSession` answers the part of `onnxruntime.InferenceSession` the tiers use:
`get_inputs()` (objects with `.name`), `run(None, feeds) -> [outputs]` and `get_providers()`.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

__all__ = ["OpenVinoSession", "openvino_version"]

log = logging.getLogger("tierserve.runtime")


def openvino_version() -> str:
    from .runtime import ServingRuntimeError

    try:
        import openvino
    except ImportError as exc:
        raise ServingRuntimeError("runtime openvino needs the `openvino` package (pip install "
                                  "'tierserve[openvino]'); or set spec.serving.runtime: "
                                  "onnxruntime") from exc
    return openvino.__version__


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
        self._inputs = [SimpleNamespace(name=i.get_any_name()) for i in self.compiled.inputs]
        self._request = self.compiled.create_infer_request()

    def get_inputs(self) -> list[SimpleNamespace]:
        return self._inputs

    def get_providers(self) -> list[str]:
        return [f"OpenVINO {self.device} ({self.precision})"]

    def run(self, _outputs, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = self._request.infer(feeds)
        return [np.array(result[self.compiled.outputs[0]], copy=True)]
