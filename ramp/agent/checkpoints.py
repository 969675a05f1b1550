"""Training checkpoints: policy files named by their step count beside their replay buffers, the latest of
them to resume from, and the Ctrl-C that writes one."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from stable_baselines3.common.callbacks import BaseCallback

from ramp.agent.policy_file import PolicyRecord, save_policy
from ramp.files import atomic_path

if TYPE_CHECKING:
    from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

REPLAY_SUFFIX = ".replay.pkl"


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


def save_checkpoint(sac: "OffPolicyAlgorithm", directory: Path, record: PolicyRecord) -> Path:
    """A policy file (record included, so `ramp train --resume` can check it) and its replay buffer."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step_{sac.num_timesteps}.zip"
    save_policy(sac, path, record)
    # The replay buffer is what lets a resumed run keep learning from past episodes instead of starting cold.
    with atomic_path(replay_path(path)) as tmp:
        sac.save_replay_buffer(tmp)
    return path


class Checkpoints(BaseCallback):
    """A checkpoint every `every` environment steps (counted over resumes, so the names stay multiples).

    Not SB3's CheckpointCallback: that one writes its zips in place (a Ctrl-C mid-write leaves a broken
    latest checkpoint) and without the policy record that resuming checks."""

    def __init__(self, directory: Path, every: int, record: PolicyRecord) -> None:
        super().__init__()
        self.directory, self.every, self.record = directory, every, record

    def _on_step(self) -> bool:
        if self.every > 0 and self.num_timesteps % self.every == 0:
            save_checkpoint(self.model, self.directory, self.record)  # type: ignore[arg-type]  # train() gives it SAC
        return True
