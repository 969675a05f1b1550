"""`ramp export`: write a GGUF from a model and an allocation (or the unquantized reference)."""
from __future__ import annotations

import argparse

from ramp.commands._options import add_fold_argument, add_imatrix_argument, load_importance, load_model_for


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="GGUF file, safetensors directory or a name from `ramp models` (default: smollm2-135m)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--allocation", metavar="FILE", help="allocation JSON from `ramp allocate`")
    source.add_argument("--reference", choices=("F32", "F16"), help="write the unquantized reference instead")
    parser.add_argument("--out", required=True, help="GGUF file to write")
    parser.add_argument("--tensor-type-file", metavar="FILE",
                        help="also write the allocation as llama-quantize's --tensor-type-file")
    add_fold_argument(parser, "exporting it")
    add_imatrix_argument(parser, "quantize")


def paths(args: argparse.Namespace) -> tuple[dict, dict]:
    """Inputs and outputs, checked against each other by `ramp.cli` before the command runs."""
    return ({"--model": args.model, "--allocation": args.allocation, "--imatrix": args.imatrix},
            {"--out": args.out, "--tensor-type-file": args.tensor_type_file})


def run(args: argparse.Namespace) -> int:
    from ramp.allocate.allocation import Allocation
    from ramp.errors import RampError
    from ramp.export.gguf_writer import predict_file_size, reference_formats, write_gguf
    from ramp.files import check_output_path

    for path in (args.out, args.tensor_type_file):
        if path:
            check_output_path(path)
    if args.tensor_type_file and not args.allocation:
        raise RampError("--tensor-type-file needs --allocation; the reference has no quantization types to list")
    allocation = Allocation.load(args.allocation) if args.allocation else None
    if allocation is not None:
        allocation.check_fold(args.fold)  # before folding, which costs a forward pass
    model = load_model_for(args)
    imatrix = load_importance(args.imatrix, model)
    if allocation is not None:
        allocation.check_matches(model)
        allocation.check_imatrix(imatrix)
        formats = allocation.formats
    else:
        formats = reference_formats(model, args.reference)
    predicted = predict_file_size(model, formats)
    check_output_path(args.out, needed_bytes=predicted)  # a full disk fails now, not after quantizing
    n_bytes = write_gguf(model, formats, args.out, importance=imatrix.importances(model) if imatrix else None)
    if allocation is not None and args.tensor_type_file:
        allocation.save_tensor_type_file(args.tensor_type_file)
    bpw = 8.0 * sum(_data_bytes(model, formats)) / model.n_quantizable_params
    print(f"wrote {args.out}: {n_bytes:,d} bytes (predicted {predicted:,d}), quantizable weights at {bpw:.3f} bpw")
    return 0


def _data_bytes(model, formats: dict[str, str]) -> list[int]:
    from ramp.kernels.formats import tensor_bytes

    return [tensor_bytes(spec.shape, formats[spec.name]) for spec in model.quantizable]
