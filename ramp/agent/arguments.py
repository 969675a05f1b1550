"""The agent's command-line values: budget ranges, per-model tables and KEY=VALUE overrides of the
reward and SAC configurations (`ramp train`, `ramp tune`)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ramp.errors import RampError

if TYPE_CHECKING:
    from ramp.measure.sensitivity_table import SensitivityTable
    from ramp.models.model import Model


def parse_budget_range(text: str, models: list["Model"]) -> tuple[float, float]:
    """`3.5bpw..4.5bpw` (or one budget) -> (low, high) bits per weight. Byte budgets are accepted for a
    single model only: the same byte count means different things for models of different sizes."""
    from ramp.allocate.budget import Budget

    ends = [Budget.parse(part) for part in text.split("..")] if ".." in text else [Budget.parse(text)] * 2
    if len(ends) != 2:
        raise RampError(f"budget range {text!r} is not LOW..HIGH; write e.g. 3.5bpw..4.5bpw")
    if any(end.unit != "bpw" for end in ends) and len(models) != 1:
        raise RampError("byte budgets need exactly one --model; give bits per weight (3.5bpw..4.5bpw) for several")
    low, high = (8.0 * end.bytes_for(models[0]) / models[0].n_quantizable_params if end.unit != "bpw" else end.value
                 for end in ends)
    if low > high:
        raise RampError(f"budget range {text!r} runs backwards; write LOW..HIGH")
    return low, high


def load_tables(paths: list[str], n_models: int) -> list["SensitivityTable | None"]:
    """One sensitivity table per model from `--sensitivity` paths (same order), or None for each without."""
    from ramp.measure.sensitivity_table import SensitivityTable

    if paths and len(paths) != n_models:
        raise RampError("give one --sensitivity per --model, in the same order, or none")
    return [SensitivityTable.load(path) for path in paths] or [None] * n_models


def parse_overrides(pairs: list[str], cls: type, what: str) -> dict[str, Any]:
    """`KEY=VALUE` strings -> keyword arguments for dataclass `cls`, each value converted to the field's
    type (so `--reward over_weight=30` and `--sac net_arch=128,128` work)."""
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(cls)}
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in fields:
            raise RampError(f"--{what} {pair!r} is not KEY=VALUE with KEY one of {', '.join(fields)}")
        default = fields[key].default
        try:
            if isinstance(default, tuple):
                result[key] = tuple(int(part) for part in value.split(","))
            elif isinstance(default, str):  # ent_coef: "auto", "auto_0.1" or a number
                result[key] = value if value.startswith("auto") else float(value)
            else:
                result[key] = type(default)(value)
        except ValueError:
            raise RampError(f"--{what} {key} needs a {type(default).__name__}, got {value!r}") from None
    return result
