"""Options shared by the commands that quantize. Kept free of heavy imports: the parser builds every
command's arguments on each `ramp` call."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ramp.measure.calibration import CalibrationSpec
    from ramp.measure.imatrix import ImportanceMatrix
    from ramp.models.model import Model


def positive_int(text: str) -> int:
    """argparse type of the counts that must be at least 1 (tokens, windows, steps, trials): 0 would divide
    by zero deep inside, or silently do nothing."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_fold_argument(parser: argparse.ArgumentParser, use: str) -> None:
    """--fold ALPHA; `use` completes "Scale-Fold the model before ...", e.g. "exporting it"."""
    parser.add_argument(
        "--fold", type=float, metavar="ALPHA",
        help=f"Scale-Fold the model (migration strength ALPHA in [0, 1]) before {use} (default: no folding)",
    )


def check_fold_argument(args: argparse.Namespace) -> None:
    """A bad --fold fails before anything expensive."""
    if args.fold is not None:
        from ramp.measure.folding import check_alpha

        check_alpha(args.fold)


def fold_as_asked(model: "Model", alpha: float | None) -> "Model":
    """The model Scale-Folded with `alpha`, or the model itself without --fold. Every command folds on the
    same default calibration tokens, so `ramp profile --fold A` and `ramp allocate --fold A` see one model."""
    if alpha is None:
        return model
    from ramp.measure.calibration import FOLD
    from ramp.measure.folding import fold_with_calibration

    folded = fold_with_calibration(model, alpha, FOLD)
    print(f"fold: Scale-Folded with alpha {alpha} on {FOLD}")
    return folded


def load_model_for(args: argparse.Namespace) -> "Model":
    """`args.model`, Scale-Folded when `args.fold` is given."""
    from ramp.models import load_model

    check_fold_argument(args)
    return fold_as_asked(load_model(args.model), args.fold)


def add_calibration_arguments(parser: argparse.ArgumentParser, default: "CalibrationSpec", use: str,
                              tokens_flag: str = "--tokens") -> None:
    """`tokens_flag` and --window: the size of the calibration windows `use` reads (default: `default`'s)."""
    parser.add_argument(tokens_flag, type=positive_int, default=default.tokens,
                        help=f"calibration tokens for {use} (default {default.tokens}; whole windows only)")
    parser.add_argument("--window", type=positive_int, default=default.window,
                        help=f"tokens per calibration window (default {default.window})")


def calibration_of(args: argparse.Namespace, tokens: int) -> "CalibrationSpec":
    """The spec the command line asks for: `tokens` in windows of --window, on --text (the default text for
    commands without --text)."""
    from ramp.measure.calibration import CalibrationSpec
    from ramp.models.text import DEFAULT_TEXT

    return CalibrationSpec(getattr(args, "text", DEFAULT_TEXT), tokens, args.window)


def add_text_argument(parser: argparse.ArgumentParser, use: str) -> None:
    """--text NAME: which real text (its calibration or held-out half) a command reads."""
    from ramp.models.text import DEFAULT_TEXT, TEXTS

    parser.add_argument("--text", default=DEFAULT_TEXT, choices=TEXTS,
                        help=f"text to {use} (default {DEFAULT_TEXT}: Jane Austen's novels, split by novel; "
                             "python-docs: the Python Language Reference)")


def add_imatrix_argument(parser: argparse.ArgumentParser, use: str) -> None:
    parser.add_argument("--imatrix", metavar="FILE",
                        help=f"importance matrix (`ramp imatrix` or llama-imatrix, GGUF format) to {use} with, "
                             "as llama-quantize --imatrix does (default: none)")


def load_importance(path: str | None, model: "Model") -> "ImportanceMatrix | None":
    """The --imatrix file checked against `model` (None without --imatrix)."""
    if path is None:
        return None
    from ramp.measure.imatrix import ImportanceMatrix

    matrix = ImportanceMatrix.load(path)
    matrix.importances(model)  # a matrix made for another model fails here, before any work
    return matrix
