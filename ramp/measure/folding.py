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
input embeddings) and token_embd itself (no input activations). `rescale_channels` applies any such scales
(the fold's, or the random ones of `ramp.measure.twin`), and output_norm -> an untied output too.

Why the same rescalings stay exact on qwen2 and gemma3:
  * a bias is added after a linear's product, so input-channel scaling leaves it alone, while a division
    of output row c (attn_v, ffn_up) divides the bias's entry c too (qwen2 has q/k/v biases).
  * Gemma's GGUF norm weights are the full multipliers (the converter stores 1 + w), so dividing them is
    exact as for llama.
  * q/k norms (gemma3, qwen3) normalise the outputs of attn_q/attn_k per head: scaling their rows would not
    be undone, but no row of q or k is scaled here, and their input columns see the same normed input.
  * Gemma's post-norms (post_attention_norm, post_ffw_norm) read the outputs of attn_output and ffn_down,
    which the v -> o and up -> down compensations leave unchanged: both pairs sit entirely before them.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from functools import partial
from typing import Callable, Mapping

import numpy as np

from ramp.measure.calibration import FOLD, CalibrationSpec
from ramp.errors import RampError
from ramp.models.model import Model
from ramp.models.store import derived

DEFAULT_ALPHA = 0.5

# Each norm and the linears reading its output (one input scale shared by all of them).
NORM_INPUTS = (("attn_norm", ("attn_q", "attn_k", "attn_v")), ("ffn_norm", ("ffn_gate", "ffn_up")))


@dataclass(frozen=True)
class BlockScales:
    """One block's per-channel scales: the input channels of q/k/v (divided out of attn_norm) and of
    gate/up (out of ffn_norm), the v channels of each kv head (multiplied into the attn_output columns of
    every query head in its group) and the up channels (into ffn_down's columns)."""

    attn_norm: np.ndarray  # [n_embd]
    ffn_norm: np.ndarray  # [n_embd]
    kv: np.ndarray  # [n_head_kv * head_dim], attn_v's rows
    ffn_up: np.ndarray  # [n_ff], ffn_up's rows

    def each(self) -> tuple[np.ndarray, ...]:
        return self.attn_norm, self.ffn_norm, self.kv, self.ffn_up


def _float64_tensor(model: Model, name: str) -> np.ndarray:
    if name not in model.tensors:
        raise RampError(
            f"cannot rescale: tensor {name} is missing; an exact per-channel rescaling needs RMSNorm -> linear pairs "
            "(attn_norm -> attn_q/k/v, ffn_norm -> ffn_gate/up) in every block"
        )
    return model.tensors[name].astype(np.float64)


Rescaled = dict[str, Callable[[], np.ndarray]]


def rescale_channels(model: Model, blocks: "list[BlockScales]", output_norm: np.ndarray | None = None) -> Rescaled:
    """Per tensor that the scales reach, a function computing it rescaled exactly by `blocks` (and output_norm ->
    output by `output_norm`, which needs an untied output), in float32 from the model's own tensor: applied
    lazily (`ramp.models.store.derived`), so a rescaled model is never held whole."""
    n_head = int(model.hparam("attention.head_count", 0))
    n_head_kv = int(model.hparam("attention.head_count_kv", n_head))
    need = partial(_float64_tensor, model)
    changes: Rescaled = {}

    def scaled(name: str, columns: np.ndarray | None = None, rows: np.ndarray | None = None) -> None:
        """`name` with its columns multiplied by `columns` and then its rows divided by `rows`."""
        def compute() -> np.ndarray:
            value = need(name)
            if columns is not None:
                value = value * (columns[None, :] if value.ndim == 2 else columns)
            if rows is not None:
                value /= rows[:, None] if value.ndim == 2 else rows
            return value.astype(np.float32)
        if name not in model.tensors:
            need(name)  # the error naming the missing tensor
        changes[name] = compute

    for block, scales in enumerate(blocks):
        p = f"blk.{block}."
        for norm, linears in NORM_INPUTS:
            s = getattr(scales, norm)
            scaled(p + norm + ".weight", rows=s)
            for role in linears:
                scaled(p + role + ".weight", columns=s,
                       rows={"attn_v": scales.kv, "ffn_up": scales.ffn_up}.get(role))
        # attn_output columns are [query head, head_dim]; query head h reads kv head h // group
        group = n_head // n_head_kv
        head_dim = scales.kv.size // n_head_kv
        s_o = np.repeat(scales.kv.reshape(n_head_kv, 1, head_dim), group, axis=1).reshape(-1)
        scaled(p + "attn_output.weight", columns=s_o)
        scaled(p + "ffn_down.weight", columns=scales.ffn_up)
        for bias_of, divisor in (("attn_v", scales.kv), ("ffn_up", scales.ffn_up)):
            if (bias := p + bias_of + ".bias") in model.tensors:
                scaled(bias, rows=divisor)
    if output_norm is not None:
        if "output.weight" not in model.tensors:
            raise RampError("cannot rescale output_norm -> output: the output is tied to token_embd, whose rows are "
                            "also the input embeddings")
        scaled("output_norm.weight", rows=output_norm)
        scaled("output.weight", columns=output_norm)
    return changes


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
    need = partial(_float64_tensor, model)
    n_head = int(model.hparam("attention.head_count", 0))
    n_head_kv = int(model.hparam("attention.head_count_kv", n_head))
    if model.n_blocks == 0 or n_head == 0:
        raise RampError(f"{model.source_path or 'the model'} has no attention blocks to fold; Scale Folding needs a llama-family transformer")

    def stats(name: str) -> np.ndarray:
        if name not in activation_stats:
            raise RampError(f"no activation statistics for {name}; collect them on the same model before folding")
        return np.asarray(activation_stats[name], dtype=np.float64)

    blocks = []
    for block in range(model.n_blocks):
        p = f"blk.{block}."
        norm_scales = {}
        for norm, linears in NORM_INPUTS:
            weights = [need(p + role + ".weight") for role in linears]
            norm_scales[norm] = _scales(stats(p + linears[0] + ".weight"), _column_absmax(*weights), alpha)
        # v -> o: the statistics of attn_output's columns are pooled over the query heads of each kv head
        w_o = need(p + "attn_output.weight")
        group, head_dim = n_head // n_head_kv, w_o.shape[1] // n_head
        act_o = stats(p + "attn_output.weight").reshape(n_head_kv, group, head_dim).max(axis=1)
        col_o = np.abs(w_o).max(axis=0).reshape(n_head_kv, group, head_dim).max(axis=1)
        s_kv = _scales(act_o.reshape(-1), col_o.reshape(-1), alpha)
        s_up = _scales(stats(p + "ffn_down.weight"), np.abs(need(p + "ffn_down.weight")).max(axis=0), alpha)
        blocks.append(BlockScales(norm_scales["attn_norm"], norm_scales["ffn_norm"], s_kv, s_up))
    rescaled = derived(model.tensors, rescale_channels(model, blocks))

    # A folded model is a different model: caches keyed by model hash must not mix it with the source.
    digest = hashlib.sha256(model.sha256.encode() + f"fold:{alpha}".encode())
    for scales in blocks:
        for s in scales.each():
            digest.update(s.astype(np.float32).tobytes())
    return replace(model, tensors=rescaled, sha256=digest.hexdigest(), fold_alpha=alpha)


def fold_with_calibration(model: Model, alpha: float = DEFAULT_ALPHA, calibration: "CalibrationSpec" = FOLD) -> Model:
    """Fold with activation statistics measured on the calibration windows (what `--fold` options call)."""
    from ramp.measure.forward import Forward
    from ramp.measure.profile import collect_activation_stats

    check_alpha(alpha)
    stats = collect_activation_stats(Forward(model), calibration.windows(model))
    return fold_model(model, {name: s.absmax for name, s in stats.items()}, alpha)
