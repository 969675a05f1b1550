"""`ramp` command line: each subcommand lives in its own module exposing `add_arguments(parser)` and
`run(args) -> int`, so commands stay small and are imported only when used."""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading

from ramp.errors import RampError, Terminated, describe_os_error

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("ramp.commands.run", "the whole path on one model: profile, allocate, export, evaluate next to presets"),
    "profile": ("ramp.commands.profile", "per-tensor embeddings and per-format sensitivity table"),
    "fold": ("ramp.commands.fold", "Scale Folding: migrate activation outliers into weights"),
    "twin": ("ramp.commands.twin", "the off-grid twin of a quantized checkpoint: same function, weights on no GGML grid"),
    "imatrix": ("ramp.commands.imatrix", "llama.cpp's importance matrix of a model on calibration text"),
    "allocate": ("ramp.commands.allocate", "choose a format per tensor under a budget"),
    "export": ("ramp.commands.export", "write a mixed-precision GGUF from an allocation"),
    "eval": ("ramp.commands.eval", "perplexity / KLD / top-1 of GGUF files through llama.cpp"),
    "presets": ("ramp.commands.presets", "build llama.cpp's own preset quantizations from the reference"),
    "train": ("ramp.commands.train", "train a SAC allocation policy"),
    "tune": ("ramp.commands.tune", "Optuna search over SAC and reward settings"),
    "texts": ("ramp.commands.texts", "the calibration/evaluation texts: list them, install one"),
    "models": ("ramp.commands.models", "the models known by short name: list them, install one"),
    "doctor": ("ramp.commands.doctor", "versions, llama.cpp's tools, installed models and texts, cache: what a bug report needs"),
}


class _Parser(argparse.ArgumentParser):
    """argparse with ramp's one-line errors: a bad option value reads like any other error, not a usage dump."""

    def error(self, message: str):
        print(f"ramp: error: {message}; see `{self.prog} --help`", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ramp", description="learned mixed-precision quantization for llama.cpp")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        command_parser.set_defaults(_module=module_name)
        importlib.import_module(module_name).add_arguments(command_parser)
    return parser


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    module = importlib.import_module(args._module)
    # only the main thread may set handlers; main() called from another thread keeps the default
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    try:
        from ramp.files import check_storage

        if not getattr(module, "REPORTS_STORAGE", False):  # `ramp doctor` lists a bad folder as a problem instead
            check_storage()  # RAMP_CACHE, RAMP_DATA and HOME, before a command fails on them late
        if hasattr(module, "paths"):  # every command's files, against each other, before any work
            from ramp.command_paths import check_command_paths

            check_command_paths(*module.paths(args))
        code = int(module.run(args) or 0)
        sys.stdout.flush()  # a reader that left early fails here, below, not in the interpreter's flush at exit
        return code
    except BrokenPipeError:
        # stdout's reader closed it early (`ramp texts | grep -q`): it has what it wanted, and nothing more can
        # reach it; stdout points at /dev/null so the interpreter's flush at exit does not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except RampError as exc:
        print(f"ramp: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the file system failed under us (full disk, read-only folder, I/O error)
        print(f"ramp: error: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        print(f"ramp: {'terminated' if terminated else 'interrupted'}; earlier outputs are unchanged", file=sys.stderr)
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
