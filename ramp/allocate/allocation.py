"""An allocation: which format each quantizable tensor gets. The small JSON file that `ramp allocate`
writes and `ramp export` consumes, also writable as llama.cpp's `--tensor-type-file`."""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ramp.errors import RampError
from ramp.files import atomic_output
from ramp.kernels.formats import get_format, tensor_bytes
from ramp.models.model import Model

if TYPE_CHECKING:
    from ramp.measure.imatrix import ImportanceMatrix


@dataclass
class Allocation:
    formats: dict[str, str]  # GGUF tensor name -> format name
    method: str
    budget: str
    model_sha256: str
    extra: dict = field(default_factory=dict)  # method-specific facts (solver status, predicted damage, ...)
    # Scale Folding alpha of the model it was made for (None: unfolded). Checked on its own: folding keeps
    # every tensor name, and the folded model's sha256 hashes scales from a float forward pass, which need
    # not repeat bit for bit on another machine, so comparing hashes would refuse good pairs there.
    fold_alpha: float | None = None
    # `Model.origin_sha256` of the model it was made for: the checkpoint, the same for its references and
    # folds; "" in files written before it was recorded.
    origin_sha256: str = ""

    def data_bytes(self, model: Model) -> int:
        """Bytes of the quantizable tensors' data as written (llama.cpp's fallbacks included)."""
        return sum(tensor_bytes(spec.shape, self.formats[spec.name]) for spec in model.quantizable)

    def bits_per_weight(self, model: Model) -> float:
        return 8.0 * self.data_bytes(model) / model.n_quantizable_params

    def check_fold(self, fold_alpha: float | None) -> None:
        """Refuse a model folded differently from the one allocated for; cheap, so commands call it before loading."""
        if fold_alpha == self.fold_alpha:
            return
        if self.fold_alpha is None:
            raise RampError(f"allocation was made for the unfolded model, not one Scale-Folded with alpha {fold_alpha}; "
                            f"drop --fold or re-run `ramp allocate --fold {fold_alpha}`")
        asked = "the unfolded model" if fold_alpha is None else f"alpha {fold_alpha}"
        raise RampError(f"allocation was made for the model Scale-Folded with alpha {self.fold_alpha}, not {asked}; "
                        f"pass --fold {self.fold_alpha} or re-run `ramp allocate` with the --fold you want")

    def check_imatrix(self, imatrix: "ImportanceMatrix | None") -> None:
        """Refuse to quantize with another importance matrix than the one the allocation's damage was measured
        with: its estimates hold for those quantized weights only. An allocation made without damage
        estimates (uniform, no table) takes any."""
        if "imatrix" not in self.extra:
            return
        recorded = self.extra["imatrix"]
        given = imatrix.content_sha256() if imatrix is not None else None
        if recorded == given:
            return
        if recorded is None:
            raise RampError("allocation was made without an importance matrix; drop --imatrix or re-run `ramp allocate --imatrix FILE`")
        if given is None:
            raise RampError("allocation was made with an importance matrix; pass the same file with --imatrix")
        raise RampError("allocation was made with another importance matrix than --imatrix; pass that one or re-allocate with this one")

    def check_model(self, model: Model) -> None:
        """Refuse another checkpoint with the same tensor names (a fine-tune, another seed): the formats were
        chosen for the recorded one's damage. Its references and folds are the same checkpoint."""
        recorded = self.origin_sha256 or (self.model_sha256 if self.fold_alpha is None else "")
        if recorded and recorded not in (model.origin_sha256, model.sha256):
            source = model.source_path or "the model"
            raise RampError(f"allocation was made for another model (sha256 {recorded[:12]}), not {source} "
                            f"(sha256 {model.origin_sha256[:12]}); re-run `ramp allocate` for this one")

    def check_matches(self, model: Model) -> None:
        self.check_fold(model.fold_alpha)
        self.check_model(model)
        missing = [spec.name for spec in model.quantizable if spec.name not in self.formats]
        unknown = sorted(set(self.formats) - {spec.name for spec in model.quantizable})
        kept = [name for name in unknown if name in model.tensors]
        if kept:  # the model has it, but as a tensor no format applies to: not a sign of another model
            raise RampError(f"allocation gives {kept[0]} a format, but ramp does not quantize it (norms, biases and other "
                            "1-D tensors stay F32 in every file); remove it from the allocation")
        if missing or unknown:
            problem = f"lacks {missing[0]}" if missing else f"names {unknown[0]}, which the model does not have"
            raise RampError(f"allocation {problem}; it was made for another model, re-run `ramp allocate` for this one")
        for name in self.formats.values():
            get_format(name)

    def save(self, path: str | Path) -> None:
        with atomic_output(path, "w") as handle:
            json.dump(asdict(self), handle, indent=1)
            handle.write("\n")

    def save_tensor_type_file(self, path: str | Path) -> None:
        """One `regex=type` line per tensor, the format of llama-quantize's --tensor-type-file."""
        with atomic_output(path, "w") as handle:
            for name, fmt in self.formats.items():
                handle.write(f"^{re.escape(name)}$={fmt.lower()}\n")

    @classmethod
    def load(cls, path: str | Path) -> "Allocation":
        from ramp.files import load_json_object

        def build(data: dict) -> "Allocation":
            allocation = cls(**data)
            allocation._check_fields()
            return allocation

        return load_json_object(path, "allocation", "create it with `ramp allocate`", build)

    def _check_fields(self) -> None:
        """A file read from disk holds what the fields say (TypeError otherwise): a mapping of tensor names to
        format names ramp knows (RampError naming the first unknown one), text where text is due."""
        if not isinstance(self.formats, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in self.formats.items()):
            raise TypeError("`formats` must map tensor names to format names such as \"Q4_K\"")
        if not all(isinstance(v, str) for v in (self.method, self.budget, self.model_sha256, self.origin_sha256)):
            raise TypeError("`method`, `budget` and the model hashes must be text")
        if not isinstance(self.extra, dict) or not (self.fold_alpha is None or isinstance(self.fold_alpha, (int, float))):
            raise TypeError("`extra` must be an object and `fold_alpha` a number or null")
        for fmt in self.formats.values():
            get_format(fmt)
