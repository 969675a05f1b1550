"""The measured damage of quantizing each tensor alone in each format: the table the baselines optimise
over and the reward diagnostics read."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ramp.errors import RampError
from ramp.files import atomic_output


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
        self.damage = np.asarray(self.damage, dtype=np.float64)
        if self.damage.shape != (len(self.tensors), len(self.formats)):
            raise RampError(
                f"sensitivity table shape {self.damage.shape} does not match {len(self.tensors)} tensors x "
                f"{len(self.formats)} formats; re-run `ramp profile`"
            )

    def of(self, tensor: str, fmt: str) -> float:
        return float(self.damage[self.tensors.index(tensor), self.formats.index(fmt)])

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
        try:
            return cls(**json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise RampError(f"sensitivity table {path} does not exist; create it with `ramp profile`") from None
        except (json.JSONDecodeError, TypeError) as exc:
            raise RampError(f"{path} is not a ramp sensitivity table ({exc}); re-run `ramp profile`") from None
