"""Throughput of the ggml and torch kernel backends, and their quantization error, per format.

    python -m benchmarks.kernels --size 4096 --formats Q4_K,Q6_K,Q8_0

Prints a Markdown table (weights quantized per second, and relative RMS error of the round trip).
Both backends use every core: libggml through ramp's row-chunk threads, torch through one
single-threaded worker per core. Each timing is the best of --repeats runs, the two backends alternating,
so that on a shared machine both see the same load and the ratio column stays meaningful.
"""
from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

from ramp.kernels import dequantize, quantize
from ramp.machine import usable_cores

DEFAULT_FORMATS = "Q8_0,Q4_0,Q4_1,Q5_0,Q5_1,Q2_K,Q3_K,Q4_K,Q5_K,Q6_K,IQ4_NL,IQ4_XS,F16,BF16"


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _best_of(repeats: int, fns: list[Callable[[], object]]) -> list[tuple[float, object]]:
    """Per function, the shortest time of `repeats` rounds that run every function once in turn."""
    best: list[tuple[float, object]] = [(float("inf"), None)] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            elapsed, result = _timed(fn)
            if elapsed < best[i][0]:
                best[i] = (elapsed, result)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="the matrix is size x size")
    parser.add_argument("--formats", default=DEFAULT_FORMATS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5, help="report the best of this many runs")
    args = parser.parse_args(argv)

    x = np.random.default_rng(args.seed).standard_normal((args.size, args.size)).astype(np.float32)
    warm = x[:8, :512].copy()
    rows = []
    for fmt in tqdm(args.formats.split(","), desc="formats"):
        for backend in ("ggml", "torch"):
            quantize(warm, fmt, backend=backend)  # first-call costs (library loading, kernel dispatch)
        (t_ggml, packed), (t_torch, packed_torch) = _best_of(
            args.repeats, [lambda: quantize(x, fmt, backend="ggml"), lambda: quantize(x, fmt, backend="torch")]
        )
        (t_deq_ggml, y), (t_deq_torch, _) = _best_of(
            args.repeats, [lambda: dequantize(packed, fmt, x.shape, backend="ggml"),
                           lambda: dequantize(packed, fmt, x.shape, backend="torch")]
        )
        rel_rms = float(np.sqrt(np.mean((y - x) ** 2) / np.mean(x**2)))
        rows.append((fmt, x.size / t_ggml, x.size / t_torch, t_torch / t_ggml, x.size / t_deq_ggml,
                     x.size / t_deq_torch, rel_rms, bool(np.array_equal(packed, packed_torch))))
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"\nmatrix {args.size}x{args.size}, torch {torch.__version__}, {usable_cores()} cores, best of {args.repeats}, "
          f"load average at the end {load}\n")
    print("| format | ggml quantize (Mw/s) | torch quantize (Mw/s) | torch/ggml time | ggml dequantize (Mw/s) "
          "| torch dequantize (Mw/s) | rel. RMS error | bytes identical |")
    print("|---|---|---|---|---|---|---|---|")
    for fmt, qg, qt, ratio, dg, dt, err, same in rows:
        print(f"| {fmt} | {qg / 1e6:.1f} | {qt / 1e6:.1f} | {ratio:.2f}x | {dg / 1e6:.0f} | {dt / 1e6:.0f} | {err:.4f} | {'yes' if same else 'NO'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
