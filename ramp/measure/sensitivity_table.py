"""The measured damage of quantizing each tensor alone in each format: the table the baselines optimise
over and the reward diagnostics read."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ramp.errors import RampError
from ramp.files import atomic_output

# A measured increase of KLD is never below zero; float rounding of a near-zero one can be, by this much.
NEGATIVE_TOLERANCE = 1e-6


@dataclass
class SensitivityTable:
    tensors: list[str]  # GGUF tensor names, model order
    formats: list[str]  # format names, columns of `damage`
    damage: np.ndarray  # [len(tensors), len(formats)]: increase of the measure when only this tensor is quantized
    measure: str = "kld"  # what `damage` is the increase of (mean KLD vs unquantized logits, in nats)
    model_sha256: str = ""
    calibration_sha256: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Every table, read or computed, is checked here: names are strings, formats are known, and every
        damage is a finite number not below zero (a NaN would look free to a minimiser, a negative one
        better than free)."""
        from ramp.kernels.formats import get_format

        if not all(isinstance(name, str) for name in [*self.tensors, *self.formats]):
            raise RampError("sensitivity table names must be strings; re-run `ramp profile`")
        for fmt in self.formats:
            get_format(fmt)
        if not isinstance(self.damage, np.ndarray):  # read from JSON: numbers only, not "0.1" or true
            cells = np.asarray(self.damage, dtype=object).ravel()
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in cells):
                raise RampError("sensitivity table damage must be a list of rows of numbers; re-run `ramp profile`")
        try:
            self.damage = np.asarray(self.damage, dtype=np.float64)
        except (TypeError, ValueError):
            raise RampError("sensitivity table damage must be a list of rows of numbers; re-run `ramp profile`") from None
        if self.damage.shape != (len(self.tensors), len(self.formats)):
            raise RampError(
                f"sensitivity table shape {self.damage.shape} does not match {len(self.tensors)} tensors x "
                f"{len(self.formats)} formats; re-run `ramp profile`"
            )
        bad = ~np.isfinite(self.damage) | (self.damage < -NEGATIVE_TOLERANCE)
        if bad.any():
            row, column = (int(i) for i in np.argwhere(bad)[0])
            raise RampError(f"sensitivity table damage of {self.tensors[row]} as {self.formats[column]} is "
                            f"{self.damage[row, column]}, not a finite number >= 0; re-run `ramp profile`")

    def save(self, path: str | Path) -> None:
        payload = {
            "tensors": self.tensors,
            "formats": self.formats,
            "damage": self.damage.tolist(),
            "measure": self.measure,
            "model_sha256": self.model_sha256,
            "calibration_sha256": self.calibration_sha256,
            "extra": self.extra,
        }
        with atomic_output(path, "w") as handle:
            json.dump(payload, handle)

    @classmethod
    def load(cls, path: str | Path) -> "SensitivityTable":
        from ramp.files import load_json_object

        return load_json_object(path, "sensitivity table", "create it with `ramp profile`", lambda data: cls(**data))
