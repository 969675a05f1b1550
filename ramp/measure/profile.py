"""Per-tensor embeddings: 11 scale-free numbers describing how a tensor will suffer from block quantization.

Every feature is a ratio, a log-ratio or a fraction, never a raw magnitude or count, so a value means the
same on a 135M and a 7B model and across llama-family architectures. Weight features are computed on the
GGML block grid (blocks of 32 along a row, super-blocks of 256) because that is the grid every format
quantizes on. Activation features describe the tensor's input on real calibration text.

token_embd has no input activations: its input is a one-hot token lookup. With tied embeddings (no
output.weight) the same quantized matrix is also the output projection, where almost all of its damage
arises, so its activation features are those of the output projection's input (the final normed hidden
state). Untied, it is treated as a linear fed by one-hot channels (one per vocabulary row) whose energy
is the token's calibration frequency: act_log_kurtosis is log 3 (a Gaussian's, lookups add no tails),
act_channel_outlier is 0 (no channel is scaled above another), act_effective_channels is
exp(entropy of token frequencies) / vocabulary, and act_weighted_error weights each embedding row's
error by its token's frequency.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ramp.measure.calibration import EMBEDDINGS, CalibrationSpec, calibration_tokens
from ramp.errors import RampError
from ramp.files import atomic_output, read_json
from ramp.measure.forward import Forward, tokens_sha256
from ramp.models.model import ROLES, Model, TensorSpec
from ramp.models.store import take_rows

FEATURE_VERSION = 1

FEATURE_DOCS: dict[str, str] = {
    "relative_depth": "block index / (blocks - 1), token_embd 0, output 1: early blocks' errors propagate through the whole residual stream.",
    "role_ordinal": "position of the role in ramp.models.model.ROLES scaled to [0, 1]: roles differ systematically (v and down are fragile, q and k robust).",
    "log_fan_ratio": "log2(fan_out / fan_in) (token_embd: width / vocabulary): expanding, square and contracting maps amplify error differently.",
    "w_log_kurtosis": "log of the weights' kurtosis E[w^4]/E[w^2]^2: heavy tails stretch block scales so that most weights get few levels.",
    "w_block_crest": "mean over 32-blocks of max|w| / rms(w): the absmax grid's step relative to a typical weight, the direct driver of rounding error.",
    "w_superblock_spread": "mean over 256-super-blocks of max/mean of the 32-block absmax: K-quants code sub-block scales in 4-6 bits, poorly when they spread.",
    "w_rtn4_error": "relative RMS error of 4-bit absmax round-to-nearest on 32-blocks: a measured, format-agnostic proxy of block-quantization error.",
    "act_log_kurtosis": "log kurtosis of the input activations: heavy-tailed inputs concentrate the product error on a few large activations.",
    "act_channel_outlier": "log2 of the largest per-channel max|x| over the median per-channel rms: outlier channels amplify errors in their weight columns.",
    "act_effective_channels": "exp(entropy of per-channel input energy) / fan_in: 1 when energy is spread, near 0 when a few channels carry it.",
    "act_weighted_error": "sum_j E[x_j^2] |dW_j|^2 / sum_j E[x_j^2] |W_j|^2 with 4-bit RTN dW: expected relative output error, the activation-aware damage proxy.",
}
FEATURE_NAMES: tuple[str, ...] = tuple(FEATURE_DOCS)

_BLOCK = 32
_SUPER_BLOCK = 8  # 32-blocks per 256-weight K-quant super-block


@dataclass
class ActivationStats:
    """Streaming per-input-channel statistics of one linear's input over calibration tokens."""

    n_tokens: int = 0
    absmax: np.ndarray | None = None  # [fan_in] max |x_j|
    sum_sq: np.ndarray | None = None  # [fan_in] sum x_j^2
    sum_fourth: float = 0.0  # sum over all entries of x^4, for kurtosis

    def update(self, x: torch.Tensor) -> None:
        flat = x.reshape(-1, x.shape[-1])
        square = flat * flat
        absmax = flat.abs().amax(0).cpu().numpy().astype(np.float64)
        sum_sq = square.sum(0, dtype=torch.float64).cpu().numpy()
        self.absmax = absmax if self.absmax is None else np.maximum(self.absmax, absmax)
        self.sum_sq = sum_sq if self.sum_sq is None else self.sum_sq + sum_sq
        self.sum_fourth += float((square * square).sum(dtype=torch.float64))
        self.n_tokens += flat.shape[0]

    @property
    def energy(self) -> np.ndarray:
        """E[x_j^2] per channel."""
        return self.sum_sq / max(self.n_tokens, 1)


# Linears that read exactly the tensor another one reads (same normed input): measured once, shared.
_SHARED_INPUT = {"attn_k": "attn_q", "attn_v": "attn_q", "ffn_up": "ffn_gate"}


def collect_activation_stats(forward: Forward, tokens: torch.Tensor, batch_windows: int = 4) -> dict[str, ActivationStats]:
    """Input statistics of every linear (GGUF tensor name; the output projection as "output.weight")."""
    stats: dict[str, ActivationStats] = {}

    def capture(name: str, x: torch.Tensor) -> None:
        if name.split(".")[-2] not in _SHARED_INPUT:
            stats.setdefault(name, ActivationStats()).update(x)

    forward.observe(list(torch.split(tokens, batch_windows)), capture, output=True)
    for name in list(stats):
        for role, source in _SHARED_INPUT.items():
            if name.endswith(f".{source}.weight"):
                stats[name.replace(f".{source}.", f".{role}.")] = stats[name]
    return stats


def _blocks(weights: np.ndarray) -> np.ndarray:
    """[n_rows, blocks_per_row, 32] view of the rows cut into GGML blocks (zero-padded at the row end)."""
    n_rows, row_length = weights.shape
    pad = -row_length % _BLOCK
    padded = np.pad(weights, ((0, 0), (0, pad))) if pad else weights
    return padded.reshape(n_rows, -1, _BLOCK)


def rtn4(weights: np.ndarray) -> np.ndarray:
    """Q4_0's reference rounding (scale = signed absmax / -8, 16 levels) on 32-blocks, dequantized."""
    blocks = _blocks(weights.astype(np.float32))
    index = np.abs(blocks).argmax(-1)[..., None]
    scale = np.take_along_axis(blocks, index, -1) / -8.0
    inverse = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale != 0)
    levels = np.clip(np.round(blocks * inverse), -8, 7)
    return (levels * scale).reshape(weights.shape[0], -1)[:, : weights.shape[1]]


def _sample_rows(model: Model, name: str, max_values: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """At most `max_values` weights of a tensor as whole rows chosen with `seed` (all rows when the tensor is small)."""
    n_rows, row_length = model.shape(name)
    keep = max(1, min(n_rows, max_values // row_length))
    if keep == n_rows:
        return model.tensors[name], np.arange(n_rows)
    rows = np.sort(np.random.default_rng(seed).choice(n_rows, keep, replace=False))
    return take_rows(model.tensors, name, rows), rows


def weight_features(weights: np.ndarray) -> dict[str, float]:
    """The four w_* features of a [rows, row_length] tensor (see FEATURE_DOCS)."""
    w = weights.astype(np.float64)
    m2 = float(np.mean(w * w))
    if m2 == 0.0:
        return {"w_log_kurtosis": float(np.log(3.0)), "w_block_crest": 0.0, "w_superblock_spread": 0.0, "w_rtn4_error": 0.0}
    blocks = _blocks(w)
    block_max = np.abs(blocks).max(-1)
    block_rms = np.sqrt(np.mean(blocks * blocks, -1))
    live = block_rms > 0
    n_super = block_max.size // _SUPER_BLOCK
    super_max = block_max.reshape(-1)[: n_super * _SUPER_BLOCK].reshape(n_super, _SUPER_BLOCK)
    super_mean = super_max.mean(-1)
    spread = super_max.max(-1)[super_mean > 0] / super_mean[super_mean > 0]
    error = rtn4(weights) - w
    return {
        "w_log_kurtosis": float(np.log(np.mean(w**4) / m2**2)),
        "w_block_crest": float(np.mean(block_max[live] / block_rms[live])),
        "w_superblock_spread": float(spread.mean()) if spread.size else 1.0,
        "w_rtn4_error": float(np.sqrt(np.mean(error * error) / m2)),
    }


def _activation_features(stats: ActivationStats, weights: np.ndarray) -> dict[str, float]:
    energy = stats.energy
    fan_in = energy.size
    m2 = float(energy.mean())
    m4 = stats.sum_fourth / max(stats.n_tokens * fan_in, 1)
    share = energy / energy.sum() if energy.sum() > 0 else np.full(fan_in, 1.0 / fan_in)
    entropy = -float(np.sum(share[share > 0] * np.log(share[share > 0])))
    median_rms = float(np.median(np.sqrt(energy)))
    error = rtn4(weights) - weights
    column_error = np.sum(error.astype(np.float64) ** 2, axis=0)
    column_norm = np.sum(weights.astype(np.float64) ** 2, axis=0)
    return {
        "act_log_kurtosis": float(np.log(m4 / m2**2)) if m2 > 0 else float(np.log(3.0)),
        "act_channel_outlier": float(np.log2(stats.absmax.max() / median_rms)) if median_rms > 0 else 0.0,
        "act_effective_channels": float(np.exp(entropy) / fan_in),
        "act_weighted_error": float(energy @ column_error / max(energy @ column_norm, 1e-30)),
    }


def _lookup_features(weights: np.ndarray, rows: np.ndarray, token_counts: np.ndarray) -> dict[str, float]:
    frequency = token_counts / max(token_counts.sum(), 1)
    seen = frequency[frequency > 0]
    error = rtn4(weights) - weights
    row_error = np.sum(error.astype(np.float64) ** 2, axis=1)
    row_norm = np.sum(weights.astype(np.float64) ** 2, axis=1)
    weight = frequency[rows]
    return {
        "act_log_kurtosis": float(np.log(3.0)),
        "act_channel_outlier": 0.0,
        "act_effective_channels": float(np.exp(-np.sum(seen * np.log(seen))) / frequency.size),
        "act_weighted_error": float(weight @ row_error / max(weight @ row_norm, 1e-30)) if weight.sum() > 0 else 0.0,
    }


def tensor_features(
    model: Model,
    spec: TensorSpec,
    stats: dict[str, ActivationStats],
    token_counts: np.ndarray,
    seed: int = 0,
    max_values: int = 1 << 22,
) -> np.ndarray:
    """The 11-number embedding of one quantizable tensor, in FEATURE_NAMES order."""
    weights, rows = _sample_rows(model, spec.name, max_values, seed)
    n_rows, fan_in = spec.shape
    values: dict[str, float] = {
        "relative_depth": 0.0 if spec.role == "token_embd" else 1.0 if spec.block is None
        else spec.block / max(model.n_blocks - 1, 1),
        "role_ordinal": ROLES.index(spec.role) / (len(ROLES) - 1),
        # a lookup maps one-hot vocabulary channels to rows of width fan_in
        "log_fan_ratio": float(np.log2(fan_in / n_rows) if spec.role == "token_embd" else np.log2(n_rows / fan_in)),
    }
    values.update(weight_features(weights))
    if spec.role == "token_embd" and "output.weight" not in model.tensors:
        values.update(_activation_features(stats["output.weight"], weights))
    elif spec.role == "token_embd":
        values.update(_lookup_features(weights, rows, token_counts))
    else:
        values.update(_activation_features(stats[spec.name], weights))
    return np.array([values[name] for name in FEATURE_NAMES], dtype=np.float64)


@dataclass
class Profile:
    """The embedding table: one row of FEATURE_NAMES per quantizable tensor, GGUF names, model order."""

    tensors: list[str]
    features: np.ndarray  # [n_tensors, 11]
    model_sha256: str
    calibration_sha256: str
    calibration: dict  # the calibration spec's record (`ramp.measure.calibration.calibration_tokens`)
    seed: int
    feature_names: tuple[str, ...] = FEATURE_NAMES
    feature_version: int = FEATURE_VERSION

    def save(self, json_path: str | Path, csv_path: str | Path | None = None) -> None:
        payload = {
            "feature_version": self.feature_version,
            "feature_names": list(self.feature_names),
            "model_sha256": self.model_sha256,
            "calibration_sha256": self.calibration_sha256,
            "calibration": self.calibration,
            "seed": self.seed,
            "tensors": {name: row.tolist() for name, row in zip(self.tensors, self.features)},
        }
        with atomic_output(json_path, "w") as handle:
            json.dump(payload, handle, indent=1)
        if csv_path is not None:
            with atomic_output(csv_path, "w") as handle:
                handle.write(",".join(("tensor",) + self.feature_names) + "\n")
                for name, row in zip(self.tensors, self.features):
                    handle.write(",".join([name] + [f"{v:.6g}" for v in row]) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Profile":
        data = read_json(path, "embedding table", "create it with `ramp profile`")
        if not isinstance(data, dict) or "feature_version" not in data:
            kind = " but a sensitivity table" if isinstance(data, dict) and "damage" in data else ""
            raise RampError(f"{path} is not a ramp embedding table{kind}; pass the embeddings.json `ramp profile` "
                            "writes (or its job folder)")
        if data.get("feature_version") != FEATURE_VERSION or tuple(data.get("feature_names", ())) != FEATURE_NAMES:
            raise RampError(
                f"{path} holds features of version {data.get('feature_version')}, this ramp computes version "
                f"{FEATURE_VERSION}; re-run `ramp profile`"
            )
        try:
            names = list(data["tensors"])
            features = np.array([data["tensors"][n] for n in names], dtype=np.float64).reshape(len(names), len(FEATURE_NAMES))
            # files written before the spec was recorded name only the token count
            calibration = data.get("calibration") or {"text": None, "tokens": data["n_tokens"], "window": None}
            return cls(names, features, data["model_sha256"], data["calibration_sha256"], calibration, data["seed"])
        except (KeyError, TypeError, ValueError) as exc:
            raise RampError(f"{path} is not a complete ramp embedding table ({type(exc).__name__}: {exc}); "
                            "re-run `ramp profile`") from None


def profile_model(
    model: Model, calibration: "CalibrationSpec | torch.Tensor" = EMBEDDINGS, seed: int = 0,
    forward: Forward | None = None, progress: bool = False,
) -> Profile:
    """Embeddings of every quantizable tensor from activations on the calibration windows."""
    from tqdm import tqdm

    tokens, record = calibration_tokens(model, calibration)
    forward = forward or Forward(model)
    stats = collect_activation_stats(forward, tokens)
    vocab = model.shape("token_embd.weight")[0]
    token_counts = np.bincount(tokens.cpu().numpy().reshape(-1), minlength=vocab).astype(np.float64)
    rows = [
        tensor_features(model, spec, stats, token_counts, seed)
        for spec in tqdm(model.quantizable, desc="features", unit="tensor", disable=not progress, leave=False)
    ]
    return Profile(
        [spec.name for spec in model.quantizable], np.stack(rows), model.sha256, tokens_sha256(tokens), record, seed,
    )
