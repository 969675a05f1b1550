"""Ground truth: quantize and dequantize through the libggml that llama-cpp-python ships.

These are the very functions `llama-quantize` calls (`ggml_quantize_chunk`) and the very dequantizers
llama.cpp's CPU backend uses (`ggml_get_type_traits(type)->to_float`), so bytes from here are the bytes of
an exported GGUF and floats from here are what llama.cpp computes with.
"""
from __future__ import annotations

import ctypes
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np

from ramp.errors import RampError
from ramp.kernels.formats import Format
from ramp.machine import usable_cores

_to_float_t = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


class _TypeTraits(ctypes.Structure):
    # Mirrors `struct ggml_type_traits` in ggml/include/ggml.h of the vendored llama.cpp.
    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.c_void_p),
        ("from_float_ref", ctypes.c_void_p),
    ]


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    try:
        import llama_cpp
    except ImportError as exc:
        raise RampError("llama-cpp-python is not installed; `pip install llama-cpp-python==0.3.36`") from exc
    path = Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"
    if not path.is_file():
        raise RampError(f"{path} is missing; reinstall llama-cpp-python (`pip install --force-reinstall llama-cpp-python==0.3.36`)")
    lib = ctypes.CDLL(str(path))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
    ]
    lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    lib.ggml_quantize_init.restype = None
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    lib.ggml_get_type_traits.restype = ctypes.POINTER(_TypeTraits)
    lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
    return lib


@lru_cache(maxsize=None)
def _traits(fmt: Format) -> _TypeTraits:
    traits = _lib().ggml_get_type_traits(int(fmt.ggml_type)).contents
    # A disagreement means the installed libggml is not the one gguf-py's size table describes.
    if (traits.blck_size, traits.type_size) != (fmt.block_size, fmt.block_bytes):
        raise RampError(
            f"libggml says {fmt.name} blocks are {traits.blck_size} weights/{traits.type_size} bytes, gguf-py says "
            f"{fmt.block_size}/{fmt.block_bytes}; install matching versions of gguf and llama-cpp-python"
        )
    return traits



def _row_chunks(n_rows: int, min_rows: int = 16) -> list[tuple[int, int]]:
    # ctypes releases the GIL during the C call, so row chunks quantize in parallel like llama-quantize's threads.
    n_chunks = max(1, min(usable_cores(), n_rows // min_rows))
    bounds = np.linspace(0, n_rows, n_chunks + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def requires_importance(fmt: Format) -> bool:
    return bool(_lib().ggml_quantize_requires_imatrix(int(fmt.ggml_type)))


def quantize(rows: np.ndarray, fmt: Format, importance: np.ndarray | None) -> np.ndarray:
    """Quantize a C-contiguous float32 (n_rows, row_length) matrix whose row length `fmt` fits."""
    n_rows, row_length = rows.shape
    traits = _traits(fmt)
    row_bytes = row_length // traits.blck_size * traits.type_size
    out = np.empty(n_rows * row_bytes, dtype=np.uint8)
    lib = _lib()
    lib.ggml_quantize_init(int(fmt.ggml_type))
    imatrix = None if importance is None else importance.ctypes.data
    src, dst = rows.ctypes.data, out.ctypes.data

    def run(chunk: tuple[int, int]) -> int:
        start, stop = chunk
        # `start` is an element offset into src; ggml derives the destination row from it.
        return lib.ggml_quantize_chunk(int(fmt.ggml_type), src, dst, start * row_length, stop - start, row_length, imatrix)

    with ThreadPoolExecutor(max_workers=usable_cores()) as pool:
        written = sum(pool.map(run, _row_chunks(n_rows)))
    assert written == out.size
    return out


def dequantize(packed: np.ndarray, fmt: Format, n_rows: int, row_length: int) -> np.ndarray:
    """Float32 (n_rows, row_length) from llama.cpp's packed bytes (length already checked by the caller)."""
    if fmt.name == "F32":
        return packed.view(np.float32).reshape(n_rows, row_length).copy()
    traits = _traits(fmt)
    to_float = _to_float_t(traits.to_float)
    packed = np.ascontiguousarray(packed)
    out = np.empty((n_rows, row_length), dtype=np.float32)
    row_bytes = row_length // traits.blck_size * traits.type_size

    def run(chunk: tuple[int, int]) -> None:
        start, stop = chunk
        to_float(packed.ctypes.data + start * row_bytes, out.ctypes.data + start * row_length * 4, (stop - start) * row_length)

    with ThreadPoolExecutor(max_workers=usable_cores()) as pool:
        list(pool.map(run, _row_chunks(n_rows)))
    return out
