"""GGUF files as ramp reads them: a reader that fails in one line, and a model file loaded into a `Model`
with every tensor dequantized to float32."""
from __future__ import annotations

import os
import re
import struct
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ramp.errors import RampError
from ramp.files import file_sha256
from ramp.models.store import TensorStore
from ramp.models.model import ORIGIN_KEY, ROLES, MetadataValue, Model, TensorSpec, check_finite, role_of

if TYPE_CHECKING:
    import gguf

# Architectures whose GGUF tensors follow llama.cpp's standard names for `ramp.models.model.ROLES`.
MAPPABLE_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "granite", "olmo")
# Non-quantized companions that models legitimately carry (norms, biases, rope factors).
_KNOWN_AUXILIARY = re.compile(r"(norm|rope_freqs|rope_factors)")

# Files read last, by (real path, device, inode, size, mtime): one `ramp run` reads its reference and presets a
# dozen times, and a 262k-token vocabulary is worth parsing once.
_READERS: "OrderedDict[tuple, GGUFFile]" = OrderedDict()
_KEEP_READERS = 4
_MAGIC = b"GGUF"
_VERSIONS = (2, 3)
_DEFAULT_ALIGNMENT = 32


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of a GGUF file as stored: `shape` in GGUF order (row length first), `data` a read-only view of
    the file (numpy order; quantized types as uint8 rows of packed blocks, as gguf-py presents them)."""

    name: str
    tensor_type: "gguf.GGMLQuantizationType"
    shape: tuple[int, ...]
    n_elements: int
    n_bytes: int
    data_offset: int
    data: np.ndarray


@dataclass(frozen=True)
class GGUFFile:
    """A parsed GGUF: its key/values (`MetadataValue`, values as Python scalars, strings and lists) and tensors."""

    fields: dict[str, MetadataValue]
    tensors: list[GGUFTensor]


class _Cursor:
    """Little-endian reads from a memory-mapped file. Arrays of numbers are read in one numpy call each: a
    vocabulary's scores and token types are 10^5 entries, which gguf-py parses one numpy view at a time."""

    def __init__(self, buffer: np.ndarray) -> None:
        self.buffer = buffer
        self.offset = 0

    def take(self, n_bytes: int) -> memoryview:
        if self.offset + n_bytes > len(self.buffer):
            raise ValueError("the header runs past the end of the file")
        view = memoryview(self.buffer)[self.offset:self.offset + n_bytes]
        self.offset += n_bytes
        return view

    def number(self, fmt: str) -> int | float:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return str(self.take(self.number("<Q")), encoding="utf-8")

    def value(self, value_type: int) -> tuple[object, int | None]:
        """(value, element type for arrays) of one key/value's payload."""
        if value_type == _STRING:
            return self.string(), None
        if value_type in _SCALARS:
            fmt = _SCALARS[value_type]
            value = self.number(fmt)
            return (bool(value) if value_type == _BOOL else value), None
        if value_type != _ARRAY:
            raise ValueError(f"unknown GGUF value type {value_type}")
        element_type, count = self.number("<I"), self.number("<Q")
        if element_type in _SCALARS:
            dtype = np.dtype(_SCALARS[element_type])
            values = np.frombuffer(self.take(count * dtype.itemsize), dtype=dtype).tolist()
            return ([bool(v) for v in values] if element_type == _BOOL else values), element_type
        return [self.value(element_type)[0] for _ in range(count)], element_type


# GGUF value types (the format's spec; gguf.GGUFValueType has the same numbers) and the struct codes of scalars.
_STRING, _ARRAY, _BOOL = 8, 9, 7
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", _BOOL: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def _parse_gguf(path: str | Path) -> GGUFFile:
    import gguf

    buffer = np.memmap(path, mode="r")
    cursor = _Cursor(buffer)
    if bytes(cursor.take(4)) != _MAGIC:
        raise ValueError("no GGUF magic at the start")
    version = cursor.number("<I")
    if version not in _VERSIONS:
        swapped = "a big-endian file" if version & 0xFFFF == 0 else f"version {version}"
        raise ValueError(f"{swapped}; ramp reads little-endian GGUF versions {_VERSIONS}")
    n_tensors, n_fields = cursor.number("<Q"), cursor.number("<Q")
    fields: dict[str, MetadataValue] = {}
    for _ in range(n_fields):
        key, value_type = cursor.string(), cursor.number("<I")
        value, element_type = cursor.value(value_type)
        fields[key] = MetadataValue(value, gguf.GGUFValueType(value_type),
                                    None if element_type is None else gguf.GGUFValueType(element_type))
    infos = []
    for _ in range(n_tensors):
        name = cursor.string()
        dims = tuple(cursor.number("<Q") for _ in range(cursor.number("<I")))
        infos.append((name, dims, gguf.GGMLQuantizationType(cursor.number("<I")), cursor.number("<Q")))
    alignment = int(fields["general.alignment"].value) if "general.alignment" in fields else _DEFAULT_ALIGNMENT
    if alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"general.alignment {alignment} is not a power of two")
    data_start = -(-cursor.offset // alignment) * alignment
    tensors, seen = [], set()
    for name, dims, tensor_type, offset in infos:
        if name in seen:
            raise ValueError(f"tensor {name} appears twice")
        seen.add(name)
        block_size, type_size = gguf.GGML_QUANT_SIZES[tensor_type]
        n_elements = int(np.prod(dims, dtype=np.int64))
        n_bytes = n_elements * type_size // block_size
        start = data_start + offset
        shape = tuple(reversed(dims))
        if tensor_type.name in _PLAIN_DTYPES:
            dtype = np.dtype(_PLAIN_DTYPES[tensor_type.name])
        else:  # packed blocks: rows of bytes, as gguf.quants.dequantize expects
            dtype, shape = np.dtype(np.uint8), gguf.quant_shape_to_byte_shape(shape, tensor_type)
        data = buffer[start:start + n_bytes]
        # a truncated file keeps its tensor list, its data cut short: callers name the tensor that runs past the end
        data = data.view(dtype).reshape(shape) if len(data) == n_bytes else data
        tensors.append(GGUFTensor(name, tensor_type, dims, n_elements, n_bytes, start, data))
    return GGUFFile(fields, tensors)


# Unpacked tensor types and their numpy dtypes (gguf-py reads BF16 as packed bytes, as does ramp).
_PLAIN_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I8": np.int8, "I16": np.int16,
                 "I32": np.int32, "I64": np.int64}


def read_gguf(path: str | Path) -> GGUFFile:
    """A parsed GGUF file (shared with earlier callers of the same unchanged file: never modify it), or one
    RampError line for an unreadable, corrupt or non-GGUF file."""
    try:
        info = os.stat(path)
        key = (os.path.realpath(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
        if key in _READERS:
            _READERS.move_to_end(key)
            return _READERS[key]
        reader = _READERS[key] = _parse_gguf(path)
        while len(_READERS) > _KEEP_READERS:
            _READERS.popitem(last=False)
        return reader
    except PermissionError as exc:
        raise RampError(f"cannot read {path}: permission denied; check the file's permissions") from exc
    except (ValueError, IndexError, OSError, KeyError, TypeError, struct.error, UnicodeDecodeError) as exc:
        raise RampError(
            f"{path} is not a readable GGUF file ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'corrupt'}); "
            "re-download or re-export it"
        ) from exc


# Types gguf-py dequantizes (gguf.quants): the plain floats and the Q*_0, Q*_1 and Q*_K block formats.
_DEQUANTIZABLE = {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
                  "IQ4_NL", "IQ4_XS"}


_DEQUANTIZE_BAND = 1 << 20  # weights per gguf-py call


def stored_rows(tensor: GGUFTensor, start: int, stop: int) -> np.ndarray:
    """Float32 rows start..stop of a stored 2-D tensor (a quantized row is whole blocks, stored in order), made
    _DEQUANTIZE_BAND weights at a time: gguf-py's temporaries are several times what they dequantize (a whole
    152k-token embedding at once took 4 GB beside its 0.9 GB result)."""
    import gguf

    row_length = int(tensor.shape[0])
    rows = tensor.data.reshape(int(tensor.shape[1]), -1)[start:stop]
    if tensor.tensor_type.name == "F32":
        return rows
    weights = np.empty((stop - start, row_length), dtype=np.float32)
    step = max(1, _DEQUANTIZE_BAND // row_length)
    for first in range(0, stop - start, step):
        band = rows[first:first + step]
        weights[first:first + len(band)] = gguf.quants.dequantize(band, tensor.tensor_type).reshape(-1, row_length)
    return weights


def load_gguf(path: str | Path) -> Model:
    """The file's model, streamed (`ramp.models.store`): tensors are dequantized from the mapped file when used."""
    import gguf

    path = Path(path)
    reader = read_gguf(path)
    metadata = dict(reader.fields)  # a copy: the parsed file is shared with later readers
    if "general.architecture" not in metadata:
        raise RampError(f"{path} has no general.architecture key; it is not a model GGUF (re-export it with llama.cpp)")
    arch = str(metadata["general.architecture"].value)
    if arch not in MAPPABLE_ARCHITECTURES:
        raise RampError(
            f"unsupported architecture {arch!r} in {path}; ramp maps {', '.join(MAPPABLE_ARCHITECTURES)}"
        )
    size = path.stat().st_size
    stored = {}
    shapes: dict[str, tuple[int, ...]] = {}  # numpy order: rows first
    quantizable: list[TensorSpec] = []
    for tensor in reader.tensors:
        if tensor.data_offset + tensor.n_bytes > size:
            raise RampError(f"{path} is truncated: tensor {tensor.name} runs past the end of the file; re-download it")
        if tensor.tensor_type.name not in _DEQUANTIZABLE:
            raise RampError(
                f"tensor {tensor.name} in {path} has type {tensor.tensor_type.name}, which ramp cannot dequantize; "
                "start from an F32/F16/BF16 or Q*_0/Q*_1/Q*_K GGUF"
            )
        stored[tensor.name] = tensor
        shape = shapes[tensor.name] = tuple(int(d) for d in reversed(tensor.shape))
        role = role_of(tensor.name)
        if role is not None and len(shape) == 2:
            quantizable.append(TensorSpec(tensor.name, shape, role[0], role[1]))
        elif role is None and not _KNOWN_AUXILIARY.search(tensor.name) and len(shape) >= 2:
            raise RampError(
                f"tensor {tensor.name!r} of architecture {arch!r} has no role ramp can map; "
                f"ramp maps the tensors {', '.join(ROLES)}"
            )

    def dequantized_rows(name: str, start: int, stop: int) -> np.ndarray:
        tensor = stored[name]
        if len(tensor.shape) == 2:
            weights = stored_rows(tensor, start, stop)
        else:  # norms, biases: small, whole
            weights = np.ascontiguousarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type),
                                           dtype=np.float32).reshape(shapes[name])[start:stop]
        check_finite(name, weights, path)
        return weights

    tensors = TensorStore(shapes, lambda name: dequantized_rows(name, 0, shapes[name][0]),
                          cached=lambda name: stored[name].tensor_type.name != "F32", make_rows=dequantized_rows)
    if not quantizable:
        raise RampError(f"{path} has no quantizable weight tensors; is it a model GGUF?")
    n_blocks = int(metadata.get(f"{arch}.block_count", MetadataValue(0, None)).value)
    sha256 = file_sha256(path)
    origin = str(metadata[ORIGIN_KEY].value) if ORIGIN_KEY in metadata else sha256
    return Model(arch, n_blocks, tensors, quantizable, metadata, path, sha256, origin_sha256=origin)
