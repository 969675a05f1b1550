"""What `ramp train` does, as one function: load the training models, give each its shaping table, damage
estimate and budget range, profile them into an environment and train SAC on it.

The defaults are the recipe that works (docs/BENCHMARKS.md, Agent): lookahead shaping with logarithmic
regret and gamma 0 (`RewardConfig`, `SACConfig`), checkpoint selection on the tables, and episodes scored
by the tables alone. With gamma 0 a measured episode-end KLD reaches only the last step's reward, so the
real evaluation (`evaluate_calibration`) costs a forward per episode and teaches little; it stays available.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ramp.errors import RampError

if TYPE_CHECKING:
    from stable_baselines3 import SAC

    from ramp.agent.policy_file import PolicyRecord
    from ramp.agent.sac import SACConfig
    from ramp.envs.reward import RewardConfig
    from ramp.measure.calibration import CalibrationSpec
    from ramp.models.model import Model

AUTO = "auto"


@dataclass
class TrainingModel:
    """One model to train on: `ref` (a path or a `ramp models` name), its shaping table (None: the estimate
    itself), budget range (`3bpw..5bpw`, or auto: `default_budget_range`) and importance matrix (`auto`:
    `ramp imatrix`'s cached one; `none`; or a file) that the estimate quantizes with."""

    ref: str | None
    sensitivity: str | None = None
    budget: str = AUTO
    imatrix: str = AUTO


@dataclass
class TrainingRun:
    models: list[TrainingModel]
    out: Path
    timesteps: int
    estimate: str | None = "fisher"
    formats: tuple[str, ...] | None = None
    grouping: str = "tensor"
    seed: int = 0
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 3000
    select_every: int = 3000
    resume: Path | None = None
    tensorboard: str | None = None
    progress: bool = True
    evaluate_calibration: "CalibrationSpec | None" = None
    reward: "RewardConfig | None" = None
    sac: "SACConfig | None" = None
    names: list[str] = field(default_factory=list)  # display names, one per model (default: the file names)


def default_budget_range(model: "Model", ladder: tuple[str, ...]) -> tuple[float, float]:
    """From just above the model's smallest allocation on `ladder` to its source checkpoint's bits per
    weight (or 8): the sizes a user of such a model picks from, and where claims are made."""
    from ramp.allocate.budget import items_range
    from ramp.allocate.problem import build_items

    smallest, _ = items_range(model, build_items(model, ladder))
    low = 8.0 * smallest / model.n_quantizable_params * 1.01
    source = model.source_file_bytes
    all_weights = sum(math.prod(model.shape(name)) for name in model.tensors)
    high = 8.0 * source / all_weights if source else 8.0
    return low, max(high, low)


def train_policy(run: TrainingRun) -> tuple["SAC", "PolicyRecord"]:
    """Train a policy as `run` says and write it to `run.out` (the best one on the tables, with selection)."""
    import time

    from ramp.agent.arguments import parse_budget_range
    from ramp.agent.contexts import build_contexts
    from ramp.agent.policy_file import read_policy_record
    from ramp.agent.sac import SACConfig, new_record, train
    from ramp.envs.bit_allocation import BitAllocationEnv
    from ramp.envs.reward import RewardConfig
    from ramp.measure.estimates import estimate_sensitivity
    from ramp.measure.imatrix import ImportanceMatrix, cached_imatrix
    from ramp.measure.ladder import ladder_of
    from ramp.measure.sensitivity_table import SensitivityTable
    from ramp.models import load_model

    started = time.monotonic()
    tables = [SensitivityTable.load(entry.sensitivity) if entry.sensitivity else None for entry in run.models]
    ladder = tuple(run.formats) if run.formats else ladder_of(tables)
    models, estimates, ranges = [], [], []
    for entry, table in zip(run.models, tables):
        model = load_model(entry.ref)
        if entry.imatrix == AUTO:
            imatrix, _ = cached_imatrix(model, progress=run.progress)
        else:
            imatrix = None if entry.imatrix == "none" else ImportanceMatrix.load(entry.imatrix)
            if imatrix is not None:
                imatrix.importances(model)  # made for this model
        estimate = estimate_sensitivity(run.estimate, model, imatrix=imatrix, formats=ladder, progress=run.progress) \
            if run.estimate else None
        if table is None and estimate is None:
            raise RampError(f"{entry.ref or 'the default model'} has neither --sensitivity nor an estimate to shape rewards with; "
                            "give one, or keep --estimate")
        models.append(model)
        estimates.append(estimate)
        ranges.append(default_budget_range(model, ladder) if entry.budget == AUTO
                      else parse_budget_range(entry.budget, [model]))
    shaping = [table if table is not None else estimate for table, estimate in zip(tables, estimates)]
    names = run.names or [Path(entry.ref).name if entry.ref else "smollm2-135m" for entry in run.models]
    contexts = build_contexts(models, names, shaping, run.evaluate_calibration, ladder, run.grouping,
                                    estimates if run.estimate else None)
    env = BitAllocationEnv(contexts, ranges, ladder, run.grouping, run.reward or RewardConfig())
    config = run.sac or SACConfig()
    record = new_record(env, models, config, run.seed, run.estimate)
    budgets = ", ".join(f"{name} {low:.2f}..{high:.2f} bpw" for name, (low, high) in zip(names, ranges))
    print(f"prepared {len(models)} model(s) in {time.monotonic() - started:.0f}s; training to {run.timesteps} steps, {budgets}")
    sac = train(env, record, run.out, run.timesteps, config, checkpoint_dir=run.checkpoint_dir,
                      checkpoint_every=run.checkpoint_every, tensorboard_log=run.tensorboard, resume=run.resume,
                      progress_bar=run.progress, select_every=run.select_every)
    return sac, read_policy_record(run.out)


@dataclass(frozen=True)
class ResumePoint:
    """What `ramp train --resume auto` does with what an earlier training left: keep a finished policy,
    continue from the latest checkpoint, or start afresh (`checkpoint` None, `finished` False)."""

    checkpoint: Path | None
    finished: bool
    why: str


def resume_point(out: Path, checkpoint_dir: Path, timesteps: int, reward: "RewardConfig") -> ResumePoint:
    """The rule behind `--resume auto`. The latest checkpoint tells how far training got (the policy file may
    hold an earlier step, the one selection kept). A training under another contract (action mapping,
    observation layout) or reward cannot be continued or kept: its checkpoints and policy are removed and
    training starts afresh. Otherwise the policy is finished when its checkpoints reached `timesteps` and the
    file exists; short of that, training continues from the latest checkpoint."""
    import shutil
    from dataclasses import asdict

    from ramp.agent.checkpoints import latest_checkpoint
    from ramp.agent.policy_file import read_policy_record
    from ramp.envs.action_mapping import ACTION_MAPPING_VERSION
    from ramp.envs.observation import OBSERVATION_VERSION

    last = latest_checkpoint(checkpoint_dir)
    if last is None:
        return ResumePoint(None, False, f"no checkpoint in {checkpoint_dir}: training from the start")
    record = read_policy_record(last)
    trained_under = (record.action_mapping, record.observation_version, record.reward)
    if trained_under != (ACTION_MAPPING_VERSION, OBSERVATION_VERSION, asdict(reward)):
        shutil.rmtree(checkpoint_dir)
        out.unlink(missing_ok=True)
        return ResumePoint(None, False, f"{last} was trained under action mapping {record.action_mapping}, observation "
                                        f"layout {record.observation_version} or another reward: removed, training afresh")
    if out.is_file() and record.timesteps >= timesteps:
        return ResumePoint(None, True, f"{out} finished its {timesteps} steps ({last}): kept")
    return ResumePoint(last, False, f"continuing from {last} (step {record.timesteps} of {timesteps})")
