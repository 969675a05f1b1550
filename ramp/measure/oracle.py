"""The one KLD oracle every measured damage in ramp comes from: the sensitivity sweep, the quadratic allocator's
pair measure and the agent's episode-end evaluator all ask it, so their numbers compare.

`KLDOracle(model, calibration, imatrix)({tensor: format, ...})` is the mean per-token KLD (nats) of the model
with exactly those tensors replaced by the weights llama.cpp computes with after writing them in those formats
(libggml's bytes, quantized with the importance matrix as `llama-quantize --imatrix` does), against the
unquantized model, on the calibration windows. libggml is the exact backend and the fastest one: the torch
port writes the same bytes but quantizes K-quants 20-50x slower on CPU (docs/BENCHMARKS.md, Kernels).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from ramp.measure.calibration import CalibrationSpec, calibration_tokens

if TYPE_CHECKING:
    import torch

    from ramp.measure.imatrix import ImportanceMatrix
    from ramp.models.model import Model

BACKEND = "ggml"


class KLDOracle:
    """Mean KLD of quantized variants of one model against the model itself, on fixed calibration windows.

    The unquantized log-probabilities are computed once. With `checkpoint_blocks` the hidden states entering
    every block are kept too, so a variant confined to late blocks re-runs only those (the sweep and the pair
    measure); an evaluator of whole allocations, which always touch token_embd, has no use for them.
    `keep_weights` holds dequantized tensors in memory for variants that come back (allocations); a sweep
    uses each (tensor, format) once and leaves them to the disk cache."""

    def __init__(
        self,
        model: "Model",
        calibration: "CalibrationSpec | torch.Tensor",
        imatrix: "ImportanceMatrix | None" = None,
        *,
        device: str = "cpu",
        checkpoint_blocks: bool = True,
        keep_weights: bool = True,
    ) -> None:
        from ramp.measure.forward import Forward, KLDReference
        from ramp.kernels import DequantCache

        tokens, self.calibration = calibration_tokens(model, calibration)
        importance = imatrix.importances(model) if imatrix is not None else None
        self.imatrix_sha256 = imatrix.content_sha256() if imatrix is not None else None
        self.weights = DequantCache(model, backend=BACKEND, importance=importance, device=device,
                                    **({} if keep_weights else {"max_memory_bytes": 0}))
        self.reference = KLDReference(Forward(model, device), tokens, checkpoint_blocks=checkpoint_blocks)
        self.n_tokens = self.reference.n_tokens

    @property
    def n_windows(self) -> int:
        return sum(len(batch) for batch in self.reference.batches)

    def __call__(self, formats: Mapping[str, str], windows: int | None = None) -> float:
        """Mean KLD of the variant on the first `windows` calibration windows (all when None)."""
        return self.reference.kld({name: self.weights.get(name, fmt) for name, fmt in formats.items()}, windows=windows)
