"""The format ladder: the candidate formats that sensitivity is measured for and allocations climb, lowest
bits per weight first. One default serves both, so a table measured with defaults answers for every choice an
allocation made with defaults can take. Importing it is cheap (no torch): the command line reads the default."""
from __future__ import annotations

from typing import Iterable, Protocol

from ramp.errors import RampError

# llama.cpp's usual weight formats from 2.6 to 8.5 bits per weight.
DEFAULT_LADDER: tuple[str, ...] = ("Q2_K", "Q3_K", "Q4_0", "Q4_K", "Q5_0", "Q5_K", "Q6_K", "Q8_0")


class _Measured(Protocol):
    formats: list[str]


def parse_ladder(text: str | None) -> tuple[str, ...]:
    """`Q2_K,Q4_K,Q8_0` -> canonical names in bits-per-weight order; None -> the default ladder."""
    if text is None:
        return DEFAULT_LADDER
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise RampError("--formats is empty; give a comma-separated list such as Q2_K,Q4_K,Q8_0")
    return ordered(names)


def ordered(names: Iterable[str]) -> tuple[str, ...]:
    """Canonical format names, each once, in bits-per-weight order (formats of equal bits in the given order)."""
    from ramp.kernels.formats import get_format  # the kernels package loads torch: not at CLI start

    formats = {get_format(name).name: get_format(name) for name in names}
    return tuple(sorted(formats, key=lambda name: formats[name].bits_per_weight))


def ladder_of(tables: "Iterable[_Measured | None]") -> tuple[str, ...]:
    """The ladder to allocate on when none is asked for: the formats every given table measured (a choice a
    table cannot answer for would look free to anything that minimises damage), in the first table's order
    where bits per weight tie (a policy's actions are indices into its ladder); the default without tables."""
    measured = [table for table in tables if table is not None]
    if not measured:
        return DEFAULT_LADDER
    shared = [fmt for fmt in measured[0].formats if all(fmt in table.formats for table in measured[1:])]
    if not shared:
        raise RampError("the sensitivity tables share no format; measure them on the same --formats")
    return ordered(shared)
