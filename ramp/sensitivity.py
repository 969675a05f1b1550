"""Per-(tensor, format) sensitivity: the mean KLD vs the unquantized model when only that tensor is
quantized, every other tensor at full precision, measured with the torch forward and llama.cpp's own
dequantized weights (ramp.kernels.DequantCache).

Formats that llama.cpp resolves to the same real format for a tensor's row length (Q2_K, Q3_K -> Q4_0 on
576-wide rows) are measured once and the value is copied. Results are cached on disk under
`cache_dir()/sensitivity/`, keyed by model hash, calibration-token hash and formats; measurements already
done survive an interruption (the partial file is rewritten as the sweep goes).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np
import torch

from ramp.files import atomic_output, cache_dir
from ramp.forward import Forward, KLDReference, tokens_sha256
from ramp.kernels.formats import get_format, resolve_format
from ramp.model import Model
from ramp.sensitivity_table import SensitivityTable

if TYPE_CHECKING:
    from ramp.imatrix import ImportanceMatrix

DEFAULT_FORMATS = ("Q2_K", "Q3_K", "Q4_0", "Q4_K", "Q5_K", "Q6_K", "Q8_0")
# Cost is linear in tokens: SmolLM2's default sweep (934 forwards of 512 tokens) took 2650 s wall, about
# 35 CPU-minutes, on a 2-core VM shared with other jobs.
DEFAULT_TOKENS = 512
DEFAULT_WINDOW = 256
_SAVE_EVERY = 16


def table_cache_path(model: Model, calibration_sha: str, formats: list[str], backend: str, imatrix_sha: str | None,
                     estimate: str | None = None) -> Path | None:
    """Where a table for these inputs is cached; `estimate` names a `ramp.sensitivity_estimates` table (None:
    the measured sweep's)."""
    if not model.sha256:
        return None  # a model built in memory has no identity to key a cache by
    # tables measured before importance matrices (or estimates) existed keep their keys
    importance = f"|imatrix {imatrix_sha}" if imatrix_sha else ""
    kind = f"|estimate {estimate}" if estimate else ""
    key = hashlib.sha256(f"{model.sha256}|{calibration_sha}|{','.join(formats)}|{backend}{importance}{kind}".encode()).hexdigest()[:32]
    return cache_dir() / "sensitivity" / f"{key}.json"


def measure_sensitivity(
    model: Model,
    tokens: torch.Tensor | None = None,
    formats: list[str] | tuple[str, ...] = DEFAULT_FORMATS,
    backend: str = "ggml",  # libggml quantizes K-quants 20-50x faster than the torch port, bytes identical
    device: str = "cpu",
    progress: bool = True,
    use_cache: bool = True,
    imatrix: "ImportanceMatrix | None" = None,
) -> SensitivityTable:
    """The sensitivity table of `model` on calibration windows `tokens` [windows, window] (default:
    DEFAULT_TOKENS calibration tokens in windows of DEFAULT_WINDOW). With `imatrix`, every tensor that has
    an entry is quantized with its importance, as `llama-quantize --imatrix` will quantize it."""
    from tqdm import tqdm

    from ramp.forward import calibration_tokens
    from ramp.kernels import DequantCache

    if tokens is None:
        tokens = calibration_tokens(model, DEFAULT_TOKENS, DEFAULT_WINDOW)
    formats = [get_format(name).name for name in formats]
    calibration_sha = tokens_sha256(tokens)
    imatrix_sha = imatrix.content_sha256() if imatrix is not None else None
    path = table_cache_path(model, calibration_sha, formats, backend, imatrix_sha) if use_cache else None
    if path is not None and path.is_file():
        return SensitivityTable.load(path)
    partial_path = path.with_suffix(".partial.json") if path is not None else None
    done: dict[str, float] = json.loads(partial_path.read_text()) if partial_path is not None and partial_path.is_file() else {}

    # (tensor, real format) pairs to measure: requested formats collapse to what llama.cpp writes
    jobs = list(dict.fromkeys(
        (spec.name, resolve_format(fmt, spec.row_length).name) for spec in model.quantizable for fmt in formats
    ))
    todo = [job for job in jobs if f"{job[0]}|{job[1]}" not in done]
    if todo:
        forward = Forward(model, device=device)
        reference = KLDReference(forward, tokens)
        # each (tensor, format) is used once: keep none in memory, the disk cache keeps the packed bytes
        importance = imatrix.importances(model) if imatrix is not None else None
        weights = DequantCache(model, backend=backend, importance=importance, device=device, max_memory_bytes=0)
        bar = tqdm(todo, desc="sensitivity", unit="forward", disable=not progress)
        for count, (name, real) in enumerate(bar, 1):
            bar.set_postfix_str(f"{name} {real}", refresh=False)
            done[f"{name}|{real}"] = reference.kld({name: weights.get(name, real)})
            if partial_path is not None and (count % _SAVE_EVERY == 0 or count == len(todo)):
                partial_path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_output(partial_path, "w") as handle:
                    json.dump(done, handle)
    damage = np.array([
        [done[f"{spec.name}|{resolve_format(fmt, spec.row_length).name}"] for fmt in formats]
        for spec in model.quantizable
    ])
    table = SensitivityTable(
        [spec.name for spec in model.quantizable], formats, damage, "kld", model.sha256, calibration_sha,
        {"n_tokens": int(tokens.numel()), "window": int(tokens.shape[1]), "backend": backend,
         "n_measured": len(jobs), "imatrix": imatrix_sha},
    )
    if path is not None:
        table.save(path)
        partial_path.unlink(missing_ok=True)
    return table


def plot_heatmap(table: SensitivityTable, model: Model, path: str | Path) -> None:
    """PNG of log10 damage: one row per block, one column group per role, one column per format inside it.

    token_embd and output have no block; they are drawn as an extra top row, in their own role columns.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ramp.model import ROLES

    roles = [role for role in ROLES if any(spec.role == role for spec in model.quantizable)]
    n_formats = len(table.formats)
    grid = np.full((model.n_blocks + 1, len(roles) * n_formats), np.nan)
    for spec, damage in zip(model.quantizable, table.damage):
        row = 0 if spec.block is None else spec.block + 1
        column = roles.index(spec.role) * n_formats
        grid[row, column : column + n_formats] = np.log10(np.maximum(damage, 1e-9))
    figure, axes = plt.subplots(figsize=(max(8, 0.32 * grid.shape[1] + 2), max(5, 0.22 * grid.shape[0] + 2)))
    image = axes.imshow(grid, aspect="auto", cmap="magma", interpolation="nearest")
    axes.set_xticks(range(grid.shape[1]), [f"{fmt}" for _ in roles for fmt in table.formats], rotation=90, fontsize=6)
    axes.set_yticks(range(grid.shape[0]), ["embd/out"] + [str(b) for b in range(model.n_blocks)], fontsize=6)
    for index, role in enumerate(roles):
        axes.text(index * n_formats + (n_formats - 1) / 2, 1.01, role, ha="center", va="bottom", fontsize=8,
                  transform=axes.get_xaxis_transform())
        if index:
            axes.axvline(index * n_formats - 0.5, color="white", linewidth=1)
    axes.set_ylabel("block")
    figure.colorbar(image, ax=axes, label="log10 KLD (nats), only this tensor quantized")
    figure.suptitle(f"sensitivity, {table.extra.get('n_tokens', '?')} calibration tokens", y=0.995)
    figure.tight_layout()
    with atomic_output(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110)
    plt.close(figure)


def summary(table: SensitivityTable, model: Model, top: int = 8) -> str:
    """A few lines: most sensitive tensors at the lowest format, mean damage per role and format."""
    lowest = table.damage[:, 0]
    lines = [f"most sensitive at {table.formats[0]} (KLD nats, after llama.cpp's fallback):"]
    for index in np.argsort(-lowest)[:top]:
        lines.append(f"  {table.tensors[index]:<28} {lowest[index]:.3g}")
    lines.append("mean KLD per role: " + " ".join(f"{fmt:>8}" for fmt in table.formats))
    roles = dict.fromkeys(spec.role for spec in model.quantizable)
    for role in roles:
        rows = [i for i, spec in enumerate(model.quantizable) if spec.role == role]
        lines.append(f"  {role:<16}" + " ".join(f"{v:8.2g}" for v in table.damage[rows].mean(0)))
    return "\n".join(lines)
