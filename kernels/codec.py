"""quantize, dequantize and quantize_dequantize: one tensor through a backend, the requested format first
resolved against the row length with llama.cpp's fallback rules."""
from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from ramp.errors import RampError
from ramp.kernels.formats import resolve_format, tensor_bytes

if TYPE_CHECKING:
    import torch

BACKENDS = ("ggml", "torch")


def _backend(name: str) -> ModuleType:
    if name == "ggml":
        from ramp.kernels import ggml_backend

        return ggml_backend
    if name == "torch":
        from ramp.kernels import torch_backend

        return torch_backend
    raise RampError(f"unknown kernel backend {name!r}; use one of {', '.join(BACKENDS)}")


def _is_torch(value: object) -> bool:
    # Checked by module name so numpy-only callers never pay for importing torch.
    return type(value).__module__.startswith("torch")


def _check_weights(weights: object, name: str | None) -> tuple[int, ...]:
    label = f"tensor {name!r}" if name else "weights"
    if _is_torch(weights):
        is_float, shape = weights.is_floating_point(), tuple(weights.shape)
    elif isinstance(weights, np.ndarray):
        is_float, shape = np.issubdtype(weights.dtype, np.floating), weights.shape
    else:
        raise RampError(f"{label} must be a numpy array or torch tensor, got {type(weights).__name__}; convert it first")
    if not is_float:
        raise RampError(f"{label} has dtype {weights.dtype}, not a float type; pass float32/float16/bfloat16 weights")
    if len(shape) == 0 or 0 in shape:
        raise RampError(f"{label} has shape {shape}; quantization needs at least one non-empty row")
    finite = bool(weights.isfinite().all()) if _is_torch(weights) else bool(np.isfinite(weights).all())
    if not finite:
        raise RampError(f"{label} contains NaN or Inf values; fix the checkpoint (or the step that produced it) before quantizing")
    return shape


def _check_importance(importance: object, row_length: int, name: str | None) -> np.ndarray | None:
    """Per-column weights, llama.cpp's `quant_weights` (one imatrix row), as contiguous float32."""
    if importance is None:
        return None
    label = f" for tensor {name!r}" if name else ""
    values = importance.detach().cpu().numpy() if _is_torch(importance) else np.asarray(importance)
    if values.shape != (row_length,):
        raise RampError(
            f"importance{label} has shape {values.shape}, expected ({row_length},): one weight per column of the row"
        )
    values = np.ascontiguousarray(values, dtype=np.float32)
    if not np.isfinite(values).all() or (values < 0).any():
        raise RampError(f"importance{label} has negative, NaN or Inf entries; recompute the importance matrix")
    return values


def _rows_numpy(weights: object, shape: tuple[int, ...]) -> np.ndarray:
    array = weights.detach().float().cpu().numpy() if _is_torch(weights) else weights
    return np.ascontiguousarray(array, dtype=np.float32).reshape(-1, shape[-1])


def quantize(
    weights: np.ndarray | torch.Tensor,
    fmt: str,
    importance: np.ndarray | None = None,
    backend: str = "ggml",
    *,
    name: str | None = None,
) -> np.ndarray:
    """llama.cpp's packed bytes (uint8, 1-D) of `weights` stored as `fmt`; rows are the last axis."""
    shape = _check_weights(weights, name)
    resolved = resolve_format(fmt, shape[-1])
    quant_weights = _check_importance(importance, shape[-1], name)
    module = _backend(backend)
    if backend == "ggml":
        if quant_weights is None and module.requires_importance(resolved):
            raise RampError(f"format {resolved.name} needs an importance matrix; pass importance= (from `llama-imatrix`)")
        return module.quantize(_rows_numpy(weights, shape), resolved, quant_weights)
    return module.quantize(module.as_rows(weights, shape), resolved, quant_weights)


def dequantize(
    packed: np.ndarray | bytes,
    fmt: str,
    shape: tuple[int, ...],
    backend: str = "ggml",
) -> np.ndarray:
    """Float32 weights of `shape` from llama.cpp's packed bytes of format `fmt` (resolved for the row length)."""
    shape = tuple(int(d) for d in shape)
    if len(shape) == 0 or min(shape) <= 0:
        raise RampError(f"shape {shape} is not a tensor shape; pass the (rows, row_length) the bytes were made for")
    resolved = resolve_format(fmt, shape[-1])
    data = np.frombuffer(packed, dtype=np.uint8) if isinstance(packed, (bytes, bytearray, memoryview)) else packed
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        raise RampError(f"packed data must be uint8 bytes, got {getattr(data, 'dtype', type(data).__name__)}; pass quantize()'s output")
    expected = tensor_bytes(shape, fmt)
    if data.size != expected:
        raise RampError(
            f"packed data for {resolved.name} of shape {shape} must be {expected} bytes, got {data.size}; "
            "check the format and shape match the ones it was quantized with"
        )
    n_rows = expected // resolved.tensor_bytes(1, shape[-1])
    rows = _backend(backend).dequantize(data.reshape(-1), resolved, n_rows, shape[-1])
    return np.asarray(rows, dtype=np.float32).reshape(shape)


def quantize_dequantize(
    weights: np.ndarray | torch.Tensor,
    fmt: str,
    importance: np.ndarray | None = None,
    backend: str = "torch",
    *,
    name: str | None = None,
) -> np.ndarray | torch.Tensor:
    """The float32 weights llama.cpp computes with after storing `weights` as `fmt`; same type (and device) as the input."""
    shape = _check_weights(weights, name)
    resolved = resolve_format(fmt, shape[-1])
    quant_weights = _check_importance(importance, shape[-1], name)
    module = _backend(backend)
    if backend == "torch":
        result = module.quantize_dequantize(module.as_rows(weights, shape), resolved, quant_weights).reshape(shape)
        return result if _is_torch(weights) else result.cpu().numpy()
    packed = quantize(weights, resolved.name, quant_weights, backend, name=name)
    result = dequantize(packed, resolved.name, shape, backend)
    if _is_torch(weights):
        import torch

        return torch.from_numpy(result).to(weights.device)
    return result
