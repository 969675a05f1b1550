"""File helpers shared by every command that writes output or caches results."""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from ramp.errors import RampError


def cache_dir() -> Path:
    """Root of ramp's on-disk caches (reference logits, profiles, dequantized weights).

    `RAMP_CACHE` overrides the default so CI and tests can point it at a scratch folder.
    """
    root = Path(os.environ.get("RAMP_CACHE", Path.home() / ".cache" / "ramp"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def file_sha256(path: str | os.PathLike, chunk_bytes: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_output_path(path: str | os.PathLike) -> Path:
    """Fail early, before any expensive work, when the output cannot be written."""
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise RampError(f"output directory {parent} does not exist; create it first or choose another --out path")
    if target.is_dir():
        raise RampError(f"output path {target} is a directory; give a file name")
    return target


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Yield a handle on a temporary file beside `path`; rename it into place only on success.

    A crash or Ctrl-C midway leaves the previous file (or nothing) at `path`, never half a file.
    """
    target = check_output_path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Like `atomic_output`, for writers that insist on opening the file by name themselves."""
    target = check_output_path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp_name)
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
