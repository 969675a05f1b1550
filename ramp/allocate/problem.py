"""The problem every allocation method solves: a list of items, each a tensor or a `--group` of tensors
that must share a format, each item with a few choices (formats as llama.cpp really writes them, their
bytes), plus the measured damage of every choice.

Formats are resolved per tensor with llama.cpp's row-length fallback before anything else, so two ladder
entries that end up written the same way (Q2_K and Q3_K both become Q4_0 on SmolLM2's 576-wide rows) are
one choice, and every byte count is the byte count of the written file.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ramp.errors import RampError
from ramp.kernels.formats import get_format, resolve_format
from ramp.measure.ladder import DEFAULT_LADDER
from ramp.models.model import Model
from ramp.measure.sensitivity_table import SensitivityTable

@dataclass(frozen=True)
class Pin:
    """`REGEX=FORMAT`, llama-quantize's --tensor-type: the regex is searched in the tensor name."""

    pattern: re.Pattern[str]
    format: str

    @classmethod
    def parse(cls, text: str) -> "Pin":
        regex, sep, fmt = text.rpartition("=")
        if not sep or not regex or not fmt:
            raise RampError(f"pin {text!r} is not REGEX=FORMAT; write e.g. 'output.weight=Q6_K'")
        return cls(_compile(regex, "pin"), get_format(fmt).name)


@dataclass(frozen=True)
class Choice:
    formats: tuple[str, ...]  # the written format of each member of the item
    nbytes: int


@dataclass(frozen=True)
class Item:
    members: tuple[str, ...]  # tensor names, model order
    choices: tuple[Choice, ...]  # ascending bytes, no two writing the same formats


@dataclass
class Problem:
    items: list[Item]
    budget_bytes: int
    ladder: tuple[str, ...]

    @property
    def min_bytes(self) -> int:
        return sum(item.choices[0].nbytes for item in self.items)

    def picks_bytes(self, picks: list[int]) -> int:
        return sum(item.choices[pick].nbytes for item, pick in zip(self.items, picks))

    def formats(self, picks: list[int]) -> dict[str, str]:
        """tensor name -> written format for one pick (choice index) per item."""
        chosen: dict[str, str] = {}
        for item, pick in zip(self.items, picks):
            chosen.update(zip(item.members, item.choices[pick].formats))
        return chosen


def _compile(regex: str, what: str) -> re.Pattern[str]:
    try:
        return re.compile(regex)
    except re.error as exc:
        raise RampError(f"{what} regex {regex!r} is invalid ({exc})") from None


def pinned_format(name: str, pins: list[Pin]) -> str | None:
    """The first pin whose regex matches, as llama-quantize applies its --tensor-type list."""
    for pin in pins:
        if pin.pattern.search(name):
            return pin.format
    return None


def _choices(model: Model, members: tuple[str, ...], requested: list[str]) -> tuple[Choice, ...]:
    specs = [model.spec(name) for name in members]
    unique: dict[tuple[str, ...], Choice] = {}
    for fmt in requested:
        written = [resolve_format(fmt, spec.row_length) for spec in specs]
        key = tuple(resolved.name for resolved in written)
        if key not in unique:
            n_bytes = sum(resolved.tensor_bytes(spec.n_params // spec.row_length, spec.row_length)
                          for resolved, spec in zip(written, specs))
            unique[key] = Choice(key, n_bytes)
    return tuple(sorted(unique.values(), key=lambda choice: choice.nbytes))


def _group_of(spec_name: str, block: int | None, groups: list[re.Pattern[str]]) -> tuple[int, int | None] | None:
    matches = [index for index, pattern in enumerate(groups) if pattern.search(spec_name)]
    if len(matches) > 1:
        raise RampError(
            f"tensor {spec_name} matches --group patterns {groups[matches[0]].pattern!r} and "
            f"{groups[matches[1]].pattern!r}; make the patterns disjoint"
        )
    return (matches[0], block) if matches else None


def require_matches(model: Model, pins: list[Pin] = (), groups: list[re.Pattern[str] | str] = ()) -> None:
    """A --pin or --group that matches no quantizable tensor is a typo (`attn_qkv`, `blk.40` on a 30-block
    model), not a request: ignoring it would hand back an allocation without the asked-for constraint."""
    names = [spec.name for spec in model.quantizable]
    patterns = [group if isinstance(group, re.Pattern) else _compile(group, "--group") for group in groups]
    rules = ([(f"--pin {pin.pattern.pattern}={pin.format}", pin.pattern) for pin in pins]
             + [(f"--group {pattern.pattern}", pattern) for pattern in patterns])
    for label, pattern in rules:
        if not any(pattern.search(name) for name in names):
            raise RampError(f"{label} matches no quantizable tensor of this model (they are named like {names[0]}, "
                            f"{names[-1]}; `ramp profile` lists them); fix the regex")


def build_items(
    model: Model, ladder: tuple[str, ...] = DEFAULT_LADDER, pins: list[Pin] = (), groups: list[str] = ()
) -> list[Item]:
    """One item per tensor, except that tensors matched by the same `groups` regex in the same block form
    one item (they share a ladder format), and a pinned tensor is its own item with the single pinned
    choice: pins win over groups, as --tensor-type wins over llama-quantize's own rules."""
    patterns = [_compile(group, "--group") for group in groups]
    require_matches(model, pins, patterns)
    pinned = {spec.name: pinned_format(spec.name, list(pins)) for spec in model.quantizable}
    members: dict[tuple, list[str]] = {}  # insertion order is model order of each item's first member
    for spec in model.quantizable:
        group = None if pinned[spec.name] else _group_of(spec.name, spec.block, patterns)
        members.setdefault(("group", *group) if group else ("tensor", spec.name), []).append(spec.name)
    items = []
    for names in members.values():
        pin = pinned[names[0]]
        items.append(Item(tuple(names), _choices(model, tuple(names), [pin] if pin else list(ladder))))
    return items


def build_problem(
    model: Model, budget_bytes: int, ladder: tuple[str, ...] = DEFAULT_LADDER, pins: list[Pin] = (),
    groups: list[str] = (),
) -> Problem:
    return Problem(build_items(model, ladder, pins, groups), budget_bytes, ladder)


def tensor_damage(table: SensitivityTable, tensor: str, written: str, row_length: int) -> float | None:
    """Measured damage of `tensor` written as `written`, or None when the table lacks it: the table's own
    column for that format, else a column whose format llama.cpp writes as `written` for this row length
    (a Q2_K column measured on a 576-wide tensor is its Q4_0 damage)."""
    if tensor not in table.tensors:
        return None
    row = table.tensors.index(tensor)
    columns = [table.formats.index(written)] if written in table.formats else [
        column for column, fmt in enumerate(table.formats) if resolve_format(fmt, row_length).name == written
    ]
    return float(table.damage[row, columns[0]]) if columns else None


def member_damage(model: Model, items: list[Item], table: SensitivityTable) -> list[np.ndarray]:
    """Per item, damage[choice, member]: each member's measured damage alone in that choice's format.

    A pinned (single-choice) tensor the table lacks counts as undamaged: it cannot change any decision.
    """
    result = []
    for item in items:
        damage = np.zeros((len(item.choices), len(item.members)))
        for m, name in enumerate(item.members):
            row_length = model.spec(name).row_length
            for c, choice in enumerate(item.choices):
                value = tensor_damage(table, name, choice.formats[m], row_length)
                if value is None and len(item.choices) > 1:
                    raise RampError(
                        f"the sensitivity table has no measurement of {name} as {choice.formats[m]}; re-run "
                        "`ramp profile` for this model with that format, or drop it from --formats"
                    )
                damage[c, m] = value or 0.0
        result.append(damage)
    return result


def item_damage(model: Model, items: list[Item], table: SensitivityTable) -> list[np.ndarray]:
    """Per item, the summed damage of its members for each choice (the additive model)."""
    return [damage.sum(axis=1) for damage in member_damage(model, items, table)]
