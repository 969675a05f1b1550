"""Allocation methods: choose a format per quantizable tensor under a memory budget.

`allocate(model, method, budget, sensitivity, ...)` is the one entry point (`ramp allocate` and `ramp run`
call it). `METHODS` is the registry: each method is one function of one `Request` (the model, the problem
with its items and budget, the damage table and the method's own inputs) returning the formats and the facts
it reports, looked up by name. Adding a method is one row of `METHODS`; its solver module is imported when
the method runs, so importing this package stays cheap (the command line reads the method names from here).

Methods: uniform (one format), ilp (exact multiple-choice knapsack over measured damage), quadratic (ilp
plus pairwise interaction), greedy (marginal damage per byte), target-bpw (llama.cpp PR 15550's Lagrangian
allocator, the closest competitor, on its own imatrix-weighted error table from
`ramp.allocate.target_bpw.error_table` or on the table given), search (the ILP's allocation improved by
the measured KLD of the whole model, `ramp.allocate.search`), and policy (a trained agent,
`ramp.agent.policy.TrainedPolicy`, which the caller hands in: the agent comes later in the flow and
allocation imports nothing of it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

from ramp.errors import RampError

if TYPE_CHECKING:
    import numpy as np

    from ramp.allocate.allocation import Allocation
    from ramp.allocate.budget import Budget
    from ramp.allocate.problem import Pin, Problem
    from ramp.allocate.quadratic import MeasurePair
    from ramp.measure.imatrix import ImportanceMatrix
    from ramp.models.model import Model
    from ramp.measure.sensitivity_table import SensitivityTable

Choice = tuple[dict[str, str], dict]  # formats per tensor, facts for `Allocation.extra`


class Policy(Protocol):
    """A method from outside this package (the agent's trained policy): the ladder it allocates on, and its
    choice of formats for a problem, with facts for `Allocation.extra`."""

    ladder: tuple[str, ...]

    def __call__(self, model: "Model", problem: "Problem", sensitivity: "SensitivityTable | None") -> Choice:
        ...


@dataclass(frozen=True)
class Request:
    """Everything a method may read: `problem` holds the items (groups applied, formats resolved) and the
    budget in bytes; the rest are the inputs only some methods use."""

    model: "Model"
    problem: "Problem"
    budget: "Budget"
    sensitivity: "SensitivityTable | None"
    pins: "list[Pin]"
    embedding_format: str
    output_format: str
    measure_pair: "MeasurePair | None"
    pairs_per_role: int
    policy: "Policy | None"
    search: "SearchSettings | None"

    def item_damage(self) -> "list[np.ndarray]":
        """The table's damage of every choice of every item (requires a table)."""
        from ramp.allocate.problem import item_damage

        return item_damage(self.model, self.problem.items, self.sensitivity)

    def chosen(self, picks: list[int], facts: dict) -> Choice:
        """A solver's choice index per item as formats per tensor."""
        return self.problem.formats(picks), facts


@dataclass(frozen=True)
class SearchSettings:
    """The whole-model search's own inputs: the importance matrix it quantizes with (the damage table's own),
    its seed, its time and generation bounds, and where its resumable state lives (default: the cache)."""

    imatrix: "ImportanceMatrix | None" = None
    seed: int = 0
    minutes: float = 10.0
    generations: int | None = None
    state: str | None = None


@dataclass(frozen=True)
class Method:
    """One allocation method: its function, whether it needs a damage table, whether it honours --group, and the
    input it needs beyond the table (a `Request` field; `ramp run` runs the methods that need none)."""

    choose: Callable[[Request], Choice]
    needs_sensitivity: bool = True
    groups: bool = True
    needs: str | None = None


def choose_uniform(request: Request) -> Choice:
    from ramp.allocate import uniform

    return uniform.solve(request.model, request.budget, request.problem.ladder, request.pins, request.embedding_format,
                         request.output_format)


def choose_ilp(request: Request) -> Choice:
    from ramp.allocate import ilp

    return request.chosen(*ilp.solve(request.problem, request.item_damage()))


def choose_greedy(request: Request) -> Choice:
    from ramp.allocate import greedy

    return request.chosen(*greedy.solve(request.problem, request.item_damage()))


def choose_target_bpw(request: Request) -> Choice:
    from ramp.allocate import target_bpw

    return request.chosen(*target_bpw.solve(request.problem, request.item_damage()))


def choose_quadratic(request: Request) -> Choice:
    from ramp.allocate import quadratic
    from ramp.allocate.problem import member_damage

    damage = member_damage(request.model, request.problem.items, request.sensitivity)
    return request.chosen(*quadratic.solve(request.model, request.problem, damage, request.measure_pair,
                                           request.pairs_per_role))


def choose_search(request: Request) -> Choice:
    from ramp.allocate import search

    settings = request.search
    given = settings.imatrix.content_sha256() if settings.imatrix is not None else None
    if request.sensitivity.extra.get("imatrix") != given:
        raise RampError("the search must quantize with the importance matrix the sensitivity table was measured "
                        "with; pass that one with --imatrix (or none if the table used none)")
    return request.chosen(*search.solve(request.model, request.problem, request.item_damage(), imatrix=settings.imatrix,
                                        seed=settings.seed, minutes=settings.minutes, generations=settings.generations,
                                        state_path=settings.state))


def choose_policy(request: Request) -> Choice:
    return request.policy(request.model, request.problem, request.sensitivity)


METHODS: dict[str, Method] = {
    "uniform": Method(choose_uniform, needs_sensitivity=False, groups=False),
    "ilp": Method(choose_ilp),
    "quadratic": Method(choose_quadratic, needs="measure_pair"),
    "greedy": Method(choose_greedy),
    "target-bpw": Method(choose_target_bpw),
    "search": Method(choose_search, needs="search"),
    "policy": Method(choose_policy, needs_sensitivity=False, needs="policy"),
}
# What each `needs` asks the caller for, in the words of `ramp allocate`'s options.
NEEDED_INPUT = {"measure_pair": "a pair measurement (KLD of the model with two tensors quantized)",
                "policy": "--policy FILE, a policy trained with `ramp train`",
                "search": "its settings (`SearchSettings`: `ramp allocate --method search`)"}


def method_named(name: str) -> Method:
    """The registered method `name`, or the one-line error listing them."""
    if name not in METHODS:
        raise RampError(f"unknown allocation method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def self_contained_methods() -> tuple[str, ...]:
    """The methods that need nothing beyond the model, the budget and a damage table (what `ramp run` runs)."""
    return tuple(name for name, method in METHODS.items() if method.needs is None)


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
    search: "SearchSettings | None" = None,
) -> "Allocation":
    """Allocate `model`'s quantizable tensors with `method` within `budget` (e.g. "3.65bpw", "60MB").

    `sensitivity` is required by the methods that need it (`Method.needs_sensitivity`) and reported on for
    the others; quadratic also needs `measure_pair`, policy a `policy`, search its `search` settings. Pins (`REGEX=FORMAT`) and groups
    (regexes whose matches within one block share a format) apply to every method except that uniform
    ignores groups.
    """
    from ramp.allocate import budget as budgets
    from ramp.allocate import problem as problems
    from ramp.allocate.allocation import Allocation

    chosen = method_named(method)
    budget = budgets.Budget.parse(budget) if isinstance(budget, str) else budget
    inputs = {"measure_pair": measure_pair, "policy": policy, "search": search}
    if chosen.needs is not None and inputs[chosen.needs] is None:
        raise RampError(f"--method {method} needs {NEEDED_INPUT[chosen.needs]}")
    if ladder is None and policy is not None and method == "policy":
        ladder = policy.ladder  # a policy acts on the ladder it was trained on (its table's formats, say)
    elif ladder is None:  # an explicit ladder is taken as asked
        from ramp.measure.ladder import ladder_of

        ladder = ladder_of([sensitivity])
    pins = [pin if isinstance(pin, problems.Pin) else problems.Pin.parse(pin) for pin in pins]
    if sensitivity is not None and sensitivity.model_sha256 and model.sha256 and sensitivity.model_sha256 != model.sha256:
        raise RampError("the sensitivity table was measured on another model file or --fold; re-run `ramp profile` for this one")
    if chosen.needs_sensitivity and sensitivity is None:
        raise RampError(f"--method {method} needs a sensitivity table; pass --sensitivity FILE from `ramp profile`")

    if not chosen.groups:  # it ignores groups, but one that matches nothing is still a mistake to report
        problems.require_matches(model, groups=groups)
    items = problems.build_items(model, ladder, pins, groups if chosen.groups else [])
    budget_bytes = budgets.require_within(budget, model, budgets.items_range(model, items))
    request = Request(model, problems.Problem(items, budget_bytes, ladder), budget, sensitivity, pins, embedding_format,
                      output_format, measure_pair, pairs_per_role, policy, search)
    formats, facts = chosen.choose(request)

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
