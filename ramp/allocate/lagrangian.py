"""The Lagrangian relaxation of the allocation knapsack: one price per byte, each item's cheapest choice at
that price. Exact up to one item near the budget and fast enough to re-solve at every step of an episode
(the environment's lookahead shaping does)."""
from __future__ import annotations

import numpy as np


def lagrangian_choices(damage: np.ndarray, nbytes: np.ndarray, budget: float) -> np.ndarray:
    """Per row, the choice argmin(damage + price * bytes) at the smallest price per byte at which the rows'
    choices together fit `budget`: the Lagrangian relaxation of the knapsack, exact up to one row near the
    budget, bisected in log space (damages span many decades)."""
    def pick(price: float) -> np.ndarray:
        return np.argmin(damage + price * nbytes, axis=1)

    def spent(chosen: np.ndarray) -> float:
        return float(nbytes[np.arange(len(nbytes)), chosen].sum())

    if spent(chosen := pick(0.0)) <= budget:
        return chosen
    low, high = 1e-16, 1.0
    while spent(pick(high)) > budget and high < 1e6:
        high *= 10.0
    for _ in range(50):
        middle = float(np.sqrt(low * high))
        low, high = (middle, high) if spent(pick(middle)) > budget else (low, middle)
    return pick(high)
