"""GGUF files as ramp reads them: a reader that fails in one line, and a model file loaded into a `Model`
with every tensor dequantized to float32."""
from __future__ import annotations

import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ramp.errors import RampError
from ramp.files import file_sha256
from ramp.models.model import ORIGIN_KEY, ROLES, MetadataValue, Model, TensorSpec, check_finite, role_of

if TYPE_CHECKING:
    import gguf

# Architectures whose GGUF tensors follow llama.cpp's standard names for `ramp.models.model.ROLES`.
MAPPABLE_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "granite", "olmo")
# Non-quantized companions that models legitimately carry (norms, biases, rope factors).
_KNOWN_AUXILIARY = re.compile(r"(norm|rope_freqs|rope_factors)")

# Readers of the files read last, by (real path, device, inode, size, mtime): gguf-py parses every key in Python,
# seconds for a 49,152-token vocabulary, and one `ramp run` reads its reference and presets a dozen times.
_READERS: "OrderedDict[tuple, gguf.GGUFReader]" = OrderedDict()
_KEEP_READERS = 4


def read_gguf(path: str | Path) -> "gguf.GGUFReader":
    """A GGUF reader (shared with earlier callers of the same unchanged file: read it, never write through it),
    or one RampError line for an unreadable, corrupt or non-GGUF file."""
    import gguf

    try:
        info = os.stat(path)
        key = (os.path.realpath(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
        if key in _READERS:
            _READERS.move_to_end(key)
            return _READERS[key]
        reader = _READERS[key] = gguf.GGUFReader(path)
        while len(_READERS) > _KEEP_READERS:
            _READERS.popitem(last=False)
        return reader
    except PermissionError as exc:
        raise RampError(f"cannot read {path}: permission denied; check the file's permissions") from exc
    except (ValueError, IndexError, OSError, KeyError, TypeError) as exc:
        raise RampError(
            f"{path} is not a readable GGUF file ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'corrupt'}); "
            "re-download or re-export it"
        ) from exc


def load_gguf(path: str | Path) -> Model:
    import gguf

    path = Path(path)
    reader = read_gguf(path)
    metadata: dict[str, MetadataValue] = {}
    for key, fld in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        element_type = fld.types[1] if len(fld.types) > 1 else None
        metadata[key] = MetadataValue(fld.contents(), fld.types[0], element_type)
    if "general.architecture" not in metadata:
        raise RampError(f"{path} has no general.architecture key; it is not a model GGUF (re-export it with llama.cpp)")
    arch = str(metadata["general.architecture"].value)
    if arch not in MAPPABLE_ARCHITECTURES:
        raise RampError(
            f"unsupported architecture {arch!r} in {path}; ramp maps {', '.join(MAPPABLE_ARCHITECTURES)}"
        )
    size = path.stat().st_size
    tensors: dict[str, np.ndarray] = {}
    quantizable: list[TensorSpec] = []
    for tensor in reader.tensors:
        if tensor.data_offset + tensor.n_bytes > size:
            raise RampError(f"{path} is truncated: tensor {tensor.name} runs past the end of the file; re-download it")
        try:
            weights = np.ascontiguousarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        except NotImplementedError as exc:
            raise RampError(
                f"tensor {tensor.name} in {path} has type {tensor.tensor_type.name}, which ramp cannot dequantize; "
                "start from an F32/F16/BF16 or Q*_0/Q*_1/Q*_K GGUF"
            ) from exc
        check_finite(tensor.name, weights, path)
        tensors[tensor.name] = weights
        role = role_of(tensor.name)
        if role is not None and weights.ndim == 2:
            quantizable.append(TensorSpec(tensor.name, tuple(int(d) for d in weights.shape), role[0], role[1]))
        elif role is None and not _KNOWN_AUXILIARY.search(tensor.name) and weights.ndim >= 2:
            raise RampError(
                f"tensor {tensor.name!r} of architecture {arch!r} has no role ramp can map; "
                f"ramp maps the tensors {', '.join(ROLES)}"
            )
    if not quantizable:
        raise RampError(f"{path} has no quantizable weight tensors; is it a model GGUF?")
    n_blocks = int(metadata.get(f"{arch}.block_count", MetadataValue(0, None)).value)
    sha256 = file_sha256(path)
    origin = str(metadata[ORIGIN_KEY].value) if ORIGIN_KEY in metadata else sha256
    return Model(arch, n_blocks, tensors, quantizable, metadata, path, sha256, origin_sha256=origin)
