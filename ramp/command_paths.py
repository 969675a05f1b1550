"""One check of a command's input and output paths against each other, before any work.

Every command that reads or writes user files declares them (`paths(args) -> (inputs, outputs)`, labelled
by option) and `ramp.cli` checks them here before the command runs: an output that is one of the inputs
(`--out model.gguf --model model.gguf`, through a symlink, a hard link or `./`), two outputs that are the
same file (`--out a.gguf --tensor-type-file a.gguf`), or an input that is no regular file (a FIFO, which
would block the reader forever; a device; a folder where a file is expected) is one error line, and
nothing has been read or written yet. Missing inputs are left to the command, whose loader says how to
make the file.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Mapping, Sequence, Union

from ramp.errors import RampError
from ramp.files import output_file

PathArg = Union[str, os.PathLike, None]
# The only inputs that may be folders: a Hugging Face safetensors model directory.
DIRECTORY_INPUTS = ("--model", "MODEL")


def _listed(value: PathArg | Sequence[PathArg]) -> list[Path]:
    values = value if isinstance(value, (list, tuple)) else [value]
    return [Path(item) for item in values if item is not None and str(item) != ""]


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file: equal once resolved (symlinks, `..`, relative paths), or hard links
    of one inode when both exist."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_input_path(path: str | os.PathLike, label: str) -> None:
    """An existing input must be a regular file (or, for the model, a folder); a missing one is left to its
    loader, which says how to make it."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise RampError(f"cannot read {label} {path} ({exc.strerror}); check the path and its permissions") from None
    if stat.S_ISDIR(mode):
        if label in DIRECTORY_INPUTS:
            return
        raise RampError(f"{label} {path} is a folder; give a file")
    if not stat.S_ISREG(mode):
        raise RampError(f"{label} {path} is not a regular file (a pipe, socket or device); ramp reads files it can "
                        "seek in: save the data to a file and pass that")


def check_command_paths(inputs: Mapping[str, PathArg | Sequence[PathArg]], outputs: Mapping[str, PathArg]) -> None:
    """Refuse, before any work, an input that is no file, an output that is no file ramp may replace (a
    device, FIFO or socket: `ramp.files.output_file`), an output that would overwrite an input, and two
    outputs that are one file. Keys are the option names the user typed (`--model`, `--out`)."""
    read: list[tuple[str, Path]] = []
    for label, value in inputs.items():
        for path in _listed(value):
            check_input_path(path, label)
            read.append((label, path))
    written: list[tuple[str, Path]] = []
    for label, value in outputs.items():
        for path in _listed(value):
            output_file(path, label)
            for input_label, source in read:
                if same_file(path, source):
                    raise RampError(f"{label} {path} is the {input_label} input {source}; writing it would destroy "
                                    f"the input: choose another {label}")
            for other_label, other in written:
                if same_file(path, other):
                    raise RampError(f"{other_label} and {label} are the same file {path}; give each output its own path")
            written.append((label, path))
