"""Allocation baselines: choose a format per quantizable tensor under a memory budget.

`allocate(model, method, budget, sensitivity, ...)` is the one entry point (`ramp allocate` and `ramp run`
call it). Methods: uniform (one format), ilp (exact multiple-choice knapsack over measured damage),
quadratic (ilp plus pairwise interaction), greedy (marginal damage per byte), target-bpw (llama.cpp PR
15550's Lagrangian allocator, the closest competitor, on its own imatrix-weighted error table from
`ramp.allocate.target_bpw.error_table`), search (the ILP's allocation improved by the measured KLD of the whole
model, `ramp.allocate.search`), and policy (a trained agent, `ramp.agent.policy.TrainedPolicy`, which
the caller hands in: the agent comes later in the flow and allocation imports nothing of it).

Submodules are imported when a method runs, so importing this package stays cheap.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Protocol

from ramp.allocate.allocation import Allocation
from ramp.errors import RampError

if TYPE_CHECKING:
    from ramp.allocate.budget import Budget
    from ramp.allocate.problem import Pin, Problem
    from ramp.allocate.quadratic import MeasurePair
    from ramp.measure.imatrix import ImportanceMatrix
    from ramp.models.model import Model
    from ramp.measure.sensitivity_table import SensitivityTable

METHODS = ("uniform", "ilp", "quadratic", "greedy", "target-bpw", "search", "policy")
NEEDS_SENSITIVITY = ("ilp", "quadratic", "greedy", "target-bpw", "search")


class Policy(Protocol):
    """A method from outside this package (the agent's trained policy): the ladder it allocates on, and its
    choice of formats for a problem, with facts for `Allocation.extra`."""

    ladder: tuple[str, ...]

    def __call__(self, model: "Model", problem: "Problem", sensitivity: "SensitivityTable | None") -> tuple[dict[str, str], dict]:
        ...


def allocate(
    model: "Model",
    method: str,
    budget: "Budget | str",
    sensitivity: "SensitivityTable | None" = None,
    *,
    ladder: tuple[str, ...] | None = None,
    pins: "list[Pin | str]" = (),
    groups: list[str] = (),
    embedding_format: str = "same",
    output_format: str = "Q6_K",
    measure_pair: "MeasurePair | None" = None,
    pairs_per_role: int = 2,
    policy: Policy | None = None,
    imatrix: "ImportanceMatrix | None" = None,
    seed: int = 0,
    search_minutes: float = 10.0,
    search_generations: int | None = None,
    search_state: str | None = None,
) -> Allocation:
    """Allocate `model`'s quantizable tensors with `method` within `budget` (e.g. "3.65bpw", "60MB").

    `sensitivity` is required by ilp, quadratic and greedy, and reported on for the others; quadratic also
    needs `measure_pair`, policy a `policy`; search quantizes with `imatrix` (the table's own), takes `seed` and
    stops after `search_minutes` or `search_generations`, keeping its state at `search_state` (default: the cache). Pins (`REGEX=FORMAT`) and groups (regexes whose matches
    within one block share a format) apply to every method except that uniform ignores groups.
    """
    from ramp.allocate import budget as budgets
    from ramp.allocate import problem as problems

    if method not in METHODS:
        raise RampError(f"unknown allocation method {method!r}; choose one of {', '.join(METHODS)}")
    budget = budgets.Budget.parse(budget) if isinstance(budget, str) else budget
    if method == "policy" and policy is None:
        raise RampError("--method policy needs --policy FILE, a policy trained with `ramp train`")
    if ladder is None and method == "policy":
        ladder = policy.ladder  # a policy acts on the ladder it was trained on (its table's formats, say)
    elif ladder is None:  # an explicit ladder is taken as asked
        from ramp.measure.ladder import ladder_of

        ladder = ladder_of([sensitivity])
    pins = [pin if isinstance(pin, problems.Pin) else problems.Pin.parse(pin) for pin in pins]
    if sensitivity is not None and sensitivity.model_sha256 and model.sha256 and sensitivity.model_sha256 != model.sha256:
        raise RampError("the sensitivity table was measured on another model file or --fold; re-run `ramp profile` for this one")
    if method in NEEDS_SENSITIVITY and sensitivity is None:
        raise RampError(f"--method {method} needs a sensitivity table; pass --sensitivity FILE from `ramp profile`")

    if method == "uniform":  # it ignores groups, but one that matches nothing is still a mistake to report
        problems.require_matches(model, groups=groups)
    items = problems.build_items(model, ladder, pins, [] if method == "uniform" else groups)
    budget_bytes = budgets.require_within(budget, model, budgets.items_range(model, items))
    problem = problems.Problem(items, budget_bytes, ladder)
    if method == "uniform":
        from ramp.allocate import uniform

        formats, facts = uniform.solve(model, budget, ladder, pins, embedding_format, output_format)
    elif method == "policy":
        formats, facts = policy(model, problem, sensitivity)
    else:
        if method == "quadratic":
            from ramp.allocate import quadratic

            if measure_pair is None:
                raise RampError("--method quadratic needs a pair measurement (KLD of the model with two tensors quantized)")
            damage = problems.member_damage(model, items, sensitivity)
            picks, facts = quadratic.solve(model, problem, damage, measure_pair, pairs_per_role)
        elif method == "search":
            from ramp.allocate import search

            given = imatrix.content_sha256() if imatrix is not None else None
            if sensitivity.extra.get("imatrix") != given:
                raise RampError("the search must quantize with the importance matrix the sensitivity table was measured "
                                "with; pass that one with --imatrix (or none if the table used none)")
            picks, facts = search.solve(model, problem, problems.item_damage(model, items, sensitivity), imatrix=imatrix,
                                        seed=seed, minutes=search_minutes, generations=search_generations,
                                        state_path=search_state)
        else:
            solver = importlib.import_module(f"ramp.allocate.{method.replace('-', '_')}")
            picks, facts = solver.solve(problem, problems.item_damage(model, items, sensitivity))
        formats = problem.formats(picks)

    allocation = Allocation(formats, method, budget.text, model.sha256, extra=dict(facts), fold_alpha=model.fold_alpha,
                            origin_sha256=model.origin_sha256)
    allocation.check_matches(model)
    n_bytes = allocation.data_bytes(model)
    if n_bytes > budget_bytes:
        raise RampError(f"method {method} returned {n_bytes} bytes, over the budget's {budget_bytes}; this is a bug in it")
    allocation.extra.update(
        budget_bytes=budget_bytes, data_bytes=n_bytes, bits_per_weight=allocation.bits_per_weight(model),
        ladder=list(ladder), pins=[f"{pin.pattern.pattern}={pin.format}" for pin in pins], groups=list(groups),
        predicted_damage=None if sensitivity is None else predicted_damage(model, formats, sensitivity),
    )
    if sensitivity is not None:  # the damage holds for weights quantized with this importance matrix only
        allocation.extra["imatrix"] = sensitivity.extra.get("imatrix")
    return allocation


def predicted_damage(model: "Model", formats: dict[str, str], sensitivity: "SensitivityTable") -> float:
    """Summed measured damage of each tensor alone in its format (the additive model every method shares);
    tensors the table never measured in their format (pinned F16, say) count as undamaged."""
    from ramp.allocate.problem import tensor_damage

    return sum(tensor_damage(sensitivity, spec.name, formats[spec.name], spec.row_length) or 0.0
               for spec in model.quantizable)
