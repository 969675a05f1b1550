"""Whole-model search: start from the ILP over the damage table, then let the measured KLD of the whole
allocation decide.

The table assumes damages add up; they do not quite (`benchmarks/additivity.py`, docs/additivity-*.json), so
the allocation that minimises the table's sum need not minimise the real KLD. The search moves in the ILP's neighbourhood with
budget-keeping level switches (one item climbs a format, randomly chosen others step down until the bytes fit
again, as EvoPress's level switch) and keeps a move only when the whole model, measured by the KLD oracle on
calibration windows, is better for it. Each generation makes 16 offspring of the best allocation so far and
halves its way to one (successive halving): all 16 are scored on the first window, the best 4 on a quarter of
the windows, the best one on all of them, where it must beat its parent to replace it. Each (tensor, format)'s
dequantized weights are kept once made, so a score costs forward passes only.

Everything random comes from the seed and the generation's number, and the state is written atomically after
every generation, so an interrupted search continues where it stopped and ends where an uninterrupted one
would. The minutes bound the whole search, resumed runs included.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ramp.allocate.problem import Problem
from ramp.errors import RampError
from ramp.files import atomic_output, cache_dir
from ramp.measure.calibration import SEARCH, CalibrationSpec, calibration_tokens

if TYPE_CHECKING:
    import torch

    from ramp.measure.imatrix import ImportanceMatrix
    from ramp.measure.oracle import KLDOracle
    from ramp.models.model import Model

# Candidates scored at each rung of one generation's successive halving.
SURVIVORS = (16, 4, 1)
# Level switches applied to make one offspring: between 1 and this many.
MAX_SWITCHES = 3
STATE_VERSION = 1


@dataclass
class SearchState:
    """Everything a search needs to continue: the best allocation so far and its full-rung KLD."""

    key: str
    start_picks: list[int]
    start_kld: float
    picks: list[int]
    kld: float
    generation: int = 0
    scorings: int = 0  # candidate scorings, each one forward over its rung's windows
    windows_scored: int = 0
    elapsed_s: float = 0.0
    history: list[float] = field(default_factory=list)  # best KLD after each generation
    version: int = STATE_VERSION

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path, "w") as handle:
            json.dump(asdict(self), handle)

    @classmethod
    def load(cls, path: Path, key: str) -> "SearchState | None":
        """The saved state of this very search, or None (no file, another search's, or unreadable)."""
        try:
            data = json.loads(path.read_text())
            state = cls(**data)
        except (OSError, ValueError, TypeError):
            return None
        return state if state.key == key and state.version == STATE_VERSION else None


def rung_windows(n_windows: int) -> tuple[int, ...]:
    """Windows each rung scores on: a sixteenth, a quarter, all (at least one each)."""
    return max(1, n_windows // 16), max(1, n_windows // 4), n_windows


def search_key(model: "Model", problem: Problem, damage: list[np.ndarray], tokens_sha256: str,
               imatrix_sha256: str | None, seed: int) -> str:
    """Identity of a search: what determines its every step, so a saved state is only ever continued by the
    same search (the minutes and generation bound are not in it: a longer search continues a shorter one)."""
    record = {
        "model": model.sha256 or [spec.name for spec in model.quantizable], "imatrix": imatrix_sha256,
        "tokens": tokens_sha256, "budget": problem.budget_bytes, "seed": seed, "survivors": SURVIVORS,
        "switches": MAX_SWITCHES, "items": [[item.members, [(c.formats, c.nbytes) for c in item.choices]]
                                            for item in problem.items],
        "damage": [np.asarray(d, dtype=np.float64).tobytes().hex() for d in damage],
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def default_state_path(key: str) -> Path:
    return cache_dir() / "search" / f"{key[:32]}.json"


def level_switch(picks: list[int], problem: Problem, rng: np.random.Generator, switches: int) -> list[int]:
    """`picks` after `switches` budget-keeping moves: one item a format up, then random other items a format
    down until the bytes are within the budget again (a raise nothing can pay for is undone)."""
    child = list(picks)
    items = problem.items
    n_bytes = problem.picks_bytes(child)
    for _ in range(switches):
        raisable = [i for i, item in enumerate(items) if child[i] < len(item.choices) - 1]
        if not raisable:
            break
        up = int(rng.choice(raisable))
        n_bytes += items[up].choices[child[up] + 1].nbytes - items[up].choices[child[up]].nbytes
        child[up] += 1
        while n_bytes > problem.budget_bytes:
            lowerable = [i for i in range(len(items)) if child[i] > 0 and i != up]
            if not lowerable:
                n_bytes -= items[up].choices[child[up]].nbytes - items[up].choices[child[up] - 1].nbytes
                child[up] -= 1
                break
            down = int(rng.choice(lowerable))
            n_bytes -= items[down].choices[child[down]].nbytes - items[down].choices[child[down] - 1].nbytes
            child[down] -= 1
    return child


def offspring(picks: list[int], problem: Problem, rng: np.random.Generator, count: int) -> list[list[int]]:
    """Up to `count` distinct neighbours of `picks` within the budget (fewer when the neighbourhood is smaller)."""
    children: list[list[int]] = []
    seen = {tuple(picks)}
    for _ in range(count * 20):
        if len(children) == count:
            break
        child = level_switch(picks, problem, rng, int(rng.integers(1, MAX_SWITCHES + 1)))
        if tuple(child) not in seen:
            seen.add(tuple(child))
            children.append(child)
    return children


def run_generation(state: SearchState, problem: Problem, oracle: "KLDOracle", seed: int) -> None:
    """One generation: offspring of the best so far, successive halving, and the survivor replaces its parent
    when its KLD on all windows is lower."""
    rng = np.random.default_rng([seed, state.generation])
    candidates = offspring(state.picks, problem, rng, SURVIVORS[0])
    windows = rung_windows(oracle.n_windows)
    scores: list[float] = []
    for survivors, n_windows in zip(SURVIVORS, windows):
        candidates = candidates[:survivors]
        scores = [oracle(problem.formats(child), n_windows) for child in candidates]
        state.scorings += len(candidates)
        state.windows_scored += len(candidates) * n_windows
        order = sorted(range(len(candidates)), key=lambda index: (scores[index], index))
        candidates, scores = [candidates[i] for i in order], [scores[i] for i in order]
    if candidates and scores[0] < state.kld:
        state.picks, state.kld = candidates[0], scores[0]
    state.generation += 1
    state.history.append(state.kld)


def solve(
    model: "Model",
    problem: Problem,
    damage: list[np.ndarray],
    *,
    imatrix: "ImportanceMatrix | None" = None,
    seed: int = 0,
    minutes: float = 10.0,
    generations: int | None = None,
    state_path: str | Path | None = None,
    calibration: "CalibrationSpec | torch.Tensor | None" = None,
    progress: bool = True,
) -> tuple[list[int], dict]:
    """The searched choice per item and facts for `Allocation.extra`.

    Starts from the ILP over `damage` and runs generations until `minutes` of search (resumed runs counted)
    or `generations` generations have passed, whichever comes first, on `calibration` (default `SEARCH`). The state is kept at `state_path`
    (default: under the cache, named by what determines the search; a model built in memory, which has no
    file hash, keeps none by default).
    """
    from tqdm import tqdm

    from ramp.allocate import ilp
    from ramp.measure.forward import tokens_sha256
    from ramp.measure.oracle import KLDOracle

    if minutes <= 0 and generations is None:
        raise RampError(f"--search-minutes must be positive, got {minutes}; give the minutes the search may take")
    if generations is not None and generations < 0:
        raise RampError(f"the search's generations must be at least 0, got {generations}")
    tokens, record = calibration_tokens(model, SEARCH if calibration is None else calibration)
    imatrix_sha = imatrix.content_sha256() if imatrix is not None else None
    key = search_key(model, problem, damage, tokens_sha256(tokens), imatrix_sha, seed)
    path = Path(state_path) if state_path is not None else (default_state_path(key) if model.sha256 else None)
    state = SearchState.load(path, key) if path is not None else None
    resumed = state is not None

    started = time.monotonic()
    # Every allocation touches token_embd, so block checkpoints would never spare a block.
    oracle = KLDOracle(model, tokens, imatrix, checkpoint_blocks=False)
    if state is None:
        start_picks, _ = ilp.solve(problem, damage)
        start_kld = oracle(problem.formats(start_picks))
        state = SearchState(key, start_picks, start_kld, list(start_picks), start_kld, scorings=1,
                            windows_scored=oracle.n_windows, elapsed_s=time.monotonic() - started)
        if path is not None:
            state.save(path)

    def more() -> bool:
        return (generations is None or state.generation < generations) and state.elapsed_s < minutes * 60

    total_s = round(minutes * 60)
    bar = tqdm(total=total_s, initial=min(total_s, round(state.elapsed_s)), unit="s", desc="search",
               disable=not progress, bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}]{postfix}")
    while more():
        generation_started = time.monotonic()
        run_generation(state, problem, oracle, seed)
        spent = time.monotonic() - generation_started
        state.elapsed_s += spent
        if path is not None:
            state.save(path)
        bar.update(min(spent, max(0.0, total_s - bar.n)))
        bar.set_postfix_str(f"generation {state.generation}, best KLD {state.kld:.5f} (ILP {state.start_kld:.5f})")
    bar.close()
    if problem.picks_bytes(state.picks) > problem.budget_bytes:
        raise RampError("the search's allocation is over the budget; this is a bug in it")
    facts = {
        "start": "ilp", "seed": seed, "generations": state.generation, "scorings": state.scorings,
        "windows_scored": state.windows_scored, "calibration": record, "rung_windows": list(rung_windows(oracle.n_windows)),
        "survivors": list(SURVIVORS), "ilp_kld": state.start_kld, "kld": state.kld, "elapsed_s": round(state.elapsed_s, 1),
        "resumed": resumed, "history": state.history, "state": str(path) if path is not None else None,
    }
    return list(state.picks), facts
