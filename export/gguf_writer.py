"""Write a Model as a GGUF file llama.cpp loads: metadata copied verbatim, each tensor in a chosen type.

Quantizable tensors take the type their allocation names (after llama.cpp's fallback for their row length),
everything else (norms, rope factors) stays F32, which is what llama.cpp itself keeps for 1-D tensors.
A model without `output.weight` has tied embeddings: llama.cpp reads `token_embd.weight` for the output
projection too, so the token embedding's format governs both and no extra tensor is written.

The file is streamed: each tensor is encoded just before it is written, so peak memory is the model plus
one encoded tensor, and it lands under its final name only when complete.
"""
from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Iterator, Mapping

import gguf
import numpy as np

from ramp.allocate.allocation import Allocation
from ramp.files import atomic_path, cache_dir
from ramp.kernels.formats import Format, get_format, resolve_format
from ramp.errors import RampError
from ramp.models.model import ORIGIN_KEY, MetadataValue, Model
from ramp.models.store import row_bands, tensor_rows

if TYPE_CHECKING:
    from ramp.measure.imatrix import ImportanceMatrix

REFERENCE_TYPES = ("F32", "F16")

# general.file_type of a mixed file: the llama_ftype of the format holding most parameters, so tools that
# print "model ftype" name the dominant format. llama.cpp reads the key only for display.
_FILE_TYPE = {
    "F32": gguf.LlamaFileType.ALL_F32,
    "F16": gguf.LlamaFileType.MOSTLY_F16,
    "BF16": gguf.LlamaFileType.MOSTLY_BF16,
    "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
    "Q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
    "Q5_0": gguf.LlamaFileType.MOSTLY_Q5_0,
    "Q5_1": gguf.LlamaFileType.MOSTLY_Q5_1,
    "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "Q2_K": gguf.LlamaFileType.MOSTLY_Q2_K,
    "Q3_K": gguf.LlamaFileType.MOSTLY_Q3_K_M,
    "Q4_K": gguf.LlamaFileType.MOSTLY_Q4_K_M,
    "Q5_K": gguf.LlamaFileType.MOSTLY_Q5_K_M,
    "Q6_K": gguf.LlamaFileType.MOSTLY_Q6_K,
    "IQ4_NL": gguf.LlamaFileType.MOSTLY_IQ4_NL,
    "IQ4_XS": gguf.LlamaFileType.MOSTLY_IQ4_XS,
}

_SCALAR_BYTES = {
    gguf.GGUFValueType.UINT8: 1, gguf.GGUFValueType.INT8: 1, gguf.GGUFValueType.BOOL: 1,
    gguf.GGUFValueType.UINT16: 2, gguf.GGUFValueType.INT16: 2,
    gguf.GGUFValueType.UINT32: 4, gguf.GGUFValueType.INT32: 4, gguf.GGUFValueType.FLOAT32: 4,
    gguf.GGUFValueType.UINT64: 8, gguf.GGUFValueType.INT64: 8, gguf.GGUFValueType.FLOAT64: 8,
}


@dataclass(frozen=True)
class TensorPlan:
    name: str
    shape: tuple[int, ...]  # numpy order: (rows, row_length)
    fmt: Format  # the type really written, llama.cpp's fallback applied

    @property
    def n_bytes(self) -> int:
        n_rows = int(np.prod(self.shape[:-1], dtype=np.int64))
        return self.fmt.tensor_bytes(n_rows, int(self.shape[-1]))


def reference_formats(model: Model, dtype: str = "F32") -> dict[str, str]:
    """The allocation of the unquantized reference: every quantizable tensor in `dtype` (F32 or F16)."""
    if dtype.upper() not in REFERENCE_TYPES:
        raise ValueError(f"reference type must be one of {REFERENCE_TYPES}, got {dtype!r}")
    return {spec.name: dtype.upper() for spec in model.quantizable}


def plan_tensors(model: Model, formats: Mapping[str, str]) -> list[TensorPlan]:
    """Every tensor of the model, in file order, with the type it will be written in."""
    plans = []
    for name in model.tensors:
        shape = model.shape(name)
        fmt = resolve_format(formats[name], shape[-1]) if name in formats else get_format("F32")
        plans.append(TensorPlan(name, shape, fmt))
    return plans


def file_type(plans: list[TensorPlan]) -> gguf.LlamaFileType:
    params: Counter[str] = Counter()
    for plan in plans:
        if len(plan.shape) >= 2:
            params[plan.fmt.name] += int(np.prod(plan.shape))
    dominant = params.most_common(1)[0][0] if params else "F32"
    return _FILE_TYPE.get(dominant, gguf.LlamaFileType.GUESSED)


def file_metadata(model: Model, plans: list[TensorPlan]) -> dict[str, MetadataValue]:
    """The source's key/values verbatim, with general.file_type describing the new tensor types and the
    checkpoint the weights come from (ORIGIN_KEY, kept when the source already records one)."""
    metadata = dict(model.metadata)
    metadata["general.file_type"] = MetadataValue(int(file_type(plans)), gguf.GGUFValueType.UINT32)
    if model.origin_sha256 and ORIGIN_KEY not in metadata:
        metadata[ORIGIN_KEY] = MetadataValue(model.origin_sha256, gguf.GGUFValueType.STRING)
    return metadata


def _alignment(metadata: Mapping[str, MetadataValue]) -> int:
    entry = metadata.get("general.alignment")
    return int(entry.value) if entry is not None else gguf.GGUF_DEFAULT_ALIGNMENT


def _pad(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


def _string_bytes(text: str) -> int:
    return 8 + len(text.encode("utf-8"))


def _value_bytes(value, value_type: gguf.GGUFValueType, element_type: gguf.GGUFValueType | None) -> int:
    if value_type in _SCALAR_BYTES:
        return _SCALAR_BYTES[value_type]
    if value_type == gguf.GGUFValueType.STRING:
        return _string_bytes(value) if isinstance(value, str) else 8 + len(value)
    if value_type == gguf.GGUFValueType.ARRAY:
        return 4 + 8 + sum(_value_bytes(item, element_type, None) for item in value)
    raise ValueError(f"GGUF value type {value_type!r} has no defined size")


def predict_file_size(model: Model, formats: Mapping[str, str]) -> int:
    """Exact byte count of the GGUF `write_gguf(model, formats, ...)` produces, from the GGUF v3 layout:
    header, key/values, tensor infos, padding to the data alignment, then each tensor's data padded to it."""
    plans = plan_tensors(model, formats)
    metadata = file_metadata(model, plans)
    alignment = _alignment(metadata)
    size = 4 + 4 + 8 + 8  # magic, version, tensor count, key/value count
    for key, entry in metadata.items():
        size += _string_bytes(key) + 4 + _value_bytes(entry.value, entry.value_type, entry.element_type)
    for plan in plans:
        size += _string_bytes(plan.name) + 4 + 8 * len(plan.shape) + 4 + 8  # name, n_dims, dims, type, offset
    size = _pad(size, alignment)
    return size + sum(_pad(plan.n_bytes, alignment) for plan in plans)


def encode_reference(weights: np.ndarray, fmt: Format) -> np.ndarray:
    """A tensor's bytes as llama.cpp stores them in an unquantized `fmt` (F32 or F16)."""
    if fmt.name == "F32":
        return np.ascontiguousarray(weights, dtype=np.float32)
    # numpy rounds to nearest even, as ggml_fp32_to_fp16 does
    return np.ascontiguousarray(weights, dtype=np.float16)


def _check_f16_range(model: Model, plans: list[TensorPlan]) -> None:
    """Before anything is written: a weight beyond float16's range would be stored as Inf."""
    limit = float(np.finfo(np.float16).max)
    for plan in plans:
        if plan.fmt.name == "F16" and math.prod(plan.shape):
            largest = max(max(float(band.max()), -float(band.min())) for band in _bands(model, plan.name))
            if not largest <= limit:
                raise RampError(f"tensor {plan.name} holds {largest:g}, beyond float16's range ({limit:g}); export it "
                                "as F32 (--reference F32) or in a quantized format")


def _bands(model: Model, name: str) -> Iterator[np.ndarray]:
    """A tensor's float32 weights in row bands of 2^24 (`ramp.models.store.row_bands`): written or checked band by
    band, a tensor is never whole beside its encoding."""
    for start, stop in row_bands(model.tensors, name, whole_if_kept=False):
        yield tensor_rows(model.tensors, name, start, stop)


def pad_to_alignment(handle: BinaryIO, alignment: int) -> None:
    """Zeros up to the next multiple of `alignment`: every tensor's data starts, and the file ends, aligned."""
    handle.write(bytes(-handle.tell() % alignment))


def start_gguf(path: str | os.PathLike, metadata: Mapping[str, MetadataValue], plans: list[TensorPlan]) -> gguf.GGUFWriter:
    """A GGUFWriter on `path` that has written the header, `metadata` verbatim and the tensor infos of `plans`:
    what remains is each tensor's data, in the order of `plans`, each padded to the data alignment."""
    writer = gguf.GGUFWriter(path, str(metadata["general.architecture"].value))
    writer.data_alignment = _alignment(metadata)
    for key, entry in metadata.items():
        if key == "general.architecture":  # GGUFWriter wrote it from the constructor argument
            continue
        writer.add_key_value(key, entry.value, entry.value_type, sub_type=entry.element_type)
    for plan in plans:
        writer.add_tensor_info(plan.name, plan.shape, np.dtype(np.float32), plan.n_bytes, raw_dtype=plan.fmt.ggml_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    return writer


def write_gguf(model: Model, formats: Mapping[str, str], path: str | os.PathLike, progress: bool = True,
               importance: Mapping[str, np.ndarray] | None = None) -> int:
    """Write the model with each quantizable tensor in `formats[name]` (quantized with `importance[name]`
    where given); return the file's byte count."""
    from tqdm import tqdm

    from ramp.kernels import DequantCache

    plans = plan_tensors(model, formats)
    _check_f16_range(model, plans)
    metadata = file_metadata(model, plans)
    with atomic_path(path) as tmp:
        writer = start_gguf(tmp, metadata, plans)
        alignment = writer.data_alignment
        writer.close()
        # quantized bytes come from the same disk cache the measurement filled (identical libggml calls)
        quantized = DequantCache(model, backend="ggml", importance=importance, max_memory_bytes=0)
        bar = tqdm(plans, desc=f"writing {Path(path).name}", unit="tensor", disable=not progress, leave=False)
        with open(tmp, "r+b") as handle:
            handle.seek(0, os.SEEK_END)
            for plan in bar:
                pad_to_alignment(handle, alignment)
                if plan.fmt.name in REFERENCE_TYPES:
                    for band in _bands(model, plan.name):
                        encode_reference(band, plan.fmt).tofile(handle)
                else:
                    quantized.packed(plan.name, plan.fmt.name).tofile(handle)
            pad_to_alignment(handle, alignment)
        return os.path.getsize(tmp)


def write_reference(model: Model, path: str | os.PathLike, dtype: str = "F32", progress: bool = True) -> int:
    """The unquantized reference every quantized file is measured against."""
    return write_gguf(model, reference_formats(model, dtype), path, progress)


def write_allocation(model: Model, allocation: Allocation, path: str | os.PathLike, progress: bool = True,
                     imatrix: "ImportanceMatrix | None" = None) -> int:
    """The allocation's GGUF, quantized with the importance matrix it was made with (checked)."""
    allocation.check_matches(model)
    allocation.check_imatrix(imatrix)
    importance = imatrix.importances(model) if imatrix is not None else None
    return write_gguf(model, allocation.formats, path, progress, importance)


def readable_gguf(path: Path) -> bool:
    """Whether a (cached) GGUF parses and holds all its tensor data: a truncated copy does not."""
    from ramp.models.gguf import read_gguf

    size = path.stat().st_size
    return all(t.data_offset + t.n_bytes <= size for t in read_gguf(path).tensors)


def cached_reference(model: Model, dtype: str = "F32", progress: bool = True) -> Path:
    """The model's reference GGUF under the cache, written on first use and checked against its seal on
    every later one (`ramp.cache_entries`). The writer is deterministic, so the source file's hash and the
    dtype identify it."""
    from ramp.cache_entries import cache_entry_path, trusted_entry

    path = cache_dir() / "reference" / f"{model.sha256[:16]}-{dtype.upper()}.gguf"
    if not trusted_entry(path, readable_gguf):
        with cache_entry_path(path) as tmp:
            write_reference(model, tmp, dtype, progress)
    return path
