"""The off-grid twin of a quantized checkpoint: the same function, with weights on no GGML grid.

Every model ramp reaches is itself quantized, so a format whose grid contains the source's can write the
source's weights back exactly and look nearly lossless without having solved anything. The twin rescales
every input channel that an exact compensation reaches by a seeded random positive scale, log-normal with
`sigma` (`ramp.measure.folding.rescale_channels`: attn_norm -> q/k/v, ffn_norm -> gate/up, v -> o per kv
group, up -> down, output_norm -> an untied output). In exact arithmetic it computes the source's function;
in float32 its weights are the source's times scales with full mantissas, which no block format's levels
reproduce.

Two kinds of weights no exact rescaling moves: token_embd (and an output tied to it), whose rows are looked
up, not multiplied by a normed input, and the weights that are exactly zero (a grid level that every
block format holds too: a Q4_1 checkpoint has a few hundred per tensor, its Q8_0 embedding 1% of its
weights). token_embd gets seeded Gaussian noise of `noise` times its quantization step (the spread of
each of its blocks over the number of steps of the format the source stores it in), so it leaves the grid
too and re-quantizing it costs about what a never-quantized weight would. The zeros get `noise` times the
step of their block in Q8_0, the finest ladder format, instead: they sit in blocks of every spread, some
with outliers whose Q4 step is twice the tensor's deviation, and moving them that far was measured to
double the embedded model's KLD to its source (0.02% of its weights) while a Q8_0 step takes them off
every grid as well. The price is a small divergence from the source, which `ramp.evaluate.twin` measures
and records. Tensors the source stores as F32/F16/BF16 are on no ladder grid and get no noise.

What is left on a grid is chance, as for weights never quantized: a block's largest weight is written
back exactly when the float16 scale a format derives from it happens to be exact (about one block in 2^13).
"""
from __future__ import annotations

import hashlib
from dataclasses import replace
from functools import partial
from typing import Callable

import numpy as np

from ramp.errors import RampError
from ramp.measure.folding import BlockScales, rescale_channels
from ramp.models.model import ORIGIN_KEY, MetadataValue, Model
from ramp.models.store import derived

DEFAULT_SEED = 0
DEFAULT_SIGMA = 0.25
DEFAULT_NOISE = 1 / 3
# GGUF keys a twin records about itself (ramp.evaluate.twin adds how far it moved from the source).
TWIN_SOURCE_KEY = "ramp.twin.source_sha256"
TWIN_SEED_KEY = "ramp.twin.seed"
TWIN_SIGMA_KEY = "ramp.twin.sigma"
TWIN_NOISE_KEY = "ramp.twin.noise"
# Per block format: (weights sharing one scale, steps between the lowest and the highest of its levels).
_GRID_STEPS = {"Q4_0": (32, 15), "Q4_1": (32, 15), "Q5_0": (32, 31), "Q5_1": (32, 31), "Q8_0": (32, 254),
               "Q2_K": (16, 3), "Q3_K": (16, 7), "Q4_K": (32, 15), "Q5_K": (32, 31), "Q6_K": (16, 63)}
_UNGRIDDED = ("F32", "F16", "BF16", "F64")
_ROWS_PER_CHUNK = 8192  # a 262k-token embedding is perturbed a slice at a time, never whole in float64


def check_twin_settings(seed: int, sigma: float, noise: float) -> None:
    if seed < 0:
        raise RampError(f"--seed must be a whole number of at least 0, got {seed}")
    if not (np.isfinite(sigma) and 0.0 < sigma <= 2.0):
        raise RampError(f"--sigma must lie in (0, 2], got {sigma}; 0.25 moves every weight off the grid")
    if not (np.isfinite(noise) and 0.0 <= noise <= 1.0):
        raise RampError(f"--noise must lie in [0, 1] quantization steps, got {noise}; 1/3 is the default")


def stored_types(model: Model) -> dict[str, str]:
    """The GGML type each tensor is stored in, in the model's GGUF (empty for a model built in memory or read from
    safetensors: all float)."""
    from ramp.models.gguf import read_gguf

    path = model.source_path
    if path is None or path.is_dir():
        return {}
    return {t.name: t.tensor_type.name for t in read_gguf(path).tensors}


def grid_step(weights: np.ndarray, type_name: str) -> np.ndarray:
    """Each weight's quantization step in the block format `type_name`: its block's spread over the format's
    number of steps (float64, the weights' shape)."""
    if type_name not in _GRID_STEPS:
        raise RampError(f"a tensor is stored as {type_name}, whose grid step ramp does not know; start from a checkpoint "
                        f"in {', '.join(_GRID_STEPS)} or F32/F16")
    group, steps = _GRID_STEPS[type_name]
    blocks = weights.astype(np.float64).reshape(weights.shape[0], -1, group)
    step = (blocks.max(axis=-1) - blocks.min(axis=-1)) / steps
    return np.repeat(step, group, axis=-1).reshape(weights.shape)


def _perturbed_embedding(weights: np.ndarray, type_name: str, noise: float, rng: np.random.Generator) -> np.ndarray:
    out = np.empty_like(weights)
    for start in range(0, weights.shape[0], _ROWS_PER_CHUNK):
        rows = weights[start:start + _ROWS_PER_CHUNK]
        out[start:start + _ROWS_PER_CHUNK] = rows + noise * grid_step(rows, type_name) * rng.standard_normal(rows.shape)
    return out


def _zero_noise(weights: np.ndarray, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Where the exact zeros of `weights` are and what they become (drawn now, in the twin's draw order)."""
    rows, columns = np.nonzero(weights == 0)
    if rows.size == 0:
        return None
    touched, row_of = np.unique(rows, return_inverse=True)
    steps = grid_step(weights[touched], "Q8_0")[row_of, columns]
    return rows, columns, noise * steps * rng.standard_normal(rows.size)


def _skip_embedding_draws(shape: tuple[int, ...], rng: np.random.Generator) -> None:
    """Advance `rng` past the embedding's noise, drawn in `_perturbed_embedding`'s chunks (same draws, none kept)."""
    for start in range(0, shape[0], _ROWS_PER_CHUNK):
        rng.standard_normal((min(_ROWS_PER_CHUNK, shape[0] - start), *shape[1:]))


def twin_model(model: Model, seed: int = DEFAULT_SEED, sigma: float = DEFAULT_SIGMA,
               noise: float = DEFAULT_NOISE) -> Model:
    """The model's off-grid twin (module docstring): a new Model, its own checkpoint (its sha256 and origin
    are derived from the source's and the settings, so nothing made for the source is taken for it). Its tensors
    are computed from the source's when used (`ramp.models.store.derived`); the draws are made in one fixed order
    here (scales block by block, the embedding's noise, the zeros' tensor by tensor), whatever order they are used in."""
    import gguf

    check_twin_settings(seed, sigma, noise)
    n_head = int(model.hparam("attention.head_count", 0))
    if model.n_blocks == 0 or n_head == 0:
        raise RampError(f"{model.source_path or 'the model'} has no attention blocks; a twin needs a llama-family transformer")
    rng = np.random.default_rng(seed)

    def scales(n: int) -> np.ndarray:
        return np.exp(sigma * rng.standard_normal(n))

    def rows(name: str) -> int:
        if name not in model.tensors:
            raise RampError(f"{model.source_path or 'the model'} has no tensor {name}; a twin needs a llama-family "
                            "transformer (attn_norm, attn_v, ffn_norm, ffn_up in every block)")
        return int(model.shape(name)[0])

    blocks = []
    for b in range(model.n_blocks):  # the draws' order fixes the twin: block by block, in BlockScales' order
        n_embd = rows(f"blk.{b}.attn_norm.weight")
        blocks.append(BlockScales(scales(n_embd), scales(rows(f"blk.{b}.ffn_norm.weight")),
                                  scales(rows(f"blk.{b}.attn_v.weight")), scales(rows(f"blk.{b}.ffn_up.weight"))))
    untied = "output.weight" in model.tensors
    changes = rescale_channels(model, blocks, scales(model.shape("output.weight")[1]) if untied else None)
    types = stored_types(model)
    gridded = {spec.name for spec in model.quantizable if types.get(spec.name, "F32") not in _UNGRIDDED}
    if noise > 0 and "token_embd.weight" in gridded:
        embedding_rng = np.random.default_rng(seed)
        embedding_rng.bit_generator.state = rng.bit_generator.state
        _skip_embedding_draws(model.shape("token_embd.weight"), rng)
        changes["token_embd.weight"] = lambda: _perturbed_embedding(model.tensors["token_embd.weight"],
                                                                    types["token_embd.weight"], noise, embedding_rng)
    for spec in model.quantizable:
        if noise > 0 and spec.name in gridded and spec.name != "token_embd.weight":
            rescaled = changes.get(spec.name, lambda name=spec.name: model.tensors[name])
            if (zeros := _zero_noise(rescaled(), noise, rng)) is not None:
                changes[spec.name] = partial(_with_zeros_moved, rescaled, zeros)
    digest = hashlib.sha256(f"twin:{model.origin_sha256}:{seed}:{sigma!r}:{noise!r}".encode()).hexdigest()
    metadata = {key: value for key, value in model.metadata.items() if key != ORIGIN_KEY}
    metadata |= {
        TWIN_SOURCE_KEY: MetadataValue(model.origin_sha256, gguf.GGUFValueType.STRING),
        TWIN_SEED_KEY: MetadataValue(int(seed), gguf.GGUFValueType.INT64),
        TWIN_SIGMA_KEY: MetadataValue(float(sigma), gguf.GGUFValueType.FLOAT64),
        TWIN_NOISE_KEY: MetadataValue(float(noise) if gridded else 0.0, gguf.GGUFValueType.FLOAT64),
    }
    return replace(model, tensors=derived(model.tensors, changes), metadata=metadata, sha256=digest, origin_sha256=digest)


def _with_zeros_moved(rescaled: "Callable[[], np.ndarray]", zeros: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    rows, columns, values = zeros
    out = rescaled().copy()
    out[rows, columns] = values
    return out

