"""The policy file: Stable-Baselines3's zip with one extra member, `ramp_policy.json`, recording what the
policy was trained on (models, budgets, format ladder, grouping, feature version and embedding size).
A policy only makes sense for observations built the same way, so loading checks those records.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ramp.errors import RampError
from ramp.files import atomic_path

if TYPE_CHECKING:
    from stable_baselines3 import SAC
    from stable_baselines3.common.base_class import BaseAlgorithm

    from ramp.envs.bit_allocation import BitAllocationEnv

POLICY_RECORD = "ramp_policy.json"


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
    action_mapping: int = 1  # ramp.envs.action_mapping.ACTION_MAPPING_VERSION it was trained under; files before it had 1
    observation_version: int = 1  # ramp.envs.observation.OBSERVATION_VERSION; files before it had 1
    estimate: str | None = None  # the damage estimate the observation reads (`ramp.measure.estimates`), if any

    def check_compatible(self, embedding_size: int, formats: list[str], feature_version: int, path: str | Path) -> None:
        from ramp.envs.action_mapping import ACTION_MAPPING_VERSION
        from ramp.envs.observation import OBSERVATION_VERSION

        if self.observation_version != OBSERVATION_VERSION:
            raise RampError(
                f"policy {path} reads observation layout {self.observation_version}, this ramp builds layout "
                f"{OBSERVATION_VERSION} (see ramp.envs.observation); retrain it with `ramp train`"
            )
        if self.action_mapping != ACTION_MAPPING_VERSION:
            raise RampError(
                f"policy {path} was trained under action mapping {self.action_mapping}, this ramp uses "
                f"{ACTION_MAPPING_VERSION} (see ramp.envs.action_mapping.action_index); retrain it with `ramp train`"
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


def save_policy(sac: "BaseAlgorithm", path: str | Path, record: PolicyRecord) -> None:
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
