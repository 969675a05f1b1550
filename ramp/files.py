"""File helpers shared by every command that writes output or caches results."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from ramp.errors import RampError

Loaded = TypeVar("Loaded")


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


# (real path, device, inode, size, mtime) -> sha256: one command hashes the same reference GGUF for its
# cache keys, its presets and its cache seal; a file that changes gets a new key.
_DIGESTS: dict[tuple, str] = {}


@contextlib.contextmanager
def silenced(descriptor: int) -> Iterator[None]:
    """Point file descriptor 1 or 2 at /dev/null for the duration. C libraries (libllama's load and quantize
    logs, HiGHS's solver chatter) write straight to the descriptor, past Python's streams and logging; C's
    own buffer is flushed before the descriptor is restored, so nothing printed inside leaks out after."""
    import ctypes
    import sys

    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = os.dup(descriptor)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), descriptor)
            try:
                yield
            finally:
                ctypes.CDLL(None).fflush(None)
    finally:
        os.dup2(saved, descriptor)
        os.close(saved)


def file_sha256(path: str | os.PathLike, chunk_bytes: int = 1 << 24) -> str:
    info = os.stat(path)
    key = (os.path.realpath(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    if (known := _DIGESTS.get(key)) is not None:
        return known
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def read_json(path: str | os.PathLike, what: str, remedy: str) -> object:
    """The JSON in `path`, or one RampError line: "`what` PATH does not exist" or "... is not a readable
    `what`", each followed by `remedy` (how to make the file)."""
    import json

    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RampError(f"{what} {path} does not exist; {remedy}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RampError(f"{path} is not a readable {what} ({exc}); {remedy}") from None


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _output_target(path: str | os.PathLike) -> Path:
    """`path` as an output: not a directory, its missing folders created (`--out-dir new/` is a request,
    not a mistake)."""
    target = Path(path)
    if target.is_dir():
        raise RampError(f"output path {target} is a directory; give a file name")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a parent that is a file, no permission, read-only file system
        raise RampError(f"cannot create output directory {target.parent} ({exc.strerror}); choose another --out path") from None
    return target


def check_output_path(path: str | os.PathLike, needed_bytes: int | None = None) -> Path:
    """Fail early, before any expensive work, when the output cannot be written: a directory in its place,
    a folder that cannot be created or written into (tried for real: permission bits say nothing for root
    or on a read-only file system), or, when the output's size is known, too little free space."""
    target = _output_target(path)
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".probe", dir=target.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise RampError(f"cannot write into {target.parent} ({exc.strerror}); choose another --out path") from None
    if needed_bytes is not None:
        free = shutil.disk_usage(target.parent).free
        if free < needed_bytes:
            raise RampError(f"{target} needs {needed_bytes / 1e6:,.1f} MB, but only {free / 1e6:,.1f} MB are free in "
                            f"{target.parent}; free some space or choose another --out path")
    return target


def _output_mode(target: Path) -> int:
    """Permission bits for an output: those of the file it replaces, else 0666 less the user's umask
    (mkstemp's 0600 would make every output private whatever the user asked for)."""
    with contextlib.suppress(FileNotFoundError):
        return stat.S_IMODE(os.stat(target).st_mode)
    mask = os.umask(0o022)  # the only portable way to read the umask is to set it and put it back
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def _replacing(target: Path, tmp_name: str) -> Iterator[None]:
    """Rename `tmp_name` over `target` when the block succeeds, with the output's mode; remove it on any
    failure or interruption. File-system errors name the user's path, not the hidden temporary one."""
    try:
        yield
        os.chmod(tmp_name, _output_mode(target))
        os.replace(tmp_name, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename in (None, tmp_name):
            raise OSError(exc.errno, exc.strerror, str(target)) from exc
        raise


def _temporary(target: Path) -> tuple[int, str]:
    """A hidden temporary file beside `target` (same file system, so the final rename is atomic)."""
    try:
        return tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(target)) from exc


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Yield a handle on a temporary file beside `path`; rename it into place only on success.

    A crash, Ctrl-C or SIGTERM midway leaves the previous file (or nothing) at `path`, never half a file.
    """
    target = _output_target(path)
    fd, tmp_name = _temporary(target)
    with _replacing(target, tmp_name):
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Like `atomic_output`, for writers that insist on opening the file by name themselves."""
    target = _output_target(path)
    fd, tmp_name = _temporary(target)
    os.close(fd)
    with _replacing(target, tmp_name):
        yield Path(tmp_name)


def load_json_object(path: str | os.PathLike, what: str, remedy: str, build: Callable[[dict], Loaded]) -> Loaded:
    """`build` applied to the JSON object in `path`; a missing file, bytes that are not a JSON object, fields
    `build` rejects (TypeError) or values it refuses (RampError) each end as one RampError that names `what`
    the file should be and the `remedy`."""
    try:
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict):
            raise TypeError(f"it holds no {what} object")
        return build(data)
    except FileNotFoundError:
        raise RampError(f"{what} file {path} does not exist; {remedy}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as exc:
        raise RampError(f"{path} is not a ramp {what} file ({exc}); {remedy}") from None
    except RampError as exc:
        raise RampError(f"{what} {path}: {exc}") from None
