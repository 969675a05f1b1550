"""Paired bootstrap intervals on KLD ratios, against an independent large-sample computation."""
from __future__ import annotations

import numpy as np
import pytest

from ramp.errors import RampError
from ramp.evaluate.intervals import paired_bootstrap_ratio

SEED = 20261203


def paired_windows(n_windows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-window mean KLDs of two files on the same windows: window difficulty shared (gamma), the second
    file 0.6x the first up to per-window noise, so the population ratio is 0.6 * E[exp(noise)]."""
    rng = np.random.default_rng(seed)
    difficulty = rng.gamma(4.0, 0.01, n_windows)
    return 0.6 * difficulty * np.exp(rng.normal(0, 0.2, n_windows)), difficulty


def delta_method_interval(top: np.ndarray, bottom: np.ndarray) -> tuple[float, float]:
    """The normal-approximation 95% interval of mean(top) / mean(bottom) (first-order Taylor expansion of the
    ratio: variance (var(t) - 2 R cov(t, b) + R^2 var(b)) / (n mean(b)^2)), which the bootstrap matches at large n."""
    ratio = top.mean() / bottom.mean()
    covariance = np.cov(top, bottom, ddof=0)
    variance = (covariance[0, 0] - 2 * ratio * covariance[0, 1] + ratio**2 * covariance[1, 1]) / (len(top) * bottom.mean() ** 2)
    return ratio - 1.959964 * variance**0.5, ratio + 1.959964 * variance**0.5


def test_matches_the_delta_method_on_many_windows():
    print(f"seed {SEED}")
    top, bottom = paired_windows(2000, SEED)
    interval = paired_bootstrap_ratio(top, bottom, seed=SEED)
    low, high = delta_method_interval(top, bottom)
    assert interval.ratio == pytest.approx(top.mean() / bottom.mean(), rel=1e-12)
    half_width = (high - low) / 2
    # 10,000 resamples put each percentile within a few percent of the half-width; skew at 2,000 windows is tiny
    assert interval.low == pytest.approx(low, abs=0.05 * half_width)
    assert interval.high == pytest.approx(high, abs=0.05 * half_width)


def test_pairing_is_what_makes_it_narrow():
    # resampling the two files' windows independently ignores that a hard window is hard for both: the
    # paired interval must be much narrower than the delta method's without the covariance term
    top, bottom = paired_windows(200, SEED)
    interval = paired_bootstrap_ratio(top, bottom, seed=SEED)
    ratio = top.mean() / bottom.mean()
    unpaired = 1.959964 * ((top.var() + ratio**2 * bottom.var()) / (len(top) * bottom.mean() ** 2)) ** 0.5
    assert interval.high - interval.low < 0.5 * 2 * unpaired


def test_contains_the_point_ratio_and_narrows_with_more_windows():
    widths = []
    for n_windows in (8, 32, 128):
        top, bottom = paired_windows(n_windows, SEED + n_windows)
        interval = paired_bootstrap_ratio(top, bottom, seed=SEED)
        assert interval.low < interval.ratio < interval.high and interval.windows == n_windows
        widths.append(interval.high - interval.low)
    assert widths[0] > widths[1] > widths[2]
    assert widths[2] < 0.6 * widths[1]  # about 1/sqrt(4) per four times the windows


def test_deterministic_for_a_seed():
    top, bottom = paired_windows(16, SEED)
    first, again = paired_bootstrap_ratio(top, bottom, seed=7), paired_bootstrap_ratio(top, bottom, seed=7)
    assert first == again
    other = paired_bootstrap_ratio(top, bottom, seed=8)
    assert other.ratio == first.ratio and (other.low, other.high) != (first.low, first.high)


def test_rejects_unpaired_or_too_few_windows():
    with pytest.raises(RampError, match="same windows"):
        paired_bootstrap_ratio([0.1, 0.2, 0.3], [0.1, 0.2])
    with pytest.raises(RampError, match="at least 2 windows"):
        paired_bootstrap_ratio([0.1], [0.2])
    with pytest.raises(RampError, match="not positive"):
        paired_bootstrap_ratio([0.1, 0.2], [0.0, 0.0])
