"""`ramp imatrix [MODEL] --out imatrix.gguf`: llama.cpp's importance matrix of a model on calibration text,
computed by ramp's forward and written in llama-imatrix's GGUF format, so `llama-quantize --imatrix` and
ramp's own quantization read the same file."""
from __future__ import annotations

import argparse

from ramp.measure.calibration import IMATRIX
from ramp.commands._options import add_calibration_arguments, add_fold_argument, add_text_argument, calibration_of, load_model_for


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="GGUF file or a name from `ramp models` (default: smollm2-135m)")
    parser.add_argument("--out", required=True, help="imatrix GGUF to write")
    add_calibration_arguments(parser, IMATRIX, "the statistics (the window is llama-imatrix's -c)")
    add_text_argument(parser, "calibrate on")
    add_fold_argument(parser, "measuring it")


def paths(args: argparse.Namespace) -> tuple[dict, dict]:
    """Inputs and outputs, checked against each other by `ramp.cli` before the command runs."""
    return {"MODEL": args.model}, {"--out": args.out}


def run(args: argparse.Namespace) -> int:
    import shutil
    import time

    from ramp.files import atomic_path, check_output_path
    from ramp.measure.imatrix import cached_imatrix
    from ramp.models.text import check_text

    check_output_path(args.out)
    check_text(args.text)
    calibration = calibration_of(args, args.tokens)
    model = load_model_for(args)
    started = time.perf_counter()
    matrix, cached = cached_imatrix(model, calibration)
    with atomic_path(args.out) as tmp:
        shutil.copyfile(cached, tmp)
    print(f"wrote {args.out}: {len(matrix.sums)} tensors, {matrix.chunk_count} chunks of {matrix.chunk_size} tokens "
          f"({args.text}), {time.perf_counter() - started:.1f} s")
    return 0
