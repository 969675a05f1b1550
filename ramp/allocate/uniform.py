"""Uniform allocation: every quantizable tensor in one ladder format, the largest whose file fits the
budget, with llama.cpp's conventions for the two special tensors made explicit:

- the output projection (`output.weight`, or `token_embd.weight` when the model ties its embeddings and
  has no output tensor) gets `output_format`, Q6_K by default, unless the uniform format is larger, as
  llama-quantize does for every Q* file type (Q6_K then falls back to Q8_0 on rows not divisible by 256);
- an untied `token_embd.weight` gets `embedding_format`, by default the uniform format itself.

"same" for either means the uniform format. Pins override both, as --tensor-type does.
"""
from __future__ import annotations

from ramp.allocate.budget import Budget, describe_bytes
from ramp.allocate.problem import Pin, pinned_format
from ramp.errors import RampError
from ramp.kernels.formats import get_format, resolve_format, tensor_bytes
from ramp.models.model import Model

SAME = "same"


def _requested(name: str, uniform: str, output_name: str, embedding_format: str, output_format: str) -> str:
    if name == output_name and output_format != SAME:
        return max(uniform, output_format, key=lambda fmt: get_format(fmt).bits_per_weight)
    if name == "token_embd.weight" and embedding_format != SAME:
        return embedding_format
    return uniform


def formats_for(model: Model, uniform: str, pins: list[Pin] = (), embedding_format: str = SAME,
                output_format: str = "Q6_K") -> dict[str, str]:
    """Tensor name -> written format for one uniform format."""
    names = {spec.name for spec in model.quantizable}
    output_name = "output.weight" if "output.weight" in names else "token_embd.weight"
    chosen = {}
    for spec in model.quantizable:
        fmt = pinned_format(spec.name, list(pins)) or _requested(spec.name, uniform, output_name, embedding_format, output_format)
        chosen[spec.name] = resolve_format(fmt, spec.row_length).name
    return chosen


def solve(model: Model, budget: Budget, ladder: tuple[str, ...], pins: list[Pin] = (), embedding_format: str = SAME,
          output_format: str = "Q6_K") -> tuple[dict[str, str], dict]:
    """The formats of the largest uniform file within the budget, and which ladder format it is."""
    for fmt in (embedding_format, output_format):
        if fmt != SAME:
            get_format(fmt)
    budget_bytes = budget.bytes_for(model)
    candidates = []
    for uniform in ladder:
        formats = formats_for(model, uniform, pins, embedding_format, output_format)
        n_bytes = sum(tensor_bytes(spec.shape, formats[spec.name]) for spec in model.quantizable)
        candidates.append((n_bytes, uniform, formats))
    fitting = [candidate for candidate in candidates if candidate[0] <= budget_bytes]
    if not fitting:
        smallest = min(candidates, key=lambda candidate: candidate[0])
        raise RampError(
            f"budget {budget.text} ({describe_bytes(budget_bytes, model)}) is below the smallest uniform allocation, "
            f"{smallest[1]} at {describe_bytes(smallest[0], model)}; raise the budget or use --method ilp"
        )
    # Largest file wins; among equal sizes (formats that fall back alike) the first ladder entry.
    n_bytes, uniform, formats = max(fitting, key=lambda candidate: candidate[0])
    return formats, {"uniform_format": uniform, "embedding_format": embedding_format, "output_format": output_format}
