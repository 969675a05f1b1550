"""Optuna search over SAC hyper-parameters and reward constants (`ramp tune`).

Each trial trains a policy and is scored by what matters in the end, independent of the reward constants it
tried: the mean measured KLD of its deterministic allocations at budgets spread over the range (every
allocation is within budget by construction).
"""
from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ramp.envs.bit_allocation import ModelContext
    from ramp.models.model import Model


def suggest(trial) -> tuple[dict, dict]:
    """(SACConfig overrides, RewardConfig overrides) for one Optuna trial."""
    width = trial.suggest_categorical("net_width", [32, 64, 128])
    sac = {
        "learning_rate": trial.suggest_float("learning_rate", 1e-4, 3e-3, log=True),
        # 0 is right with a table (the lookahead regret already prices the future), near 1 without one
        "gamma": trial.suggest_categorical("gamma", [0.0, 0.9, 0.99, 0.999]),
        "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128]),
        "tau": trial.suggest_float("tau", 0.001, 0.05, log=True),
        "learning_starts": trial.suggest_int("learning_starts", 50, 400, log=True),
        "net_arch": (width, width),
    }
    reward = {
        "kld_scale": trial.suggest_float("kld_scale", 0.005, 0.5, log=True),
        "over_weight": trial.suggest_float("over_weight", 2.0, 100.0, log=True),
        "under_weight": trial.suggest_float("under_weight", 0.05, 5.0, log=True),
        "shaping_weight": trial.suggest_float("shaping_weight", 0.1, 10.0, log=True),
        "lookahead_weight": trial.suggest_float("lookahead_weight", 0.0, 1.0),
        "regret_scale": trial.suggest_categorical("regret_scale", [0.0, 1e-4, 1e-3, 1e-2]),
    }
    return sac, reward


@dataclass(frozen=True)
class Study:
    """Where trials are kept: an Optuna RDB storage URL and a study name (the same name continues it)."""

    storage: str
    name: str


def tune(
    study: Study, contexts: "list[ModelContext]", models: "list[Model]", budget_bpw: tuple[float, float],
    ladder: tuple[str, ...], grouping: str, trials: int, timesteps: int, eval_points: int, seed: int,
) -> dict:
    """Run `trials` more trials of `study` and return the best so far: its mean KLD, trial number, and the SAC
    and reward settings (`--sac` / `--reward` values). Contexts (profiles, evaluators, their caches) are
    shared by every trial: only the agent and reward change."""
    import numpy as np
    import optuna

    from ramp.agent.sac import SACConfig, new_record, train
    from ramp.envs.bit_allocation import BitAllocationEnv, rollout
    from ramp.envs.reward import RewardConfig

    low, high = budget_bpw
    eval_budgets = np.linspace(low, high, eval_points) if eval_points > 1 else [(low + high) / 2]

    def objective(trial) -> float:
        sac_overrides, reward_overrides = suggest(trial)
        config = SACConfig(**sac_overrides)
        env = BitAllocationEnv(contexts, budget_bpw, ladder, grouping, RewardConfig(**reward_overrides))
        record = new_record(env, models, config, seed + trial.number)
        with tempfile.TemporaryDirectory() as scratch:
            sac = train(env, record, Path(scratch) / "policy.zip", timesteps, config,
                              checkpoint_every=0, checkpoint_dir=scratch, progress_bar=False)
        act = lambda observation: sac.predict(observation, deterministic=True)[0]  # noqa: E731
        klds = [rollout(env, act, context=i, budget_bpw=float(b))["kld"] for i in range(len(contexts)) for b in eval_budgets]
        return float(np.mean(klds))

    search = optuna.create_study(study_name=study.name, storage=study.storage, load_if_exists=True, direction="minimize",
                                 sampler=optuna.samplers.TPESampler(seed=seed))
    search.optimize(objective, n_trials=trials)
    best = search.best_trial
    sac_overrides, reward_overrides = suggest(optuna.trial.FixedTrial(best.params))
    return {
        "mean_kld": best.value, "trial": best.number, "study": study.name, "storage": study.storage,
        "sac": asdict(SACConfig(**sac_overrides)), "reward": asdict(RewardConfig(**reward_overrides)),
        "flags": " ".join([f"--sac {k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in sac_overrides.items()]
                          + [f"--reward {k}={v:.4g}" for k, v in reward_overrides.items()]),
    }
