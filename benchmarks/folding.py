"""Scale Folding at low bits: the embedded model quantized uniformly (Q3_K and Q2_K requests) with and
without folding, measured through llama.cpp against the unfolded F32 reference on held-out text.

    python -m benchmarks.folding --alphas 0.5 --windows 8

Most SmolLM2 tensors have 576-wide rows, which do not fit 256-weight K-quant super-blocks: llama.cpp writes
them as Q4_0, so the "real formats" column says what each file holds. The folded F32 row checks that the
fold itself costs nothing (it differs from the reference only by float32 rounding). Prints the markdown
table for the `## Scale Folding` section of docs/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="GGUF file or a name from `ramp models` (default: the embedded SmolLM2)")
    parser.add_argument("--requests", default="Q3_K,Q2_K", help="uniform formats requested (default Q3_K,Q2_K)")
    parser.add_argument("--alphas", default="0.5", help="comma-separated folding strengths (default 0.5)")
    parser.add_argument("--fold-tokens", type=int, default=None,
                        help="calibration tokens for activation maxima (default: ramp.measure.calibration.FOLD's)")
    parser.add_argument("--windows", type=int, default=8, help="evaluation windows (default 8)")
    parser.add_argument("--ctx", type=int, default=512, help="tokens per evaluation window (default 512)")
    parser.add_argument("--work", default=".cache/bench-folding", help="folder for the GGUF files")
    args = parser.parse_args(argv)

    from ramp.export.gguf_writer import write_gguf, write_reference
    from ramp.measure.calibration import FOLD
    from ramp.measure.folding import fold_with_calibration
    from ramp.kernels.formats import resolve_format
    from ramp.evaluate.llama_eval import evaluate, make_windows, reference_logprobs
    from ramp.models import load_model
    from ramp.models.text import evaluation_text

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model)
    reference_path = work / "reference-F32.gguf"
    write_reference(model, reference_path, "F32", progress=False)
    windows = make_windows(reference_path, evaluation_text(), args.ctx, max_windows=args.windows)
    reference = reference_logprobs(reference_path, windows)

    variants = [("none", model)]
    for alpha in (float(a) for a in args.alphas.split(",")):
        started = time.perf_counter()
        variants.append((f"alpha {alpha}", fold_with_calibration(model, alpha, FOLD.sized(tokens=args.fold_tokens))))
        print(f"folded alpha {alpha} in {time.perf_counter() - started:.0f} s")

    rows = []
    for label, variant in variants[1:]:
        path = work / f"folded-{label.replace(' ', '')}-F32.gguf"
        write_reference(variant, path, "F32", progress=False)
        rows.append(("F32", "F32", label, evaluate(path, reference, windows)))
    for request in args.requests.split(","):
        formats = {spec.name: request for spec in model.quantizable}
        real = Counter(resolve_format(request, spec.row_length).name for spec in model.quantizable)
        real_text = ", ".join(f"{fmt} x{count}" for fmt, count in real.most_common())
        for label, variant in variants:
            path = work / f"{request}-{label.replace(' ', '')}.gguf"
            write_gguf(variant, formats, path, progress=False)
            rows.append((request, real_text, label, evaluate(path, reference, windows)))

    print(f"\n{windows.n_scored} scored tokens ({args.windows} windows of {windows.n_ctx}) of evaluation text\n")
    print("| request | real formats (tensors) | folding | bits/weight | file MiB | perplexity | KLD mean | KLD p99 | top-1 agreement |")
    print("|---|---|---|---|---|---|---|---|---|")
    for request, real_text, label, result in rows:
        print(f"| {request} | {real_text} | {label} | {result.bits_per_weight:.3f} | {result.file_bytes / 2**20:.1f} | "
              f"{result.perplexity:.3f} | {result.kld_mean:.4f} | {result.kld_p99:.4f} | {result.top1_agreement:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
