"""The agent learns, shown as SB3's identity-env tests show it: a task whose answer is known, a short
training run, and a check that the trained policy found the answer an untrained one does not.

The task: a damage estimate that is right about every tensor but one, X, where the true table says X is
hurt far more at the estimate ILP's format (and below) than the estimate thinks, so the true optimum gives
X one format more. The environment reads the estimate (its action 0 is the estimate ILP's choice) and is
rewarded on the true table, as `ramp train` does with a measured table. A policy that learned nothing
follows the anchor and allocates exactly like the estimate ILP, which fails both checks below."""
from __future__ import annotations

import time

import numpy as np
import pytest
from test_env import tiny_context, tiny_llama

from ramp.agent.sac import SACConfig, make_sac, new_record, train
from ramp.envs import BitAllocationEnv
from ramp.envs.bit_allocation import rollout
from ramp.measure.sensitivity_table import SensitivityTable

pytestmark = pytest.mark.slow

LADDER = ("Q3_K", "Q4_K", "Q5_K", "Q6_K")
BITS = np.array([3.4375, 4.5, 5.5, 6.5625])  # bits per weight of the ladder's formats
BUDGET_BPW = 4.8
MISJUDGED = "blk.0.attn_output.weight"
EXTRA_DAMAGE = 0.2  # nats the true table adds to MISJUDGED at the estimate ILP's format and below
SEED = 7
STEPS = 2000


def estimate_table(model, seed: int) -> SensitivityTable:
    """Damage falling about 4x per extra bit, proportional to the tensor's size, varied per tensor."""
    sizes = np.array([spec.n_params for spec in model.quantizable], dtype=np.float64)[:, None]
    scale = sizes / sizes.sum() * np.random.default_rng(seed).lognormal(0.0, 0.5, size=sizes.shape)
    return SensitivityTable([spec.name for spec in model.quantizable], list(LADDER), 0.05 * scale * 4.0 ** (3.4375 - BITS))


def follow_the_anchor(observation: np.ndarray) -> np.ndarray:
    return np.zeros(1, dtype=np.float32)


def test_sac_corrects_the_one_tensor_the_estimate_misjudges(tmp_path) -> None:
    print(f"seed {SEED}")
    model = tiny_llama()
    estimate = estimate_table(model, SEED)
    # The estimate ILP's allocation, and from it the true table: X costs EXTRA_DAMAGE more up to its format.
    plain = BitAllocationEnv([tiny_context(model, ladder=LADDER, damage=estimate, estimate=estimate)],
                             (BUDGET_BPW, BUDGET_BPW), LADDER)
    anchor_formats = rollout(plain, follow_the_anchor)["formats"]
    anchor = LADDER.index(anchor_formats[MISJUDGED])
    assert anchor < len(LADDER) - 1, "the task needs room above the estimate's choice"
    truth = SensitivityTable(estimate.tensors, estimate.formats, estimate.damage.copy())
    truth.damage[estimate.tensors.index(MISJUDGED), : anchor + 1] += EXTRA_DAMAGE

    env = BitAllocationEnv([tiny_context(model, ladder=LADDER, damage=truth, estimate=estimate)],
                           (BUDGET_BPW, BUDGET_BPW), LADDER)
    estimate_ilp = rollout(env, follow_the_anchor)
    assert estimate_ilp["formats"] == anchor_formats  # action 0 everywhere is the estimate ILP

    config = SACConfig(learning_starts=150, batch_size=64, net_arch=(64, 64))
    untrained = make_sac(env, config, SEED)
    # What the checks below rule out: the same network before training allocates like the estimate ILP.
    assert rollout(env, lambda observation: untrained.predict(observation, deterministic=True)[0])["formats"] == anchor_formats
    started = time.monotonic()
    sac = train(env, new_record(env, [model], config, SEED, "synthetic"), tmp_path / "policy.zip", STEPS, config,
                checkpoint_every=0, progress_bar=False, select_every=250)
    print(f"trained {STEPS} steps in {time.monotonic() - started:.0f}s")
    learned = rollout(env, lambda observation: sac.predict(observation, deterministic=True)[0])

    print(f"{MISJUDGED}: estimate ILP {anchor_formats[MISJUDGED]}, policy {learned['formats'][MISJUDGED]}; "
          f"true damage {estimate_ilp['table_damage']:.4f} (estimate ILP) vs {learned['table_damage']:.4f} (policy), "
          f"best {learned['best_damage']:.4f}")
    assert LADDER.index(learned["formats"][MISJUDGED]) > anchor
    assert learned["table_damage"] < estimate_ilp["table_damage"] - EXTRA_DAMAGE / 2
    assert learned["bytes"] <= learned["budget_bytes"]
