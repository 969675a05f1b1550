"""ramp's own vectorised GGML quantizers: whole tensors at once, on CPU or CUDA, same bytes as libggml.

Each format is an encoder (float weights -> integer codes and scales, following ggml-quants.c's search for
the scales step by step) plus a bit-packer and a decoder. `quantize_dequantize` runs encoder and decoder
without packing, which is what training loops want.

Why the results are bit-exact with the libggml that llama-cpp-python ships: that library is built without
FMA contraction or fast-math (checked with objdump: no vfmadd), so every C expression is a sequence of
correctly rounded float32 operations. This module performs the same operations in the same order:
accumulations that C does left to right are done left to right (`_seq_sum`), never by torch's pairwise
`sum`; `nearest_int` is round-half-even like ggml's magic-number trick; `roundf` is round-half-away; float
to half is round-to-nearest-even in both. Division is always tensor / tensor, because CUDA turns division
by a Python scalar into multiplication by a reciprocal, and Python's `scalar / tensor` does the same.
Where C runs a loop of candidates whose evaluation does not depend on earlier acceptances, this module
evaluates all candidates at once and replays the acceptance rule, which selects the same candidate.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import lru_cache
from dataclasses import dataclass

import numpy as np
import torch

from ramp.kernels.formats import Format
from ramp.machine import usable_cores

Tensor = torch.Tensor
GROUP_MAX_EPS = 1e-15
QK_K = 256
# Groups per slice in the scale searches, measured best on a 2-core CPU: large enough that Python's
# per-operation overhead stays small next to the work, small enough that the temporaries stay in cache
# (make_qx_quants: (candidates, groups); the affine search: (elements, groups); iq4_nl's search:
# (elements, candidates, groups)).
SYMMETRIC_CHUNK = 16384
AFFINE_CHUNK = 8192
NONLINEAR_CHUNK = 4096
IQ4NL_VALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)


# ----------------------------------------------------------------------------------------------- helpers


def as_rows(weights: np.ndarray | Tensor, shape: tuple[int, ...]) -> Tensor:
    """Float32 (n_rows, row_length) view of the weights on their device (numpy arrays go to the CPU)."""
    tensor = weights if isinstance(weights, torch.Tensor) else torch.from_numpy(np.asarray(weights))
    return tensor.detach().to(torch.float32).reshape(-1, shape[-1]).contiguous()


def _k(value: float, like: Tensor) -> Tensor:
    """A float32 constant on `like`'s device, so that divisions stay true divisions (see module docstring)."""
    return _constant(value, like.device)


@lru_cache(maxsize=4096)
def _constant(value: float, device: torch.device) -> Tensor:
    # Cached: the searches divide by the same few constants thousands of times, and making a tensor
    # costs more than a division of a few thousand floats. Callers never modify it in place.
    return torch.tensor(value, dtype=torch.float32, device=device)


def _div(numerator: Tensor | float, denominator: Tensor | float, like: Tensor) -> Tensor:
    numerator = numerator if isinstance(numerator, Tensor) else _k(numerator, like)
    denominator = denominator if isinstance(denominator, Tensor) else _k(denominator, like)
    return torch.div(numerator, denominator)


def _inverse_or_zero(value: Tensor) -> Tensor:
    """C's `d ? 1/d : 0`."""
    return torch.where(value != 0, _div(1.0, value, value), torch.zeros_like(value))


def _seq_sum(terms: Tensor | Sequence[Tensor], seeded: bool = False) -> Tensor:
    """Sum over dim 0 (or over a list of views) left to right in float32, as `float s = 0; for (...) s += t;`.

    `seeded`: C initialises the sum with the first term instead (`float s = t[0]; for (i = 1; ...)`).
    Callers that sum the same buffer repeatedly pass its views, made once: making a view costs about as
    much as the addition.
    """
    total = terms[0].clone() if seeded else terms[0] + 0.0  # 0.0f + -0.0f is +0.0f
    for i in range(1, len(terms)):
        total.add_(terms[i])
    return total


def _signed_absmax(x: Tensor) -> Tensor:
    """Per column, the value with the largest magnitude, first occurrence on ties (C's `if (ax > amax)`).

    argmax over dim 0 is not vectorised on CPU (about 10 ns a weight), so this takes the amax of an int64
    key instead: the bits of |x|, which order non-negative floats as their values do, then the row's
    rank, higher for earlier rows so that ties go to the first.
    """
    n = x.shape[0]
    rank = torch.arange(n - 1, -1, -1, device=x.device).reshape((n,) + (1,) * (x.dim() - 1))
    key = x.abs().view(torch.int32).to(torch.int64).mul_(n).add_(rank).amax(dim=0, keepdim=True)
    return x.gather(0, (n - 1) - key.remainder(n))[0] + 0.0  # an all-zero group yields C's +0.0 even if it holds -0.0


def _round_away_int(x: Tensor) -> Tensor:
    """C's roundf for |x| < 2**31, as int32 (torch.round goes to even); overwrites x.

    x - trunc(x) is exact and doubling it is exact, so trunc(2 * fraction) is +-1 exactly when the
    fraction reaches one half. Truncation is by conversion to int32: torch's float `trunc` is not
    vectorised on CPU and costs 15 times as much.
    """
    truncated = x.to(torch.int32)
    return truncated.add_(x.sub_(truncated).mul_(2.0).to(torch.int32))


def _sqrt(x: Tensor) -> Tensor:
    """Correctly rounded float32 sqrt, like sqrtf. torch's vectorised float32 sqrt on CPU is not (about
    15% of results are 1 ulp off); a double sqrt rounded to float is exact for float inputs."""
    return x.double().sqrt().float()


def _fp16(x: Tensor) -> Tensor:
    """The float32 value of GGML_FP32_TO_FP16(x): round to half, nearest-even."""
    return x.to(torch.float16).to(torch.float32)


def _first_argmin(values: Tensor) -> Tensor:
    return values.argmin(dim=0)


def _pick(candidates: Tensor, index: Tensor) -> Tensor:
    """candidates (C, *rest) indexed per group by `index` (groups on the last axis)."""
    shape = (1,) + candidates.shape[1:]
    expanded = index.reshape((1,) * (candidates.dim() - 1) + index.shape).expand(shape)
    return candidates.gather(0, expanded)[0]


def _chunked(fn: Callable[..., tuple[Tensor, ...]], chunk: int, *args: Tensor | None) -> tuple[Tensor, ...]:
    """Apply `fn` to slices of at most `chunk` groups (groups are the last axis of every argument)."""
    n_groups = args[0].shape[-1]
    if n_groups <= chunk:
        return fn(*args)
    pieces = [
        fn(*(None if a is None else a[..., start:start + chunk].contiguous() for a in args))
        for start in range(0, n_groups, chunk)
    ]
    return tuple(torch.cat(parts, dim=-1) for parts in zip(*pieces))


def _group(x: Tensor, size: int) -> Tensor:
    """(B, block) -> (size, B * block/size): element-major groups, so dim-0 slices are contiguous."""
    return x.reshape(-1, size).T.contiguous()


def _ungroup(groups: Tensor, n_blocks: int) -> Tensor:
    """Inverse of `_group` for per-element tensors; per-group vectors (G,) become (B, groups per block)."""
    if groups.dim() == 1:
        return groups.reshape(n_blocks, -1)
    return groups.T.reshape(n_blocks, -1)


# ------------------------------------------------------------------------------- ggml's scale searches


def _fit_symmetric(x: Tensor, nmax: int, weights: Tensor | None) -> tuple[Tensor, Tensor]:
    """make_qx_quants(rmse_type=1): scale and codes L in [0, 2*nmax) for groups x (n, G)."""
    return _chunked(lambda xs, ws: _fit_symmetric_chunk(xs, nmax, ws), SYMMETRIC_CHUNK, x, weights)


def _fit_symmetric_chunk(x: Tensor, nmax: int, weights: Tensor | None) -> tuple[Tensor, Tensor]:
    peak = _signed_absmax(x)
    w = x * x if weights is None else weights
    numerators = [float(np.float32(-nmax))] + [
        float(-(np.float32(nmax) + np.float32(0.1) * np.float32(step))) for step in range(-9, 10) if step
    ]
    iscale = _div(torch.tensor(numerators, device=x.device).reshape(-1, 1), peak, x)  # (C, G)
    # One element at a time over all candidates: the (C, G) temporaries stay in cache, where the
    # (n, C, G) levels of all elements at once would not, and only the chosen levels are kept (below).
    wx = w * x
    sumlx, suml2 = torch.zeros_like(iscale), torch.zeros_like(iscale)
    level, term = torch.empty_like(iscale), torch.empty_like(iscale)
    for i in range(x.shape[0]):
        torch.mul(iscale, x[i], out=level).round_().clamp_(-nmax, nmax - 1)
        sumlx.add_(torch.mul(wx[i], level, out=term))
        suml2.add_(torch.mul(w[i], level, out=term).mul_(level))
    # The acceptance rule replayed candidate by candidate; everything that does not depend on the
    # running best is computed for all candidates at once.
    scales = _div(sumlx, suml2, x)
    scales[0] = torch.where(suml2[0] != 0, scales[0], 0.0)
    # C also requires suml2 > 0 (it is never negative): a -inf square fails the comparison instead.
    gains = scales * sumlx
    squares = torch.where(suml2 > 0, sumlx * sumlx, -torch.inf)
    best = gains[0]
    chosen = torch.zeros_like(peak, dtype=torch.long)
    for c in range(1, len(numerators)):
        better = squares[c] > best * suml2[c]
        best = torch.where(better, gains[c], best)
        chosen.masked_fill_(better, c)
    scale = _pick(scales, chosen)
    zero = peak.abs() < GROUP_MAX_EPS
    # Zeroed through the (finite) scale and a multiplication: torch.where over all elements is slow on CPU.
    chosen_iscale = torch.where(zero, 0.0, _pick(iscale, chosen))
    codes = torch.round(chosen_iscale * x).clamp_(-nmax, nmax - 1).add_(nmax).mul_((~zero).to(x.dtype))
    return torch.where(zero, 0.0, scale), codes


def _fit_affine(
    x: Tensor, nmax: int, weights: Tensor, rmin: float, rdelta: float, nstep: int, use_mad: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """make_qkx2_quants / make_qkx3_quants: (scale, the_min, codes in [0, nmax]) for groups x (n, G)."""
    return _chunked(lambda xs, ws: _fit_affine_chunk(xs, nmax, ws, rmin, rdelta, nstep, use_mad), AFFINE_CHUNK, x, weights)


def _fit_affine_chunk(
    x: Tensor, nmax: int, w: Tensor, rmin: float, rdelta: float, nstep: int, use_mad: bool
) -> tuple[Tensor, Tensor, Tensor]:
    low = torch.clamp(x.amin(dim=0), max=0.0)
    high = x.amax(dim=0)
    sum_w, sum_x = _seq_sum(torch.stack([w, w * x], dim=1), seeded=True)
    # Per-element work goes through buffers reused by every candidate (out= and in-place operations):
    # no allocations, and the (n, G) tensors stay in cache between the operations of one candidate.
    levels, diff = torch.empty_like(x), torch.empty_like(x)
    weighted, squares, cross = products = torch.empty((3,) + x.shape, dtype=x.dtype, device=x.device)
    product_terms, diff_terms = [products[:, i] for i in range(x.shape[0])], list(diff)

    def quantize_levels(iscale: Tensor, offset: Tensor) -> Tensor:
        return torch.sub(x, offset, out=levels).mul_(iscale).round_().clamp_(0, nmax)

    def error(scale: Tensor, offset: Tensor) -> Tensor:
        torch.mul(levels, scale, out=diff).add_(offset).sub_(x)
        (diff.abs_() if use_mad else diff.mul_(diff)).mul_(w)
        return _seq_sum(diff_terms)

    iscale = _div(float(nmax), high - low, x)
    scale, offset = _div(1.0, iscale, x), low
    quantize_levels(iscale, low)
    best_error = error(scale, offset)
    # The codes are not kept per candidate: the chosen candidate's are recomputed at the end from the
    # (iscale, offset) pair that produced them, by the same operations.
    level_iscale, level_offset = iscale, low
    # Unlike make_qx_quants, each candidate here starts from the offset accepted so far, so the
    # candidates are evaluated one after another (vectorised over groups only).
    for step in range(nstep + 1):
        numerator = float(np.float32(rmin) + np.float32(rdelta) * np.float32(step) + np.float32(nmax))
        iscale = _div(numerator, high - offset, x)
        quantize_levels(iscale, offset)
        torch.mul(w, levels, out=weighted)
        torch.mul(weighted, levels, out=squares)
        torch.mul(weighted, x, out=cross)
        sum_l, sum_l2, sum_xl = _seq_sum(product_terms)
        det = sum_w * sum_l2 - sum_l * sum_l
        this_scale = _div(sum_w * sum_xl - sum_x * sum_l, det, x)
        this_min = _div(sum_l2 * sum_x - sum_l * sum_xl, det, x)
        clipped = this_min > 0
        this_scale = torch.where(clipped, _div(sum_xl, sum_l2, x), this_scale)
        this_min = torch.where(clipped, 0.0, this_min)
        this_error = error(this_scale, this_min)
        take = (det > 0) & (this_error < best_error)
        best_error = torch.where(take, this_error, best_error)
        scale = torch.where(take, this_scale, scale)
        level_iscale = torch.where(take, iscale, level_iscale)
        level_offset = torch.where(take, offset, level_offset)
        offset = torch.where(take, this_min, offset)
    flat = high <= low
    # Flat groups get codes 0 through a zero iscale (+ 0.0 turns round's -0.0 into +0.0), not through a
    # torch.where over all elements, which is slow on CPU.
    codes = quantize_levels(torch.where(flat, 0.0, level_iscale), level_offset).add_(0.0)
    return torch.where(flat, 0.0, scale), -torch.where(flat, low, offset), codes


def _refine_codes(
    x: Tensor, w: Tensor, codes: Tensor, low: float, high: float, need_sl2: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """The coordinate-descent passes of make_q3_quants / make_qp_quants; returns (sumlx, suml2, codes)."""
    sumlx = _seq_sum(w * x * codes)
    suml2 = _seq_sum(w * codes * codes)
    codes = codes.clone()
    for _ in range(5):  # C stops early when a pass changes nothing, after which passes are no-ops anyway
        for i in range(x.shape[0]):
            wi, xi, li = w[i], x[i], codes[i]
            slx = sumlx - wi * xi * li
            sl2 = suml2 - wi * li * li
            ok = (slx > 0) & (sl2 > 0) if need_sl2 else slx > 0
            new = torch.round(_div(xi * sl2, slx, x)).clamp_(low, high)
            slx = slx + wi * xi * new
            sl2 = sl2 + wi * new * new
            accept = ok & (new != li) & (sl2 > 0) & (slx * slx * suml2 > sumlx * sumlx * sl2)
            codes[i] = torch.where(accept, new, li)
            sumlx = torch.where(accept, slx, sumlx)
            suml2 = torch.where(accept, sl2, suml2)
    return sumlx, suml2, codes


def _fit_q3(x: Tensor) -> tuple[Tensor, Tensor]:
    """make_q3_quants(nmax=4, do_rmse=true) for groups x (16, G)."""
    peak = _signed_absmax(x)
    iscale = _div(-4.0, peak, x)
    codes = torch.round(iscale * x).clamp_(-4, 3)
    sumlx, suml2, codes = _refine_codes(x, x * x, codes, -4, 3, need_sl2=False)
    scale = torch.where(suml2 > 0, _div(sumlx, suml2, x), torch.zeros_like(sumlx))
    zero = peak.abs() < GROUP_MAX_EPS
    return torch.where(zero, 0.0, scale), torch.where(zero, 0.0, codes + 4)


def _fit_positive(x: Tensor, nmax: int, w: Tensor) -> tuple[Tensor, Tensor]:
    """make_qp_quants: quantize non-negative sub-block scales x (n, S) to [0, nmax] with weights w."""
    peak = torch.clamp(x.amax(dim=0), min=0.0) + 0.0
    numerators = [float(nmax)] + [float(np.float32(0.1) * np.float32(s) + np.float32(nmax)) for s in (-4, -3, -2, -1, 1, 2, 3, 4)]
    iscales = _div(torch.tensor(numerators, device=x.device).reshape(-1, 1), peak, x)  # (C, S)
    scales = _div(1.0, iscales, x)
    levels = torch.round(iscales.unsqueeze(0) * x.unsqueeze(1))
    levels[:, 1:] = levels[:, 1:].clamp(max=nmax)  # the first guess is not clamped in C
    diff = x.unsqueeze(1) - scales * levels
    mse = _seq_sum(w.unsqueeze(1) * diff * diff)
    iscale = _pick(iscales, _first_argmin(mse))
    codes = torch.round(iscale * x).clamp_(max=nmax)
    sumlx, suml2, codes = _refine_codes(x, w, codes, -np.inf, nmax, need_sl2=True)
    scale = torch.where(suml2 > 0, _div(sumlx, suml2, x), torch.zeros_like(sumlx))
    zero = peak < GROUP_MAX_EPS
    return torch.where(zero, 0.0, scale), torch.where(zero, 0.0, codes)


def _best_index(values: Tensor, x: Tensor) -> Tensor:
    """best_index_int8: the nearest entry of the sorted table, lower one only when strictly nearer."""
    upper = torch.searchsorted(values, x.contiguous(), right=True).clamp_(1, len(values) - 1)
    lower_value, upper_value = values[upper - 1], values[upper]
    index = torch.where(x - lower_value < upper_value - x, upper - 1, upper)
    index = torch.where(x <= values[0], 0, index)
    return torch.where(x >= values[-1], len(values) - 1, index)


def _fit_nonlinear(x: Tensor, w: Tensor, table: Tensor) -> Tensor:
    """The per-32 scale search of quantize_row_iq4_nl_impl (ntry=7) for groups x (32, G)."""
    return _chunked(lambda xs, ws: (_fit_nonlinear_chunk(xs, ws, table),), NONLINEAR_CHUNK, x, w)[0]


def _fit_nonlinear_chunk(x: Tensor, w: Tensor, table: Tensor) -> Tensor:
    peak = _signed_absmax(x)
    d0 = _div(-peak, table[0], x)
    inverse = torch.stack([_div(1.0, d0, x)] + [_div(float(step + IQ4NL_VALUES[0]), peak, x) for step in range(-7, 8)])
    q = table[_best_index(table, inverse.unsqueeze(0) * x.unsqueeze(1))]  # (n, C, G)
    wq = w.unsqueeze(1) * q
    sumqx = _seq_sum(wq * x.unsqueeze(1))
    sumq2 = _seq_sum(wq * q)
    d = torch.where(sumq2[0] > 0, _div(sumqx[0], sumq2[0], x), torch.zeros_like(peak))
    best = d * sumqx[0]
    for c in range(1, inverse.shape[0]):
        better = (sumq2[c] > 0) & (sumqx[c] * sumqx[c] > best * sumq2[c])
        d = torch.where(better, _div(sumqx[c], sumq2[c], x), d)
        best = torch.where(better, d * sumqx[c], best)
    return torch.where(peak.abs() < GROUP_MAX_EPS, 0.0, d)


def _imatrix_weights(x: Tensor, qw: Tensor, sigma2: Tensor) -> Tensor:
    """qw * sqrt(sigma2 + x*x), the importance weighting every *_impl quantizer uses."""
    return qw * _sqrt(sigma2 + x * x)


def _column_weights(qw: np.ndarray, n_rows: int, block: int, group: int, device: torch.device) -> Tensor:
    """Per-column importance laid out like `_group(x reshaped to blocks of `block`, group)`."""
    tiled = torch.from_numpy(qw).to(device).reshape(1, -1).expand(n_rows, -1).reshape(-1, block)
    return _group(tiled, group)


# ------------------------------------------------------------------------------------------ bit packing


def _u8(values: Tensor) -> Tensor:
    return values.to(torch.int32).bitwise_and(0xFF).to(torch.uint8)


def _half_bytes(values: Tensor) -> Tensor:
    return values.to(torch.float16).reshape(-1, 1).view(torch.uint8)


def _read_half(data: Tensor, offset: int) -> Tensor:
    # Every block size and half offset is even, so the bytes can be reinterpreted in place.
    return data[:, offset:offset + 2].view(torch.float16).reshape(-1).to(torch.float32)


def _nibbles(low: Tensor, high: Tensor) -> Tensor:
    return _u8(low.to(torch.int32) | (high.to(torch.int32) << 4))


def _crumbs(codes: Tensor) -> Tensor:
    """2-bit codes of 128-element halves: byte l of half h holds elements l, l+32, l+64, l+96."""
    c = codes.to(torch.int32).reshape(codes.shape[0], -1, 4, 32)
    return _u8(c[:, :, 0] | (c[:, :, 1] << 2) | (c[:, :, 2] << 4) | (c[:, :, 3] << 6)).reshape(codes.shape[0], -1)


def _uncrumb(data: Tensor) -> Tensor:
    b = data.to(torch.int32).reshape(data.shape[0], -1, 1, 32)
    return ((b >> torch.tensor([0, 2, 4, 6], device=data.device).reshape(1, 1, 4, 1)) & 3).reshape(data.shape[0], -1)


def _pack_6bit_scales(ls: Tensor, lm: Tensor) -> Tensor:
    """get_scale_min_k4's layout: 8 six-bit scales and 8 six-bit mins in 12 bytes."""
    ls, lm = ls.to(torch.int32), lm.to(torch.int32)
    out = torch.zeros(ls.shape[0], 12, dtype=torch.int32, device=ls.device)
    out[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    out[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    return _u8(out)


def _unpack_6bit_scales(data: Tensor) -> tuple[Tensor, Tensor]:
    q = data.to(torch.int32)
    ls = torch.cat([q[:, 0:4] & 63, (q[:, 8:12] & 0xF) | ((q[:, 0:4] >> 6) << 4)], dim=1)
    lm = torch.cat([q[:, 4:8] & 63, (q[:, 8:12] >> 4) | ((q[:, 4:8] >> 6) << 4)], dim=1)
    return ls.to(torch.float32), lm.to(torch.float32)


def _high_bit_planes(codes: Tensor, bit: int, n_planes: int) -> Tensor:
    """Byte j gets, in bit p, bit `bit` of element 32*p + j (Q3_K's hmask, Q5_K's qh)."""
    high = ((codes.to(torch.int32) >> bit) & 1).reshape(codes.shape[0], n_planes, 32)
    shifts = torch.arange(n_planes, device=codes.device, dtype=torch.int32).reshape(1, -1, 1)
    return _u8((high << shifts).sum(dim=1))


def _read_bit_planes(data: Tensor, n_planes: int) -> Tensor:
    shifts = torch.arange(n_planes, device=data.device, dtype=torch.int32).reshape(1, -1, 1)
    return ((data.to(torch.int32).reshape(data.shape[0], 1, 32) >> shifts) & 1).reshape(data.shape[0], -1)


def _pack_q5_high(codes: Tensor) -> Tensor:
    """Q5_0/Q5_1's qh: bit j of a little-endian uint32 is bit 4 of element j."""
    high = ((codes.to(torch.int64) >> 4) & 1).reshape(codes.shape[0], 4, 8)
    return _u8((high << torch.arange(8, device=codes.device).reshape(1, 1, 8)).sum(dim=2))


def _read_q5_high(data: Tensor) -> Tensor:
    bits = (data.to(torch.int32).reshape(-1, 4, 1) >> torch.arange(8, device=data.device, dtype=torch.int32).reshape(1, 1, 8)) & 1
    return bits.reshape(data.shape[0], 32)


# -------------------------------------------------------------------------------------------- formats


@dataclass(frozen=True)
class _Codec:
    encode: Callable[[Tensor, np.ndarray | None, int], dict[str, Tensor]]  # blocks, importance, n_rows
    pack: Callable[[dict[str, Tensor]], Tensor]
    unpack: Callable[[Tensor], dict[str, Tensor]]
    decode: Callable[[dict[str, Tensor]], Tensor]


def _row_sigma2(blocks: Tensor, n_rows: int) -> Tensor:
    """Mean square of each whole row (summed left to right), broadcast to the row's blocks."""
    rows = blocks.reshape(n_rows, -1).T
    per_row = _div(_seq_sum(rows * rows), float(rows.shape[0]), blocks)
    return per_row.repeat_interleave(blocks.shape[0] // n_rows)


# Q8_0 ------------------------------------------------------------------------------------------------

def _encode_q8_0(x: Tensor, qw: np.ndarray | None, n_rows: int) -> dict[str, Tensor]:
    d = _div(x.abs().amax(dim=1), 127.0, x)
    return {"d": d, "q": _round_away_int(x * _inverse_or_zero(d).unsqueeze(1))}


def _pack_q8_0(p: dict[str, Tensor]) -> Tensor:
    out = torch.empty(p["q"].shape[0], 34, dtype=torch.uint8, device=p["q"].device)
    out[:, :2] = _half_bytes(p["d"])
    out[:, 2:].view(torch.int8).copy_(p["q"])  # float to int8 in the same pass as the copy
    return out


def _decode_q8_0(p: dict[str, Tensor]) -> Tensor:
    return p["q"] * _fp16(p["d"]).unsqueeze(1)


Q8_0 = _Codec(
    _encode_q8_0,
    _pack_q8_0,
    lambda b: {"d": _read_half(b, 0), "q": b[:, 2:].view(torch.int8).to(torch.float32)},
    _decode_q8_0,
)


# Q4_0, Q5_0 (symmetric, 32 weights) ------------------------------------------------------------------

def _encode_symmetric_32(bits: int) -> Callable[[Tensor, np.ndarray | None, int], dict[str, Tensor]]:
    half = 1 << (bits - 1)

    def encode(x: Tensor, qw: np.ndarray | None, n_rows: int) -> dict[str, Tensor]:
        if qw is not None:
            sigma2 = _row_sigma2(x, n_rows)
            groups = _group(x, 32)
            weights = _imatrix_weights(groups, _column_weights(qw, n_rows, 32, 32, x.device), sigma2)
            d, codes = _fit_symmetric(groups, half, weights)
            return {"d": d, "q": _ungroup(codes, x.shape[0])}
        peak = _signed_absmax(x.T)
        d = _div(peak, float(-half), x)
        scaled = x * _inverse_or_zero(d).unsqueeze(1)
        # C truncates to int; the value is at least about 0.5 here, so floor (vectorised, unlike trunc) agrees.
        return {"d": d, "q": (scaled + (half + 0.5)).floor_().clamp_(max=2 * half - 1)}

    return encode


def _decode_symmetric(half: int) -> Callable[[dict[str, Tensor]], Tensor]:
    return lambda p: (p["q"] - half) * _fp16(p["d"]).unsqueeze(1)


# Q4_1, Q5_1 (affine, 32 weights) ---------------------------------------------------------------------

def _encode_affine_32(bits: int) -> Callable[[Tensor, np.ndarray | None, int], dict[str, Tensor]]:
    nmax = (1 << bits) - 1

    def encode(x: Tensor, qw: np.ndarray | None, n_rows: int) -> dict[str, Tensor]:
        if qw is not None:
            sigma2 = _row_sigma2(x, n_rows)
            groups = _group(x, 32)
            weights = _imatrix_weights(groups, _column_weights(qw, n_rows, 32, 32, x.device), sigma2)
            d, the_min, codes = _fit_affine(groups, nmax, weights, -0.9, 0.05, 36, False)
            return {"d": d, "m": -the_min, "q": _ungroup(codes, x.shape[0])}
        low, high = x.amin(dim=1), x.amax(dim=1)
        d = _div(high - low, float(nmax), x)
        scaled = (x - low.unsqueeze(1)) * _inverse_or_zero(d).unsqueeze(1)
        codes = (scaled + 0.5).floor_()  # non-negative, so the same as C's truncation, and vectorised
        return {"d": d, "m": low, "q": codes.clamp_(max=15) if bits == 4 else codes}

    return encode


def _decode_affine(p: dict[str, Tensor]) -> Tensor:
    return p["q"] * _fp16(p["d"]).unsqueeze(1) + _fp16(p["m"]).unsqueeze(1)


def _pack_4bit_32(q: Tensor) -> Tensor:
    return _nibbles(q[:, :16], q[:, 16:])


def _unpack_4bit_32(data: Tensor) -> Tensor:
    b = data.to(torch.int32)
    return torch.cat([b & 0xF, b >> 4], dim=1).to(torch.float32)


def _unpack_5bit_32(low: Tensor, high: Tensor) -> Tensor:
    return _unpack_4bit_32(low) + 16 * _read_q5_high(high).to(torch.float32)


Q4_0 = _Codec(
    _encode_symmetric_32(4),
    lambda p: torch.cat([_half_bytes(p["d"]), _pack_4bit_32(p["q"])], dim=1),
    lambda b: {"d": _read_half(b, 0), "q": _unpack_4bit_32(b[:, 2:])},
    _decode_symmetric(8),
)
Q5_0 = _Codec(
    _encode_symmetric_32(5),
    lambda p: torch.cat([_half_bytes(p["d"]), _pack_q5_high(p["q"]), _pack_4bit_32(p["q"].remainder(16))], dim=1),
    lambda b: {"d": _read_half(b, 0), "q": _unpack_5bit_32(b[:, 6:], b[:, 2:6])},
    _decode_symmetric(16),
)
Q4_1 = _Codec(
    _encode_affine_32(4),
    lambda p: torch.cat([_half_bytes(p["d"]), _half_bytes(p["m"]), _pack_4bit_32(p["q"])], dim=1),
    lambda b: {"d": _read_half(b, 0), "m": _read_half(b, 2), "q": _unpack_4bit_32(b[:, 4:])},
    _decode_affine,
)
Q5_1 = _Codec(
    _encode_affine_32(5),
    lambda p: torch.cat([_half_bytes(p["d"]), _half_bytes(p["m"]), _pack_q5_high(p["q"]), _pack_4bit_32(p["q"].remainder(16))], dim=1),
    lambda b: {"d": _read_half(b, 0), "m": _read_half(b, 2), "q": _unpack_5bit_32(b[:, 8:], b[:, 4:8])},
    _decode_affine,
)


# Q2_K ------------------------------------------------------------------------------------------------

def _superblock_sigma2(x: Tensor, factor: float) -> Tensor:
    """factor * (sum of squares of each 256-weight super-block, left to right), as (S,)."""
    t = x.T
    return _seq_sum(t * t) * _k(factor, x)


def _requantize(x: Tensor, d: Tensor, offset: Tensor | None, low: int, high: int, codes: Tensor) -> Tensor:
    """Final codes from the stored (rounded) scales; groups whose scale is 0 keep their search codes.

    x, codes: (S, n_sub, sub); d, offset: (S, n_sub) in float32 as C computes them.
    """
    shifted = x if offset is None else x + offset.unsqueeze(-1)
    fresh = torch.round(_div(shifted, d.unsqueeze(-1), x)).clamp_(low, high)
    # Only the (rare) zero-scale sub-blocks are copied over: a torch.where over every element is slow on CPU.
    kept = d == 0
    fresh[kept] = codes[kept]
    return fresh


def _encode_q2_k(x: Tensor, qw: np.ndarray | None, n_rows: int) -> dict[str, Tensor]:
    n_blocks = x.shape[0]
    groups = _group(x, 16)
    if qw is None:
        scales, mins, codes = _fit_affine(groups, 3, groups.abs(), -0.5, 0.1, 15, True)
        scales, mins = scales.reshape(n_blocks, 16), mins.reshape(n_blocks, 16)
        max_scale = torch.clamp(scales.amax(dim=1), min=0.0) + 0.0  # C's running max starts at +0.0
        max_min = torch.clamp(mins.amax(dim=1), min=0.0) + 0.0
        ls = torch.round(scales * _div(15.0, max_scale, x).unsqueeze(1))
        lm = torch.round(mins * _div(15.0, max_min, x).unsqueeze(1))
        ls = torch.where((max_scale > 0).unsqueeze(1), ls, 0.0)
        lm = torch.where((max_min > 0).unsqueeze(1), lm, 0.0)
        d = torch.where(max_scale > 0, _div(max_scale, 15.0, x), 0.0)
        dmin = torch.where(max_min > 0, _div(max_min, 15.0, x), 0.0)
    else:
        sigma2 = _superblock_sigma2(x, 1.0 / QK_K).repeat_interleave(16)
        weights = _imatrix_weights(groups, _column_weights(qw, n_rows, QK_K, 16, x.device), sigma2)
        sw = _seq_sum(weights)
        scales, mins, codes = _fit_affine(groups, 3, weights, -0.9, 0.05, 36, False)
        sw = sw.reshape(n_blocks, 16).T.contiguous()
        d, ls = _fit_positive(scales.reshape(n_blocks, 16).T.contiguous(), 15, sw)
        dmin, lm = _fit_positive(mins.reshape(n_blocks, 16).T.contiguous(), 15, sw)
        ls, lm = ls.T, lm.T
    byte = (ls.to(torch.int32) & 0xFF) | (lm.to(torch.int32) << 4)
    byte = byte & 0xFF
    dq, mq = _fp16(d).unsqueeze(1) * (byte & 0xF), _fp16(dmin).unsqueeze(1) * (byte >> 4)
    codes = _requantize(x.reshape(n_blocks, 16, 16), dq, mq, 0, 3, _ungroup(codes, n_blocks).reshape(n_blocks, 16, 16))
    return {"scales": byte, "d": d, "dmin": dmin, "q": codes.reshape(n_blocks, QK_K)}


def _decode_q2_k(p: dict[str, Tensor]) -> Tensor:
    byte = p["scales"]
    dl = _fp16(p["d"]).unsqueeze(1) * (byte & 0xF)
    ml = _fp16(p["dmin"]).unsqueeze(1) * (byte >> 4)
    return (dl.unsqueeze(-1) * p["q"].reshape(-1, 16, 16) - ml.unsqueeze(-1)).reshape(-1, QK_K)


Q2_K = _Codec(
    _encode_q2_k,
    lambda p: torch.cat([_u8(p["scales"]), _crumbs(p["q"]), _half_bytes(p["d"]), _half_bytes(p["dmin"])], dim=1),
    lambda b: {"scales": b[:, :16].to(torch.int32), "q": _uncrumb(b[:, 16:80]).to(torch.float32),
               "d": _read_half(b, 80), "dmin": _read_half(b, 82)},
    _decode_q2_k,
)


# Q3_K ------------------------------------------------------------------------------------------------

def _encode_q3_k(x: Tensor, qw: np.ndarray | None, n_rows: int) -> dict[str, Tensor]:
    n_blocks = x.shape[0]
    groups = _group(x, 16)
    if qw is None:
        scales, codes = _fit_q3(groups)
        scales = scales.reshape(n_blocks, 16)
        max_scale = _signed_absmax(scales.T)
        iscale = _div(-32.0, max_scale, x)
        levels = torch.round(iscale.unsqueeze(1) * scales).clamp_(-32, 31) + 32
        levels = torch.where((max_scale != 0).unsqueeze(1), levels, 0.0)
        d = torch.where(max_scale != 0, _div(1.0, iscale, x), 0.0)
    else:
        sigma2 = _superblock_sigma2(x, 2.0 / QK_K).repeat_interleave(16)
        weights = _imatrix_weights(groups, _column_weights(qw, n_rows, QK_K, 16, x.device), sigma2)
        sw = _seq_sum(weights)
        scales, codes = _fit_symmetric(groups, 4, weights)
        d, levels = _fit_symmetric(scales.reshape(n_blocks, 16).T.contiguous(), 32, sw.reshape(n_blocks, 16).T.contiguous())
        levels = levels.T
    dq = _fp16(d).unsqueeze(1) * (levels - 32)
    codes = _requantize(x.reshape(n_blocks, 16, 16), dq, None, -4, 3, _ungroup(codes, n_blocks).reshape(n_blocks, 16, 16) - 4)
    return {"scales": levels, "d": d, "q": codes.reshape(n_blocks, QK_K) + 4}


def _pack_q3_k(p: dict[str, Tensor]) -> Tensor:
    levels = p["scales"].to(torch.int32)
    packed = torch.zeros(levels.shape[0], 12, dtype=torch.int32, device=levels.device)
    packed[:, 0:8] = (levels[:, 0:8] & 0xF) | ((levels[:, 8:16] & 0xF) << 4)
    high = (levels >> 4).reshape(-1, 4, 4)  # [j // 4, j % 4]
    packed[:, 8:12] = high[:, 0] | (high[:, 1] << 2) | (high[:, 2] << 4) | (high[:, 3] << 6)
    codes = p["q"]
    return torch.cat([_high_bit_planes(codes, 2, 8), _crumbs(codes.remainder(4)), _u8(packed), _half_bytes(p["d"])], dim=1)


def _unpack_q3_k(b: Tensor) -> dict[str, Tensor]:
    s = b[:, 96:108].to(torch.int32)
    low = torch.cat([s[:, 0:8] & 0xF, s[:, 0:8] >> 4], dim=1)
    high = (s[:, 8:12].unsqueeze(1) >> (2 * torch.arange(4, device=b.device, dtype=torch.int32)).reshape(1, 4, 1)) & 3
    levels = low | (high.reshape(-1, 16) << 4)
    codes = _uncrumb(b[:, 32:96]) + 4 * _read_bit_planes(b[:, 0:32], 8)
    return {"scales": levels.to(torch.float32), "q": codes.to(torch.float32), "d": _read_half(b, 108)}


def _decode_q3_k(p: dict[str, Tensor]) -> Tensor:
    dl = _fp16(p["d"]).unsqueeze(1) * (p["scales"] - 32)
    return (dl.unsqueeze(-1) * (p["q"].reshape(-1, 16, 16) - 4)).reshape(-1, QK_K)


Q3_K = _Codec(_encode_q3_k, _pack_q3_k, _unpack_q3_k, _decode_q3_k)


# Q4_K, Q5_K ------------------------------------------------------------------------------------------

def _encode_affine_k(bits: int) -> Callable[[Tensor, np.ndarray | None, int], dict[str, Tensor]]:
    nmax = (1 << bits) - 1

    def encode(x: Tensor, qw: np.ndarray | None, n_rows: int) -> dict[str, Tensor]:
        n_blocks = x.shape[0]
        groups = _group(x, 32)
        if qw is None:
            av_x = _sqrt(_div(_seq_sum(groups * groups), 32.0, x))
            weights = av_x + groups.abs()
            search = (-1.0, 0.1, 20) if bits == 4 else (-0.5, 0.1, 15)
            scales, mins, codes = _fit_affine(groups, nmax, weights, *search, False)
            scales, mins = scales.reshape(n_blocks, 8), mins.reshape(n_blocks, 8)
            max_scale = torch.clamp(scales.amax(dim=1), min=0.0) + 0.0  # C's running max starts at +0.0
            max_min = torch.clamp(mins.amax(dim=1), min=0.0) + 0.0
            inv_scale = torch.where(max_scale > 0, _div(63.0, max_scale, x), 0.0)
            inv_min = torch.where(max_min > 0, _div(63.0, max_min, x), 0.0)
            # C stores nearest_int into a uint8 before MIN(63, .), so negative values wrap.
            ls = torch.round(inv_scale.unsqueeze(1) * scales).remainder(256).clamp_(max=63)
            lm = torch.round(inv_min.unsqueeze(1) * mins).remainder(256).clamp_(max=63)
            d, dmin = _div(max_scale, 63.0, x), _div(max_min, 63.0, x)
        else:
            sigma2 = _superblock_sigma2(x, 2.0 / QK_K).repeat_interleave(8)
            weights = _imatrix_weights(groups, _column_weights(qw, n_rows, QK_K, 32, x.device), sigma2)
            sw = _seq_sum(weights).reshape(n_blocks, 8).T.contiguous()
            scales, mins, codes = _fit_affine(groups, nmax, weights, -0.9, 0.05, 36, False)
            d, ls = _fit_positive(scales.reshape(n_blocks, 8).T.contiguous(), 63, sw)
            dmin, lm = _fit_positive(mins.reshape(n_blocks, 8).T.contiguous(), 63, sw)
            ls, lm = ls.T.remainder(256).clamp(max=63), lm.T.remainder(256).clamp(max=63)
        dq, mq = _fp16(d).unsqueeze(1) * ls, _fp16(dmin).unsqueeze(1) * lm
        codes = _requantize(x.reshape(n_blocks, 8, 32), dq, mq, 0, nmax, _ungroup(codes, n_blocks).reshape(n_blocks, 8, 32))
        return {"d": d, "dmin": dmin, "ls": ls, "lm": lm, "q": codes.reshape(n_blocks, QK_K)}

    return encode


def _decode_affine_k(p: dict[str, Tensor]) -> Tensor:
    d1 = _fp16(p["d"]).unsqueeze(1) * p["ls"]
    m1 = _fp16(p["dmin"]).unsqueeze(1) * p["lm"]
    return (d1.unsqueeze(-1) * p["q"].reshape(-1, 8, 32) - m1.unsqueeze(-1)).reshape(-1, QK_K)


def _pair_nibbles(codes: Tensor) -> Tensor:
    """Q4_K/Q5_K low nibbles: byte l of chunk c holds elements 64c + l (low) and 64c + 32 + l (high)."""
    c = codes.reshape(codes.shape[0], 4, 2, 32)
    return _nibbles(c[:, :, 0], c[:, :, 1]).reshape(codes.shape[0], 128)


def _unpair_nibbles(data: Tensor) -> Tensor:
    b = data.to(torch.int32).reshape(-1, 4, 1, 32)
    return torch.cat([b & 0xF, b >> 4], dim=2).reshape(data.shape[0], QK_K)


def _unpack_affine_k(b: Tensor, with_high: bool) -> dict[str, Tensor]:
    ls, lm = _unpack_6bit_scales(b[:, 4:16])
    q = _unpair_nibbles(b[:, 48:] if with_high else b[:, 16:])
    if with_high:
        # qh bit 2c holds element 64c + l's fifth bit, bit 2c+1 element 64c + 32 + l's.
        q = q + 16 * _read_bit_planes(b[:, 16:48], 8)
    return {"d": _read_half(b, 0), "dmin": _read_half(b, 2), "ls": ls, "lm": lm, "q": q.to(torch.float32)}


Q4_K = _Codec(
    _encode_affine_k(4),
    lambda p: torch.cat([_half_bytes(p["d"]), _half_bytes(p["dmin"]), _pack_6bit_scales(p["ls"], p["lm"]), _pair_nibbles(p["q"])], dim=1),
    lambda b: _unpack_affine_k(b, with_high=False),
    _decode_affine_k,
)
Q5_K = _Codec(
    _encode_affine_k(5),
    lambda p: torch.cat([
        _half_bytes(p["d"]), _half_bytes(p["dmin"]), _pack_6bit_scales(p["ls"], p["lm"]),
        _high_bit_planes(p["q"], 4, 8), _pair_nibbles(p["q"].remainder(16)),
    ], dim=1),
    lambda b: _unpack_affine_k(b, with_high=True),
    _decode_affine_k,
)


# Q6_K ------------------------------------------------------------------------------------------------

def _encode_q6_k(x: Tensor, qw: np.ndarray | None, n_rows: int) -> dict[str, Tensor]:
    n_blocks = x.shape[0]
    groups = _group(x, 16)
    weights = None if qw is None else _column_weights(qw, n_rows, QK_K, 16, x.device)
    scales, codes = _fit_symmetric(groups, 32, weights)
    scales = scales.reshape(n_blocks, 16)
    max_scale = _signed_absmax(scales.T)
    live = max_scale.abs() >= GROUP_MAX_EPS
    iscale = _div(-128.0, max_scale, x)
    levels = torch.round(iscale.unsqueeze(1) * scales).clamp_(max=127)
    d = _div(1.0, iscale, x)
    dq = _fp16(d).unsqueeze(1) * levels
    codes = _requantize(x.reshape(n_blocks, 16, 16), dq, None, -32, 31, _ungroup(codes, n_blocks).reshape(n_blocks, 16, 16) - 32) + 32
    # A block whose every sub-block scale is ~0 is written as all-zero bytes (its codes may be NaN).
    return {
        "d": torch.where(live, d, 0.0),
        "scales": torch.where(live.unsqueeze(1), levels, 0.0),
        "q": torch.where(live.unsqueeze(1), codes.reshape(n_blocks, QK_K), 0.0),
    }


def _pack_q6_k(p: dict[str, Tensor]) -> Tensor:
    q = p["q"].to(torch.int32).reshape(-1, 2, 4, 32)  # [half, quarter, l]
    low = q & 0xF
    ql = torch.stack([low[:, :, 0] | (low[:, :, 2] << 4), low[:, :, 1] | (low[:, :, 3] << 4)], dim=2).reshape(-1, 128)
    high = q >> 4
    qh = (high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4) | (high[:, :, 3] << 6)).reshape(-1, 64)
    return torch.cat([_u8(ql), _u8(qh), p["scales"].to(torch.int8).view(torch.uint8), _half_bytes(p["d"])], dim=1)


def _unpack_q6_k(b: Tensor) -> dict[str, Tensor]:
    ql = b[:, :128].to(torch.int32).reshape(-1, 2, 2, 32)  # [half, which 32 bytes, l]
    qh = b[:, 128:192].to(torch.int32).reshape(-1, 2, 1, 32)
    low = torch.stack([ql[:, :, 0] & 0xF, ql[:, :, 1] & 0xF, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], dim=2)
    high = (qh >> (2 * torch.arange(4, device=b.device, dtype=torch.int32)).reshape(1, 1, 4, 1)) & 3
    q = (low | (high << 4)).reshape(-1, QK_K)
    scales = b[:, 192:208].contiguous().view(torch.int8).to(torch.float32)
    return {"q": q.to(torch.float32), "scales": scales, "d": _read_half(b, 208)}


def _decode_q6_k(p: dict[str, Tensor]) -> Tensor:
    dl = _fp16(p["d"]).unsqueeze(1) * p["scales"]
    return (dl.unsqueeze(-1) * (p["q"].reshape(-1, 16, 16) - 32)).reshape(-1, QK_K)


Q6_K = _Codec(_encode_q6_k, _pack_q6_k, _unpack_q6_k, _decode_q6_k)


# IQ4_NL, IQ4_XS --------------------------------------------------------------------------------------

def _iq4_table(like: Tensor) -> Tensor:
    return torch.tensor(IQ4NL_VALUES, dtype=torch.float32, device=like.device)


def _iq4_groups(x: Tensor, qw: np.ndarray | None, n_rows: int, block: int) -> tuple[Tensor, Tensor]:
    groups = _group(x, 32)
    if qw is None:
        return groups, groups * groups
    sigma2 = _superblock_sigma2(x, 2.0 / block).repeat_interleave(block // 32)
    return groups, _imatrix_weights(groups, _column_weights(qw, n_rows, block, 32, x.device), sigma2)


def _encode_iq4_nl(x: Tensor, qw: np.ndarray | None, n_rows: int) -> dict[str, Tensor]:
    table = _iq4_table(x)
    groups, weights = _iq4_groups(x, qw, n_rows, 32)
    d = _fit_nonlinear(groups, weights, table)
    return {"d": d, "q": _best_index(table, _inverse_or_zero(d).unsqueeze(1) * x).to(torch.float32)}


def _encode_iq4_xs(x: Tensor, qw: np.ndarray | None, n_rows: int) -> dict[str, Tensor]:
    table = _iq4_table(x)
    n_blocks = x.shape[0]
    groups, weights = _iq4_groups(x, qw, n_rows, QK_K)
    scales = _fit_nonlinear(groups, weights, table).reshape(n_blocks, 8)
    d = _div(-_signed_absmax(scales.T), 32.0, x)
    levels = torch.round(_inverse_or_zero(d).unsqueeze(1) * scales).clamp_(-32, 31)
    idl = _inverse_or_zero(d.unsqueeze(1) * levels)
    q = _best_index(table, idl.unsqueeze(-1) * x.reshape(n_blocks, 8, 32))
    return {"d": d, "scales": levels + 32, "q": q.reshape(n_blocks, QK_K).to(torch.float32)}


def _pack_iq4_xs(p: dict[str, Tensor]) -> Tensor:
    levels = p["scales"].to(torch.int32)
    low = levels & 0xF
    high = ((levels >> 4) << (2 * torch.arange(8, device=levels.device, dtype=torch.int32))).sum(dim=1)
    scales_h = torch.stack([high & 0xFF, high >> 8], dim=1)
    return torch.cat([_half_bytes(p["d"]), _u8(scales_h), _nibbles(low[:, 0::2], low[:, 1::2]), _nibbles(
        p["q"].reshape(-1, 8, 2, 16)[:, :, 0].reshape(-1, 128), p["q"].reshape(-1, 8, 2, 16)[:, :, 1].reshape(-1, 128))], dim=1)


def _unpack_iq4_xs(b: Tensor) -> dict[str, Tensor]:
    high = b[:, 2].to(torch.int32) | (b[:, 3].to(torch.int32) << 8)
    high = (high.unsqueeze(1) >> (2 * torch.arange(8, device=b.device, dtype=torch.int32))) & 3
    low = b[:, 4:8].to(torch.int32)
    levels = torch.stack([low & 0xF, low >> 4], dim=2).reshape(-1, 8) | (high << 4)
    qs = b[:, 8:].to(torch.int32).reshape(-1, 8, 1, 16)
    q = torch.cat([qs & 0xF, qs >> 4], dim=2).reshape(-1, QK_K)
    return {"d": _read_half(b, 0), "scales": levels.to(torch.float32), "q": q.to(torch.float32)}


def _decode_iq4(p: dict[str, Tensor]) -> Tensor:
    values = _iq4_table(p["q"])[p["q"].to(torch.long)]
    d = _fp16(p["d"]).unsqueeze(1)
    if "scales" not in p:
        return d * values
    dl = d * (p["scales"] - 32)
    return (dl.unsqueeze(-1) * values.reshape(-1, 8, 32)).reshape(-1, QK_K)


IQ4_NL = _Codec(
    _encode_iq4_nl,
    lambda p: torch.cat([_half_bytes(p["d"]), _pack_4bit_32(p["q"])], dim=1),
    lambda b: {"d": _read_half(b, 0), "q": _unpack_4bit_32(b[:, 2:])},
    _decode_iq4,
)
IQ4_XS = _Codec(_encode_iq4_xs, _pack_iq4_xs, _unpack_iq4_xs, _decode_iq4)


# F16, BF16, F32: one "block" per weight, the code is the value itself -----------------------------------

def _float_codec(dtype: torch.dtype) -> _Codec:
    def encode(x: Tensor, qw: np.ndarray | None, n_rows: int) -> dict[str, Tensor]:
        return {"v": x.to(dtype)}

    return _Codec(
        encode,
        lambda p: p["v"].contiguous().view(torch.uint8),
        lambda b: {"v": b.contiguous().view(dtype)},
        lambda p: p["v"].to(torch.float32),
    )


CODECS: dict[str, _Codec] = {
    "Q8_0": Q8_0, "Q4_0": Q4_0, "Q4_1": Q4_1, "Q5_0": Q5_0, "Q5_1": Q5_1,
    "Q2_K": Q2_K, "Q3_K": Q3_K, "Q4_K": Q4_K, "Q5_K": Q5_K, "Q6_K": Q6_K,
    "IQ4_NL": IQ4_NL, "IQ4_XS": IQ4_XS,
    "F16": _float_codec(torch.float16), "BF16": _float_codec(torch.bfloat16), "F32": _float_codec(torch.float32),
}


# ---------------------------------------------------------------------------------------------- entry points

# Weights per call of an encoder: one scale-search chunk of groups, and enough slices to keep every
# worker busy to the end.
_ROWS_WEIGHTS = 1 << 18


def _codec(fmt: Format) -> _Codec:
    from ramp.errors import RampError

    try:
        return CODECS[fmt.name]
    except KeyError:
        raise RampError(f"the torch backend has no {fmt.name} kernel; use backend='ggml' for it") from None



def _row_slices(rows: Tensor, n_workers: int) -> list[tuple[int, int]]:
    """Row ranges of at most _ROWS_WEIGHTS weights, and at least one per worker when there are enough rows."""
    n_rows = rows.shape[0]
    step = max(1, min(_ROWS_WEIGHTS // rows.shape[1], -(-n_rows // n_workers)))
    return [(start, min(start + step, n_rows)) for start in range(0, n_rows, step)]


_threads_lock = threading.Lock()
_single_threaded_depth = 0
_saved_num_threads = 1


@contextmanager
def _single_threaded_ops() -> Iterator[None]:
    """Torch's intra-op threads off for the duration (process-wide; new threads inherit the setting).

    An intra-op parallel region waits for all its threads at every operation, and the encoders run
    thousands of small operations: on a loaded machine one descheduled thread stalls each of them for a
    time slice (measured: 15 ms instead of 0.1 ms per 1M-element op at load 9 on 2 cores). Row slices on
    one Python thread per core instead never wait for each other; torch releases the GIL inside ops.
    Concurrent callers share one setting: the first in saves the thread count, the last out restores it.
    """
    global _single_threaded_depth, _saved_num_threads
    with _threads_lock:
        if _single_threaded_depth == 0:
            _saved_num_threads = torch.get_num_threads()
            torch.set_num_threads(1)
        _single_threaded_depth += 1
    try:
        yield
    finally:
        with _threads_lock:
            _single_threaded_depth -= 1
            if _single_threaded_depth == 0:
                torch.set_num_threads(_saved_num_threads)


def _map_rows(rows: Tensor, fn: Callable[[int, int], Tensor | None]) -> list[Tensor | None]:
    """fn(start, stop) over row slices: on CPU one single-threaded slice per core at a time, in order."""
    if rows.device.type != "cpu":
        return [fn(a, b) for a, b in _row_slices(rows, 1)]
    n_workers = usable_cores()
    with _single_threaded_ops(), ThreadPoolExecutor(max_workers=n_workers) as pool:
        return list(pool.map(lambda bounds: fn(*bounds), _row_slices(rows, n_workers)))


_NUMPY_DTYPES = {torch.uint8: np.uint8, torch.float32: np.float32}


def _empty_like_rows(rows: Tensor, row_length: int, dtype: torch.dtype) -> Tensor:
    """An uninitialised (n_rows, row_length) output on `rows`' device that slices are copied into.

    On CPU it is a numpy array's memory: numpy backs large arrays with huge pages, so filling it costs
    far fewer page faults than torch's fresh allocations do (page faults were most of the time of
    dequantizing into a torch.cat of slices).
    """
    if rows.device.type == "cpu":
        return torch.from_numpy(np.empty((rows.shape[0], row_length), dtype=_NUMPY_DTYPES[dtype]))
    return torch.empty(rows.shape[0], row_length, dtype=dtype, device=rows.device)


def _encode(rows: Tensor, fmt: Format, importance: np.ndarray | None, start: int, stop: int) -> dict[str, Tensor]:
    chunk = rows[start:stop]
    return _codec(fmt).encode(chunk.reshape(-1, fmt.block_size), importance, stop - start)


def quantize(rows: Tensor, fmt: Format, importance: np.ndarray | None) -> np.ndarray:
    """llama.cpp's packed bytes for float32 rows (n_rows, row_length) whose length `fmt` fits."""
    codec = _codec(fmt)
    out = _empty_like_rows(rows, fmt.tensor_bytes(1, rows.shape[1]), torch.uint8)

    def pack(start: int, stop: int) -> None:
        # Written in place while the slice's bytes are still in cache, instead of concatenated at the end.
        out[start:stop].view(-1).copy_(codec.pack(_encode(rows, fmt, importance, start, stop)).reshape(-1))

    _map_rows(rows, pack)
    return out.reshape(-1).cpu().numpy()


def quantize_dequantize(rows: Tensor, fmt: Format, importance: np.ndarray | None) -> Tensor:
    """The float32 weights llama.cpp computes with, without packing bytes (same device as `rows`)."""
    codec = _codec(fmt)
    out = _empty_like_rows(rows, rows.shape[1], torch.float32)

    def decode(start: int, stop: int) -> None:
        out[start:stop].copy_(codec.decode(_encode(rows, fmt, importance, start, stop)).reshape(stop - start, -1))

    _map_rows(rows, decode)
    return out


def dequantize(packed: np.ndarray, fmt: Format, n_rows: int, row_length: int) -> np.ndarray:
    """Float32 (n_rows, row_length) from llama.cpp's packed bytes (length already checked by the caller)."""
    codec = _codec(fmt)
    data = torch.from_numpy(np.ascontiguousarray(packed)).reshape(n_rows, -1)
    out = _empty_like_rows(data, row_length, torch.float32)

    def decode(start: int, stop: int) -> None:
        out[start:stop].copy_(codec.decode(codec.unpack(data[start:stop].reshape(-1, fmt.block_bytes))).reshape(stop - start, -1))

    _map_rows(data, decode)
    return out.numpy()
