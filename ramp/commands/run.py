"""`ramp run`: the whole path on one model. Load it, write its F32 reference, build llama.cpp's presets from
that reference, allocate formats under the budget, export ramp's GGUF, and evaluate everything on the same
held-out windows through llama.cpp, printing one table.

Damage per (tensor, format) is `ramp profile`'s measured sensitivity (mean KLD with only that tensor
quantized), taken from `--sensitivity FILE` or measured here on calibration text (disk-cached, so a second
run skips it). Run measures on 256 calibration tokens, half of `ramp profile`'s default, to keep the whole
command near 15 minutes on two cores. `--damage weight-error` selects the WEIGHT-ERROR STAND-IN instead: the
squared error of each tensor's weights after llama.cpp's own quantization round trip, seconds to compute but
blind to how much each tensor matters to the output; it is named as such in the table and the allocation.

With `--fold ALPHA` ramp's own GGUF is made from the Scale-Folded model while the F32 reference and the
presets stay those of the model as given, so the table shows what folding buys against llama.cpp's presets.
"""
from __future__ import annotations

import argparse

from ramp.commands._options import add_fold_argument, check_fold_argument, fold_as_asked
from ramp.commands.eval import add_window_arguments

from ramp.presets import DEFAULT_PRESETS  # numpy-only at import time, so the CLI stays quick
DEFAULT_MAX_WINDOWS = 32
DEFAULT_CALIBRATION_TOKENS = 256
STAND_IN = "weight-error stand-in"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="GGUF file or safetensors directory (default: embedded SmolLM2-135M)")
    parser.add_argument("--budget", default="Q4_K_M",
                        help="bits per quantizable weight (4.5bpw), bytes of their data (60MB), or a preset name: "
                             "the bytes llama.cpp's preset spends on them (default Q4_K_M)")
    parser.add_argument("--method", default="ilp", choices=("ilp", "greedy"), help="allocation method (default ilp)")
    parser.add_argument("--formats", help="comma-separated candidate formats (default: ramp allocate's ladder)")
    parser.add_argument("--sensitivity", metavar="FILE", help="sensitivity table from `ramp profile` (default: measure it)")
    parser.add_argument("--damage", choices=("kld", "weight-error"), default="kld",
                        help=f"without --sensitivity: measure KLD sensitivity (default) or use the {STAND_IN}")
    parser.add_argument("--calibration-tokens", type=int, default=DEFAULT_CALIBRATION_TOKENS,
                        help=f"calibration tokens for measuring sensitivity (default {DEFAULT_CALIBRATION_TOKENS})")
    parser.add_argument("--preset", action="append", metavar="NAME",
                        help=f"llama.cpp presets to compare against, repeatable (default: {', '.join(DEFAULT_PRESETS)})")
    parser.add_argument("--out-dir", default=".", help="folder for ramp.gguf, allocation.json, results.json (default: .)")
    add_fold_argument(parser, "profiling, allocating and exporting it; the reference and presets stay unfolded")
    add_window_arguments(parser, DEFAULT_MAX_WINDOWS)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ramp.allocate import allocate
    from ramp.allocate.budget import Budget, feasible_range, require_within
    from ramp.allocate.problem import parse_ladder
    from ramp.commands.eval import report_results
    from ramp.export.gguf_writer import cached_reference, write_allocation
    from ramp.files import check_output_path
    from ramp.llama_eval import evaluate, make_windows, reference_logprobs, reference_result
    from ramp.model import load_model
    from ramp.presets import ftype_of, preset_path, quantizable_bytes
    from ramp.sensitivity_table import SensitivityTable
    from ramp.text import evaluation_text

    # Everything the command line can get wrong fails before the first expensive step.
    out_dir = Path(args.out_dir)
    out_gguf, out_allocation, out_results = out_dir / "ramp.gguf", out_dir / "allocation.json", out_dir / "results.json"
    check_output_path(out_gguf)
    presets = [name.upper() for name in (args.preset or DEFAULT_PRESETS)]
    budget_preset = args.budget.upper() if _is_preset_name(args.budget) else None
    needed_presets = list(dict.fromkeys(presets + ([budget_preset] if budget_preset else [])))
    for name in needed_presets:
        ftype_of(name)
    budget = None if budget_preset else Budget.parse(args.budget)
    ladder = parse_ladder(args.formats)
    table = SensitivityTable.load(args.sensitivity) if args.sensitivity else None
    check_fold_argument(args)

    source = load_model(args.model)  # reference and presets: the model as given, also with --fold
    if budget is not None:
        require_within(budget, source, feasible_range(source, ladder))
    reference = cached_reference(source)
    preset_files = {name: preset_path(reference, name) for name in needed_presets}
    if budget_preset:
        budget = Budget.parse(f"{quantizable_bytes(preset_files[budget_preset], source)}B")
        print(f"budget: the {budget.text} {budget_preset} spends on the quantizable tensors")
    model = fold_as_asked(source, args.fold)

    if table is None and args.damage == "weight-error":
        print(f"damage: {STAND_IN} (squared weight error after llama.cpp's quantization, not measured sensitivity)")
        table = weight_error_table(model, ladder)
    elif table is None:
        from ramp.forward import calibration_tokens
        from ramp.sensitivity import DEFAULT_WINDOW, measure_sensitivity

        print(f"damage: KLD sensitivity measured on {args.calibration_tokens} calibration tokens (cached for later runs)")
        tokens = calibration_tokens(model, args.calibration_tokens, min(DEFAULT_WINDOW, args.calibration_tokens))
        table = measure_sensitivity(model, tokens, formats=ladder)
    allocation = allocate(model, args.method, budget, table, ladder=ladder)
    allocation.extra["damage"] = table.measure
    allocation.save(out_allocation)
    write_allocation(model, allocation, out_gguf)

    windows = make_windows(reference, evaluation_text(), args.ctx, args.max_windows)
    reference_logits = reference_logprobs(reference, windows)
    label = (f"ramp {args.method}" + (" (stand-in)" if table.measure == STAND_IN else "")
             + (f" fold {args.fold}" if args.fold is not None else ""))
    results = [reference_result(reference, reference_logits, windows, "F32 reference")]
    results += [evaluate(path, reference_logits, windows, name) for name, path in preset_files.items() if name in presets]
    results.append(evaluate(out_gguf, reference_logits, windows, label))
    report_results(sorted(results, key=lambda r: r.file_bytes), windows, str(out_results))
    print(f"wrote {out_gguf}, {out_allocation}, {out_results}")
    return 0


def _is_preset_name(text: str) -> bool:
    return text.strip()[:1].isalpha()  # budgets start with a number


def weight_error_table(model, ladder: tuple[str, ...]):
    """The stand-in sensitivity table: per tensor and ladder format, the summed squared difference between
    the weights and llama.cpp's dequantized weights in that format (ggml backend, no importance matrix)."""
    import numpy as np
    from tqdm import tqdm

    from ramp.kernels import quantize_dequantize, resolve_format
    from ramp.sensitivity_table import SensitivityTable

    damage = np.zeros((len(model.quantizable), len(ladder)))
    for row, spec in enumerate(tqdm(model.quantizable, desc=STAND_IN, unit="tensor", leave=False)):
        weights = model.tensors[spec.name]
        written: dict[str, float] = {}  # ladder formats llama.cpp writes alike share one measurement
        for column, fmt in enumerate(ladder):
            resolved = resolve_format(fmt, spec.row_length).name
            if resolved not in written:
                error = quantize_dequantize(weights, resolved, backend="ggml", name=spec.name) - weights
                written[resolved] = float(np.square(error, dtype=np.float64).sum())
            damage[row, column] = written[resolved]
    return SensitivityTable([spec.name for spec in model.quantizable], list(ladder), damage, measure=STAND_IN,
                            model_sha256=model.sha256)
