"""`ramp eval`: perplexity, KLD and top-1 agreement of GGUF files against a reference, through llama.cpp."""
from __future__ import annotations

import argparse

from ramp.commands._options import add_text_argument, positive_int

DEFAULT_N_CTX = 512  # mirrors ramp.evaluate.llama_eval.DEFAULT_N_CTX, kept light


def add_window_arguments(parser: argparse.ArgumentParser, default_windows: int | None) -> None:
    """Options shared with `ramp run`: the evaluation windows."""
    parser.add_argument("--ctx", type=int, default=DEFAULT_N_CTX, help=f"window length in tokens (default {DEFAULT_N_CTX})")
    parser.add_argument("--max-windows", type=positive_int, default=default_windows,
                        help="evaluate at most this many windows of the held-out text to bound time "
                             f"(default: {default_windows or 'all'}); each scores its second half")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="GGUF", help="GGUF files to evaluate")
    parser.add_argument("--reference", required=True, metavar="GGUF",
                        help="unquantized reference GGUF (`ramp export --reference F32`) the KLD is measured against")
    add_window_arguments(parser, None)
    add_text_argument(parser, "evaluate on (its held-out half)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--referee", action="store_true",
                        help="also measure every file with llama.cpp's own llama-perplexity on the same windows "
                             "and print its numbers next to ramp's, with their relative differences")


def paths(args: argparse.Namespace) -> tuple[dict, dict]:
    """Inputs and outputs, checked against each other by `ramp.cli` before the command runs."""
    return {"--reference": args.reference, "GGUF": args.files}, {"--json": args.json}


def run(args: argparse.Namespace) -> int:
    from ramp.files import check_output_path
    from ramp.evaluate.llama_eval import (
        check_finite_results, check_reference, check_same_model, check_window_length, evaluate, gguf_size_stats, make_windows, reference_logprobs, reference_result, report_results,
    )
    from ramp.evaluate.referee import check_referee, format_agreement, referee
    from ramp.models.text import evaluation_text

    if args.json:
        check_output_path(args.json)
    for path in [args.reference, *args.files]:
        gguf_size_stats(path)  # every file readable before the long passes start
    for path in args.files:
        check_same_model(args.reference, path)  # and a model of the reference: another one's KLD means nothing
    check_reference(args.reference, check_window_length(args.ctx))
    text = evaluation_text(args.text)
    windows = make_windows(args.reference, text, args.ctx, args.max_windows)
    if args.referee:
        check_referee(windows)  # the tool is built and the windows are enough, before the long passes
    reference = reference_logprobs(args.reference, windows)
    results = [reference_result(args.reference, reference, windows)]
    results += [evaluate(path, reference, windows) for path in args.files]
    results = [result.annotate(args.text, None, None, None) for result in results]
    check_finite_results(results)  # before the JSON is written
    report_results(results, windows, args.json)
    if args.referee:
        print(format_agreement(results, referee(args.reference, args.files, text, windows)))
    return 0
