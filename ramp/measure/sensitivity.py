"""Per-(tensor, format) sensitivity: the mean KLD vs the unquantized model when only that tensor is
quantized, every other tensor at full precision, measured by the KLD oracle (`ramp.measure.oracle`).

Formats that llama.cpp resolves to the same real format for a tensor's row length (Q2_K, Q3_K -> Q4_0 on
576-wide rows) are measured once and the value is copied. Results are cached on disk under
`cache_dir()/sensitivity/`, keyed by model hash, calibration-token hash and formats; measurements already
done survive an interruption (the partial file is rewritten as the sweep goes).
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np

from ramp.cache_entries import discard_entry, remove_entry, trusted_entry, write_cache_entry
from ramp.measure.calibration import SENSITIVITY, CalibrationSpec, calibration_tokens, recorded_spec
from ramp.errors import RampError
from ramp.files import atomic_output, cache_dir
from ramp.measure.forward import tokens_sha256
from ramp.kernels.formats import get_format, resolve_format
from ramp.measure.ladder import DEFAULT_LADDER
from ramp.models.model import Model
from ramp.measure.oracle import BACKEND, KLDOracle
from ramp.measure.sensitivity_table import NEGATIVE_TOLERANCE, SensitivityTable

if TYPE_CHECKING:
    import torch

    from ramp.measure.imatrix import ImportanceMatrix

_SAVE_EVERY = 16


def table_cache_path(model: Model, calibration_sha: str, formats: list[str], imatrix_sha: str | None,
                     estimate: str | None = None) -> Path | None:
    """Where a table for these inputs is cached; `estimate` names a `ramp.measure.estimates` table (None:
    the measured sweep's)."""
    if not model.sha256:
        return None  # a model built in memory has no identity to key a cache by
    # tables measured before importance matrices (or estimates) existed keep their keys; so do all tables
    # from before the oracle fixed the kernel backend, which was libggml's for every one of them
    importance = f"|imatrix {imatrix_sha}" if imatrix_sha else ""
    kind = f"|estimate {estimate}" if estimate else ""
    key = hashlib.sha256(f"{model.sha256}|{calibration_sha}|{','.join(formats)}|{BACKEND}{importance}{kind}".encode()).hexdigest()[:32]
    return cache_dir() / "sensitivity" / f"{key}.json"


def _readable_table(path: Path, model: Model, formats: list[str]) -> SensitivityTable | None:
    try:
        table = SensitivityTable.load(path)
    except RampError:
        return None
    return table if table.tensors == [spec.name for spec in model.quantizable] and table.formats == formats else None


def cached_table(path: Path | None, model: Model, formats: list[str], calibration: dict) -> SensitivityTable | None:
    """The table cached at `path` when its entry can be trusted (`ramp.cache_entries`) and it is a valid
    table of this model's tensors in these formats; else None, with a damaged entry removed so that the
    caller measures it again instead of failing on it forever. `calibration` is the record of the tokens the
    key was made from, given to tables cached before they recorded it."""
    if path is None or not trusted_entry(path, lambda entry: _readable_table(entry, model, formats) is not None):
        return None
    table = _readable_table(path, model, formats)
    if table is None:  # sealed but not valid: written by an older ramp that checked less
        discard_entry(path)
        return None
    table.extra.setdefault("calibration", calibration)
    return table


def cache_table(path: Path | None, table: SensitivityTable) -> None:
    """Cache a computed table (sealed); a cache that cannot be written only stops caching."""
    if path is not None:
        write_cache_entry(path, table.save)


def _measured(value: object) -> bool:
    """A damage as measured: a finite number, not below zero by more than rounding."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and value >= -NEGATIVE_TOLERANCE)


def _resumed(partial_path: Path | None) -> dict[str, float]:
    """Measurements an interrupted sweep left behind; a damaged partial file is discarded (start over)."""
    def readable(entry: Path) -> dict[str, float] | None:
        data = json.loads(entry.read_text())
        return data if isinstance(data, dict) and all(_measured(v) for v in data.values()) else None

    if partial_path is None or not trusted_entry(partial_path, lambda entry: readable(entry) is not None):
        return {}
    try:
        done = readable(partial_path)
    except (OSError, ValueError):
        done = None
    if done is None:
        discard_entry(partial_path)
    return done or {}


def sweep_cells(model: Model, formats: list[str] | tuple[str, ...]) -> list[tuple[str, str]]:
    """The (tensor, real format) pairs the sweep measures, one forward each: requested formats collapse to what
    llama.cpp writes for the tensor's rows."""
    return list(dict.fromkeys(
        (spec.name, resolve_format(fmt, spec.row_length).name) for spec in model.quantizable for fmt in formats
    ))


def measure_sensitivity(
    model: Model,
    calibration: "CalibrationSpec | torch.Tensor" = SENSITIVITY,
    formats: list[str] | tuple[str, ...] = DEFAULT_LADDER,
    device: str = "cpu",
    progress: bool = True,
    use_cache: bool = True,
    imatrix: "ImportanceMatrix | None" = None,
) -> SensitivityTable:
    """The sensitivity table of `model` on the calibration windows of a spec (or windows given directly,
    [windows, window]). With `imatrix`, every tensor that has an entry is quantized with its importance, as
    `llama-quantize --imatrix` will quantize it."""
    from tqdm import tqdm

    formats = [get_format(name).name for name in formats]
    tokens, record = calibration_tokens(model, calibration)
    calibration_sha = tokens_sha256(tokens)
    imatrix_sha = imatrix.content_sha256() if imatrix is not None else None
    path = table_cache_path(model, calibration_sha, formats, imatrix_sha) if use_cache else None
    if (cached := cached_table(path, model, formats, record)) is not None:
        return cached
    partial_path = path.with_suffix(".partial.json") if path is not None else None
    done = _resumed(partial_path)

    jobs = sweep_cells(model, formats)
    todo = [job for job in jobs if f"{job[0]}|{job[1]}" not in done]
    if todo:
        oracle = KLDOracle(model, tokens, imatrix, device=device, keep_weights=False)
        bar = tqdm(todo, desc="sensitivity", unit="forward", disable=not progress)
        for count, (name, real) in enumerate(bar, 1):
            bar.set_postfix_str(f"{name} {real}", refresh=False)
            value = oracle({name: real})
            if not _measured(value):  # never cached: it would poison every allocation made from the table
                raise RampError(f"measuring {name} as {real} gave a KLD of {value}; the model's forward is not finite "
                                "on this text: check the model file (re-download it)")
            done[f"{name}|{real}"] = value
            if partial_path is not None and (count % _SAVE_EVERY == 0 or count == len(todo)):
                write_cache_entry(partial_path, lambda tmp: tmp.write_text(json.dumps(done)))
    damage = np.array([
        [done[f"{spec.name}|{resolve_format(fmt, spec.row_length).name}"] for fmt in formats]
        for spec in model.quantizable
    ])
    table = SensitivityTable(
        [spec.name for spec in model.quantizable], formats, damage, "kld", model.sha256, calibration_sha,
        {"calibration": record, "backend": BACKEND, "n_measured": len(jobs), "imatrix": imatrix_sha},
    )
    if path is not None:
        cache_table(path, table)
        remove_entry(partial_path)
    return table


def plot_heatmap(table: SensitivityTable, model: Model, path: str | Path) -> None:
    """PNG of log10 damage: one row per block, one column group per role, one column per format inside it.

    token_embd and output have no block; they are drawn as an extra top row, in their own role columns.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ramp.models.model import ROLES

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
    spec = recorded_spec(table.extra)
    figure.suptitle(f"sensitivity on {spec or 'calibration tokens'}", y=0.995)
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
