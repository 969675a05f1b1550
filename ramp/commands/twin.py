"""`ramp twin MODEL --out FILE [--seed N] [--sigma S]`: the off-grid twin of a quantized checkpoint
(`ramp.measure.twin`), an F32 GGUF computing the source's function with weights on no GGML grid, so that
no format can score well by writing the source's grid back. It records its source, seed and sigma, and its
KLD to the source through llama.cpp; use it as `--model` (and as its own reference) in any ramp command."""
from __future__ import annotations

import argparse

from ramp.commands._options import add_text_argument, positive_int
from ramp.measure.twin import DEFAULT_NOISE, DEFAULT_SEED, DEFAULT_SIGMA


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="GGUF file or a name from `ramp models` (default: smollm2-135m)")
    parser.add_argument("--out", required=True, help="twin GGUF to write (F32)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"seed of the random scales and noise (default {DEFAULT_SEED})")
    parser.add_argument("--sigma", type=float, default=DEFAULT_SIGMA,
                        help=f"log-normal spread of the per-channel scales (default {DEFAULT_SIGMA})")
    parser.add_argument("--noise", type=float, default=DEFAULT_NOISE, metavar="STEPS",
                        help="Gaussian noise, in quantization steps of the source's format, on what no exact rescaling "
                             f"moves off the grid: token_embd and exact zeros (default {DEFAULT_NOISE:.3f}; 0: none, "
                             "they stay on the source's grid)")
    add_text_argument(parser, "measure the twin's KLD to the source on (its held-out half)")
    parser.add_argument("--kld-windows", type=positive_int, default=4,
                        help="512-token windows the KLD to the source is measured on (default 4)")


def paths(args: argparse.Namespace) -> tuple[dict, dict]:
    """Inputs and outputs, checked against each other by `ramp.cli` before the command runs."""
    return {"MODEL": args.model}, {"--out": args.out}


def run(args: argparse.Namespace) -> int:
    from ramp.evaluate.twin import write_twin
    from ramp.files import check_output_path
    from ramp.measure.twin import check_twin_settings
    from ramp.models import load_model

    check_twin_settings(args.seed, args.sigma, args.noise)  # fail before loading the model
    check_output_path(args.out)
    record = write_twin(load_model(args.model), args.out, args.seed, args.sigma, args.noise, args.text,
                        args.kld_windows)
    print(f"wrote {args.out}: {record.describe()}")
    return 0
