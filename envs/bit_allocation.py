"""The bit-allocation MDP: one episode walks a model's quantizable tensors in order and picks a format for
each (or for each group of tensors sharing a format) under a memory budget.

The environment never touches weights itself, nor makes the allocation problem: a `ModelContext` carries
what one model contributes, its items (the episode's steps, a `ramp.allocate.problem` item list the caller
built), the per-tensor embedding, an optional sensitivity table for shaped rewards and an optional evaluator
that measures the real quality (KLD) of a finished allocation. Training may hold several contexts and sample
one per episode, together with a budget drawn from its model's bits-per-weight range.

A policy is to allocate for models it has never seen, so every number it reads is said in terms that mean
the same in any model: the embedding standardised within its model, the step's share of the model's
weights and its role, the budget context, and, when the contexts carry a cheap damage estimate
(`ramp.measure.estimates`), that estimate per format relative to the model's own average, and the format the
exact ILP over the estimate gives this step for the bytes left.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import gymnasium as gym
import numpy as np

from ramp.allocate import ilp
from ramp.allocate.lagrangian import lagrangian_choices
from ramp.allocate.problem import Item, Problem, tensor_damage
from ramp.envs.action_mapping import action_index, index_action
from ramp.envs.observation import (
    CONTEXT_FEATURES, ESTIMATE_SUGGESTION, OBS_LIMIT, STEP_FEATURES, normalize_embedding, relative_damage)
from ramp.envs.reward import RewardConfig
from ramp.errors import RampError
from ramp.measure.sensitivity_table import SensitivityTable
from ramp.models.model import ROLES, Model

# Steps of an episode, as the caller groups the items: `tensor` is one step per tensor; `block` one per
# transformer block (its tensors share a requested format, as `ramp allocate --group` does), global tensors
# each alone. The regexes are `ramp.allocate.problem.build_items`'s groups.
GROUPINGS: dict[str, tuple[str, ...]] = {"tensor": (), "block": (r"^blk\.\d+\.",)}


class Evaluator(Protocol):
    def __call__(self, formats: dict[str, str]) -> float:
        """Mean KLD (nats) of the model with every tensor replaced as `formats` says, vs unquantized."""


@dataclass
class ModelContext:
    """What one model brings to training or allocation.

    `items` are the episode's steps: a `ramp.allocate.problem` item list, pins and groups included.
    """

    name: str
    model: Model  # only its tensor specs are read here; weights stay with the evaluator
    embedding: np.ndarray  # [len(model.quantizable), n_features], raw; normalised on construction
    evaluate: Evaluator | None = None
    damage: SensitivityTable | None = None  # shapes the reward (training); the best table available
    items: list[Item] = field(kw_only=True)
    estimate: SensitivityTable | None = field(default=None, kw_only=True)  # read by the policy (observation)
    cache_size: int = 256  # finished allocations whose KLD is remembered (deterministic policies repeat)
    _kld_cache: OrderedDict = field(default_factory=OrderedDict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.embedding = np.asarray(self.embedding)
        n_tensors = len(self.model.quantizable)
        if self.embedding.ndim != 2 or self.embedding.shape[0] != n_tensors:
            raise RampError(
                f"embedding of {self.name} has shape {self.embedding.shape}, expected ({n_tensors}, n_features); "
                "re-run `ramp profile`"
            )
        self.features = normalize_embedding(self.embedding)

    @property
    def embedding_size(self) -> int:
        return int(self.embedding.shape[1])

    def kld(self, formats: dict[str, str]) -> float | None:
        if self.evaluate is None:
            return None
        key = tuple(formats[spec.name] for spec in self.model.quantizable)
        if key not in self._kld_cache:
            self._kld_cache[key] = float(self.evaluate(formats))
            if len(self._kld_cache) > self.cache_size:
                self._kld_cache.popitem(last=False)
        self._kld_cache.move_to_end(key)
        return self._kld_cache[key]


class _Plan:
    """Per context: the steps, their per-choice damage, features and suffix byte bounds, computed once."""

    def __init__(self, context: ModelContext, ladder: tuple[str, ...]) -> None:
        model = context.model
        self.items = context.items
        index = {spec.name: i for i, spec in enumerate(model.quantizable)}
        specs = [[model.spec(name) for name in item.members] for item in self.items]
        self.params = np.array([sum(spec.n_params for spec in group) for group in specs], dtype=np.int64)
        embedding = np.stack(
            [
                np.average(context.features[[index[s.name] for s in group]], axis=0, weights=[s.n_params for s in group])
                for group in specs
            ]
        )
        share = self.params / self.params.sum()
        roles = np.zeros((len(specs), len(ROLES)))
        for i, group in enumerate(specs):
            roles[i, ROLES.index(max(group, key=lambda s: s.n_params).role)] = 1.0
        parts = [embedding, share[:, None], np.log10(share)[:, None], roles]
        # damage[step, choice]: summed single-tensor damage of the members (zero where unmeasured or without
        # a table); padded to the widest step, where a missing choice costs infinite damage and no bytes.
        width = max(len(item.choices) for item in self.items)
        self.nbytes = np.zeros((len(self.items), width))
        for i, item in enumerate(self.items):
            self.nbytes[i, : len(item.choices)] = [choice.nbytes for choice in item.choices]
        self.damage = self._choice_damage(context.damage, specs, width)
        self.estimate = None if context.estimate is None else self._choice_damage(context.estimate, specs, width)
        if context.estimate is not None:
            parts.append(relative_damage(context.estimate, specs, ladder, self.params))
        self.features = np.clip(np.concatenate(parts, axis=1), -OBS_LIMIT, OBS_LIMIT).astype(np.float32)
        lows = np.array([item.choices[0].nbytes for item in self.items], dtype=np.int64)
        # min_after[i]: fewest bytes steps i.. can take; min_after[len] = 0
        self.min_after = np.concatenate([np.cumsum(lows[::-1])[::-1], [0]])
        self.n_params = int(self.params.sum())

    def _choice_damage(self, table: SensitivityTable | None, specs: list[list], width: int) -> np.ndarray:
        damage = np.full((len(self.items), width), np.inf)
        for i, (item, group) in enumerate(zip(self.items, specs)):
            damage[i, : len(item.choices)] = [
                sum(tensor_damage(table, s.name, fmt, s.row_length) or 0.0 for s, fmt in zip(group, choice.formats))
                if table is not None else 0.0
                for choice in item.choices
            ]
        return damage

    def min_bpw(self) -> float:
        return 8.0 * self.min_after[0] / self.n_params

    def best_damage(self, start: int, budget: int) -> float:
        """Least summed damage steps start.. can have within `budget` bytes (`lagrangian_choices`). 0
        without a table or steps: every step then takes its smallest choice, which reset() checked fits."""
        damage = self.damage[start:]
        chosen = lagrangian_choices(damage, self.nbytes[start:], budget)
        return float(damage[np.arange(len(damage)), chosen].sum())

    def estimate_plan(self, start: int, budget: int, ladder: tuple[str, ...]) -> list[int]:
        """The exact ILP over the estimate for steps start.. within `budget` bytes: one choice per step.

        Exact, not the Lagrangian relaxation: re-solving the relaxation at every step compounds its rounding
        near the budget, and where the estimate is flat that leaves bytes unspent."""
        items = self.items[start:]
        damage = [self.estimate[start + i, : len(item.choices)] for i, item in enumerate(items)]
        return ilp.solve(Problem(items, budget, ladder), damage)[0]




class BitAllocationEnv(gym.Env):
    """Pick a format per step; the episode always ends within budget (see `RewardConfig` for rewards).

    Observation: the step's embedding (per-model standardised; parameter-weighted mean over a group),
    `STEP_FEATURES`, with an estimate its per-format relative damage and suggested action, then
    `CONTEXT_FEATURES` (`feature_names`). Action: one number in [-1, 1] on the step's ordered choices, centred
    on the choice of the exact ILP over the estimate when the contexts carry an estimate, else on the budget's pace
    (`action_index`); a request that would leave later steps less than their
    minimum is lowered to the largest choice that does not.

    `budget_bpw` is a (low, high) range in bits per quantizable weight, or one range per context; each
    episode draws its budget uniformly from its model's range (low == high fixes it). `reset(options=...)` pins the model (`context`: index) and
    the budget (`budget_bpw`, or `budget_bytes` exactly), which is how deterministic allocation rollouts run.
    `ladder` and `grouping` name how the contexts' items were built (a policy file records them).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        contexts: Sequence[ModelContext],
        budget_bpw: tuple[float, float] | Sequence[tuple[float, float]],
        ladder: Sequence[str],
        grouping: str = "tensor",
        reward: RewardConfig = RewardConfig(),
    ) -> None:
        if not contexts:
            raise RampError("the environment needs at least one model context")
        sizes = {context.embedding_size for context in contexts}
        if len(sizes) != 1:
            raise RampError(f"model contexts disagree on embedding size ({sorted(sizes)}); profile them with the same ramp version")
        if len({context.estimate is None for context in contexts}) != 1:
            raise RampError("some model contexts carry a damage estimate and some do not; give every model one or none")
        ranges = [budget_bpw] * len(contexts) if np.ndim(budget_bpw) == 1 else list(budget_bpw)
        if len(ranges) != len(contexts):
            raise RampError(f"{len(ranges)} budget ranges for {len(contexts)} models; give one range, or one per model")
        self.budget_ranges = [(float(low), float(high)) for low, high in ranges]
        for low, high in self.budget_ranges:
            if not 0 < low <= high:
                raise RampError(f"budget range {low}..{high} bpw is empty; give low..high with 0 < low <= high")
        self.contexts = list(contexts)
        self.ladder = tuple(ladder)
        self.grouping = grouping
        self.reward_config = reward
        self.budget_bpw = (min(low for low, _ in self.budget_ranges), max(high for _, high in self.budget_ranges))
        self.embedding_size = sizes.pop()
        self.reads_estimate = contexts[0].estimate is not None
        if grouping not in GROUPINGS:
            raise RampError(f"unknown grouping {grouping!r}; choose one of {', '.join(GROUPINGS)}")
        self._plans = [_Plan(context, self.ladder) for context in self.contexts]
        for context, plan, (low, _) in zip(self.contexts, self._plans, self.budget_ranges):
            if low < plan.min_bpw():
                raise RampError(
                    f"budget {low:.3f} bpw is below the smallest allocation of {context.name} "
                    f"({plan.min_bpw():.3f} bpw with formats {','.join(self.ladder)} after llama.cpp's row-length fallbacks); "
                    "raise the budget"
                )
        n_obs = self._plans[0].features.shape[1] + self.reads_estimate + len(CONTEXT_FEATURES)
        self.observation_space = gym.spaces.Box(-OBS_LIMIT, OBS_LIMIT, shape=(n_obs,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self._context_index = 0
        self._budget = 1
        self._best_left = 0.0  # best_damage of the steps still to place, within the bytes still left
        self._best_at_start = 0.0
        self._budget_bpw = self.budget_ranges[0][0]
        self._anchor: int | None = None  # the estimate's choice for the current step, where action 0 lands
        self._begin_episode()

    def feature_names(self) -> list[str]:
        """Names of the observation's entries, in order (the policy file records them)."""
        from ramp.measure.profile import FEATURE_NAMES

        estimate = [f"estimate_{fmt}" for fmt in self.ladder] + [ESTIMATE_SUGGESTION] if self.reads_estimate else []
        return [*FEATURE_NAMES[: self.embedding_size], *STEP_FEATURES, *estimate, *CONTEXT_FEATURES]

    def _begin_episode(self) -> None:
        self._step = 0
        self._spent = 0
        self._params_done = 0
        self._previous_action = 0.0
        self._overshoot = 0
        self._picks: list[int] = []
        # per step, the picks made and then the estimate ILP's choices for the bytes left after them; dropped
        # when a step departs from it, solved again at the next (one milp per episode for a policy that follows)
        self._estimate_plan: list[int] | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        options = options or {}
        self._context_index = int(options.get("context", self.np_random.integers(len(self.contexts))))
        plan = self._plans[self._context_index]
        if "budget_bytes" in options:
            self._budget = int(options["budget_bytes"])
        else:
            low, high = self.budget_ranges[self._context_index]
            bpw = float(options.get("budget_bpw", low if low == high else self.np_random.uniform(low, high)))
            self._budget = int(bpw * plan.n_params / 8)
        self._budget_bpw = 8.0 * self._budget / plan.n_params
        if self._budget < plan.min_after[0]:
            raise RampError(
                f"budget {self._budget_bpw:.3f} bpw is below the smallest allocation of {self.contexts[self._context_index].name} "
                f"({plan.min_bpw():.3f} bpw); raise the budget"
            )
        self._begin_episode()
        self._best_left = plan.best_damage(0, self._budget)
        self._best_at_start = self._best_left
        return self._observation(), {}

    def _observation(self) -> np.ndarray:
        plan = self._plans[self._context_index]
        step = min(self._step, len(plan.items) - 1)
        params_left = plan.n_params - self._params_done
        bpw_left = 8.0 * (self._budget - self._spent) / max(params_left, 1)
        choices = plan.items[step].choices
        step_params = plan.params[step]
        low_bpw, high_bpw = 8.0 * choices[0].nbytes / step_params, 8.0 * choices[-1].nbytes / step_params
        position = 0.0 if high_bpw == low_bpw else (bpw_left - low_bpw) / (high_bpw - low_bpw)
        suggestion = []
        self._anchor = None
        if self.reads_estimate and self._step == len(plan.items):
            suggestion = [0.0]  # the episode's end: no step left to suggest for
        elif self.reads_estimate:
            if self._estimate_plan is None:
                self._estimate_plan = self._picks + plan.estimate_plan(step, self._budget - self._spent, self.ladder)
            self._anchor = self._estimate_plan[step]
            suggestion = [index_action(self._anchor, [8.0 * choice.nbytes / step_params for choice in choices], bpw_left)]
        context = np.array(
            [
                self._spent / self._budget,
                params_left / plan.n_params,
                bpw_left / 8.0,
                position,
                step_params / max(params_left, 1),
                self._step / len(plan.items),
                self._previous_action,
                self._budget_bpw / 8.0,
            ],
            dtype=np.float32,
        )
        observation = np.concatenate([plan.features[step], suggestion, context])
        return np.clip(observation, -OBS_LIMIT, OBS_LIMIT).astype(np.float32)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        plan = self._plans[self._context_index]
        context = self.contexts[self._context_index]
        config = self.reward_config
        value = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], -1.0, 1.0))
        choices = plan.items[self._step].choices
        step_params = int(plan.params[self._step])
        pace_bpw = 8.0 * (self._budget - self._spent) / (plan.n_params - self._params_done)
        requested = action_index(value, [8.0 * choice.nbytes / step_params for choice in choices], pace_bpw, self._anchor)
        allowed = self._budget - self._spent - int(plan.min_after[self._step + 1])
        # Largest choice at or below the request that leaves every later step its minimum; choice 0
        # always fits because reset checked the whole minimum against the budget.
        granted = requested
        while granted > 0 and choices[granted].nbytes > allowed:
            granted -= 1
        asked = choices[requested].nbytes
        self._overshoot += max(0, asked - allowed)
        best_after = plan.best_damage(self._step + 1, self._budget - self._spent - choices[granted].nbytes)
        reward = config.cliff(asked, allowed, self._budget) + config.deviation(requested, self._anchor) + config.shaping(
            plan.damage[self._step, granted], best_after, self._best_left)
        self._best_left = best_after

        self._picks.append(granted)
        if granted != self._anchor:
            self._estimate_plan = None
        self._spent += choices[granted].nbytes
        self._params_done += int(plan.params[self._step])
        self._previous_action = value
        self._step += 1
        terminated = self._step == len(plan.items)
        info: dict[str, Any] = {"requested": requested, "granted": granted}
        if terminated:
            formats = self.formats()
            kld = context.kld(formats)
            if kld is not None:
                reward += config.quality(kld)
            reward += config.unused(self._spent, self._budget)
            info.update(
                formats=formats,
                kld=kld,
                bytes=self._spent,
                budget_bytes=self._budget,
                bits_per_weight=8.0 * self._spent / plan.n_params,
                overshoot_bytes=self._overshoot,
                best_damage=self._best_at_start,  # the least table damage within this budget
                table_damage=float(plan.damage[np.arange(len(self._picks)), self._picks].sum()),
                model=context.name,
            )
        return self._observation(), float(reward), terminated, False, info

    def formats(self) -> dict[str, str]:
        """GGUF tensor name -> written format, for the steps taken so far."""
        plan = self._plans[self._context_index]
        chosen: dict[str, str] = {}
        for item, pick in zip(plan.items, self._picks):
            chosen.update(zip(item.members, item.choices[pick].formats))
        return chosen


def rollout(env: BitAllocationEnv, act: Callable[[np.ndarray], np.ndarray], **options: Any) -> dict:
    """Run one episode with `act` choosing actions and `options` passed to reset; returns the last step's info."""
    observation, _ = env.reset(options=options)
    while True:
        observation, _, terminated, truncated, info = env.step(act(observation))
        if terminated or truncated:
            return info
