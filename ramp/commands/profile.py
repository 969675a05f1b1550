"""`ramp profile MODEL`: per-tensor embeddings (11 features) and the per-(tensor, format) sensitivity table,
written to an output folder with a heatmap and a short printed summary. `--damage imatrix-error|fisher`
estimates the table from a pass or two over the calibration text instead of measuring it."""
from __future__ import annotations

import argparse

from ramp.commands._options import (
    add_fold_argument, add_imatrix_argument, add_text_argument, load_importance, load_model_for, positive_int,
)

OUTPUT_FILES = ("embeddings.json", "embeddings.csv", "sensitivity.json", "sensitivity.png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="GGUF file or a name from `ramp models` (default: smollm2-135m)")
    parser.add_argument("--out", default="profile", help="output folder (default ./profile, created if missing)")
    parser.add_argument("--tokens", type=positive_int, default=2048, help="calibration tokens for the activation features (default 2048)")
    parser.add_argument("--sensitivity-tokens", type=positive_int, default=None,
                        help="calibration tokens for the sensitivity sweep (default 512; cost is linear in it) or "
                             "estimate (default 1024)")
    parser.add_argument("--damage", choices=("auto", "kld", "imatrix-error", "fisher"), default="auto",
                        help="measure KLD sensitivity (kld: one forward per tensor and format), or estimate it: "
                             "imatrix-error (importance-weighted squared weight error; relative units) or fisher "
                             "(diagonal Fisher from backward passes; about KLD nats); default auto: kld where the "
                             "sweep takes minutes on two cores, fisher on bigger models")
    parser.add_argument("--window", type=positive_int, default=256, help="tokens per calibration window (default 256)")
    parser.add_argument("--formats", default=None,
                        help="comma-separated formats to measure (default Q2_K,Q3_K,Q4_0,Q4_K,Q5_K,Q6_K,Q8_0)")
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
    from ramp.forward import Forward, calibration_tokens, check_device
    from ramp.kernels.formats import get_format
    from ramp.profile import profile_model
    from ramp.sensitivity import DEFAULT_FORMATS, DEFAULT_TOKENS, measure_sensitivity, plot_heatmap, summary
    from ramp.sensitivity_estimates import AUTO, DEFAULT_ESTIMATE_TOKENS, ESTIMATES, choose_damage, estimate_sensitivity
    from ramp.text import check_text

    formats = [get_format(name.strip()).name for name in args.formats.split(",")] if args.formats else list(DEFAULT_FORMATS)
    if min(args.tokens, args.sensitivity_tokens or args.window) < args.window:
        raise RampError(f"token counts must be at least one window ({args.window}); raise --tokens or lower --window")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise RampError(f"--out {out} is a file; give a folder name")

    check_text(args.text)
    check_device(args.device)
    model = load_model_for(args)
    if args.damage == AUTO and not args.no_sensitivity:
        args.damage, why = choose_damage(model, formats, args.sensitivity_tokens or DEFAULT_TOKENS)
        print(f"damage: {args.damage}, chosen by --damage auto ({why})")
    estimate = args.damage in ESTIMATES
    sensitivity_tokens = args.sensitivity_tokens or (DEFAULT_ESTIMATE_TOKENS if estimate else DEFAULT_TOKENS)
    imatrix = load_importance(args.imatrix, model)
    out.mkdir(parents=True, exist_ok=True)  # after loading: a bad model or --fold leaves no empty folder
    started = time.perf_counter()
    profile = profile_model(model, calibration_tokens(model, args.tokens, args.window, args.text), args.seed, Forward(model, args.device), progress=True)
    profile.save(out / "embeddings.json", out / "embeddings.csv")
    print(f"embeddings: {len(profile.tensors)} tensors x {profile.features.shape[1]} features "
          f"({profile.n_tokens} tokens, {time.perf_counter() - started:.1f} s) -> {out / 'embeddings.json'}, .csv")
    if args.no_sensitivity:
        return 0

    started, cpu_started = time.perf_counter(), time.process_time()
    tokens = calibration_tokens(model, sensitivity_tokens, args.window, args.text)
    if estimate:
        table = estimate_sensitivity(args.damage, model, tokens, imatrix, formats, device=args.device)
    else:
        table = measure_sensitivity(model, tokens, formats, device=args.device, imatrix=imatrix)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    table.save(out / "sensitivity.json")
    plot_heatmap(table, model, out / "sensitivity.png")
    print(summary(table, model))
    # CPU seconds next to wall seconds: on a shared machine the wall time says more about the neighbours
    work = f"{args.damage} estimate" if estimate else f"{table.extra['n_measured']} forwards"
    print(f"sensitivity: {work} on {table.extra['n_tokens']} tokens in {elapsed:.0f} s wall, "
          f"{cpu:.0f} s CPU (near 0 when cached) -> {out / 'sensitivity.json'}, {out / 'sensitivity.png'}")
    return 0
