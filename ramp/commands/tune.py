"""`ramp tune`: Optuna search over SAC hyper-parameters and reward constants.

Each trial trains a policy for `--timesteps` steps and is scored by what matters in the end, independent of
the reward constants it tried: the mean measured KLD of its deterministic allocations at `--eval-points`
budgets spread over the range (every allocation is within budget by construction).
"""
from __future__ import annotations

import argparse

from ramp.measure.calibration import AGENT
from ramp.commands._options import add_calibration_arguments, calibration_of, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", default=[], metavar="PATH",
                        help="GGUF file, safetensors directory or a name from `ramp models` (repeatable; default: smollm2-135m)")
    parser.add_argument("--sensitivity", action="append", default=[], metavar="FILE",
                        help="sensitivity table per --model, same order, for shaped step rewards (optional)")
    parser.add_argument("--budget", required=True, help="budget range, LOW..HIGH (e.g. 4.2bpw..5bpw)")
    parser.add_argument("--trials", type=positive_int, default=20, help="trials to run in this invocation (default 20)")
    parser.add_argument("--timesteps", type=positive_int, default=1000, help="training steps per trial (default 1000)")
    parser.add_argument("--eval-points", type=positive_int, default=3, help="budgets per model a trial is scored at (default 3)")
    parser.add_argument("--storage", default="sqlite:///ramp_tune.db",
                        help="Optuna RDB storage URL (default sqlite:///ramp_tune.db; any SQLAlchemy URL works)")
    parser.add_argument("--study", default="ramp", help="study name; re-running with the same name continues it")
    parser.add_argument("--out", default="tuned.json", help="best settings as JSON (default tuned.json)")
    parser.add_argument("--formats", help="comma-separated format ladder (default: the formats every --sensitivity "
                                          "table measured, ramp's default ladder without tables)")
    parser.add_argument("--grouping", choices=("tensor", "block"), default="tensor")
    parser.add_argument("--seed", type=int, default=0)
    add_calibration_arguments(parser, AGENT, "each episode-end evaluation", "--calibration-tokens")


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


def paths(args: argparse.Namespace) -> tuple[dict, dict]:
    """Inputs and outputs, checked against each other by `ramp.cli` before the command runs."""
    return {"--model": args.model, "--sensitivity": args.sensitivity}, {"--out": args.out}


def run(args: argparse.Namespace) -> int:
    import json
    import tempfile
    from dataclasses import asdict
    from pathlib import Path

    import numpy as np
    import optuna

    from ramp.agent import sac as agent
    from ramp.measure.ladder import ladder_of, parse_ladder
    from ramp.envs.bit_allocation import BitAllocationEnv, RewardConfig, rollout
    from ramp.files import atomic_output, check_output_path
    from ramp.models.model import load_model

    check_output_path(args.out)
    asked_ladder = parse_ladder(args.formats) if args.formats else None
    paths = args.model or [None]
    tables = agent.load_tables(args.sensitivity, len(paths))
    ladder = asked_ladder or ladder_of(tables)
    models = [load_model(path) for path in paths]
    names = [Path(path).name if path else "SmolLM2-135M-Instruct" for path in paths]
    low, high = agent.parse_budget_range(args.budget, models)
    # Profiles, evaluators and their caches are shared by every trial: only the agent and reward change.
    contexts = agent.build_contexts(models, names, tables, calibration_of(args, args.calibration_tokens))
    eval_budgets = np.linspace(low, high, args.eval_points) if args.eval_points > 1 else [(low + high) / 2]

    def objective(trial) -> float:
        sac_overrides, reward_overrides = suggest(trial)
        config = agent.SACConfig(**sac_overrides)
        env = BitAllocationEnv(contexts, (low, high), ladder, args.grouping, RewardConfig(**reward_overrides))
        record = agent.new_record(env, models, config, args.seed + trial.number)
        with tempfile.TemporaryDirectory() as scratch:
            sac = agent.train(env, record, Path(scratch) / "policy.zip", args.timesteps, config,
                              checkpoint_every=0, checkpoint_dir=scratch, progress_bar=False)
        act = lambda observation: sac.predict(observation, deterministic=True)[0]  # noqa: E731
        klds = [rollout(env, act, context=i, budget_bpw=float(b))["kld"] for i in range(len(contexts)) for b in eval_budgets]
        return float(np.mean(klds))

    study = optuna.create_study(
        study_name=args.study, storage=args.storage, load_if_exists=True, direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=args.seed),
    )
    study.optimize(objective, n_trials=args.trials)
    best = study.best_trial
    sac_overrides, reward_overrides = suggest(optuna.trial.FixedTrial(best.params))
    result = {
        "mean_kld": best.value, "trial": best.number, "study": args.study, "storage": args.storage,
        "sac": asdict(agent.SACConfig(**sac_overrides)), "reward": asdict(RewardConfig(**reward_overrides)),
    }
    with atomic_output(args.out, "w") as handle:
        json.dump(result, handle, indent=1)
    flags = " ".join([f"--sac {k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in sac_overrides.items()]
                     + [f"--reward {k}={v:.4g}" for k, v in reward_overrides.items()])
    print(f"best trial {best.number}: mean KLD {best.value:.5f}; wrote {args.out}\ntrain with: ramp train ... {flags}")
    return 0
