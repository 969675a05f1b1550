"""Quantize and dequantize weights exactly as llama.cpp does.

Two backends produce the same bytes: "ggml" calls the libggml that llama-cpp-python ships (ground truth,
used for export), "torch" is ramp's vectorised re-implementation (fast round trips on CPU or CUDA, used in
training loops). Every entry point first resolves the requested format against the tensor's row length
with llama.cpp's fallback rules, so a result is always the tensor llama.cpp would really run.
"""
from __future__ import annotations

from ramp.kernels.cache import DequantCache
from ramp.kernels.codec import BACKENDS, dequantize, quantize, quantize_dequantize
from ramp.kernels.formats import FORMATS, Format, get_format, resolve_format, tensor_bytes

__all__ = [
    "BACKENDS", "FORMATS", "Format", "DequantCache", "dequantize", "get_format", "quantize",
    "quantize_dequantize", "resolve_format", "tensor_bytes",
]
