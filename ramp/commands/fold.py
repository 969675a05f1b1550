"""`ramp fold MODEL --alpha 0.5 --out folded.gguf`: Scale Folding, written as a GGUF that computes the same
function with activation outliers moved into the weights (quantize it afterwards with `ramp export`)."""
from __future__ import annotations

import argparse

from ramp.measure.calibration import FOLD
from ramp.commands._options import add_calibration_arguments, calibration_of


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="GGUF file or a name from `ramp models` (default: smollm2-135m)")
    parser.add_argument("--alpha", type=float, default=0.5,
                        help="migration strength in [0, 1]: 0 flattens weight columns, 1 flattens activations (default 0.5)")
    parser.add_argument("--out", required=True, help="folded GGUF to write")
    add_calibration_arguments(parser, FOLD, "the activation maxima")
    parser.add_argument("--type", choices=("F32", "F16"), default="F32",
                        help="type of the folded weights in the file (default F32: folding is exact only before rounding)")


def paths(args: argparse.Namespace) -> tuple[dict, dict]:
    """Inputs and outputs, checked against each other by `ramp.cli` before the command runs."""
    return {"MODEL": args.model}, {"--out": args.out}


def run(args: argparse.Namespace) -> int:
    from ramp.export.gguf_writer import write_reference
    from ramp.files import check_output_path
    from ramp.measure.folding import check_alpha, fold_with_calibration
    from ramp.models import load_model

    check_alpha(args.alpha)  # fail before loading the model
    check_output_path(args.out)
    model = load_model(args.model)
    calibration = calibration_of(args, args.tokens)
    folded = fold_with_calibration(model, args.alpha, calibration)
    size = write_reference(folded, args.out, args.type)
    print(f"folded with alpha {args.alpha} on {calibration}; wrote {args.out} ({size / 2**20:.1f} MiB, {args.type})")
    return 0
