"""Error bars on KLD ratios: a paired bootstrap over evaluation windows.

Two files scored on the same windows see the same text, so their per-window mean KLDs are paired: a hard
window is hard for both. Resampling windows (not tokens: tokens inside a window are strongly correlated)
with replacement, the same draw for both files, and taking the ratio of the two resampled means gives the
ratio's sampling spread; the 2.5th and 97.5th percentiles of 10,000 such ratios are its 95% interval. Every
window scores as many tokens, so the mean of the window means is the file's mean KLD and the point ratio is
exactly the one the table prints.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from ramp.errors import RampError

DEFAULT_RESAMPLES = 10_000
DEFAULT_SEED = 0
# resamples drawn per step: bounds the index array to about 8 MB at 100 windows
_RESAMPLES_PER_STEP = 10_000


@dataclass(frozen=True)
class RatioInterval:
    """mean(numerator) / mean(denominator) with its paired bootstrap interval."""

    ratio: float
    low: float
    high: float
    level: float
    resamples: int
    seed: int
    windows: int

    def as_dict(self) -> dict:
        return asdict(self)

    def compact(self) -> str:
        """`0.62x [0.55-0.70]`: the point ratio and its interval, as a table cell."""
        return f"{self.ratio:.2f}x [{self.low:.2f}-{self.high:.2f}]"


def paired_bootstrap_ratio(numerator: Sequence[float], denominator: Sequence[float], *,
                           resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                           level: float = 0.95) -> RatioInterval:
    """The ratio of the two files' mean per-window values (paired: index i is the same window in both) and
    its percentile bootstrap interval at `level`, from `resamples` resamples of windows drawn with `seed`."""
    top = np.asarray(numerator, dtype=np.float64)
    bottom = np.asarray(denominator, dtype=np.float64)
    if top.shape != bottom.shape or top.ndim != 1:
        raise RampError(f"paired values must be two lists of the same windows, got {top.shape} and {bottom.shape}; "
                        "score both files on the same windows")
    if len(top) < 2:
        raise RampError(f"a bootstrap interval needs at least 2 windows, got {len(top)}; evaluate more windows (--max-windows)")
    if bottom.mean() <= 0:
        raise RampError("the denominator's mean is not positive, so the ratio is undefined; compare against a file that "
                        "differs from the reference")
    if resamples < 1 or not 0 < level < 1:
        raise RampError(f"need at least 1 resample and a level in (0, 1), got {resamples} and {level}")
    rng = np.random.default_rng(seed)
    ratios = np.empty(resamples)
    for start in range(0, resamples, _RESAMPLES_PER_STEP):
        stop = min(start + _RESAMPLES_PER_STEP, resamples)
        picks = rng.integers(0, len(top), size=(stop - start, len(top)))
        ratios[start:stop] = top[picks].mean(axis=1) / bottom[picks].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(ratios, [tail, 1 - tail])
    return RatioInterval(float(top.mean() / bottom.mean()), float(low), float(high), level, resamples, seed, len(top))
