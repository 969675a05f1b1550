"""The one exception type users see: its message is a single line naming the problem and the fix."""
from __future__ import annotations

import errno


class RampError(Exception):
    """A user-facing failure; the CLI prints `ramp: error: <message>` and exits with status 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt, so that every cleanup written for Ctrl-C
    (temporary files removed, a training checkpoint saved) runs for `kill`, a scheduler or a closed
    session too."""


# What to do about the file-system failures a user can meet, by errno.
_OS_FIXES = {
    errno.ENOSPC: "the disk is full; free some space or write elsewhere (--out, --out-dir, RAMP_CACHE)",
    errno.EDQUOT: "the disk quota is used up; free some space or write elsewhere (--out, --out-dir, RAMP_CACHE)",
    errno.EFBIG: "the file is larger than this file system or a size limit (ulimit -f) allows; write elsewhere",
    errno.EROFS: "the file system is read-only; write elsewhere (--out, --out-dir, RAMP_CACHE)",
    errno.EACCES: "check the permissions, or write elsewhere (--out, --out-dir, RAMP_CACHE)",
    errno.EPERM: "check the permissions, or write elsewhere (--out, --out-dir, RAMP_CACHE)",
    errno.EIO: "the disk reported an input/output error; check it, or write elsewhere",
    errno.ENOTDIR: "a part of the path is a file, not a folder; fix the path",
    errno.EISDIR: "the path is a folder; give a file name",
    errno.ENOENT: "check the path",
    errno.ENAMETOOLONG: "shorten the path",
}


def describe_os_error(exc: OSError) -> str:
    """One line for a file-system failure: what failed, on which path, and what to do."""
    what = exc.strerror or (str(exc).splitlines() or [type(exc).__name__])[0]
    where = f" ({exc.filename})" if exc.filename else ""
    fix = _OS_FIXES.get(exc.errno, "check the path, its folder and the free space")
    return f"{what}{where}: {fix}"
