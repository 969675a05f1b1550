"""llama.cpp PR #15550's automatic type selection (`llama-quantize --target-bpw`, `target_bpw_type()` in
src/llama-quant.cpp), the llama.cpp community's own allocator, as a baseline on ramp's bytes and formats.

Followed from the PR's revision with the Lagrangian search (the one whose estimate_error takes imatrix
values and activations and whose allocator has `is_important`):

1. Error per (tensor, type), `error_table`: per row, the imatrix-weighted squared error
   sum_j v_j (Q(w) - w)_j^2 divided by the row's weighted squared norm sum_j v_j w_j^2 (v_j = max(0,
   importance_j), all ones for a tensor without an imatrix entry, as the PR does); the trimmed mean over rows
   (2.5% off each end from 50 rows on) times the number of rows. Q is llama.cpp's quantization with that
   importance.
2. Per tensor, only Pareto-optimal types on the lower convex hull of (bytes, error) stay candidates.
3. Lagrangian relaxation: at price mu per bit each tensor takes the candidate minimising error + mu * bits,
   with mu / 10 for the tensors the PR calls important (output, attn_v, ffn_down, attn_output); 40 bisection
   steps on mu keep the selection closest to the budget from below.
4. The bytes left are spent greedily: the upgrade to the next candidate with the largest error drop per
   byte (x5 for important tensors) that still fits, until none does.

Where this deviates from the PR, and why:
- Every row is used; the PR samples a few hundred to 4096 rows per tensor for speed. ramp's models are
  small enough to be exact.
- No bias term: the PR adds one from mean activations, which only llama.cpp's newer imatrix format stores;
  ramp's importance matrix is llama-imatrix's in_sum2/counts, with which the PR computes none either.
- Candidates are ramp's ladder (default Q2_K..Q8_0, resolved with llama.cpp's row-length fallback like the
  PR's make_compatible) instead of the PR's list with IQ types and BF16, so every method picks from the
  same formats; the budget is ramp's bytes of the quantizable tensors, the same as every other method's.
- The bisection bracket starts at the steepest hull slope (the price at which every tensor takes its
  smallest candidate) instead of at 1.0 doubled until under budget: the same search, free of the error's
  units.
- `--group` items (one type for several tensors) get their members' summed error; an item is important
  when one of its members is. The PR has no groups.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from ramp.allocate.greedy import lower_hull
from ramp.allocate.problem import Problem

if TYPE_CHECKING:
    from ramp.measure.imatrix import ImportanceMatrix
    from ramp.models.model import Model, TensorSpec
    from ramp.measure.sensitivity_table import SensitivityTable

MEASURE = "target-bpw error (llama.cpp PR 15550: imatrix-weighted squared error relative to each row, trimmed mean x rows)"
_IMPORTANT = (".attn_v.weight", ".ffn_down.weight", ".attn_output.weight")
_PRICE_DISCOUNT = 0.1  # the PR's "important tensors get 10x lower penalty"
_FILL_BOOST = 5.0  # and a 5x larger error drop per byte when spending what is left
_BISECTION_STEPS = 40
_TRIM_FROM_ROWS, _TRIM_SHARE = 50, 0.025


def is_important(name: str) -> bool:
    """The PR's `is_important`: tensors with a larger effect on quality than their error shows."""
    return name == "output.weight" or name.endswith(_IMPORTANT)


def trimmed_mean(values: np.ndarray) -> float:
    """The PR's trimmed mean: 2.5% of the values off each end once there are 50."""
    n = len(values)
    if n < _TRIM_FROM_ROWS:
        return float(values.mean()) if n else 0.0
    k = int(np.floor(_TRIM_SHARE * n))
    return float(np.sort(values)[k:n - k].mean())


def row_relative_errors(weights: np.ndarray, error: np.ndarray, importance: np.ndarray | None) -> np.ndarray:
    """The PR's per-row error: weighted squared error / weighted squared norm (its per-tensor error is their
    trimmed mean times the number of rows)."""
    from ramp.measure.estimates import row_weighted_squares

    values = None if importance is None else np.maximum(importance, 0.0)
    return row_weighted_squares(error, values) / (row_weighted_squares(weights, values) + 1e-12)


def tensor_error(spec: "TensorSpec", relative: np.ndarray) -> float:
    """The PR's per-tensor error from its rows' relative errors: their trimmed mean times the number of rows."""
    return trimmed_mean(relative) * len(relative)


def error_table(model: "Model", formats: list[str] | tuple[str, ...], imatrix: "ImportanceMatrix | None",
                progress: bool = True) -> "SensitivityTable":
    """Step 1: the PR's error of every quantizable tensor in every format, quantized with `imatrix`."""
    from ramp.measure.estimates import error_table as build

    def relative_error(spec: "TensorSpec", error: np.ndarray, rows: slice) -> np.ndarray:
        importance = imatrix.importance(spec.name) if imatrix is not None else None
        return row_relative_errors(model.tensors[spec.name][rows], error, importance)

    return build(model, formats, imatrix, relative_error, MEASURE, extra={"estimate": "target-bpw"}, progress=progress,
                 reduce=tensor_error)


def solve(problem: Problem, damage: list[np.ndarray],
          important_tensor: Callable[[str], bool] = is_important) -> tuple[list[int], dict]:
    """Steps 2-4 on the items' errors: a choice index per item within the budget, and facts for the allocation.
    `important_tensor` is the PR's heuristic (`lambda name: False` is its --no-importance)."""
    hulls = [lower_hull([choice.nbytes for choice in item.choices], d) for item, d in zip(problem.items, damage)]
    bits = [np.array([8.0 * item.choices[c].nbytes for c in hull]) for item, hull in zip(problem.items, hulls)]
    errors = [np.asarray(d, dtype=np.float64)[hull] for d, hull in zip(damage, hulls)]
    important = [any(important_tensor(name) for name in item.members) for item in problem.items]
    discount = [_PRICE_DISCOUNT if flag else 1.0 for flag in important]

    def select(mu: float) -> list[int]:
        # np.argmin takes the first minimum: ties go to the fewer bytes, as in the PR
        return [int(np.argmin(e + mu * d * b)) for e, b, d in zip(errors, bits, discount)]

    def n_bytes(positions: list[int]) -> int:
        return sum(item.choices[hull[p]].nbytes for item, hull, p in zip(problem.items, hulls, positions))

    def total_error(positions: list[int]) -> float:
        return float(sum(e[p] for e, p in zip(errors, positions)))

    # above the steepest slope of any hull, every item takes its smallest candidate
    slopes = [float(np.max((e[:-1] - e[1:]) / (b[1:] - b[:-1]) / d)) for e, b, d in zip(errors, bits, discount) if len(e) > 1]
    mu_lo, mu_hi = 0.0, 2.0 * max(slopes, default=1.0) or 1.0
    best, price = select(mu_lo), 0.0
    if n_bytes(best) > problem.budget_bytes:
        best, best_gap, best_error = select(mu_hi), np.inf, np.inf
        for _ in range(_BISECTION_STEPS):
            mu = 0.5 * (mu_lo + mu_hi)
            positions = select(mu)
            used = n_bytes(positions)
            if used > problem.budget_bytes:
                mu_lo = mu
                continue
            mu_hi = mu
            gap, err = problem.budget_bytes - used, total_error(positions)
            if gap < best_gap or (gap == best_gap and err < best_error):
                best, best_gap, best_error, price = positions, gap, err, mu
    lagrangian_bytes = n_bytes(best)

    used, upgrades = lagrangian_bytes, 0
    while True:  # step 4, one upgrade at a time as the PR does
        chosen, best_ratio, best_gain = -1, -1.0, -1.0
        for i, (e, hull) in enumerate(zip(errors, hulls)):
            nxt = best[i] + 1
            if nxt >= len(hull):
                continue
            extra = problem.items[i].choices[hull[nxt]].nbytes - problem.items[i].choices[hull[best[i]]].nbytes
            gain = max(0.0, e[best[i]] - e[nxt])
            if used + extra > problem.budget_bytes or gain <= 0.0:
                continue
            ratio = gain / extra * (_FILL_BOOST if important[i] else 1.0)
            if ratio > best_ratio or (ratio == best_ratio and gain > best_gain):
                chosen, best_ratio, best_gain = i, ratio, gain
        if chosen < 0:
            break
        item, hull = problem.items[chosen], hulls[chosen]
        used += item.choices[hull[best[chosen] + 1]].nbytes - item.choices[hull[best[chosen]]].nbytes
        best[chosen] += 1
        upgrades += 1
    picks = [hull[p] for hull, p in zip(hulls, best)]
    facts = {"price_per_bit": price, "lagrangian_bytes": lagrangian_bytes, "fill_upgrades": upgrades,
             "important_items": int(sum(important)), "reference": "llama.cpp PR 15550 target_bpw_type()"}
    return picks, facts
