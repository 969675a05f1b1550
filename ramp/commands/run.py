"""`ramp run`: the whole path on one model. Load it, write its F32 reference, compute its importance matrix
on calibration text, build llama.cpp's presets from that reference with that importance matrix (by
`llama-quantize --imatrix` itself), allocate formats under the budget with damage measured on weights
quantized with the same importance matrix, export ramp's GGUF with it, and evaluate everything on the same
held-out windows through llama.cpp, printing one table. `--no-imatrix` leaves the importance matrix out on
both sides.

The text is one named text (`--text`, default Jane Austen's novels): calibration from some novels,
evaluation from others. Every row records whether it used the importance matrix, the share of its
quantizable weights equal to the source checkpoint's, and whether the file is at or above the source's size.

Damage per (tensor, format) is `ramp profile`'s measured sensitivity (mean KLD with only that tensor
quantized), taken from `--sensitivity FILE` or measured here on calibration text (disk-cached, so a second
run skips it), on `ramp profile`'s default windows (`ramp.calibration.SENSITIVITY`), so the two share one cached
table. `--damage imatrix-error` or `--damage fisher` estimate the damage
instead from a pass or two over the calibration text (`ramp.sensitivity_estimates`); the default, `auto`,
measures where the sweep takes minutes on two cores (SmolLM2, Gemma 3 270M) and takes the Fisher estimate on
bigger models, where it would take hours. `--damage weight-error` selects the WEIGHT-ERROR STAND-IN: the squared error of
each tensor's weights after llama.cpp's own quantization round trip, seconds to compute but blind to how
much each tensor matters to the output; it is named as such in the table and the allocation.

With `--fold ALPHA` ramp's own GGUF is made from the Scale-Folded model while the F32 reference and the
presets stay those of the model as given, so the table shows what folding buys against llama.cpp's presets.
"""
from __future__ import annotations

import argparse

from ramp.commands._options import add_fold_argument, add_text_argument, check_fold_argument, fold_as_asked, positive_int
from ramp.commands.eval import add_window_arguments

from ramp.calibration import ESTIMATE, SENSITIVITY
from ramp.presets import DEFAULT_PRESETS  # numpy-only at import time, so the CLI stays quick
from ramp.sensitivity_estimates import AUTO, ESTIMATES, STAND_IN  # numpy-only too
DEFAULT_MAX_WINDOWS = 32


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="GGUF file, safetensors directory or a name from `ramp models` (default: smollm2-135m)")
    parser.add_argument("--budget", default="Q4_K_M",
                        help="bits per quantizable weight (4.5bpw), bytes of their data (60MB), or a preset name: "
                             "the bytes llama.cpp's preset spends on them (default Q4_K_M)")
    parser.add_argument("--method", default="ilp", choices=("ilp", "greedy", "target-bpw"),
                        help="allocation method (default ilp; target-bpw is llama.cpp PR #15550's allocator)")
    parser.add_argument("--formats", help="comma-separated candidate formats (default: ramp allocate's ladder)")
    parser.add_argument("--sensitivity", metavar="FILE", help="sensitivity table from `ramp profile` (default: measure it)")
    parser.add_argument("--damage", choices=(AUTO, "kld", *ESTIMATES, "weight-error"), default=AUTO,
                        help="without --sensitivity: measure KLD sensitivity (kld), estimate it from the importance "
                             f"matrix (imatrix-error) or backward passes (fisher), or use the {STAND_IN}; default auto: "
                             "kld where the measured sweep takes minutes, fisher on bigger models")
    parser.add_argument("--calibration-tokens", type=positive_int,
                        help=f"calibration tokens for measuring sensitivity (default {SENSITIVITY.tokens}) or "
                             f"estimating it (default {ESTIMATE.tokens})")
    parser.add_argument("--preset", action="append", metavar="NAME",
                        help=f"llama.cpp presets to compare against, repeatable (default: {', '.join(DEFAULT_PRESETS)})")
    parser.add_argument("--imatrix", metavar="FILE",
                        help="importance matrix for both sides (default: `ramp imatrix` of the model on the calibration text)")
    parser.add_argument("--no-imatrix", action="store_true",
                        help="quantize ramp's file and the presets without an importance matrix")
    add_text_argument(parser, "calibrate on (its calibration half) and evaluate on (its held-out half)")
    parser.add_argument("--out-dir", default=".",
                        help="folder for ramp.gguf, allocation.json, imatrix.gguf, results.json (default: .; created if missing)")
    add_fold_argument(parser, "profiling, allocating and exporting it; the reference and presets stay unfolded")
    add_window_arguments(parser, DEFAULT_MAX_WINDOWS)


def paths(args: argparse.Namespace) -> tuple[dict, dict]:
    """Inputs and outputs, checked against each other by `ramp.cli` before the command runs."""
    from pathlib import Path

    names = ["ramp.gguf", "allocation.json", "results.json"]
    if not (args.imatrix or args.no_imatrix):  # a computed importance matrix is copied next to them
        names += ["imatrix.gguf"] + ([f"imatrix-fold{args.fold}.gguf"] if args.fold is not None else [])
    return ({"--model": args.model, "--sensitivity": args.sensitivity, "--imatrix": args.imatrix},
            {f"--out-dir ({name})": Path(args.out_dir) / name for name in names})


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ramp.allocate import allocate
    from ramp.allocate.budget import Budget, feasible_range, require_within
    from ramp.ladder import parse_ladder
    from ramp.commands.eval import report_results
    from ramp.errors import RampError
    from ramp.export.gguf_writer import cached_reference, write_allocation
    from ramp.files import check_output_path
    from ramp.llama_eval import evaluate, make_windows, reference_logprobs, reference_result
    from ramp.model import load_model
    from ramp.presets import ftype_of, preset_path, quantizable_bytes
    from ramp.sensitivity_table import SensitivityTable
    from ramp.source_grid import source_file_bytes, source_match_share
    from ramp.text import check_text, evaluation_text

    # Everything the command line can get wrong fails before the first expensive step.
    out_dir = Path(args.out_dir)
    out_gguf, out_allocation, out_results = out_dir / "ramp.gguf", out_dir / "allocation.json", out_dir / "results.json"
    check_output_path(out_gguf)
    check_text(args.text)
    if args.imatrix and args.no_imatrix:
        raise RampError("--imatrix and --no-imatrix contradict each other; pass one")
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
    source_imatrix, imatrix_file = _importance_matrix(args, source)
    if imatrix_file is not None:
        print(f"imatrix: {imatrix_file} ({source_imatrix.chunk_count} chunks of {source_imatrix.chunk_size} tokens) for ramp and the presets")
    preset_files = {name: preset_path(reference, name, imatrix_file) for name in needed_presets}
    if budget_preset:
        budget = Budget.parse(f"{quantizable_bytes(preset_files[budget_preset], source)}B")
        print(f"budget: the {budget.text} {budget_preset} spends on the quantizable tensors")
    model = fold_as_asked(source, args.fold)
    # a folded model's activations differ, so its importance matrix is its own, on the same tokens
    imatrix = _importance_matrix(args, model)[0] if model is not source and source_imatrix is not None else source_imatrix

    if table is None and args.damage == "weight-error":
        from ramp.sensitivity_estimates import weight_error_table

        print(f"damage: {STAND_IN} (squared weight error after llama.cpp's quantization, not measured sensitivity)")
        table = weight_error_table(model, ladder, imatrix)
    elif table is None:
        from ramp.sensitivity import measure_sensitivity
        from ramp.sensitivity_estimates import choose_damage, estimate_sensitivity

        if args.damage == AUTO:
            args.damage, why = choose_damage(model, ladder, args.calibration_tokens or SENSITIVITY.tokens)
            print(f"damage: {args.damage}, chosen by --damage auto ({why})")
        default = ESTIMATE if args.damage in ESTIMATES else SENSITIVITY
        n_tokens = args.calibration_tokens or default.tokens
        calibration = default.sized(n_tokens, min(default.window, n_tokens), args.text)
        if args.damage in ESTIMATES:
            print(f"damage: {args.damage} estimate on {calibration} (cached for later runs)")
            table = estimate_sensitivity(args.damage, model, calibration, imatrix, ladder)
        else:
            print(f"damage: KLD sensitivity measured on {calibration} (cached for later runs)")
            table = measure_sensitivity(model, calibration, formats=ladder, imatrix=imatrix)
    allocation = allocate(model, args.method, budget, table, ladder=ladder)
    allocation.extra["damage"] = table.measure
    allocation.save(out_allocation)
    write_allocation(model, allocation, out_gguf, imatrix=imatrix)

    windows = make_windows(reference, evaluation_text(args.text), args.ctx, args.max_windows)
    reference_logits = reference_logprobs(reference, windows)
    label = (f"ramp {args.method}" + (" (stand-in)" if table.measure == STAND_IN else "")
             + (f" fold {args.fold}" if args.fold is not None else ""))
    used = imatrix_file is not None
    suffix = " imatrix" if used else ""
    results = [reference_result(reference, reference_logits, windows, "F32 reference")]
    results += [evaluate(path, reference_logits, windows, name + suffix) for name, path in preset_files.items() if name in presets]
    results.append(evaluate(out_gguf, reference_logits, windows, label + suffix))
    source_bytes = source_file_bytes(source)
    results = [result.annotate(args.text, None if result is results[0] else used,
                               source_match_share(result.path, source), source_bytes) for result in results]
    report_results(sorted(results, key=lambda r: r.file_bytes), windows, str(out_results))
    copied = used and not args.imatrix  # a computed matrix is copied into --out-dir; a given one stays where it is
    print(f"wrote {out_gguf}, {out_allocation}, {out_results}" + (f", {imatrix_file}" if copied else ""))
    return 0


def _importance_matrix(args: argparse.Namespace, model):
    """(matrix, file) for both sides of the comparison: --imatrix as given, or `ramp imatrix` of `model` on
    the calibration text (cached, copied into --out-dir); (None, None) with --no-imatrix."""
    import shutil
    from pathlib import Path

    from ramp.calibration import IMATRIX
    from ramp.commands._options import load_importance
    from ramp.files import atomic_path
    from ramp.imatrix import cached_imatrix

    if args.no_imatrix:
        return None, None
    if args.imatrix:
        return load_importance(args.imatrix, model), Path(args.imatrix)
    matrix, cached = cached_imatrix(model, IMATRIX.sized(text=args.text))
    out = Path(args.out_dir) / ("imatrix.gguf" if model.fold_alpha is None else f"imatrix-fold{model.fold_alpha}.gguf")
    with atomic_path(out) as tmp:
        shutil.copyfile(cached, tmp)
    return matrix, out


def _is_preset_name(text: str) -> bool:
    return text.strip()[:1].isalpha()  # budgets start with a number

