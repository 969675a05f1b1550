"""Checkpoint selection on the training tables: SAC's deterministic policy does not improve monotonically,
so training keeps the policy that scores best on the training models' own sensitivity tables (no evaluation
data, no forward pass), found with SB3's EvalCallback over one pinned episode per (model, budget)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import gymnasium as gym
import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback

from ramp.agent.policy_file import PolicyRecord, save_policy

if TYPE_CHECKING:
    from stable_baselines3 import SAC

    from ramp.envs.bit_allocation import BitAllocationEnv

# nats: a table's best damage can be ~0 at generous budgets (Gemma's is flat above 5.8 bpw), where a bare
# ratio would let one budget outweigh all others by 1000x; 1e-3 is about a 256-token KLD's noise.
SELECTION_FLOOR = 1e-3


def relative_regret(info: dict[str, Any]) -> float:
    """A finished episode's excess table damage over the table's best, (damage - best) / (best + floor)."""
    return (info["table_damage"] - info["best_damage"]) / (info["best_damage"] + SELECTION_FLOOR)


def _table_env(env: "BitAllocationEnv", points: int) -> tuple["BitAllocationEnv", list[dict[str, Any]]] | None:
    """`env` without its evaluators, on the contexts with a table, and the reset options of `points`
    budgets spread over each one's training range."""
    from ramp.envs.bit_allocation import BitAllocationEnv, ModelContext

    with_table = [index for index, context in enumerate(env.contexts) if context.damage is not None]
    if not with_table:
        return None
    quiet = BitAllocationEnv(
        [ModelContext(c.name, c.model, c.embedding, damage=c.damage, items=c.items, estimate=c.estimate)
         for c in (env.contexts[index] for index in with_table)],
        [env.budget_ranges[index] for index in with_table], env.ladder, env.grouping, env.reward_config)
    episodes = [{"context": index, "budget_bpw": float(bpw)}
                for index, (low, high) in enumerate(quiet.budget_ranges) for bpw in np.linspace(low, high, points)]
    return quiet, episodes


def table_regret(env: "BitAllocationEnv", points: int = 4) -> "Callable[[SAC], float] | None":
    """Scorer for checkpoint selection: the deterministic policy's mean `relative_regret` at `points`
    budgets spread over the training range, on every training model that has a table. Costs a few
    table-only rollouts. None when no model has a table."""
    from ramp.envs.bit_allocation import rollout

    found = _table_env(env, points)
    if found is None:
        return None
    quiet, episodes = found

    def score(sac: "SAC") -> float:
        act = lambda observation: sac.predict(observation, deterministic=True)[0]  # noqa: E731
        return float(np.mean([relative_regret(rollout(quiet, act, **options)) for options in episodes]))

    return score


class PinnedEpisodes(gym.Wrapper):
    """The selection episodes in turn, each rewarded only at its end, with minus its `relative_regret`:
    EvalCallback's mean episode reward over one round is then minus `table_regret`'s score."""

    def __init__(self, env: "BitAllocationEnv", episodes: list[dict[str, Any]]) -> None:
        super().__init__(env)
        self.episodes = episodes
        self.next = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        pinned = self.episodes[self.next % len(self.episodes)]
        self.next += 1
        return self.env.reset(seed=seed, options=pinned)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        observation, _, terminated, truncated, info = self.env.step(action)
        return observation, -relative_regret(info) if terminated else 0.0, terminated, truncated, info


class _WriteBest(BaseCallback):
    """Run by EvalCallback on a new best score: the policy goes to `out`, saying when it was selected."""

    def __init__(self, out: Path, record: PolicyRecord) -> None:
        super().__init__()
        self.out, self.record = out, record

    def _on_step(self) -> bool:
        assert isinstance(self.parent, EvalCallback)
        self.record.extra.update(selected_at_step=int(self.model.num_timesteps), selection_regret=-self.parent.best_mean_reward)
        save_policy(self.model, self.out, self.record)
        self.logger.record("ramp/selection_regret", -self.parent.best_mean_reward)
        return True


def selection_callback(env: "BitAllocationEnv", every: int, out: Path, record: PolicyRecord,
                       points: int = 4) -> EvalCallback | None:
    """Every `every` steps, score the deterministic policy on the tables; write it to `out` when it is the
    best yet. None when no training model has a table."""
    found = _table_env(env, points)
    if found is None:
        return None
    quiet, episodes = found
    # Every round of n episodes covers each pinned episode once, whichever one it starts at.
    return EvalCallback(PinnedEpisodes(quiet, episodes), callback_on_new_best=_WriteBest(out, record),
                        n_eval_episodes=len(episodes), eval_freq=every, deterministic=True, warn=False, verbose=0)


def evaluate_now(selection: EvalCallback) -> None:
    """One more round of selection outside its schedule (the final policy competes too)."""
    every = selection.eval_freq
    selection.eval_freq = 1
    try:
        selection.on_step()
    finally:
        selection.eval_freq = every
