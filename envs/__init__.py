"""Gymnasium environments of ramp; importing this package registers `ramp/BitAllocation-v0`.

The environment (`bit_allocation`) and its three contracts with every policy file, each in a module of its
own with its version: the action mapping, the observation layout and the reward."""
import gymnasium as gym

from ramp.envs.bit_allocation import BitAllocationEnv, ModelContext
from ramp.envs.reward import RewardConfig

ENV_ID = "ramp/BitAllocation-v0"

if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="ramp.envs.bit_allocation:BitAllocationEnv")

__all__ = ["ENV_ID", "BitAllocationEnv", "ModelContext", "RewardConfig"]
