"""The observation layout, a contract between the environment and every policy file: what each entry of
an observation means, in terms that mean the same in any model (the embedding standardised within its
model, the step's share of the weights and its role, the estimate relative to the model's own average,
the budget context), and the version a policy file records.
"""
from __future__ import annotations

import numpy as np

from ramp.allocate.problem import tensor_damage
from ramp.measure.sensitivity_table import SensitivityTable
from ramp.models.model import ROLES

# Budget-context entries appended to the embedding; the observation is embedding + these, in this order.
CONTEXT_FEATURES = (
    "budget_spent_fraction",  # bytes placed so far / budget bytes
    "params_left_fraction",  # weights still to place (this step included) / all quantizable weights
    "bpw_left_over_8",  # bits per weight the remaining weights may average, divided by 8
    "ladder_position",  # where that average falls on this step's own ladder: 0 = lowest, 1 = highest
    "step_share",  # this step's weights / weights still to place
    "episode_progress",  # step index / number of steps
    "previous_action",  # the agent's last raw action, so it can keep its own pace
    "budget_bpw_over_8",  # the episode's budget in bits per weight, divided by 8
)

# Per-step entries after the embedding, the same in every model.
STEP_FEATURES = (
    "weight_share",  # the step's weights / all quantizable weights (a tied embedding can hold most of them)
    "log_weight_share",  # log10 of it: small tensors differ by decades
    *(f"role_{role}" for role in ROLES),  # one-hot role (a group's largest member's)
)
# With an estimate: per ladder format, log10 of the step's estimated damage per weight over the model's
# (how much more this step suffers than the model's average weight, at that format); then the estimate's own
# ILP choice for the bytes left, stated as the pace-centred action that would pick it (`index_action`):
# where the action's zero sits against an even spend.
ESTIMATE_SUGGESTION = "estimate_action"

# Observation entries are clipped here so the space is bounded (check_env, and SAC's scaling).
OBS_LIMIT = 5.0
# Bumped whenever what an observation holds changes: a policy trained on another layout reads numbers
# that mean something else, so loading refuses it (docs/DECISIONS.md lists the versions).
OBSERVATION_VERSION = 2


def normalize_embedding(matrix: np.ndarray) -> np.ndarray:
    """Per-model standardisation of the embedding columns.

    The features are scale-free, but their spread differs between models (one model's kurtosis range is
    another's outlier); an allocation trades tensors of one model against each other, so a policy that is
    to transfer zero-shot reads "this tensor is unusually X for its model".
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    std = matrix.std(axis=0)
    centred = matrix - matrix.mean(axis=0)
    scaled = np.divide(centred, std, out=np.zeros_like(centred), where=std > 1e-12)
    return np.clip(scaled, -OBS_LIMIT, OBS_LIMIT).astype(np.float32)


def relative_damage(estimate: SensitivityTable, specs: list[list], ladder: tuple[str, ...], params: np.ndarray) -> np.ndarray:
    """[steps, formats]: log10 of the step's estimated damage per weight over the model's, per ladder format."""
    from ramp.kernels.formats import resolve_format

    damage = np.array([[sum(tensor_damage(estimate, s.name, resolve_format(fmt, s.row_length).name, s.row_length) or 0.0
                            for s in group) for fmt in ladder] for group in specs])
    mean = damage.sum(axis=0) / params.sum()
    floor = 1e-6 * np.where(mean > 0, mean, 1.0)  # a format that writes the source back costs nothing
    return np.log10(np.maximum(damage / params[:, None], floor) / np.maximum(mean, floor))
