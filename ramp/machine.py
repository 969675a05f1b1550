"""What this process may use of the machine: the CPU cores it may run on.

`os.cpu_count()` counts the machine's cores, not the ones this process is allowed (taskset, a container's
cpuset): a llama.cpp evaluation given more threads than it has cores spins at every barrier and runs many
times slower, so every thread count in ramp comes from here.
"""
from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may run on (at least 1)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)
