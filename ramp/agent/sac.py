"""The SAC agent: construction, training with checkpoints and resume, and the policy file.

A policy file is Stable-Baselines3's zip with one extra member, `ramp_policy.json`, recording what the
policy was trained on (models, budgets, format ladder, grouping, feature version and embedding size).
A policy only makes sense for observations built the same way, so loading checks those records.
"""
from __future__ import annotations

import json
import sys
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ramp.errors import RampError
from ramp.files import atomic_path

if TYPE_CHECKING:
    import numpy as np
    import torch
    from stable_baselines3 import SAC

    from ramp.allocate.problem import Item
    from ramp.measure.calibration import CalibrationSpec
    from ramp.envs.bit_allocation import BitAllocationEnv, ModelContext
    from ramp.models.model import Model
    from ramp.measure.sensitivity_table import SensitivityTable

POLICY_RECORD = "ramp_policy.json"
# nats: a table's best damage can be ~0 at generous budgets (Gemma's is flat above 5.8 bpw), where a bare
# ratio would let one budget outweigh all others by 1000x; 1e-3 is about a 256-token KLD's noise.
SELECTION_FLOOR = 1e-3
REPLAY_SUFFIX = ".replay.pkl"


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


@dataclass
class PolicyRecord:
    """What a policy was trained on; stored inside the policy file."""

    feature_version: int
    feature_names: list[str]
    embedding_size: int
    observation_size: int
    formats: list[str]  # the format ladder, lowest first
    grouping: str
    models: list[dict[str, Any]]  # name, sha256 and budget range (bpw) of each training model
    budget_bpw: list[float]  # [low, high] of the training budgets
    reward: dict[str, float]
    sac: dict[str, Any]
    seed: int
    timesteps: int = 0  # environment steps trained so far
    extra: dict[str, Any] = field(default_factory=dict)
    action_mapping: int = 1  # ramp.envs.bit_allocation.ACTION_MAPPING_VERSION it was trained under; files before it had 1
    observation_version: int = 1  # ramp.envs.bit_allocation.OBSERVATION_VERSION; files before it had 1
    estimate: str | None = None  # the damage estimate the observation reads (`ramp.measure.estimates`), if any

    def check_compatible(self, embedding_size: int, formats: list[str], feature_version: int, path: str | Path) -> None:
        from ramp.envs.bit_allocation import ACTION_MAPPING_VERSION, OBSERVATION_VERSION

        if self.observation_version != OBSERVATION_VERSION:
            raise RampError(
                f"policy {path} reads observation layout {self.observation_version}, this ramp builds layout "
                f"{OBSERVATION_VERSION} (see ramp.envs.bit_allocation); retrain it with `ramp train`"
            )
        if self.action_mapping != ACTION_MAPPING_VERSION:
            raise RampError(
                f"policy {path} was trained under action mapping {self.action_mapping}, this ramp uses "
                f"{ACTION_MAPPING_VERSION} (see ramp.envs.bit_allocation.action_index); retrain it with `ramp train`"
            )
        if self.embedding_size != embedding_size or self.feature_version != feature_version:
            raise RampError(
                f"policy {path} was trained on {self.embedding_size}-number embeddings (feature version "
                f"{self.feature_version}), this ramp computes {embedding_size} (version {feature_version}); retrain it with `ramp train`"
            )
        if list(self.formats) != list(formats):
            raise RampError(
                f"policy {path} was trained for formats {','.join(self.formats)}, not {','.join(formats)}; "
                "use the same --formats or retrain it with `ramp train`"
            )


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


def save_policy(sac: "SAC", path: str | Path, record: PolicyRecord) -> None:
    """Write the SB3 zip and the training record into it, atomically."""
    record.timesteps = int(sac.num_timesteps)
    with atomic_path(path) as tmp:
        sac.save(tmp)
        with zipfile.ZipFile(tmp, "a") as archive:
            archive.writestr(POLICY_RECORD, json.dumps(asdict(record), indent=1))


def read_policy_record(path: str | Path) -> PolicyRecord:
    try:
        with zipfile.ZipFile(path) as archive:
            data = json.loads(archive.read(POLICY_RECORD))
    except FileNotFoundError:
        raise RampError(f"policy file {path} does not exist; train one with `ramp train`") from None
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, IsADirectoryError):
        raise RampError(f"{path} is not a ramp policy file; train one with `ramp train`") from None
    try:
        return PolicyRecord(**data)
    except TypeError:
        raise RampError(f"{path} was written by an incompatible ramp version; retrain it with `ramp train`") from None


def load_sac(path: str | Path, env: "BitAllocationEnv", **kwargs: Any) -> "SAC":
    """Stable-Baselines3's SAC from a policy file or checkpoint; a damaged file (a corrupt network or
    optimizer member in an intact zip) is one RampError, not an unpickling traceback."""
    from stable_baselines3 import SAC

    try:
        return SAC.load(path, env=env, device="cpu", **kwargs)
    except Exception as exc:  # noqa: BLE001 - damaged bytes fail anywhere in torch's unpickler (IndexError, ...)
        detail = (str(exc).splitlines() or [""])[0][:120]
        raise RampError(f"{path} is damaged ({type(exc).__name__}: {detail}); restore it or retrain it with `ramp train`") from None


def load_policy(path: str | Path, env: "BitAllocationEnv", feature_version: int) -> tuple["SAC", PolicyRecord]:
    """The SAC model in `path`, refused unless it was trained for `env`'s observations and formats."""
    record = read_policy_record(path)
    record.check_compatible(env.embedding_size, list(env.ladder), feature_version, path)
    return load_sac(path, env), record


def replay_path(checkpoint: str | Path) -> Path:
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name.removesuffix(".zip") + REPLAY_SUFFIX)


def default_checkpoint_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name.removesuffix(".zip") + "_checkpoints")


def latest_checkpoint(directory: str | Path) -> Path | None:
    found = sorted(Path(directory).glob("step_*.zip"), key=lambda p: int(p.stem.removeprefix("step_")))
    return found[-1] if found else None


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, after the checkpoint to resume from was written."""

    def __init__(self, checkpoint: Path, timesteps: int) -> None:
        super().__init__(f"interrupted at step {timesteps}; checkpoint {checkpoint}")
        self.checkpoint = checkpoint
        self.timesteps = timesteps


def _save_checkpoint(sac: "SAC", directory: Path, record: PolicyRecord) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step_{sac.num_timesteps}.zip"
    save_policy(sac, path, record)
    # The replay buffer is what lets a resumed run keep learning from past episodes instead of starting cold.
    with atomic_path(replay_path(path)) as tmp:
        sac.save_replay_buffer(tmp)
    return path


def _callback(directory: Path, every: int, record: PolicyRecord):
    from stable_baselines3.common.callbacks import BaseCallback

    class RampCallback(BaseCallback):
        """Checkpoints every `every` steps and logs each finished episode's measured quality."""

        def _on_step(self) -> bool:
            for info in self.locals.get("infos", ()):
                if "bits_per_weight" in info:
                    if info.get("kld") is not None:
                        self.logger.record_mean("ramp/kld", info["kld"])
                    self.logger.record_mean("ramp/bits_per_weight", info["bits_per_weight"])
                    self.logger.record_mean("ramp/budget_use", info["bytes"] / info["budget_bytes"])
                    self.logger.record_mean("ramp/overshoot", info["overshoot_bytes"] / info["budget_bytes"])
            if every > 0 and self.num_timesteps % every == 0:
                _save_checkpoint(self.model, directory, record)
            return True

    return RampCallback()


def table_regret(env: "BitAllocationEnv", points: int = 4) -> "Callable[[SAC], float] | None":
    """Scorer for checkpoint selection: the deterministic policy's mean relative excess damage over the
    sensitivity table's best, (damage - best) / (best + SELECTION_FLOOR), at `points` budgets spread over
    the training range, on every training model that has a table. Costs a few table-only rollouts, no
    forward pass. None when no model has a table."""
    import numpy as np

    from ramp.envs.bit_allocation import BitAllocationEnv, ModelContext, rollout

    with_table = [index for index, context in enumerate(env.contexts) if context.damage is not None]
    if not with_table:
        return None
    quiet = BitAllocationEnv(
        [ModelContext(c.name, c.model, c.embedding, damage=c.damage, items=c.items, estimate=c.estimate)
         for c in (env.contexts[index] for index in with_table)],
        [env.budget_ranges[index] for index in with_table], env.ladder, env.grouping, env.reward_config)
    budgets = [np.linspace(*quiet.budget_ranges[index], points) for index in range(len(with_table))]

    def score(sac: "SAC") -> float:
        act = lambda observation: sac.predict(observation, deterministic=True)[0]  # noqa: E731
        ratios = []
        for index in range(len(with_table)):
            for bpw in budgets[index]:
                info = rollout(quiet, act, context=index, budget_bpw=float(bpw))
                ratios.append((info["table_damage"] - info["best_damage"]) / (info["best_damage"] + SELECTION_FLOOR))
        return float(np.mean(ratios))

    return score


def _selection_callback(score: "Callable[[SAC], float]", every: int, out: Path, record: PolicyRecord):
    from stable_baselines3.common.callbacks import BaseCallback

    class SelectBest(BaseCallback):
        """Every `every` steps, score the deterministic policy; write it to `out` when it is the best yet."""

        best = float("inf")

        def _on_step(self) -> bool:
            if self.num_timesteps % every == 0:
                self.consider()
            return True

        def consider(self) -> None:
            value = score(self.model)
            self.logger.record("ramp/selection_regret", value)
            if value < self.best:
                self.best = value
                record.extra.update(selected_at_step=int(self.model.num_timesteps), selection_regret=value)
                save_policy(self.model, out, record)

    return SelectBest()


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
    steps and at the end (`table_regret`), and `out` holds the best-scoring one rather than the last: SAC's
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
    score = table_regret(env) if select_every > 0 else None
    selection = _selection_callback(score, select_every, Path(out), record) if score else None
    if selection is not None and resume is not None and Path(out).is_file():
        # A resumed run competes with the best policy the interrupted part already wrote.
        selection.best = read_policy_record(out).extra.get("selection_regret", selection.best)
    callbacks = [_callback(directory, checkpoint_every, record), *([selection] if selection else []), *(extra_callbacks or [])]
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
            checkpoint = _save_checkpoint(sac, directory, record)
            print(f"ramp: checkpoint at step {sac.num_timesteps} saved to {checkpoint}", file=sys.stderr)
            raise TrainingInterrupted(checkpoint, sac.num_timesteps) from None
        finally:
            torch.set_num_threads(threads)
    if selection is None or remaining <= 0:
        save_policy(sac, out, record)
    else:
        selection.consider()  # the final policy competes too; `out` now holds the best
    return sac


class KLDEvaluator:
    """The real quality of an allocation for the environment: the KLD oracle (`ramp.measure.oracle`) over calibration
    windows, run with every core while SAC's own updates keep to one (see `train`)."""

    def __init__(self, model: "Model", calibration: "CalibrationSpec | torch.Tensor", threads: int | None = None) -> None:
        import torch

        from ramp.measure.oracle import KLDOracle

        # Every allocation touches token_embd, so block checkpoints would never save a block: skip them.
        self.oracle = KLDOracle(model, calibration, checkpoint_blocks=False)
        self.threads = threads or torch.get_num_threads()

    def __call__(self, formats: dict[str, str]) -> float:
        import torch

        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return self.oracle(formats)
        finally:
            torch.set_num_threads(previous)


def model_embedding(model: "Model", calibration: "CalibrationSpec | torch.Tensor | None" = None) -> tuple["np.ndarray", int]:
    """The model's per-tensor embedding (rows in `model.quantizable` order, profiled on the embeddings'
    calibration windows unless others are given) and the feature version."""
    from ramp.measure.calibration import EMBEDDINGS
    from ramp.measure.profile import FEATURE_VERSION, profile_model

    return profile_model(model, EMBEDDINGS if calibration is None else calibration).features, FEATURE_VERSION


def parse_budget_range(text: str, models: list["Model"]) -> tuple[float, float]:
    """`3.5bpw..4.5bpw` (or one budget) -> (low, high) bits per weight. Byte budgets are accepted for a
    single model only: the same byte count means different things for models of different sizes."""
    from ramp.allocate.budget import Budget

    ends = [Budget.parse(part) for part in text.split("..")] if ".." in text else [Budget.parse(text)] * 2
    if len(ends) != 2:
        raise RampError(f"budget range {text!r} is not LOW..HIGH; write e.g. 3.5bpw..4.5bpw")
    if any(end.unit != "bpw" for end in ends) and len(models) != 1:
        raise RampError("byte budgets need exactly one --model; give bits per weight (3.5bpw..4.5bpw) for several")
    low, high = (8.0 * end.bytes_for(models[0]) / models[0].n_quantizable_params if end.unit != "bpw" else end.value
                 for end in ends)
    if low > high:
        raise RampError(f"budget range {text!r} runs backwards; write LOW..HIGH")
    return low, high


def load_tables(paths: list[str], n_models: int) -> list["SensitivityTable | None"]:
    """One sensitivity table per model from `--sensitivity` paths (same order), or None for each without."""
    from ramp.measure.sensitivity_table import SensitivityTable

    if paths and len(paths) != n_models:
        raise RampError("give one --sensitivity per --model, in the same order, or none")
    return [SensitivityTable.load(path) for path in paths] or [None] * n_models


def episode_items(model: "Model", ladder: tuple[str, ...], grouping: str = "tensor") -> list["Item"]:
    """The steps of an episode on `model`: its allocation items over `ladder`, grouped as `grouping` says
    (`ramp.envs.bit_allocation.GROUPINGS`)."""
    from ramp.allocate.problem import build_items
    from ramp.envs.bit_allocation import GROUPINGS

    if grouping not in GROUPINGS:
        raise RampError(f"unknown grouping {grouping!r}; choose one of {', '.join(GROUPINGS)}")
    return build_items(model, ladder, groups=list(GROUPINGS[grouping]))


def build_contexts(
    models: list["Model"],
    names: list[str],
    sensitivity: list["SensitivityTable | None"],
    calibration: "CalibrationSpec | None",
    ladder: tuple[str, ...],
    grouping: str,
    estimates: list["SensitivityTable"] | None = None,
) -> list["ModelContext"]:
    """One training context per model: its episode items, profiled embedding, optional shaping table, the
    damage estimate its observations read (if given), and a real KLD evaluator on the calibration windows
    when `calibration` is given (without one, episodes are scored by the tables alone)."""
    from ramp.envs.bit_allocation import ModelContext

    contexts = []
    for index, (model, name, table) in enumerate(zip(models, names, sensitivity)):
        embedding, _ = model_embedding(model)
        evaluate = KLDEvaluator(model, calibration) if calibration is not None else None
        contexts.append(ModelContext(name, model, embedding, evaluate, table, items=episode_items(model, ladder, grouping),
                                     estimate=estimates[index] if estimates else None))
    return contexts


def new_record(env: "BitAllocationEnv", models: list["Model"], config: SACConfig, seed: int,
               estimate: str | None = None) -> PolicyRecord:
    """The record of a policy about to be trained on `env` (whose observations read `estimate`, if any)."""
    from ramp.envs.bit_allocation import ACTION_MAPPING_VERSION, OBSERVATION_VERSION
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


def parse_overrides(pairs: list[str], cls: type, what: str) -> dict[str, Any]:
    """`KEY=VALUE` strings -> keyword arguments for dataclass `cls`, each value converted to the field's
    type (so `--reward over_weight=30` and `--sac net_arch=128,128` work)."""
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(cls)}
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in fields:
            raise RampError(f"--{what} {pair!r} is not KEY=VALUE with KEY one of {', '.join(fields)}")
        default = fields[key].default
        try:
            if isinstance(default, tuple):
                result[key] = tuple(int(part) for part in value.split(","))
            elif isinstance(default, str):  # ent_coef: "auto", "auto_0.1" or a number
                result[key] = value if value.startswith("auto") else float(value)
            else:
                result[key] = type(default)(value)
        except ValueError:
            raise RampError(f"--{what} {key} needs a {type(default).__name__}, got {value!r}") from None
    return result
