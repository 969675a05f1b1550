"""Importance matrices as llama.cpp defines them, computed by ramp's forward and read or written in
llama.cpp's imatrix GGUF format, so that `llama-quantize --imatrix` and ramp use the same file.

`llama-imatrix` (tools/imatrix/imatrix.cpp) records, for every matrix multiplication by a `blk.*` weight
(and `output.weight` only with `--process-output`), the sum over all evaluated tokens of each input
column's squared activation (`<name>.in_sum2`, float32 [1, columns]) and the number of tokens summed
(`<name>.counts`, float32 [1, 1]). Token embeddings are a row lookup, not a multiplication, and get no
entry. It evaluates consecutive chunks of `chunk_size` tokens, each starting at BOS when the vocabulary
adds one: exactly ramp's calibration windows. `llama-quantize` then passes `in_sum2 / counts` (in float32)
to the quantizer as each row's per-column importance (`quant_weights`); `importance()` gives that vector.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np

from ramp.cache_entries import trusted_entry, write_cache_entry
from ramp.measure.calibration import IMATRIX, CalibrationSpec
from ramp.errors import RampError
from ramp.files import atomic_path, cache_dir
from ramp.models.model import ORIGIN_KEY, Model

if TYPE_CHECKING:  # torch loads only where the forward runs, so the CLI can read the defaults cheaply
    import torch

# llama-imatrix's default: output.weight is left out unless asked for with --process-output
IMATRIX_TENSOR_PREFIX = "blk."


@dataclass
class ImportanceMatrix:
    """Per weight tensor: summed squared input activations per column, and the number of tokens summed."""

    sums: dict[str, np.ndarray]  # name -> float64 [columns]
    counts: dict[str, int]
    chunk_count: int
    chunk_size: int
    datasets: list[str] = field(default_factory=list)
    # `Model.origin_sha256` of the model the activations were taken on (GGUF key ORIGIN_KEY); "" for a matrix
    # that records none, as llama-imatrix's own, which only its shapes can check
    origin_sha256: str = ""

    def importance(self, name: str) -> np.ndarray | None:
        """The vector llama-quantize hands the quantizer for `name`: in_sum2 / counts, in float32 (None
        when the tensor has no entry, which llama-quantize quantizes without importance)."""
        if name not in self.sums or self.counts[name] <= 0:
            return None
        return self.sums[name].astype(np.float32) / np.float32(self.counts[name])

    def importances(self, model: Model) -> dict[str, np.ndarray]:
        """`importance()` of every quantizable tensor of `model` that has an entry, checked against its rows and,
        where the matrix records it, against the checkpoint it was computed on (another model of the same shapes
        would otherwise pass)."""
        if self.origin_sha256 and self.origin_sha256 not in (model.origin_sha256, model.sha256):
            raise RampError(f"the importance matrix was computed on another model (sha256 {self.origin_sha256[:12]}), not "
                            f"this one ({model.origin_sha256[:12]}); run `ramp imatrix` on this one")
        result = {}
        for spec in model.quantizable:
            values = self.importance(spec.name)
            if values is None:
                continue
            if values.shape != (spec.row_length,):
                raise RampError(f"the importance matrix has {values.size} columns for {spec.name}, the model {spec.row_length}; "
                                "it was made for another model: run `ramp imatrix` on this one")
            result[spec.name] = values
        return result

    def content_sha256(self) -> str:
        """Identity of the importance values (what quantization depends on), for cache keys."""
        digest = hashlib.sha256()
        for name in sorted(self.sums):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(self.sums[name], dtype=np.float32).tobytes())
            digest.update(str(self.counts[name]).encode())
        return digest.hexdigest()

    def save(self, path: str | os.PathLike) -> Path:
        """Write llama.cpp's imatrix GGUF: general.type `imatrix`, the three imatrix.* keys, and the
        in_sum2/counts tensor pair per weight in sorted name order, as llama-imatrix writes them."""
        import gguf

        with atomic_path(path) as tmp:
            # the writer only stores `arch` (no general.architecture key is written): an imatrix names no model type
            writer = gguf.GGUFWriter(tmp, arch="")
            writer.add_string("general.type", "imatrix")
            writer.add_array("imatrix.datasets", list(self.datasets))
            writer.add_uint32("imatrix.chunk_count", self.chunk_count)
            writer.add_uint32("imatrix.chunk_size", self.chunk_size)
            if self.origin_sha256:
                writer.add_string(ORIGIN_KEY, self.origin_sha256)
            for name in sorted(self.sums):
                writer.add_tensor(f"{name}.in_sum2", self.sums[name].astype(np.float32).reshape(1, -1))
                writer.add_tensor(f"{name}.counts", np.array([[self.counts[name]]], dtype=np.float32))
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ImportanceMatrix":
        """Read an imatrix GGUF written by ramp or llama-imatrix (single-expert entries)."""
        from ramp.models.gguf import read_gguf

        reader = read_gguf(path)
        kind = reader.fields.get("general.type")
        if kind is None or kind.value != "imatrix":
            raise RampError(f"{path} is not an importance matrix (general.type is not `imatrix`); make one with `ramp imatrix`")
        for tensor in reader.tensors:  # a cut-short file keeps its tensor list: the data tells
            if tensor.data.nbytes != tensor.n_bytes:
                raise RampError(f"{path} is truncated: {tensor.name} runs past the end of the file; copy it again or "
                                "make it again with `ramp imatrix`")
        tensors = {tensor.name: np.asarray(tensor.data, dtype=np.float32) for tensor in reader.tensors}
        sums, counts = {}, {}
        for key, values in tensors.items():
            if not key.endswith(".in_sum2"):
                continue
            name = key.removesuffix(".in_sum2")
            count = tensors.get(f"{name}.counts")
            if count is None or count.size != 1:
                raise RampError(f"{path}: {name} has no single `.counts` entry (a mixture-of-experts imatrix?); "
                                "ramp reads dense models' importance matrices")
            sums[name] = values.reshape(-1).astype(np.float64)
            counts[name] = int(round(float(count.reshape(-1)[0])))
        if not sums:
            raise RampError(f"{path} holds no `.in_sum2` tensors; it is not a GGUF importance matrix")

        def field_value(key: str, default):
            entry = reader.fields.get(key)
            return default if entry is None else entry.value

        return cls(sums, counts, int(field_value("imatrix.chunk_count", 0)), int(field_value("imatrix.chunk_size", 0)),
                   list(field_value("imatrix.datasets", [])), str(field_value(ORIGIN_KEY, "")))


def compute_imatrix(model: Model, tokens: "torch.Tensor", dataset: str = "", device: str = "cpu",
                    batch_windows: int = 1, progress: bool = True) -> ImportanceMatrix:
    """llama-imatrix's statistics of `model` over calibration windows `tokens` [windows, window]."""
    import torch
    from tqdm import tqdm

    from ramp.measure.forward import Forward

    if tokens.ndim != 2 or tokens.shape[0] == 0:
        raise RampError("an importance matrix needs calibration windows shaped [windows, tokens]")
    forward = Forward(model, device)
    sums: dict[str, "torch.Tensor"] = {}
    counts: dict[str, int] = {}

    def capture(name: str, x: "torch.Tensor") -> None:
        if not name.startswith(IMATRIX_TENSOR_PREFIX):
            return
        flat = x.reshape(-1, x.shape[-1]).double()
        sums[name] = sums.get(name, 0) + flat.square().sum(0)
        counts[name] = counts.get(name, 0) + flat.shape[0]

    blocks = tqdm(total=model.n_blocks, desc="imatrix", unit="block", disable=not progress, leave=False)

    def capture_and_count(name: str, x: "torch.Tensor") -> None:
        capture(name, x)
        if name.endswith(".ffn_down.weight") and counts[name] == tokens.numel():  # the block's last linear, all batches
            blocks.update()

    with blocks:
        forward.observe(list(torch.split(tokens, batch_windows)), capture_and_count)
    return ImportanceMatrix({name: value.cpu().numpy() for name, value in sums.items()}, counts,
                            int(tokens.shape[0]), int(tokens.shape[1]), [dataset] if dataset else [], model.origin_sha256)


def cached_imatrix(model: Model, calibration: CalibrationSpec = IMATRIX, progress: bool = True) -> tuple[ImportanceMatrix, Path]:
    """`compute_imatrix` on the spec's windows through the disk cache, keyed by the model's content and the
    tokens: (matrix, file). Its `datasets` names the text, its chunks the windows: the spec, in llama.cpp's terms."""
    from ramp.measure.forward import tokens_sha256

    if not model.sha256:
        raise RampError("an importance matrix is cached by the model's file hash; load the model from a file")
    tokens = calibration.windows(model)
    key = hashlib.sha256(f"{model.sha256}|{tokens_sha256(tokens)}|{model.fold_alpha}".encode()).hexdigest()[:32]
    path = cache_dir() / "imatrix" / f"{key}.gguf"
    if trusted_entry(path, validate=_readable):
        return ImportanceMatrix.load(path), path
    matrix = compute_imatrix(model, tokens, f"{calibration.text} calibration half", progress=progress)
    if not write_cache_entry(path, matrix.save):  # an unwritable cache: the callers still need a file
        import tempfile

        path = matrix.save(Path(tempfile.mkdtemp(prefix="ramp-imatrix-")) / "imatrix.gguf")
    return matrix, path


def _readable(path: Path) -> bool:
    try:
        ImportanceMatrix.load(path)
        return True
    except RampError:
        return False
