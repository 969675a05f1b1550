"""How much of a quantized file reproduces the source checkpoint's own grid.

Every model ramp can reach is itself a quantized checkpoint whose dequantized weights are the reference. A
format whose grid contains the source's (Q5_1 holds every Q4_1 point, Q5_K every Q4_K one) can write those
weights back exactly, so a file at or above the source's size can look nearly lossless without having
solved anything. Results tables therefore mark such rows and report, for every file, the share of
quantizable weights whose dequantized values equal the source's bit for bit.
"""
from __future__ import annotations

import os

import numpy as np

from ramp.errors import RampError
from ramp.models.model import Model


def source_match_share(path: str | os.PathLike, source: Model) -> float:
    """Share of `source`'s quantizable weights that the GGUF at `path` dequantizes to exactly the source's
    float32 values (1.0 for the F32 reference of an unfolded model)."""
    import gguf

    from ramp.models.gguf import read_gguf

    names = {spec.name for spec in source.quantizable}
    equal = 0
    for tensor in read_gguf(path).tensors:
        if tensor.name not in names:
            continue
        try:
            values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError as exc:
            raise RampError(f"{path}: tensor {tensor.name} is {tensor.tensor_type.name}, which gguf-py cannot dequantize; "
                            "upgrade the gguf package") from exc
        expected = source.tensors[tensor.name]
        equal += int(np.count_nonzero(np.asarray(values, dtype=np.float32).reshape(expected.shape) == expected))
    return equal / source.n_quantizable_params
