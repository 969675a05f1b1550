"""Zero-shot allocation with a trained policy: profile the model (or read its embeddings from `ramp profile`),
compute the cheap damage estimate the policy reads (a few passes, `ramp.measure.estimates`), then one
deterministic rollout of the policy through the bit-allocation environment. The environment clips every step
to what keeps the rest feasible, so the result is within budget whatever the policy asks for.

`DEFAULT_POLICY` ships with ramp: trained on every family ramp can load (docs/BENCHMARKS.md, Agent)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ramp.allocate.budget import Budget, describe_bytes
from ramp.allocate.problem import Problem, build_problem
from ramp.allocate.allocation import Allocation
from ramp.errors import RampError
from ramp.measure.ladder import ordered
from ramp.models.model import Model
from ramp.measure.sensitivity_table import SensitivityTable

if TYPE_CHECKING:
    from ramp.measure.imatrix import ImportanceMatrix
    from ramp.measure.profile import Profile

DEFAULT_POLICY = Path(__file__).with_name("default_policy.zip")


def allocate_with_policy(
    model: Model,
    policy_path: str | Path,
    budget: Budget | str | None = None,
    *,
    problem: Problem | None = None,
    sensitivity: SensitivityTable | None = None,
    embedding: np.ndarray | None = None,
    estimate: SensitivityTable | None = None,
    imatrix: "ImportanceMatrix | None" = None,
) -> Allocation:
    """Allocate `model` within `budget` (or `problem`'s items and budget: pins and groups included) with
    the policy in `policy_path`. `embedding` skips profiling and `estimate` the damage estimate when the
    caller already has them (the estimate is made with `imatrix`, as the export quantizes); `sensitivity`
    only adds the predicted damage to the result."""
    from ramp.agent.contexts import model_embedding
    from ramp.agent.policy_file import load_policy, read_policy_record
    from ramp.envs.bit_allocation import BitAllocationEnv, ModelContext, rollout
    from ramp.envs.reward import RewardConfig

    record = read_policy_record(policy_path)  # refuse a foreign file before the expensive profile
    ladder = tuple(record.formats)
    if problem is None:
        if budget is None:
            raise RampError("allocate_with_policy needs a budget (e.g. 4.5bpw) or a problem")
        budget = Budget.parse(budget) if isinstance(budget, str) else budget
        problem = build_problem(model, budget.bytes_for(model), ordered(ladder))
    if embedding is None:
        embedding, feature_version = model_embedding(model)
    else:
        from ramp.measure.profile import FEATURE_VERSION as feature_version
    if record.estimate is not None and estimate is None:
        from ramp.measure.estimates import estimate_sensitivity

        estimate = estimate_sensitivity(record.estimate, model, imatrix=imatrix, formats=ladder)
    context = ModelContext(model.sha256[:12] or "model", model, embedding, damage=sensitivity, items=problem.items,
                           estimate=estimate if record.estimate is not None else None)
    if problem.budget_bytes < problem.min_bytes:
        raise RampError(
            f"budget {describe_bytes(problem.budget_bytes, model)} is below the smallest allocation "
            f"({describe_bytes(problem.min_bytes, model)}); raise the budget"
        )
    bpw = 8.0 * problem.budget_bytes / model.n_quantizable_params
    env = BitAllocationEnv([context], (bpw, bpw), ladder=problem.ladder, grouping=record.grouping,
                           reward=RewardConfig(**record.reward))
    sac, record = load_policy(policy_path, env, feature_version)
    info = rollout(env, lambda observation: sac.predict(observation, deterministic=True)[0],
                   context=0, budget_bytes=problem.budget_bytes)
    budget_text = budget.text if isinstance(budget, Budget) else f"{problem.budget_bytes}B"
    return Allocation(
        info["formats"], "policy", budget_text, model.sha256,
        extra={
            "policy": str(policy_path),
            "policy_models": [entry["name"] for entry in record.models],
            "policy_timesteps": record.timesteps,
            "requested_over_budget_bytes": info["overshoot_bytes"],
        },
        fold_alpha=model.fold_alpha,
        origin_sha256=model.origin_sha256,
    )


class TrainedPolicy:
    """A policy file as an allocation method: `ramp.allocate.allocate(model, "policy", ..., policy=TrainedPolicy(path))`.
    With `embeddings` (`ramp profile`'s embeddings.json of the same model) the model is not profiled again;
    `imatrix` is the one the export quantizes with, which the policy's damage estimate then uses too."""

    def __init__(self, path: str | Path = DEFAULT_POLICY, embeddings: "Profile | None" = None,
                 imatrix: "ImportanceMatrix | None" = None) -> None:
        from ramp.agent.policy_file import read_policy_record

        self.path = Path(path)
        record = read_policy_record(path)  # a foreign file fails here, before any work
        self.ladder = tuple(record.formats)
        self.estimate_name = record.estimate
        self.embeddings = embeddings
        self.imatrix = imatrix

    def __call__(self, model: Model, problem: Problem, sensitivity: SensitivityTable | None) -> tuple[dict[str, str], dict]:
        embedding = None
        if self.embeddings is not None:
            if self.embeddings.model_sha256 != model.sha256 or self.embeddings.tensors != [spec.name for spec in model.quantizable]:
                raise RampError("the embeddings were profiled on another model (or --fold); run `ramp profile` on this one")
            embedding = self.embeddings.features
        # a table that is itself the estimate the policy reads (`ramp run --damage fisher`) is not made again
        estimate = sensitivity if sensitivity is not None and sensitivity.extra.get("estimate") == self.estimate_name \
            and set(self.ladder) <= set(sensitivity.formats) else None
        allocation = allocate_with_policy(model, self.path, problem=problem, sensitivity=sensitivity, embedding=embedding,
                                          estimate=estimate, imatrix=self.imatrix)
        return allocation.formats, allocation.extra
