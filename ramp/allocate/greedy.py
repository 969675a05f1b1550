"""Greedy marginal allocation (the Lagrangian heuristic behind llama.cpp's `--target-bpw` work).

Every item starts at its smallest choice; the upgrade with the largest damage reduction per extra byte
is taken while it fits the budget. Each item only climbs its lower convex hull of (bytes, damage), so its
successive upgrades have falling efficiency and greedy order equals sweeping the Lagrange multiplier
lambda of  min sum_i d_i(c_i) + lambda * sum_i b_i(c_i)  down from infinity; an upgrade that does not
fit is skipped and cheaper upgrades of other items may still use the remaining bytes.
"""
from __future__ import annotations

import heapq

import numpy as np

from ramp.allocate.problem import Problem


def lower_hull(n_bytes: list[int], damage: np.ndarray) -> list[int]:
    """Choice indices (ascending bytes) on the lower convex hull from the smallest choice to the least
    damaging one: choices above the hull or more damaging than a cheaper one are never worth buying. Of
    two choices of equal bytes (Q4_0 and Q4_K are both 4.5 bits per weight) the less damaging stays."""
    hull: list[int] = [0]
    for c in range(1, len(n_bytes)):
        if damage[c] >= damage[hull[-1]]:
            continue
        if n_bytes[c] == n_bytes[hull[-1]]:
            hull.pop()  # the same bytes for less damage: c takes its place
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # b lies on or above the segment a-c when c's slope from a is at least as steep as b's
            if (damage[c] - damage[a]) * (n_bytes[b] - n_bytes[a]) <= (damage[b] - damage[a]) * (n_bytes[c] - n_bytes[a]):
                hull.pop()
            else:
                break
        hull.append(c)
    return hull


def solve(problem: Problem, damage: list[np.ndarray]) -> tuple[list[int], dict]:
    hulls = [lower_hull([choice.nbytes for choice in item.choices], d) for item, d in zip(problem.items, damage)]
    position = [0] * len(problem.items)  # index into each item's hull
    used = problem.min_bytes

    def push(heap: list, i: int) -> None:
        if position[i] + 1 < len(hulls[i]):
            here, there = hulls[i][position[i]], hulls[i][position[i] + 1]
            extra = problem.items[i].choices[there].nbytes - problem.items[i].choices[here].nbytes
            gain = damage[i][here] - damage[i][there]
            heapq.heappush(heap, (-gain / extra, i, extra))  # ties go to the earlier item: deterministic

    heap: list = []
    for i in range(len(problem.items)):
        push(heap, i)
    upgrades = 0
    while heap:
        _, i, extra = heapq.heappop(heap)
        if used + extra > problem.budget_bytes:
            continue  # this item stops here: every later choice of it costs more bytes still
        used += extra
        position[i] += 1
        upgrades += 1
        push(heap, i)
    picks = [hull[p] for hull, p in zip(hulls, position)]
    return picks, {"upgrades": upgrades}
