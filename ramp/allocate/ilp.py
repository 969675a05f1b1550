"""Exact allocation: the multiple-choice knapsack over items, solved with `scipy.optimize.milp` (HiGHS).

    minimise    sum_i sum_c  d[i,c] x[i,c]  (+ pair terms, see `ramp.allocate.quadratic`)
    subject to  sum_c x[i,c] = 1                   for every item i   (one format per tensor or group)
                sum_i sum_c  b[i,c] x[i,c] <= B                       (the byte budget)
                x[i,c] in {0, 1}

d[i,c] is the summed measured damage of item i's members in choice c, b[i,c] their bytes as written.
Groups and pins are already folded into the items (`ramp.allocate.problem`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from ramp.allocate.problem import Problem
from ramp.errors import RampError
from ramp.files import silenced

_TIME_LIMIT_S = 120.0


@dataclass(frozen=True)
class PairTerm:
    """Extra cost w[a, b] when item `first` takes choice a and item `second` takes choice b."""

    first: int
    second: int
    cost: np.ndarray  # [choices of first, choices of second]


def solve(problem: Problem, damage: list[np.ndarray], pairs: list[PairTerm] = ()) -> tuple[list[int], dict]:
    """Optimal choice index per item, and solver facts for `Allocation.extra`.

    Pair terms are linearised exactly with continuous y[a,b] >= 0 per pair, tied to the one-hot x by
    sum_b y[a,b] = x[first,a] and sum_a y[a,b] = x[second,b]: with x integral the only solution is
    y[a,b] = x[first,a] x[second,b], so no big-M and no rounding are needed.
    """
    offsets = np.cumsum([0] + [len(item.choices) for item in problem.items])
    n_x = int(offsets[-1])
    n_y = sum(term.cost.size for term in pairs)
    # HiGHS stops at an absolute objective gap of 1e-6 whatever mip_rel_gap says; rescaling so the largest
    # per-item spread is 1 keeps KLDs of 1e-4 nats from all looking alike to it.
    spread = max([float(np.ptp(d)) for d in damage] + [float(np.ptp(t.cost)) for t in pairs] + [0.0])
    scale = 1.0 / spread if spread > 0 else 1.0

    cost = np.zeros(n_x + n_y)
    cost[:n_x] = np.concatenate(damage) * scale
    n_bytes = np.array([choice.nbytes for item in problem.items for choice in item.choices], dtype=np.float64)

    # Sparse equality rows: first one per item (its choices sum to 1), then two per pair term per choice.
    rows, cols, vals = [], [], []

    def add_row(row: int, columns: list[int], values: list[float]) -> None:
        rows.extend([row] * len(columns))
        cols.extend(columns)
        vals.extend(values)

    for i in range(len(problem.items)):
        add_row(i, list(range(offsets[i], offsets[i + 1])), [1.0] * int(offsets[i + 1] - offsets[i]))
    n_rows = len(problem.items)
    y_start = n_x
    for term in pairs:
        n_a, n_b = term.cost.shape
        cost[y_start:y_start + term.cost.size] = term.cost.ravel() * scale
        for a in range(n_a):  # sum_b y[a,b] - x[first,a] = 0
            add_row(n_rows, [y_start + a * n_b + b for b in range(n_b)] + [int(offsets[term.first]) + a], [1.0] * n_b + [-1.0])
            n_rows += 1
        for b in range(n_b):  # sum_a y[a,b] - x[second,b] = 0
            add_row(n_rows, [y_start + a * n_b + b for a in range(n_a)] + [int(offsets[term.second]) + b], [1.0] * n_a + [-1.0])
            n_rows += 1
        y_start += term.cost.size
    rhs = np.zeros(n_rows)
    rhs[: len(problem.items)] = 1.0
    equalities = LinearConstraint(sparse.csr_array((vals, (rows, cols)), shape=(n_rows, n_x + n_y)), rhs, rhs)
    integrality = np.concatenate([np.ones(n_x), np.zeros(n_y)])

    limit = problem.budget_bytes
    while True:
        # Bytes in units of the budget keep the row well scaled; HiGHS may still accept a solution a
        # few bytes over within its feasibility tolerance, so check in integers and tighten if it did.
        budget_row = LinearConstraint(np.concatenate([n_bytes, np.zeros(n_y)])[None, :] / problem.budget_bytes,
                                      -np.inf, limit / problem.budget_bytes)
        with silenced(1):  # HiGHS prints a debugging line now and then when it maps a solution back from presolve
            result = milp(cost, constraints=[equalities, budget_row], integrality=integrality, bounds=Bounds(0, 1),
                          options={"mip_rel_gap": 0.0, "time_limit": _TIME_LIMIT_S})
        if result.x is None:
            raise RampError(f"the ILP solver found no allocation within the budget ({result.message}); "
                            "raise the budget or loosen --pin/--group")
        picks = [int(np.argmax(result.x[offsets[i]:offsets[i + 1]])) for i in range(len(problem.items))]
        excess = problem.picks_bytes(picks) - problem.budget_bytes
        if excess <= 0:
            break
        limit -= excess
    facts = {"solver": "scipy.optimize.milp (HiGHS)", "status": result.message,
             "optimal": bool(result.status == 0), "variables": n_x + n_y}
    return picks, facts
