"""Dequantized weights per (tensor, format), so evaluating another allocation never re-quantizes.

Quantizing a K-quant is the expensive step (seconds per large tensor); dequantizing is cheap. The disk cache
therefore stores llama.cpp's packed bytes (4-8x smaller than float32), and memory holds float32 tensors
under a byte budget with least-recently-used eviction.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ramp.cache_entries import trusted_entry, write_cache_entry
from ramp.errors import RampError
from ramp.files import cache_dir
from ramp.kernels.codec import BACKENDS, dequantize, quantize
from ramp.kernels.formats import resolve_format, tensor_bytes
from ramp.models.model import Model
from ramp.models.store import row_bands, tensor_rows


class DequantCache:
    """`get(tensor, fmt)`: the float32 weights llama.cpp would compute with, memoised in memory and on disk.

    Disk entries live under `ramp.files.cache_dir()/dequant/<model sha256>/` and are keyed by tensor, the
    format llama.cpp really writes (after its row-length fallback), backend and a hash of the tensor's
    importance vector, and sealed (`ramp.cache_entries`): an entry whose bytes changed is quantized again,
    never dequantized into NaN weights. Returned tensors are shared: callers must not modify them in place.
    """

    def __init__(
        self,
        model: Model,
        backend: str = "torch",
        importance: Mapping[str, np.ndarray] | None = None,
        device: str | torch.device = "cpu",
        max_memory_bytes: int = 4 << 30,
        use_disk: bool = True,
    ) -> None:
        if backend not in BACKENDS:
            raise RampError(f"unknown kernel backend {backend!r}; use one of {', '.join(BACKENDS)}")
        self.model = model
        self.backend = backend
        self.importance = dict(importance or {})
        self.device = torch.device(device)
        self.max_memory_bytes = max_memory_bytes
        # Without a content hash two different models could share entries, so such models stay in memory only.
        self.disk_root: Path | None = (
            cache_dir() / "dequant" / model.sha256 if use_disk and model.sha256 else None
        )
        self._memory: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self._memory_bytes = 0
        self.hits = self.disk_hits = self.misses = 0

    def get(self, tensor_name: str, fmt: str) -> torch.Tensor:
        spec = self.model.spec(tensor_name)
        resolved = resolve_format(fmt, spec.row_length).name
        key = (tensor_name, resolved)
        if (cached := self._memory.get(key)) is not None:
            self._memory.move_to_end(key)
            self.hits += 1
            return cached
        result = torch.from_numpy(self.written(tensor_name, resolved)).to(self.device)
        self._remember(key, result)
        return result

    def written(self, tensor_name: str, fmt: str) -> np.ndarray:
        """The float32 weights as `fmt` writes them, through the disk cache only (not the memory one): safe to
        call from several threads at once, for different tensors or formats."""
        spec = self.model.spec(tensor_name)
        resolved = resolve_format(fmt, spec.row_length).name
        if resolved == "F32":
            return self.model.tensors[tensor_name]
        return dequantize(self.packed(tensor_name, resolved), resolved, spec.shape, self.backend)

    def packed(self, tensor_name: str, fmt: str) -> np.ndarray:
        """llama.cpp's packed bytes of the tensor as `fmt` writes it (after the row-length fallback): from the
        disk cache when an earlier quantization left them there, else quantized now and kept. The export
        writes these very bytes, so a file never costs a second quantization of what was measured."""
        spec = self.model.spec(tensor_name)
        resolved = resolve_format(fmt, spec.row_length).name
        importance = self.importance.get(tensor_name)
        path = self._disk_path(tensor_name, resolved, importance)
        # unsealed entries (written before seals) are kept when their size is right
        if path is not None and trusted_entry(path, lambda entry: entry.stat().st_size == tensor_bytes(spec.shape, resolved)):
            self.disk_hits += 1
            return np.fromfile(path, dtype=np.uint8)
        self.misses += 1
        # rows quantize independently: a tensor larger than the weight cache is quantized a band of rows at a time
        packed = np.concatenate([
            np.asarray(quantize(tensor_rows(self.model.tensors, tensor_name, start, stop), resolved, importance, self.backend,
                                name=tensor_name), dtype=np.uint8).reshape(-1)
            for start, stop in row_bands(self.model.tensors, tensor_name)])
        if path is not None:
            write_cache_entry(path, packed.tofile)
        return packed

    def _disk_path(self, tensor_name: str, fmt: str, importance: np.ndarray | None) -> Path | None:
        if self.disk_root is None:
            return None
        tag = "none" if importance is None else hashlib.sha256(
            np.ascontiguousarray(importance, dtype=np.float32).tobytes()
        ).hexdigest()[:16]
        return self.disk_root / f"{tensor_name}.{fmt}.{self.backend}.{tag}.bin"

    def _remember(self, key: tuple[str, str], value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        while self._memory and self._memory_bytes + size > self.max_memory_bytes:
            _, evicted = self._memory.popitem(last=False)
            self._memory_bytes -= evicted.numel() * evicted.element_size()
        self._memory[key] = value
        self._memory_bytes += size
