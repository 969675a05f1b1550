"""Real English text for calibration and evaluation, shipped with every CPython: the Python Language
Reference topics in `pydoc_data.topics` (PSF License 2.0).

The topics are split by a hash of their title into two disjoint sets, so calibration never sees a
passage that evaluation scores, and the split does not move when topics are added or removed.
"""
from __future__ import annotations

import hashlib


def _topics() -> dict[str, str]:
    from pydoc_data.topics import topics

    return topics


def _is_evaluation_topic(title: str) -> bool:
    return hashlib.sha256(title.encode("utf-8")).digest()[0] % 2 == 1


def calibration_text() -> str:
    """Text that profiling, sensitivity measurement and the RL environment may look at."""
    return "\n\n".join(body for title, body in sorted(_topics().items()) if not _is_evaluation_topic(title))


def evaluation_text() -> str:
    """Held-out text that only final perplexity/KLD measurements use."""
    return "\n\n".join(body for title, body in sorted(_topics().items()) if _is_evaluation_topic(title))
