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


def data_dir() -> Path:
    """Root of what ramp installs once and never recomputes: real texts, llama.cpp's own tools.

    Unlike the cache, nothing here is derived from a model, so clearing the cache keeps it.
    `RAMP_DATA` overrides the default.
    """
    root = Path(os.environ.get("RAMP_DATA", Path.home() / ".local" / "share" / "ramp"))
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
    """Fail early, before any expensive work, when the output cannot be written; create its missing folders
    (`--out-dir new/` is a request, not a mistake)."""
    target = Path(path)
    if target.is_dir():
        raise RampError(f"output path {target} is a directory; give a file name")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a parent that is a file, no permission, read-only file system
        raise RampError(f"cannot create output directory {target.parent} ({exc.strerror}); choose another --out path") from None
    if not os.access(target.parent, os.W_OK):
        raise RampError(f"cannot write into {target.parent}: permission denied; choose another --out path")
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
