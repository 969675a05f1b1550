"""Registry of GGML weight formats: what each costs in bytes, and what llama.cpp does when a tensor's row
length does not fit its block size.

Sizes come from gguf-py's `GGML_QUANT_SIZES` (block size, bytes per block), the same table llama.cpp uses,
so a byte count here is the byte count of the tensor's data in the written file.
"""
from __future__ import annotations

from dataclasses import dataclass

import gguf

from ramp.errors import RampError


@dataclass(frozen=True)
class Format:
    name: str
    ggml_type: gguf.GGMLQuantizationType
    block_size: int
    block_bytes: int

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.block_bytes / self.block_size

    def fits(self, row_length: int) -> bool:
        return row_length % self.block_size == 0

    def tensor_bytes(self, n_rows: int, row_length: int) -> int:
        if not self.fits(row_length):
            raise RampError(f"format {self.name} needs rows divisible by {self.block_size}, got {row_length}")
        return n_rows * (row_length // self.block_size) * self.block_bytes


def _format(name: str) -> Format:
    ggml_type = gguf.GGMLQuantizationType[name]
    block_size, block_bytes = gguf.GGML_QUANT_SIZES[ggml_type]
    return Format(name, ggml_type, block_size, block_bytes)


# Ordered by bits per weight within each family; `ALLOCATABLE` is the ladder allocators climb.
FORMATS: dict[str, Format] = {
    name: _format(name)
    for name in (
        "Q2_K", "Q3_K", "Q4_0", "Q4_1", "IQ4_NL", "IQ4_XS", "Q4_K", "Q5_0", "Q5_1", "Q5_K",
        "Q6_K", "Q8_0", "F16", "BF16", "F32",
    )
}

# llama.cpp's tensor_type_fallback (src/llama-quant.cpp): the type a 256-block format becomes when the
# row length is not a multiple of 256; if the fallback does not fit either, F16.
_FALLBACK = {
    "Q2_K": "Q4_0", "Q3_K": "Q4_0", "IQ4_XS": "IQ4_NL",
    "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0",
}


def get_format(name: str) -> Format:
    try:
        return FORMATS[name.upper()]
    except KeyError:
        raise RampError(f"unknown format {name!r}; known formats: {', '.join(FORMATS)}") from None


def resolve_format(name: str, row_length: int) -> Format:
    """The format llama.cpp really writes for a tensor of this row length when asked for `name`."""
    requested = get_format(name)
    if requested.fits(row_length):
        return requested
    fallback = get_format(_FALLBACK.get(requested.name, requested.name))
    return fallback if fallback.fits(row_length) else FORMATS["F16"]


def tensor_bytes(shape: tuple[int, ...], name: str) -> int:
    """Bytes of a tensor's data stored in `name` (after llama.cpp's fallback for its row length)."""
    row_length = int(shape[-1])
    n_rows = 1
    for dim in shape[:-1]:
        n_rows *= int(dim)
    return resolve_format(name, row_length).tensor_bytes(n_rows, row_length)
