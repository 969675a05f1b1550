"""What each training model brings to the environment: its episode items, its profiled embedding, its
tables and, where asked, a real KLD evaluator."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ramp.errors import RampError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ramp.allocate.problem import Item
    from ramp.envs.bit_allocation import ModelContext
    from ramp.measure.calibration import CalibrationSpec
    from ramp.measure.sensitivity_table import SensitivityTable
    from ramp.models.model import Model


class KLDEvaluator:
    """The real quality of an allocation for the environment: the KLD oracle (`ramp.measure.oracle`) over calibration
    windows, run with every core while SAC's own updates keep to one (see `ramp.agent.sac.train`)."""

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
