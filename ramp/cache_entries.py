"""Cache entries that are checked before they are trusted and rebuilt when they fail.

Every entry ramp keeps under `cache_dir()` (dequantized weights, sensitivity tables and their partial
sweeps, reference logits, reference and preset GGUFs) is written with a seal beside it: `<entry>.sha256`,
the sha256 of the entry's bytes, written before the entry is renamed into place. Reading an entry checks
its bytes against the seal; an entry that fails (overwritten, truncated, bit rot, a copy interrupted) is
removed with a one-line notice and the caller computes it again. Nothing read from the cache is trusted
on its name alone.

An entry without its seal is never trusted, whatever its structure: a seal removed (by hand, by a
copy that skipped it) and bytes changed afterwards would otherwise be sealed as they are. Such an entry is
computed again; a sweep's partial file is sealed too, so that an interrupted sweep keeps its measurements.

A cache is a convenience: a failure to write an entry (full disk, read-only cache folder) is reported in
one line and the run goes on without it (`write_cache_entry`). Entries the run needs as files (the
reference GGUF llama.cpp reads) use `cache_entry_path` and fail like any other output.
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Callable, Iterator

from ramp.files import atomic_path, exclusive_lock, file_sha256

SEAL_SUFFIX = ".sha256"

Validate = Callable[[Path], bool]
# cache folders already reported unwritable in this process: one warning each, not one per entry
_UNWRITABLE: set[Path] = set()


def seal_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + SEAL_SUFFIX)


def _write_seal(entry: Path, digest: str) -> None:
    with atomic_path(seal_path(entry)) as tmp:
        tmp.write_text(digest + "\n")


def _passes(validate: Validate, path: Path) -> bool:
    try:
        return bool(validate(path))
    except Exception:  # noqa: BLE001 - a validator that cannot parse the entry has rejected it
        return False


def remove_entry(path: str | os.PathLike) -> None:
    """Remove an entry and its seal (missing ones are fine)."""
    for stale in (Path(path), seal_path(path)):
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            stale.unlink()


def discard_entry(path: str | os.PathLike) -> None:
    """Remove a damaged entry (and its seal) with a one-line notice, so that the caller computes it again."""
    print(f"ramp: cache entry {path} is damaged (it has no seal, does not match it or cannot be read); "
          "computing it again", file=sys.stderr)
    with contextlib.suppress(OSError):
        remove_entry(path)


def trusted_entry(path: str | os.PathLike, validate: Validate | None = None) -> bool:
    """True when the cache entry at `path` exists and can be used: its bytes match its seal and `validate`
    (structure: size, shape, a table that parses), when given, accepts it. An entry without a seal is not
    trusted: its seal was lost, and nothing can tell whether its bytes changed since. An entry that fails is
    removed, with a notice on stderr, and False is returned so that the caller rebuilds it."""
    path = Path(path)
    if not path.is_file():
        return False
    seal = seal_path(path)
    try:
        good = seal.is_file() and seal.read_text().strip() == file_sha256(path) and (validate is None or _passes(validate, path))
    except OSError:
        good = False
    if not good:
        discard_entry(path)
    return good


@contextlib.contextmanager
def cache_entry_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path to write a cache entry to; on success the entry is sealed and renamed into place
    (the seal first, so that a reader never finds a new entry without its seal). One run writes an entry at
    a time (`<entry>.lock`): a second run writing the same entry waits for the first, and removes, as it
    starts, the temporaries a killed writer left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(path.with_name(path.name + ".lock"), f"the cache entry {path}", wait=True), atomic_path(path) as tmp:
        yield tmp
        _write_seal(path, file_sha256(tmp))


def write_cache_entry(path: str | os.PathLike, write: Callable[[Path], object]) -> bool:
    """Write a cache entry with `write(temporary path)`; True when it was cached. A failure of the file
    system (full disk, read-only or misplaced cache folder) is reported in one line and leaves nothing
    behind: the caller goes on with the value it already holds."""
    try:
        with cache_entry_path(path) as tmp:
            write(tmp)
        return True
    except OSError as exc:
        folder = Path(path).parent
        if folder not in _UNWRITABLE:
            _UNWRITABLE.add(folder)
            print(f"ramp: warning: not caching in {folder} ({exc.strerror or exc}); the run goes on without it",
                  file=sys.stderr)
        return False
