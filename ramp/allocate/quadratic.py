r"""Quadratic allocation: the knapsack of `ramp.allocate.ilp` plus pairwise interaction between tensors,
whose damage together is not the sum of their damages alone.

Model. For small weight errors the KL divergence from the reference is a quadratic form of the logit
perturbation, KLD(delta) ~ 1/2 delta^T F delta, and perturbations of different tensors add, so for
tensors t, u in formats a, b

    D_tu(a, b) = d_t(a) + d_u(b) + 2 rho_tu sqrt(d_t(a) d_u(b)),        -1 <= rho_tu <= 1,

rho_tu being the cosine between the two perturbations under F. One measured pair gives rho_tu:

    rho_tu = (D_tu(a, b) - d_t(a) - d_u(b)) / (2 sqrt(d_t(a) d_u(b))),

taken at each tensor's smallest choice, where the signal is largest. Pairs are the same role in adjacent
blocks (blk.l.R, blk.l+1.R); a few are measured per role and their mean rho_R stands for every adjacent
pair of that role (pairs beyond adjacent blocks are taken as independent).

Problem. With x[i,c] the one-hot choice of item i, w_IJ[a,b] = sum over adjacent pairs (t in I, u in J)
of 2 rho_R sqrt(d_t(a) d_u(b)):

    minimise    sum_i sum_c d[i,c] x[i,c]  +  sum_(I,J) sum_(a,b) w_IJ[a,b] x[I,a] x[J,b]
    subject to  sum_c x[i,c] = 1,   sum_i sum_c b[i,c] x[i,c] <= B,   x binary,

solved exactly by `scipy.optimize.milp` with each product replaced by y_IJ[a,b] >= 0,
sum_b y_IJ[a,b] = x[I,a], sum_a y_IJ[a,b] = x[J,b] (see `ramp.allocate.ilp.solve`). Pairs inside one
item (a --group) only add to that item's own d.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from ramp.allocate import ilp
from ramp.allocate.problem import Problem
from ramp.models.model import BLOCK_ROLES, Model
from ramp.measure.sensitivity_table import SensitivityTable

if TYPE_CHECKING:
    from ramp.measure.imatrix import ImportanceMatrix

# measure_pair({tensor: written format, ...}) -> damage (same measure and units as the sensitivity table)
# of the model with exactly those tensors quantized.
MeasurePair = Callable[[dict[str, str]], float]


def kld_pair_measure(model: Model, table: SensitivityTable, imatrix: "ImportanceMatrix | None" = None) -> MeasurePair:
    """measure_pair by the KLD oracle (`ramp.measure.oracle`) on the calibration windows `table` was measured on,
    quantized with the same importance matrix, so pair and single damages compare. Adjacent-block pairs re-run
    from their first block only, thanks to the oracle's block checkpoints."""
    from ramp.measure.calibration import recorded_spec
    from ramp.errors import RampError
    from ramp.measure.oracle import KLDOracle

    spec = recorded_spec(table.extra)
    if spec is None:
        raise RampError("the sensitivity table does not record the calibration text it was measured on, which the pair "
                        "measure must share; measure it with `ramp profile`")
    given = imatrix.content_sha256() if imatrix is not None else None
    if table.extra.get("imatrix") != given:
        raise RampError("the pair measure must quantize with the importance matrix the sensitivity table was measured "
                        "with; pass that one with --imatrix (or none if the table used none)")
    return KLDOracle(model, spec, imatrix)


def adjacent_block_pairs(model: Model) -> list[tuple[str, str]]:
    """(blk.l.R, blk.l+1.R) for every block role R and adjacent blocks l, l+1 the model has, role-major."""
    names = {(spec.role, spec.block): spec.name for spec in model.quantizable if spec.block is not None}
    return [
        (names[(role, block)], names[(role, block + 1)])
        for role in BLOCK_ROLES
        for block in range(model.n_blocks - 1)
        if (role, block) in names and (role, block + 1) in names
    ]


def _evenly_spaced(pairs: list[tuple[str, str]], count: int) -> list[tuple[str, str]]:
    if count >= len(pairs):
        return pairs
    return [pairs[i] for i in sorted(set(np.linspace(0, len(pairs) - 1, count).round().astype(int)))]


def estimate_correlations(
    model: Model, problem: Problem, member_damage: list[np.ndarray], measure_pair: MeasurePair,
    pairs_per_role: int = 2,
) -> tuple[dict[str, float], list[dict]]:
    """Mean rho per block role from `pairs_per_role` measured adjacent pairs of that role, and the
    measurements themselves."""
    where = {name: (i, m) for i, item in enumerate(problem.items) for m, name in enumerate(item.members)}
    by_role: dict[str, list[tuple[str, str]]] = {}
    for pair in adjacent_block_pairs(model):
        by_role.setdefault(model.spec(pair[0]).role, []).append(pair)
    rho: dict[str, float] = {}
    measurements = []
    for role, pairs in by_role.items():
        estimates = []
        for first, second in _evenly_spaced(pairs, pairs_per_role):
            (i, m), (j, n) = where[first], where[second]
            fmt_a, fmt_b = problem.items[i].choices[0].formats[m], problem.items[j].choices[0].formats[n]
            alone_a, alone_b = member_damage[i][0, m], member_damage[j][0, n]
            together = float(measure_pair({first: fmt_a, second: fmt_b}))
            # Without damage from both alone the cross term carries no information about rho.
            if alone_a > 0 and alone_b > 0:
                estimate = float(np.clip((together - alone_a - alone_b) / (2 * np.sqrt(alone_a * alone_b)), -1, 1))
                estimates.append(estimate)
            measurements.append({"pair": [first, second], "formats": [fmt_a, fmt_b], "alone": [alone_a, alone_b],
                                 "together": together})
        rho[role] = float(np.mean(estimates)) if estimates else 0.0
    return rho, measurements


def pair_terms(
    model: Model, problem: Problem, member_damage: list[np.ndarray], rho: dict[str, float]
) -> tuple[list[np.ndarray], list[ilp.PairTerm]]:
    """Item damage with within-item interaction added, and one cost matrix per interacting item pair."""
    where = {name: (i, m) for i, item in enumerate(problem.items) for m, name in enumerate(item.members)}
    damage = [d.sum(axis=1) for d in member_damage]
    costs: dict[tuple[int, int], np.ndarray] = {}
    for first, second in adjacent_block_pairs(model):
        strength = rho.get(model.spec(first).role, 0.0)
        if strength == 0.0:
            continue
        (i, m), (j, n) = where[first], where[second]
        root_a = np.sqrt(np.maximum(member_damage[i][:, m], 0.0))
        root_b = np.sqrt(np.maximum(member_damage[j][:, n], 0.0))
        if i == j:
            damage[i] = damage[i] + 2 * strength * root_a * root_b
        else:
            key = (min(i, j), max(i, j))
            cost = 2 * strength * np.outer(root_a, root_b)
            costs[key] = costs.get(key, 0) + (cost if i < j else cost.T)
    return damage, [ilp.PairTerm(i, j, cost) for (i, j), cost in sorted(costs.items())]


def predicted_damage(damage: list[np.ndarray], terms: list[ilp.PairTerm], picks: list[int]) -> float:
    additive = sum(float(d[p]) for d, p in zip(damage, picks))
    return additive + sum(float(term.cost[picks[term.first], picks[term.second]]) for term in terms)


def solve(
    model: Model, problem: Problem, member_damage: list[np.ndarray], measure_pair: MeasurePair,
    pairs_per_role: int = 2,
) -> tuple[list[int], dict]:
    rho, measurements = estimate_correlations(model, problem, member_damage, measure_pair, pairs_per_role)
    damage, terms = pair_terms(model, problem, member_damage, rho)
    picks, facts = ilp.solve(problem, damage, terms)
    facts.update(rho=rho, pair_measurements=measurements, interacting_item_pairs=len(terms),
                 predicted_damage_with_interaction=predicted_damage(damage, terms, picks))
    return picks, facts
