"""What this process may use of the machine: the CPU cores it may run on, and the memory it gives back.

`os.cpu_count()` counts the machine's cores, not the ones this process is allowed (taskset, a container's
cpuset): a llama.cpp evaluation given more threads than it has cores spins at every barrier and runs many
times slower, so every thread count in ramp comes from here.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os


def usable_cores() -> int:
    """The cores this process may run on (at least 1)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def release_memory() -> None:
    """Hand freed heap memory back to the system (glibc's malloc_trim; nothing elsewhere). Arrays of up to 32 MB
    come from malloc's arenas, which keep what was freed: after Qwen2.5-1.5B's quantization-error work the process
    stayed at 3.85 GB with nothing alive to show for it."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
