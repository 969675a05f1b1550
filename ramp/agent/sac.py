"""The SAC agent: its hyper-parameters, its construction, and training with episode logging,
checkpoints, resume and selection of the best policy on the tables."""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from stable_baselines3.common.callbacks import BaseCallback

from ramp.agent.checkpoints import (
    Checkpoints, TrainingInterrupted, default_checkpoint_dir, replay_path, save_checkpoint)
from ramp.agent.policy_file import PolicyRecord, load_sac, read_policy_record, save_policy
from ramp.agent.selection import evaluate_now, selection_callback
from ramp.errors import RampError

if TYPE_CHECKING:
    from stable_baselines3 import SAC

    from ramp.envs.bit_allocation import BitAllocationEnv
    from ramp.models.model import Model


@dataclass(frozen=True)
class SACConfig:
    """SAC hyper-parameters `ramp train` uses and `ramp tune` searches. Episodes are short and few, so the
    defaults favour learning early (small warm-up, small batches) over asymptotic stability."""

    learning_rate: float = 1e-3
    buffer_size: int = 100_000
    learning_starts: int = 100
    batch_size: int = 64
    tau: float = 0.005
    gamma: float = 0.0  # each step's reward already prices the future (RewardConfig's lookahead shaping)
    train_freq: int = 1
    gradient_steps: int = 1
    ent_coef: str | float = "auto"
    net_arch: tuple[int, ...] = (64, 64)


def make_sac(env: "BitAllocationEnv", config: SACConfig, seed: int, tensorboard_log: str | None = None) -> "SAC":
    from stable_baselines3 import SAC

    return SAC(
        "MlpPolicy",
        env,
        learning_rate=config.learning_rate,
        buffer_size=config.buffer_size,
        learning_starts=config.learning_starts,
        batch_size=config.batch_size,
        tau=config.tau,
        gamma=config.gamma,
        train_freq=config.train_freq,
        gradient_steps=config.gradient_steps,
        ent_coef=config.ent_coef,
        policy_kwargs={"net_arch": list(config.net_arch)},
        tensorboard_log=tensorboard_log,
        seed=seed,
        device="cpu",  # two-layer MLPs: moving them to a GPU costs more than it saves
        verbose=0,
    )


def new_record(env: "BitAllocationEnv", models: list["Model"], config: SACConfig, seed: int,
               estimate: str | None = None) -> PolicyRecord:
    """The record of a policy about to be trained on `env` (whose observations read `estimate`, if any)."""
    from ramp.envs.action_mapping import ACTION_MAPPING_VERSION
    from ramp.envs.observation import OBSERVATION_VERSION
    from ramp.measure.profile import FEATURE_VERSION

    if env.reads_estimate != (estimate is not None):
        raise RampError("name the damage estimate the observations read, and only when the models carry one")
    return PolicyRecord(
        feature_version=FEATURE_VERSION,
        feature_names=env.feature_names(),
        embedding_size=env.embedding_size,
        observation_size=int(env.observation_space.shape[0]),
        formats=list(env.ladder),
        grouping=env.grouping,
        models=[{"name": context.name, "sha256": model.sha256, "budget_bpw": list(bounds)}
                for context, model, bounds in zip(env.contexts, models, env.budget_ranges)],
        budget_bpw=list(env.budget_bpw),
        reward=asdict(env.reward_config),
        sac=asdict(config),
        seed=seed,
        action_mapping=ACTION_MAPPING_VERSION,
        observation_version=OBSERVATION_VERSION,
        estimate=estimate,
    )


class EpisodeLog(BaseCallback):
    """Logs each finished episode's measured quality and budget use (TensorBoard's ramp/ scalars)."""

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", ()):
            if "bits_per_weight" in info:
                if info.get("kld") is not None:
                    self.logger.record_mean("ramp/kld", info["kld"])
                self.logger.record_mean("ramp/bits_per_weight", info["bits_per_weight"])
                self.logger.record_mean("ramp/budget_use", info["bytes"] / info["budget_bytes"])
                self.logger.record_mean("ramp/overshoot", info["overshoot_bytes"] / info["budget_bytes"])
        return True


def train(
    env: "BitAllocationEnv",
    record: PolicyRecord,
    out: str | Path,
    timesteps: int,
    config: SACConfig = SACConfig(),
    *,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 1000,
    tensorboard_log: str | None = None,
    resume: str | Path | None = None,
    progress_bar: bool = True,
    extra_callbacks: list | None = None,
    select_every: int = 0,
) -> "SAC":
    """Train (or continue training) SAC on `env` until `timesteps` environment steps in total, then save
    the policy to `out`. Ctrl-C writes a checkpoint and raises `TrainingInterrupted`.

    With `select_every` > 0 and a sensitivity table in some context, the policy is scored every that many
    steps and at the end (`ramp.agent.selection`), and `out` holds the best-scoring one rather than the last: SAC's
    deterministic policy does not improve monotonically, and this is the training model's own table, not
    any evaluation data."""
    directory = Path(checkpoint_dir) if checkpoint_dir else default_checkpoint_dir(out)
    if resume is not None:
        previous = read_policy_record(resume)
        previous.check_compatible(env.embedding_size, list(env.ladder), record.feature_version, resume)
        sac = load_sac(resume, env, tensorboard_log=tensorboard_log)
        if replay_path(resume).is_file():
            try:
                sac.load_replay_buffer(replay_path(resume))
            except Exception as exc:  # noqa: BLE001 - a cut-short pickle fails anywhere in the unpickler
                raise RampError(f"the replay buffer {replay_path(resume)} is damaged ({type(exc).__name__}); delete it to "
                                "resume without past episodes, or resume from another checkpoint") from None
        # Fresh episodes after a resume must not replay the budgets/models drawn at the start.
        sac.set_random_seed(record.seed + sac.num_timesteps)
    else:
        sac = make_sac(env, config, record.seed, tensorboard_log)
    if tensorboard_log is None:
        from stable_baselines3.common.logger import Logger

        # SB3's default logger makes a /tmp/SB3-<timestamp> folder per run even when it writes nothing.
        sac.set_logger(Logger(folder=None, output_formats=[]))
    remaining = timesteps - sac.num_timesteps
    selection = selection_callback(env, select_every, Path(out), record) if select_every > 0 else None
    if selection is not None and resume is not None and Path(out).is_file():
        # A resumed run competes with the best policy the interrupted part already wrote.
        selection.best_mean_reward = -read_policy_record(out).extra.get("selection_regret", float("inf"))
    callbacks = [EpisodeLog(), Checkpoints(directory, checkpoint_every, record), *([selection] if selection else []),
                 *(extra_callbacks or [])]
    if remaining > 0:
        import torch

        # Two-layer MLP updates on a batch of 64: extra threads only add synchronisation (10x slower on a
        # loaded 2-core machine); `KLDEvaluator` takes the cores back for its forward passes.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            sac.learn(remaining, callback=callbacks, log_interval=1, reset_num_timesteps=False, tb_log_name="sac",
                      progress_bar=progress_bar)
        except KeyboardInterrupt:
            checkpoint = save_checkpoint(sac, directory, record)
            print(f"ramp: checkpoint at step {sac.num_timesteps} saved to {checkpoint}", file=sys.stderr)
            raise TrainingInterrupted(checkpoint, sac.num_timesteps) from None
        finally:
            torch.set_num_threads(threads)
    if selection is None or remaining <= 0:
        save_policy(sac, out, record)
    else:
        evaluate_now(selection)  # the final policy competes too; `out` now holds the best
    return sac
