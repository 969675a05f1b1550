"""Scale Folding: move activation outliers into weights with exact, per-channel rescalings.

A linear W (rows = outputs, columns = inputs) sees input channel j scaled by s_j if its column j is
multiplied by s_j and whatever produces channel j is divided by s_j; the product is unchanged in exact
arithmetic, so the model computes the same function, but block quantization of W now sees columns whose
scale follows the activations feeding them (SmoothQuant's migration, made free because every division
lands in a tensor that is not quantized or is quantized anyway):

  s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)

Folds done, per block:
  * attn_norm -> attn_q, attn_k, attn_v: the RMSNorm weight is divided by s (one s shared by q, k, v,
    since they read the same normed input; max|W_j| is taken over all three).
  * ffn_norm -> ffn_gate, ffn_up: likewise.
  * attn_v -> attn_output: attention mixes positions but never channels of V, so dividing row c of
    attn_v by s_c and multiplying attn_output's columns that read channel c by s_c is exact. With GQA
    one kv head feeds `n_head / n_head_kv` query heads, so the scale of a kv channel is shared by the
    attn_output columns of every query head in its group (statistics are pooled over the group).
  * ffn_up -> ffn_down: down reads silu(gate) * up, linear in up's row c, so dividing up's row c by s_c
    and multiplying down's column c by s_c is exact.
Not folded: the output projection (tied to token_embd in most small models, whose rows are also the
input embeddings) and token_embd itself (no input activations).
"""
from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Mapping

import numpy as np

from ramp.measure.calibration import FOLD, CalibrationSpec
from ramp.errors import RampError
from ramp.models.model import Model

DEFAULT_ALPHA = 0.5


def check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise RampError(f"alpha must lie in [0, 1], got {alpha}")


def _scales(act_absmax: np.ndarray, weight_absmax: np.ndarray, alpha: float) -> np.ndarray:
    act = act_absmax.astype(np.float64)
    weight = weight_absmax.astype(np.float64)
    usable = (act > 0) & (weight > 0) & np.isfinite(act) & np.isfinite(weight)
    scales = np.ones_like(act)
    # channels never active or all-zero columns keep s = 1: any other value would divide by zero
    scales[usable] = act[usable] ** alpha / weight[usable] ** (1.0 - alpha)
    return scales


def _column_absmax(*weights: np.ndarray) -> np.ndarray:
    return np.max([np.abs(w).max(axis=0) for w in weights], axis=0)


def fold_model(model: Model, activation_stats: Mapping[str, np.ndarray], alpha: float = DEFAULT_ALPHA) -> Model:
    """A new Model computing the same function with activation outliers folded into weights.

    `activation_stats` maps a linear's tensor name to the per-input-channel max |activation| seen on
    calibration text (`ramp.measure.profile.collect_activation_stats(...)[name].absmax`); the ones needed are
    each block's attn_q, attn_output and ffn_gate (and ffn_down).
    """
    check_alpha(alpha)
    tensors = dict(model.tensors)
    n_head = int(model.hparam("attention.head_count", 0))
    n_head_kv = int(model.hparam("attention.head_count_kv", n_head))
    if model.n_blocks == 0 or n_head == 0:
        raise RampError(f"{model.source_path or 'the model'} has no attention blocks to fold; Scale Folding needs a llama-family transformer")

    def need(name: str) -> np.ndarray:
        if name not in tensors:
            raise RampError(
                f"cannot fold: tensor {name} is missing; Scale Folding needs RMSNorm -> linear pairs "
                "(attn_norm -> attn_q/k/v, ffn_norm -> ffn_gate/up) in every block"
            )
        return tensors[name].astype(np.float64)

    def stats(name: str) -> np.ndarray:
        if name not in activation_stats:
            raise RampError(f"no activation statistics for {name}; collect them on the same model before folding")
        return np.asarray(activation_stats[name], dtype=np.float64)

    folded_scales = []
    for block in range(model.n_blocks):
        p = f"blk.{block}."
        norm_pairs = (("attn_norm", ("attn_q", "attn_k", "attn_v")), ("ffn_norm", ("ffn_gate", "ffn_up")))
        current: dict[str, np.ndarray] = {}
        for norm, linears in norm_pairs:
            norm_w = need(p + norm + ".weight")
            weights = [need(p + r + ".weight") for r in linears]
            s = _scales(stats(p + linears[0] + ".weight"), _column_absmax(*weights), alpha)
            current[p + norm + ".weight"] = norm_w / s
            for role, w in zip(linears, weights):
                current[p + role + ".weight"] = w * s[None, :]
            folded_scales.append(s)

        # v -> o: attn_output columns are [query head, head_dim]; query head h reads kv head h // group.
        w_o = need(p + "attn_output.weight")
        group = n_head // n_head_kv
        head_dim = w_o.shape[1] // n_head
        act_o = stats(p + "attn_output.weight").reshape(n_head_kv, group, head_dim).max(axis=1)
        col_o = np.abs(w_o).max(axis=0).reshape(n_head_kv, group, head_dim).max(axis=1)
        s_kv = _scales(act_o.reshape(-1), col_o.reshape(-1), alpha)
        s_o = np.repeat(s_kv.reshape(n_head_kv, 1, head_dim), group, axis=1).reshape(-1)
        current[p + "attn_v.weight"] = current[p + "attn_v.weight"] / s_kv[:, None]
        current[p + "attn_output.weight"] = w_o * s_o[None, :]
        folded_scales.append(s_kv)

        s_up = _scales(stats(p + "ffn_down.weight"), np.abs(need(p + "ffn_down.weight")).max(axis=0), alpha)
        current[p + "ffn_up.weight"] = current[p + "ffn_up.weight"] / s_up[:, None]
        current[p + "ffn_down.weight"] = need(p + "ffn_down.weight") * s_up[None, :]
        folded_scales.append(s_up)

        for bias_of in ("attn_v", "ffn_up"):  # output-side divisions apply to biases too (qwen2 has attn_v.bias)
            if (bias := p + bias_of + ".bias") in tensors:
                divisor = s_kv if bias_of == "attn_v" else s_up
                current[bias] = tensors[bias].astype(np.float64) / divisor
        tensors.update({name: value.astype(np.float32) for name, value in current.items()})

    # A folded model is a different model: caches keyed by model hash must not mix it with the source.
    digest = hashlib.sha256(model.sha256.encode() + f"fold:{alpha}".encode())
    for s in folded_scales:
        digest.update(s.astype(np.float32).tobytes())
    return replace(model, tensors=tensors, sha256=digest.hexdigest(), fold_alpha=alpha)


def fold_with_calibration(model: Model, alpha: float = DEFAULT_ALPHA, calibration: "CalibrationSpec" = FOLD) -> Model:
    """Fold with activation statistics measured on the calibration windows (what `--fold` options call)."""
    from ramp.measure.forward import Forward
    from ramp.measure.profile import collect_activation_stats

    check_alpha(alpha)
    stats = collect_activation_stats(Forward(model), calibration.windows(model))
    return fold_model(model, {name: s.absmax for name, s in stats.items()}, alpha)
