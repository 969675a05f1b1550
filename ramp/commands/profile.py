"""`ramp profile MODEL`: per-tensor embeddings (11 features) and the per-(tensor, format) sensitivity table,
written to an output folder with a heatmap and a short printed summary. `--damage imatrix-error|fisher`
estimates the table from a pass or two over the calibration text instead of measuring it."""
from __future__ import annotations

import argparse

from ramp.measure.calibration import EMBEDDINGS, ESTIMATE, SENSITIVITY
from ramp.commands._options import (
    add_fold_argument, add_imatrix_argument, add_text_argument, calibration_of, load_importance, load_model_for,
    positive_int,
)
from ramp.measure.ladder import DEFAULT_LADDER

OUTPUT_FILES = ("embeddings.json", "embeddings.csv", "sensitivity.json", "sensitivity.png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="GGUF file or a name from `ramp models` (default: smollm2-135m)")
    parser.add_argument("--out", default="profile", help="output folder (default ./profile, created if missing)")
    parser.add_argument("--tokens", type=positive_int, default=EMBEDDINGS.tokens,
                        help=f"calibration tokens for the activation features (default {EMBEDDINGS.tokens})")
    parser.add_argument("--sensitivity-tokens", type=positive_int, default=None,
                        help=f"calibration tokens for the sensitivity sweep (default {SENSITIVITY.tokens}; cost is linear "
                             f"in it) or estimate (default {ESTIMATE.tokens})")
    parser.add_argument("--damage", choices=("auto", "kld", "imatrix-error", "fisher"), default="auto",
                        help="measure KLD sensitivity (kld: one forward per tensor and format), or estimate it: "
                             "imatrix-error (importance-weighted squared weight error; relative units) or fisher "
                             "(diagonal Fisher from backward passes; about KLD nats); default auto: kld where the "
                             "sweep takes minutes on two cores, fisher on bigger models")
    parser.add_argument("--window", type=positive_int, default=SENSITIVITY.window,
                        help=f"tokens per calibration window (default {SENSITIVITY.window})")
    parser.add_argument("--formats", default=None,
                        help=f"comma-separated formats to measure (default {','.join(DEFAULT_LADDER)})")
    parser.add_argument("--no-sensitivity", action="store_true", help="only the embeddings (seconds, not minutes)")
    add_fold_argument(parser, "profiling it")
    add_imatrix_argument(parser, "quantize every tensor in the sensitivity sweep")
    add_text_argument(parser, "calibrate on")
    parser.add_argument("--seed", type=int, default=0, help="seed of the row sampling of very large tensors (default 0)")
    parser.add_argument("--device", default="cpu", help="torch device for the forward passes (default cpu)")


def paths(args: argparse.Namespace) -> tuple[dict, dict]:
    """Inputs and outputs, checked against each other by `ramp.cli` before the command runs."""
    from pathlib import Path

    return ({"MODEL": args.model, "--imatrix": args.imatrix},
            {f"--out ({name})": Path(args.out) / name for name in OUTPUT_FILES})


def run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from ramp.errors import RampError
    from ramp.measure.forward import Forward, check_device
    from ramp.measure.ladder import parse_ladder
    from ramp.measure.profile import profile_model
    from ramp.measure.sensitivity import measure_sensitivity, plot_heatmap, summary
    from ramp.measure.estimates import AUTO, ESTIMATES, choose_damage, estimate_sensitivity
    from ramp.models.text import check_text

    formats = parse_ladder(args.formats)
    embeddings = calibration_of(args, args.tokens)
    calibration_of(args, args.sensitivity_tokens or args.window)  # a window longer than the tokens fails now
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise RampError(f"--out {out} is a file; give a folder name")

    check_text(args.text)
    check_device(args.device)
    model = load_model_for(args)
    if args.damage == AUTO and not args.no_sensitivity:
        args.damage, why = choose_damage(model, formats, args.sensitivity_tokens or SENSITIVITY.tokens)
        print(f"damage: {args.damage}, chosen by --damage auto ({why})")
    estimate = args.damage in ESTIMATES
    sensitivity = calibration_of(args, args.sensitivity_tokens or (ESTIMATE if estimate else SENSITIVITY).tokens)
    imatrix = load_importance(args.imatrix, model)
    started = time.perf_counter()
    profile = profile_model(model, embeddings, args.seed, Forward(model, args.device), progress=True)
    # after the profile: a bad model, --fold or weight (a streamed tensor is checked when first used) leaves no folder
    out.mkdir(parents=True, exist_ok=True)
    profile.save(out / "embeddings.json", out / "embeddings.csv")
    print(f"embeddings: {len(profile.tensors)} tensors x {profile.features.shape[1]} features "
          f"({embeddings}, {time.perf_counter() - started:.1f} s) -> {out / 'embeddings.json'}, .csv")
    if args.no_sensitivity:
        return 0

    started, cpu_started = time.perf_counter(), time.process_time()
    if estimate:
        table = estimate_sensitivity(args.damage, model, sensitivity, imatrix, formats, device=args.device)
    else:
        table = measure_sensitivity(model, sensitivity, formats, device=args.device, imatrix=imatrix)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    table.save(out / "sensitivity.json")
    plot_heatmap(table, model, out / "sensitivity.png")
    print(summary(table, model))
    # CPU seconds next to wall seconds: on a shared machine the wall time says more about the neighbours
    work = f"{args.damage} estimate" if estimate else f"{table.extra['n_measured']} forwards"
    print(f"sensitivity: {work} on {sensitivity} in {elapsed:.0f} s wall, "
          f"{cpu:.0f} s CPU (near 0 when cached) -> {out / 'sensitivity.json'}, {out / 'sensitivity.png'}")
    return 0
