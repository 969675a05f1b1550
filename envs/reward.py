"""The reward, a contract a policy file records (`PolicyRecord.reward`): every constant of it in one place,
and how each step and the episode's end are scored."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RewardConfig:
    """Every reward constant, in one place. Quality ranks above budget use.

    With `kld` the measured mean KLD of the finished allocation, `B` the budget in bytes, `used` the bytes
    placed, and per step `asked` the bytes of the format the agent requested, `allowed` the most bytes
    that step could take and still leave the minimum for every later step (the step is clipped to it),
    `damage_t` the step's summed single-tensor KLD increase from the sensitivity table, and `best(t, b)`
    the least summed damage the table allows steps t.. within b bytes:

        each step:  regret_t = damage_t + lookahead_weight * (best(t+1, left after t) - best(t, left before t))
                    r_t = - over_weight * max(0, asked - allowed) / B                        (budget cliff)
                          - shaping_weight * regret_t / kld_scale                   (regret_scale = 0)
                          - shaping_weight * log(1 + max(regret_t, 0) / regret_scale)  (regret_scale > 0)
                          - deviation_weight * |requested option - estimate's option|   (with an estimate)
        last step:  r_T += - quality_weight * log(1 + kld / kld_scale)                         (quality)
                           - under_weight * (B - used) / B                                     (unused budget)

    The cliff is steep (a request past the frontier costs far more than the bytes are worth) and the
    unused-budget term is mild, so the agent learns to spend close to the budget without pushing past it.
    With lookahead_weight 1 the shaping is potential-based (Ng et al., 1999, potential -best): it sums
    over an episode to the table's regret, damage - best(0, B), whatever the order of the choices, so it
    does not move the optimum, but it charges each step at once for what its bytes cost the steps after
    it. Without the lookahead that cost shows up only many steps later as damage to starved tensors, and
    SAC, which discounts the future, learns to over-feed early tensors at the expense of every later one.
    `best` is the Lagrangian relaxation of the knapsack (`ramp.allocate.lagrangian`), exact up to one item
    near the budget. The logarithmic form gives up the telescoping sum but keeps each step's ranking of
    its choices, and it lets a critic resolve regrets of 1e-3 nats next to the -20 of starving the rest;
    with gamma 0 each step is judged by its own regret, which already prices the future. Shaping is zero
    without a table; the quality term is zero when no evaluator is attached (deterministic allocation
    rollouts). The deviation cost makes the estimate's choice the default a correction must earn: a table's
    preference for another option has to be worth more than `deviation_weight` per option of distance (a
    single-tensor regret of about 0.006 nats at the defaults) before the policy learns it. Smaller
    preferences are mostly the training family's own (single-tensor KLD noise, its grid) and do not carry
    to a family never seen (docs/DECISIONS.md, reward).
    """

    quality_weight: float = 1.0
    kld_scale: float = 0.05  # nats; the KLD at which the quality term reaches -log 2
    over_weight: float = 20.0
    under_weight: float = 1.0
    shaping_weight: float = 1.0
    lookahead_weight: float = 1.0
    regret_scale: float = 0.001  # nats; 0 = linear shaping
    deviation_weight: float = 2.0  # per option between the request and the estimate's choice

    def quality(self, kld: float) -> float:
        return -self.quality_weight * float(np.log1p(max(kld, 0.0) / self.kld_scale))

    def cliff(self, asked: int, allowed: int, budget: int) -> float:
        return -self.over_weight * max(0, asked - allowed) / budget

    def unused(self, used: int, budget: int) -> float:
        return -self.under_weight * max(0, budget - used) / budget

    def deviation(self, requested: int, anchor: int | None) -> float:
        return 0.0 if anchor is None else -self.deviation_weight * abs(requested - anchor)

    def shaping(self, damage: float, best_after: float, best_before: float) -> float:
        regret = damage + self.lookahead_weight * (best_after - best_before)
        if self.regret_scale > 0:
            return -self.shaping_weight * float(np.log1p(max(regret, 0.0) / self.regret_scale))
        return -self.shaping_weight * regret / self.kld_scale
