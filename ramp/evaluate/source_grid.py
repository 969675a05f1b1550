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
    from ramp.models.gguf import read_gguf, stored_rows
    from ramp.models.store import row_bands, tensor_rows

    names = {spec.name for spec in source.quantizable}
    equal = 0
    for tensor in read_gguf(path).tensors:
        if tensor.name not in names:
            continue
        # band by band: a tensor is never whole beside the source's (the same rows of both)
        for start, stop in row_bands(source.tensors, tensor.name, whole_if_kept=False):
            try:
                values = stored_rows(tensor, start, stop)
            except NotImplementedError as exc:
                raise RampError(f"{path}: tensor {tensor.name} is {tensor.tensor_type.name}, which gguf-py cannot "
                                "dequantize; upgrade the gguf package") from exc
            equal += int(np.count_nonzero(values == tensor_rows(source.tensors, tensor.name, start, stop)))
    return equal / source.n_quantizable_params
