"""`ramp presets`: llama.cpp's own preset quantizations (Q4_K_M, ...) of a reference GGUF, made by
llama.cpp's quantizer (`llama-quantize --imatrix` with an importance matrix), for comparing ramp's files against."""
from __future__ import annotations

import argparse

from ramp.evaluate.presets import DEFAULT_PRESETS  # numpy-only at import time, so the CLI stays quick


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reference", metavar="GGUF", help="unquantized reference GGUF (default: write one from --model)")
    parser.add_argument("--model", help="model to write the F32 reference of when --reference is not given "
                                        "(a path or a name from `ramp models`; default: smollm2-135m)")
    parser.add_argument("--preset", action="append", metavar="NAME",
                        help=f"llama.cpp ftype name, repeatable (default: {', '.join(DEFAULT_PRESETS)})")
    parser.add_argument("--imatrix", metavar="FILE", help="importance matrix, passed to llama-quantize --imatrix (default: none)")
    parser.add_argument("--out-dir", default=".", help="folder for <reference stem>-<PRESET>.gguf (default: .; created if missing)")


def paths(args: argparse.Namespace) -> tuple[dict, dict]:
    """Inputs and outputs, checked against each other by `ramp.cli` before the command runs."""
    from pathlib import Path

    names = [name.upper() for name in (args.preset or DEFAULT_PRESETS)]
    stem = Path(args.reference).stem if args.reference else None
    outputs = {f"--out-dir ({stem}-{name}.gguf)": Path(args.out_dir) / f"{stem}-{name}.gguf" for name in names} if stem else {}
    return {"--reference": args.reference, "--model": args.model, "--imatrix": args.imatrix}, outputs


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ramp.files import check_output_path
    from ramp.evaluate.presets import check_presets, quantize_preset

    names = [name.upper() for name in (args.preset or DEFAULT_PRESETS)]
    check_presets(names, with_imatrix=bool(args.imatrix))
    out_dir = Path(args.out_dir)
    check_output_path(out_dir / "preset.gguf")
    reference = Path(args.reference) if args.reference else _reference_of(args.model)
    if args.imatrix:  # a wrong file, or one of another model, fails here, not inside llama-quantize
        from ramp.commands._options import load_importance
        from ramp.models import load_model

        load_importance(args.imatrix, load_model(reference))
    for name in names:
        path = quantize_preset(reference, name, out_dir / f"{reference.stem}-{name}.gguf", args.imatrix)
        print(f"wrote {path}: {path.stat().st_size:,d} bytes")
    return 0


def _reference_of(model_path: str | None):
    from ramp.export.gguf_writer import cached_reference
    from ramp.models import load_model

    return cached_reference(load_model(model_path))
