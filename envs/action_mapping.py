"""The action mapping, a contract between the environment and every policy file: how one number in
[-1, 1] picks one of a step's ordered options, and back (the observation states the estimate's choice as an
action), with the version a policy file records."""
from __future__ import annotations

from typing import Sequence

import numpy as np

# With an anchor, the actions in [-ANCHOR_ZONE, ANCHOR_ZONE] all pick it; a departure takes a confident action.
ANCHOR_ZONE = 0.5


def _pace_position(option_bpw: Sequence[float], pace_bpw: float) -> float:
    """Fractional option index of the budget's pace: where an action of 0 lands without an anchor."""
    return float(np.interp(pace_bpw, option_bpw, np.arange(len(option_bpw))))


def action_index(action: float, option_bpw: Sequence[float], pace_bpw: float, anchor: int | None = None) -> int:
    """Map an action in [-1, 1] onto the step's ordered options, centred on `anchor` or else the budget's pace.

    -1 is the lowest option and +1 the highest, monotonically. With `anchor` (the choice of the exact ILP
    over the estimate for the bytes left, so the action is a correction to the estimate ILP) every action
    within +-`ANCHOR_ZONE` picks the anchor, and the options below and above it share the rest of their side
    evenly. An untrained or unsure policy therefore allocates like the estimate ILP, and one that has only
    seen other families departs only where it is confident: a narrow anchor interval lets the small
    actions of an unsure actor move a family never seen off the estimate's choice.

    Without an anchor, 0 is the largest option not above `pace_bpw`, the bits per weight the remaining
    weights may average (rounding down, so pacing never overdraws; what it leaves raises the pace of later
    steps), so an untrained policy spends the budget evenly. That mapping is piecewise linear in the
    fractional option index, option k owning positions [k, k + 1); positive actions run up to top + 1, so the
    highest option owns an interval of actions like every other (ending at top would grant it only at
    exactly +1, which a tanh-squashed actor reaches only by saturating).
    """
    action = float(np.clip(action, -1.0, 1.0))
    top = len(option_bpw) - 1
    if anchor is not None:
        anchor = min(anchor, top)
        side = anchor if action < 0 else top - anchor  # options past the anchor on the action's side
        beyond = abs(action) - ANCHOR_ZONE
        if beyond <= 0 or side == 0:
            return anchor
        steps = min(side, max(1, int(np.ceil(beyond * side / (1.0 - ANCHOR_ZONE) - 1e-9))))
        return anchor + (steps if action > 0 else -steps)
    centre = _pace_position(option_bpw, pace_bpw)
    position = centre + action * (centre if action < 0 else top + 1 - centre)
    return int(np.clip(np.floor(position + 1e-9), 0, top))


def index_action(index: int, option_bpw: Sequence[float], pace_bpw: float, anchor: int | None = None) -> float:
    """The action in [-1, 1] at the middle of the interval `action_index` maps onto option `index`: how the
    observation states the estimate's choice relative to the pace."""
    top = len(option_bpw) - 1
    index = min(index, top)
    if anchor is not None:
        anchor = min(anchor, top)
        if index == anchor:
            return 0.0
        side = anchor if index < anchor else top - anchor
        offset = ANCHOR_ZONE + (abs(index - anchor) - 0.5) * (1.0 - ANCHOR_ZONE) / side
        return float(np.sign(index - anchor) * offset)
    centre = _pace_position(option_bpw, pace_bpw)
    middle = index + 0.5
    span = centre if middle < centre else top + 1 - centre
    return float(np.clip((middle - centre) / span, -1.0, 1.0)) if span > 0 else 0.0


# Bumped whenever `action_index` changes what an action means: a policy trained under another mapping
# would allocate differently from what it learned, so loading refuses it (docs/DECISIONS.md lists the versions).
ACTION_MAPPING_VERSION = 5
