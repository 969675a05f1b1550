"""One description of a model, whatever file it came from: its quantizable tensors and their float32 weights.

Tensor names are GGUF names (`blk.3.attn_q.weight`), shapes are numpy order (rows, row_length), so a
tensor's row is what GGML block formats quantize block by block.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ramp.errors import RampError

# Quantizable roles, in the order they appear inside a transformer block; the ordinal is a feature.
BLOCK_ROLES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
ROLES = ("token_embd",) + BLOCK_ROLES + ("output",)

_BLOCK_TENSOR = re.compile(r"^blk\.(\d+)\.([a-z_0-9]+)\.(weight|bias)$")
_GLOBAL_TENSOR = re.compile(r"^([a-z_0-9]+)\.(weight|bias)$")
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
    # float32 weights by name: a `ramp.models.store.TensorStore` (made on use) for a file's model, a dict for one
    # built in memory
    tensors: Mapping[str, np.ndarray]
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

    @property
    def source_file_bytes(self) -> int | None:
        """Size of the checkpoint the model was loaded from (None for a model built in memory or a folder)."""
        path = self.source_path
        return Path(path).stat().st_size if path is not None and Path(path).is_file() else None

    def shape(self, name: str) -> tuple[int, ...]:
        """A tensor's shape, without making its weights."""
        from ramp.models.store import tensor_shape

        return tensor_shape(self.tensors, name)

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


def check_finite(name: str, weights: np.ndarray, source: str | Path) -> None:
    """Refuse a tensor holding NaN or Inf: every feature, damage and quantized block computed from it would
    be NaN too, or silently wrong."""
    bad = int(weights.size - np.count_nonzero(np.isfinite(weights)))
    if bad:
        raise RampError(f"tensor {name} in {source} holds {bad:,d} NaN/Inf values; the checkpoint is damaged: "
                        "re-download or re-convert it")
