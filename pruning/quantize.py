"""Optional INT8 dynamic quantization of the linears, applied after pruning.

Weights become int8 (per-tensor affine); activations are quantized on the fly per batch, so no
calibration data is needed. On x86 CPUs this runs through fbgemm/oneDNN int8 kernels. It uses
`torch.ao.quantization.quantize_dynamic`: present in torch 2.13 but deprecated in favour of the
`torchao` package; the deprecation warning is silenced here and a clear error is raised if a
future torch drops the API (then install torchao and port this one function).

Quantized modules are never saved: an artifact stores fp32 weights and records
`"quantization": "int8-dynamic"` in `pruning.json`; `load_pruned` quantizes after loading, so
no pickled packed-weight objects ever touch disk. Measure latency separately (benchmarks/).
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

__all__ = ["INT8_DYNAMIC", "QuantizationError", "is_quantized", "quantize", "quantize_dynamic_int8",
           "state_size_bytes"]

INT8_DYNAMIC = "int8-dynamic"


class QuantizationError(RuntimeError):
    """Quantization is unavailable or was asked for an unknown scheme."""


def quantize_dynamic_int8(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """INT8 dynamic quantization of every `nn.Linear` in `model` (CPU inference only)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        try:
            from torch.ao.quantization import quantize_dynamic
        except ImportError as exc:  # pragma: no cover - depends on a future torch
            raise QuantizationError(
                f"torch {torch.__version__} has no torch.ao.quantization.quantize_dynamic; "
                "install torchao and use its int8 dynamic quantization") from exc
        target = model if inplace else copy.deepcopy(model)
        target.eval()
        return quantize_dynamic(target, {nn.Linear}, dtype=torch.qint8, inplace=True)


def quantize(model: nn.Module, scheme: str | None) -> nn.Module:
    """Apply a manifest's `quantization` value (None = leave the model as it is), in place."""
    if scheme is None:
        return model
    if scheme != INT8_DYNAMIC:
        raise QuantizationError(f"unknown quantization '{scheme}'; supported: {INT8_DYNAMIC}")
    return quantize_dynamic_int8(model, inplace=True)


def is_quantized(model: nn.Module) -> bool:
    """True if any module holds packed quantized weights."""
    return any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in model.modules())


def _bytes(value: object) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, tuple | list):
        return sum(_bytes(v) for v in value)
    return 0


def state_size_bytes(model: nn.Module) -> int:
    """Bytes held by the model's state (parameters, buffers, packed int8 weights)."""
    return sum(_bytes(v) for v in model.state_dict().values())
