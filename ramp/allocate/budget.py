"""Memory budgets: `3.65bpw` (bits per quantizable weight) or a byte count (`60MB`, `57.2MiB`, `123456789B`),
and the range of budgets an allocation can meet for a model and its candidate formats.

A budget bounds the bytes of the quantizable tensors' data as written (`Allocation.data_bytes`); norms,
biases and metadata are the same whatever the allocation and are not counted.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ramp.allocate.problem import Item, Pin, build_items
from ramp.errors import RampError
from ramp.kernels.formats import tensor_bytes
from ramp.measure.ladder import DEFAULT_LADDER
from ramp.models.model import Model

_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
_BUDGET = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(bpw|b|kb|mb|gb|kib|mib|gib)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Budget:
    text: str
    value: float
    unit: str  # "bpw" or a byte unit, lower case

    @classmethod
    def parse(cls, text: str) -> "Budget":
        match = _BUDGET.match(text)
        if not match:
            raise RampError(
                f"budget {text!r} is not understood; write bits per weight (3.65bpw) or bytes (60MB, 57.2MiB, 123456789B)"
            )
        value, unit = float(match.group(1)), match.group(2).lower()
        if value <= 0:
            raise RampError(f"budget {text!r} must be positive")
        return cls(text.strip(), value, unit)

    def bytes_for(self, model: Model) -> int:
        """The byte limit on the quantizable tensors' data; rounded down, so meeting it meets the budget."""
        if self.unit == "bpw":
            return math.floor(self.value * model.n_quantizable_params / 8)
        return math.floor(self.value * _UNITS[self.unit])


def describe_bytes(n_bytes: int, model: Model) -> str:
    return f"{n_bytes / 2**20:.2f} MiB = {8 * n_bytes / model.n_quantizable_params:.3f} bpw"


def items_range(model: Model, items: list[Item]) -> tuple[int, int]:
    """(smallest, largest) budget in bytes an allocation over these items can meet: every item at its
    smallest choice, and every tensor in F16 (or its pin, when pinned larger); a budget above F16 is a
    mistake, not a request for a larger file."""
    smallest = sum(item.choices[0].nbytes for item in items)
    largest = 0
    for item in items:
        for m, name in enumerate(item.members):
            shape = model.spec(name).shape
            largest += max(tensor_bytes(shape, fmt) for fmt in ["F16", *(c.formats[m] for c in item.choices)])
    return smallest, largest


def feasible_range(
    model: Model, ladder: tuple[str, ...] = DEFAULT_LADDER, pins: list[Pin] = ()
) -> tuple[int, int]:
    """(smallest, largest) budget in bytes for this model with these candidate formats and pins."""
    return items_range(model, build_items(model, ladder, pins))


def require_within(budget: Budget, model: Model, feasible: tuple[int, int]) -> int:
    """The budget in bytes, or a one-line RampError stating the feasible range."""
    n_bytes = budget.bytes_for(model)
    smallest, largest = feasible
    if not smallest <= n_bytes <= largest:
        raise RampError(
            f"budget {budget.text} ({describe_bytes(n_bytes, model)}) is outside the feasible range "
            f"{describe_bytes(smallest, model)} (every tensor at its smallest candidate format) to "
            f"{describe_bytes(largest, model)} (F16); choose a budget inside it"
        )
    return n_bytes
