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


# (environment variable, folder under HOME it defaults to, what it holds)
STORAGE = (("RAMP_CACHE", ".cache/ramp", "cache"), ("RAMP_DATA", ".local/share/ramp", "installed data"))


def _storage_root(variable: str) -> Path:
    """The folder `variable` names, or its default under HOME, refused in one line when it cannot be one: a
    file, a symlink loop, or a default under an empty or relative HOME (which would put it under / or the
    current folder, and report what is installed as missing)."""
    _, default, what = next(entry for entry in STORAGE if entry[0] == variable)
    given = os.environ.get(variable)
    if given:
        root = Path(given)
    else:
        home = os.environ.get("HOME")
        if home is not None and not os.path.isabs(home):
            raise RampError(f"HOME is {home!r}, not an absolute path, so ramp cannot find its {what} (~/{default}); "
                            f"set HOME, or set {variable} to a folder")
        root = Path.home() / default
    try:
        mode = os.stat(root).st_mode
    except FileNotFoundError:
        return root
    except OSError as exc:  # a symlink loop, a path through a file
        raise RampError(f"the {what} folder {root} cannot be used ({exc.strerror}); set {variable} to a folder") from None
    if not stat.S_ISDIR(mode):
        raise RampError(f"the {what} folder {root} is a file, not a folder; set {variable} to a folder (or remove the file)")
    return root


def check_storage() -> None:
    """Both of ramp's folders usable, checked when a command starts rather than when it first caches."""
    for variable, _, _ in STORAGE:
        _storage_root(variable)


def cache_dir() -> Path:
    """Root of ramp's on-disk caches (reference logits, profiles, dequantized weights).

    `RAMP_CACHE` overrides the default so CI and tests can point it at a scratch folder.
    """
    root = _storage_root("RAMP_CACHE")
    root.mkdir(parents=True, exist_ok=True)
    return root


def data_dir() -> Path:
    """Root of what ramp installs once and never recomputes: real texts, llama.cpp's own tools.

    Unlike the cache, nothing here is derived from a model, so clearing the cache keeps it.
    `RAMP_DATA` overrides the default.
    """
    root = _storage_root("RAMP_DATA")
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


def output_file(path: str | os.PathLike, label: str = "output") -> Path:
    """The file an output path names, refused before anything is opened when it is no file ramp may replace:
    a folder, a device, a FIFO or a socket (a rename over `/dev/null` would destroy it; over a FIFO, leave its
    reader blocked forever). A symlink to a regular file is written through: the file it points to is
    replaced, the link kept. A missing path is a new file."""
    target = Path(path)
    try:
        mode = os.stat(target).st_mode  # follows symlinks: what a write would reach
    except (FileNotFoundError, NotADirectoryError):  # a new file, or one under a file: creating its folder says which
        mode = None
    except OSError as exc:  # a symlink loop, a path through a file
        raise RampError(f"{label} {target} cannot be used ({exc.strerror}); give the path of a file") from None
    if mode is not None and stat.S_ISDIR(mode):
        raise RampError(f"{label} path {target} is a directory; give a file name")
    if mode is not None and not stat.S_ISREG(mode):
        raise RampError(f"{label} {target} is not a regular file (a device, pipe or socket), and ramp writes an output "
                        "by replacing the file: give the path of a file")
    if target.is_symlink():
        if mode is None:  # a dangling link: writing through it would create a file somewhere unexpected
            raise RampError(f"{label} {target} is a symlink to nothing ({os.readlink(target)}); remove it or give a file name")
        return Path(os.path.realpath(target))
    return target


def _output_target(path: str | os.PathLike) -> Path:
    """`path` as an output (`output_file`), its missing folders created (`--out-dir new/` is a request, not
    a mistake), and the temporaries killed runs left beside it removed."""
    target = output_file(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a parent that is a file, no permission, read-only file system
        raise RampError(f"cannot create output directory {target.parent} ({exc.strerror}); choose another path for "
                        f"{target.name}") from None
    remove_stale_temporaries(target)
    return target


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(target: Path) -> None:
    """Remove the hidden temporaries (`.NAME.PID.*.tmp`, `.NAME.PID.*.probe`) that runs killed while writing
    `target` left beside it. A temporary whose writer still runs is kept: the pid in its name tells them apart."""
    for stale in target.parent.glob(f".{glob_escape(target.name)}.*"):
        parts = stale.name[len(target.name) + 2:].split(".")
        if len(parts) < 3 or parts[-1] not in ("tmp", "probe") or not parts[0].isdigit():
            continue
        if not _process_alive(int(parts[0])):
            with contextlib.suppress(OSError):
                stale.unlink()


def glob_escape(name: str) -> str:
    return "".join(f"[{char}]" if char in "*?[" else char for char in name)


def check_output_path(path: str | os.PathLike, needed_bytes: int | None = None, elsewhere: str = "choose another path") -> Path:
    """Fail early, before any expensive work, when the output cannot be written: a directory in its place,
    a folder that cannot be created or written into (tried for real: permission bits say nothing for root
    or on a read-only file system), or, when the output's size is known, too little free space. `elsewhere` is
    the fix the error lines offer (a cache entry's is RAMP_CACHE, not an option of the command)."""
    target = _output_target(path)
    try:
        fd, probe = tempfile.mkstemp(prefix=_temporary_prefix(target), suffix=".probe", dir=target.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise RampError(f"cannot write into {target.parent} ({exc.strerror}); {elsewhere} for {target.name}") from None
    if needed_bytes is not None:
        free = shutil.disk_usage(target.parent).free
        if free < needed_bytes:
            raise RampError(f"{target} needs {needed_bytes / 1e6:,.1f} MB, but only {free / 1e6:,.1f} MB are free in "
                            f"{target.parent}; free some space or {elsewhere} for {target.name}")
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
        if isinstance(exc, OSError) and exc.filename in (None, tmp_name):
            if exc.errno is not None:
                raise OSError(exc.errno, exc.strerror, str(target)) from exc
            # numpy's short write (`tofile`) carries no errno: only a full disk or a size limit cuts a write short
            raise OSError(None, f"the write was cut short ({exc}; a full disk or a file-size limit, ulimit -f)",
                          str(target)) from exc
        raise


def _temporary_prefix(target: Path) -> str:
    """`.NAME.PID.`: the writer's pid tells the next run whether a temporary is in flight or was left by a kill."""
    return f".{target.name}.{os.getpid()}."


def _temporary(target: Path) -> tuple[int, str]:
    """A hidden temporary file beside `target` (same file system, so the final rename is atomic)."""
    try:
        return tempfile.mkstemp(prefix=_temporary_prefix(target), suffix=".tmp", dir=target.parent)
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


# lock file (resolved) -> how deep this process holds it: a run that holds a lock may take it again
_HELD_LOCKS: dict[str, int] = {}


@contextlib.contextmanager
def exclusive_lock(lock: Path, what: str, wait: bool, remedy: str = "wait for it to finish") -> Iterator[None]:
    """Hold `lock` for the block, across processes: a folder (locked as it is, nothing written into it) or a
    file (made if missing, holding the holder's pid). Another run holding it makes this one wait with a
    one-line notice (`wait`) or fail in one line naming `what` is in use and the `remedy`. The operating
    system drops the lock of a killed run, so no stale lock is ever left to clear by hand."""
    import fcntl
    import sys

    key = os.path.realpath(lock)
    if key in _HELD_LOCKS:
        _HELD_LOCKS[key] += 1
        try:
            yield
        finally:
            _HELD_LOCKS[key] -= 1
        return
    is_folder = lock.is_dir()
    if not is_folder:
        lock.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(lock, os.O_RDONLY) if is_folder else os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = "" if is_folder else os.pread(descriptor, 32, 0).decode(errors="replace").strip()
            holder = f" (pid {holder})" if holder else ""
            if not wait:
                raise RampError(f"{what} is in use by another ramp run{holder}; {remedy}") from None
            print(f"ramp: waiting for another ramp run{holder} to finish with {what}", file=sys.stderr, flush=True)
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        if not is_folder:
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        _HELD_LOCKS[key] = 1
        try:
            yield
        finally:
            del _HELD_LOCKS[key]
    finally:
        os.close(descriptor)  # releases the lock


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
