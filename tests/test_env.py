"""The bit-allocation environment on a tiny random llama: Gymnasium's checker, seeding, the budget
guarantee under arbitrary policies, and a real episode-end evaluation through the torch forward."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from hypothesis import given, settings
from hypothesis import strategies as st

from ramp.agent.contexts import episode_items
from ramp.envs import ENV_ID, BitAllocationEnv, ModelContext, RewardConfig
from ramp.envs.bit_allocation import rollout
from ramp.errors import RampError
from ramp.measure.ladder import DEFAULT_LADDER
from ramp.measure.sensitivity_table import SensitivityTable
from ramp.models.model import MetadataValue, Model, TensorSpec, role_of

EMBEDDING_SIZE = 11


def tiny_llama(seed: int = 0, n_blocks: int = 2, embd: int = 256, ffn: int = 512, vocab: int = 96) -> Model:
    """A random llama small enough for tests; rows are 256 or 512 wide, so every K-quant applies."""
    rng = np.random.default_rng(seed)
    n_head, n_head_kv, head_dim = 4, 2, embd // 4
    shapes = {"token_embd.weight": (vocab, embd), "output_norm.weight": (embd,)}
    for b in range(n_blocks):
        shapes.update({
            f"blk.{b}.attn_norm.weight": (embd,), f"blk.{b}.ffn_norm.weight": (embd,),
            f"blk.{b}.attn_q.weight": (embd, embd), f"blk.{b}.attn_k.weight": (n_head_kv * head_dim, embd),
            f"blk.{b}.attn_v.weight": (n_head_kv * head_dim, embd), f"blk.{b}.attn_output.weight": (embd, embd),
            f"blk.{b}.ffn_gate.weight": (ffn, embd), f"blk.{b}.ffn_up.weight": (ffn, embd),
            f"blk.{b}.ffn_down.weight": (embd, ffn),
        })
    tensors = {
        name: (np.ones(shape) if len(shape) == 1 else rng.normal(0, 1 / np.sqrt(shape[1]), shape)).astype(np.float32)
        for name, shape in shapes.items()
    }
    quantizable = [TensorSpec(name, shape, *role_of(name)) for name, shape in shapes.items() if len(shape) == 2]
    hparams = {"block_count": n_blocks, "embedding_length": embd, "attention.head_count": n_head,
               "attention.head_count_kv": n_head_kv, "attention.layer_norm_rms_epsilon": 1e-5}
    metadata = {f"llama.{key}": MetadataValue(value, None) for key, value in hparams.items()}
    return Model("llama", n_blocks, tensors, quantizable, metadata)


def random_embedding(model: Model, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(len(model.quantizable), EMBEDDING_SIZE))


def tiny_context(model: Model, embedding: np.ndarray | None = None, grouping: str = "tensor",
                 ladder: tuple[str, ...] = DEFAULT_LADDER, **fields) -> ModelContext:
    """`model`'s context: a random embedding unless one is given, its episode items on `ladder`."""
    return ModelContext("tiny", model, random_embedding(model) if embedding is None else embedding,
                        items=episode_items(model, ladder, grouping), **fields)


def tokens(vocab: int = 96, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 32), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model() -> Model:
    return tiny_llama()


@pytest.fixture(scope="module")
def context(model: Model) -> ModelContext:
    from ramp.agent.contexts import KLDEvaluator

    return tiny_context(model, evaluate=KLDEvaluator(model, tokens()))


def test_passes_gymnasium_checker(context: ModelContext) -> None:
    check_env(BitAllocationEnv([context], (4.0, 5.0), DEFAULT_LADDER), skip_render_check=True)


def test_registered_with_gymnasium(context: ModelContext) -> None:
    env = gym.make(ENV_ID, contexts=[context], budget_bpw=(4.5, 4.5), ladder=DEFAULT_LADDER)
    observation, _ = env.reset(seed=0)
    assert env.observation_space.contains(observation)


def test_same_seed_same_allocation(context: ModelContext) -> None:
    def episode(seed: int) -> tuple:
        # The seed drives the env's budget draw; the action stream is the same for both runs.
        env = BitAllocationEnv([context], (4.0, 6.0), DEFAULT_LADDER)
        env.reset(seed=seed)
        actions = iter(np.linspace(-1, 1, len(context.model.quantizable), dtype=np.float32))
        while True:
            _, _, terminated, _, info = env.step(np.array([next(actions)]))
            if terminated:
                return info["formats"], info["budget_bytes"], info["kld"]

    assert episode(3) == episode(3)
    assert episode(3)[1] != episode(4)[1]


@settings(max_examples=60, deadline=None)
@given(
    budget=st.floats(min_value=2.7, max_value=9.0),
    actions=st.lists(st.floats(min_value=-1, max_value=1), min_size=1, max_size=40),
    grouping=st.sampled_from(["tensor", "block"]),
)
def test_budget_never_exceeded(model: Model, budget: float, actions: list[float], grouping: str) -> None:
    env = BitAllocationEnv([tiny_context(model, grouping=grouping)], (budget, budget), DEFAULT_LADDER, grouping)
    observation, _ = env.reset()
    for step in range(len(model.quantizable)):
        observation, _, terminated, _, info = env.step(np.array([actions[step % len(actions)]], dtype=np.float32))
        assert env.observation_space.contains(observation)
        if terminated:
            break
    assert terminated
    assert info["bytes"] <= info["budget_bytes"]
    assert set(info["formats"]) == {spec.name for spec in model.quantizable}


def test_budget_below_smallest_allocation_is_refused(model: Model) -> None:
    with pytest.raises(RampError, match="below the smallest allocation"):
        BitAllocationEnv([tiny_context(model)], (2.0, 4.0), DEFAULT_LADDER)


def test_greedy_requests_pay_the_cliff_and_still_end_within_budget(model: Model) -> None:
    config = RewardConfig()
    env = BitAllocationEnv([tiny_context(model)], (4.0, 4.0), DEFAULT_LADDER, reward=config)
    env.reset()
    rewards = []
    for _ in model.quantizable:
        _, reward, terminated, _, info = env.step(np.ones(1, dtype=np.float32))
        rewards.append(reward)
    assert terminated and info["overshoot_bytes"] > 0 and info["bytes"] <= info["budget_bytes"]
    cliff = config.over_weight * info["overshoot_bytes"] / info["budget_bytes"]
    unused = config.under_weight * (info["budget_bytes"] - info["bytes"]) / info["budget_bytes"]
    assert sum(rewards) == pytest.approx(-cliff - unused)


def test_episode_end_measures_real_kld(context: ModelContext) -> None:
    env = BitAllocationEnv([context], (2.7, 9.0), DEFAULT_LADDER)
    low = rollout(env, lambda _: -np.ones(1, dtype=np.float32), context=0, budget_bpw=9.0)
    high = rollout(env, lambda _: np.ones(1, dtype=np.float32), context=0, budget_bpw=9.0)
    assert set(low["formats"].values()) == {"Q2_K"} and set(high["formats"].values()) == {"Q8_0"}
    assert 0 < high["kld"] < low["kld"]


def test_zero_action_paces_the_budget(model: Model) -> None:
    env = BitAllocationEnv([tiny_context(model)], (3.0, 6.0), DEFAULT_LADDER)
    for budget in (3.0, 4.5, 6.0):
        info = rollout(env, lambda _: np.zeros(1, dtype=np.float32), context=0, budget_bpw=budget)
        assert info["overshoot_bytes"] == 0
        assert 0.9 * info["budget_bytes"] <= info["bytes"] <= info["budget_bytes"]


def damage_table(model: Model, seed: int = 0) -> SensitivityTable:
    """Damage falling with bits like real tables do (about 4x per extra bit), scaled per tensor at random."""
    formats = ["Q2_K", "Q3_K", "Q4_0", "Q4_K", "Q5_0", "Q5_K", "Q6_K", "Q8_0"]
    bits = np.array([2.6, 3.4, 4.5, 4.5, 5.5, 5.5, 6.6, 8.5])
    scale = np.random.default_rng(seed).lognormal(-5, 1.5, size=(len(model.quantizable), 1))
    return SensitivityTable([spec.name for spec in model.quantizable], formats, scale * 4.0 ** (2.6 - bits))


def test_shaped_rewards_sum_to_the_regret_against_the_tables_best(model: Model) -> None:
    """Potential-based shaping: whatever the agent does, the shaped step rewards add up to minus its
    allocation's table damage above the best the table allows within the budget (linear regret: the
    default logarithmic one keeps each step's ranking but not the sum)."""
    from ramp.allocate import allocate, predicted_damage

    table = damage_table(model)
    config = RewardConfig(regret_scale=0.0)
    env = BitAllocationEnv([tiny_context(model, damage=table)], (4.5, 4.5), DEFAULT_LADDER, reward=config)
    rng = np.random.default_rng(0)
    for actions in (np.zeros(len(model.quantizable)), rng.uniform(-1, 1, len(model.quantizable))):
        env.reset()
        rewards = [env.step(np.array([a], dtype=np.float32))[1:] for a in actions]
        info = rewards[-1][3]
        assert rewards[-1][1]  # terminated
        budget = info["budget_bytes"]
        cliff = config.over_weight * info["overshoot_bytes"] / budget
        unused = config.under_weight * (budget - info["bytes"]) / budget
        regret = predicted_damage(model, info["formats"], table) - info["best_damage"]
        assert sum(r[0] for r in rewards) == pytest.approx(-cliff - unused - config.shaping_weight * regret / config.kld_scale)
    # The relaxation's best is a real allocation within budget: never better than the exact optimum.
    exact = allocate(model, "ilp", f"{info['budget_bytes']}B", table, ladder=env.ladder)
    assert info["best_damage"] >= predicted_damage(model, exact.formats, table) - 1e-12


def test_every_option_owns_an_interval_of_actions() -> None:
    from ramp.envs.action_mapping import action_index

    options = [4.5, 5.5, 6.0, 8.5]  # Q4_0, Q5_0, Q5_1, Q8_0 on a 576-wide row
    for pace in (4.5, 5.2, 6.0, 7.0):
        grid = np.linspace(-1, 1, 2001)
        picks = [action_index(a, options, pace) for a in grid]
        assert picks == sorted(picks) and picks[0] == 0 and picks[-1] == 3
        assert action_index(0.0, options, pace) == int(np.searchsorted(options, pace, side="right")) - 1
        # the highest option is not a single point at +1: a tanh-squashed actor must be able to land on it
        assert sum(pick == 3 for pick in picks) > 100


# --- what a policy reads to transfer: the step's share and role, the estimate, the estimate's suggestion ---


@given(st.lists(st.floats(1.0, 9.0), min_size=2, max_size=8, unique=True), st.floats(0.5, 10.0), st.integers(0, 7))
@settings(max_examples=80, deadline=None)
def test_index_action_is_the_middle_of_the_options_action_interval(bpws, pace, anchor):
    from ramp.envs.action_mapping import ANCHOR_ZONE, action_index, index_action

    options = sorted(bpws)
    anchor = min(anchor, len(options) - 1)
    for index in range(len(options)):
        assert action_index(index_action(index, options, pace), options, pace) == index
        assert action_index(index_action(index, options, pace, anchor), options, pace, anchor) == index
    # anchored, the middle half of the actions is the anchor and the ends still reach every option, monotonically
    grid = np.linspace(-1, 1, 401)
    picks = [action_index(a, options, pace, anchor) for a in grid]
    assert {pick for a, pick in zip(grid, picks) if abs(a) <= ANCHOR_ZONE} == {anchor}
    assert picks == sorted(picks) and picks[0] == 0 and picks[-1] == len(options) - 1
    assert set(picks) == set(range(len(options)))
    # the options on each side share the rest of it evenly
    below = [sum(pick == k for pick in picks) for k in range(anchor)]
    above = [sum(pick == k for pick in picks) for k in range(anchor + 1, len(options))]
    for counts in (below, above):
        assert not counts or max(counts) - min(counts) <= 2


def test_the_estimate_is_read_relative_to_the_model_and_action_zero_allocates_like_its_ilp(model: Model) -> None:
    from ramp.allocate import allocate, predicted_damage
    from ramp.allocate.budget import Budget
    from ramp.envs.action_mapping import action_index
    from ramp.envs.observation import CONTEXT_FEATURES, STEP_FEATURES

    estimate = damage_table(model, seed=1)
    env = BitAllocationEnv([tiny_context(model, estimate=estimate)], (4.6, 4.6), DEFAULT_LADDER)
    names = env.feature_names()
    assert len(names) == env.observation_space.shape[0] == EMBEDDING_SIZE + len(STEP_FEATURES) + len(DEFAULT_LADDER) + 1 + len(CONTEXT_FEATURES)
    observation, _ = env.reset()
    first = model.quantizable[0]  # token_embd: 96 x 256 of the tiny model's weights
    share = first.n_params / model.n_quantizable_params
    assert observation[names.index("weight_share")] == pytest.approx(share, rel=1e-6)
    assert observation[names.index("role_token_embd")] == 1 and observation[names.index("role_output")] == 0
    per_weight = estimate.damage[:, estimate.formats.index("Q4_K")].sum() / model.n_quantizable_params
    expected = np.log10(estimate.damage[0, estimate.formats.index("Q4_K")] / first.n_params / per_weight)
    assert observation[names.index("estimate_Q4_K")] == pytest.approx(expected, rel=1e-5)

    # the suggestion states the estimate's choice against the pace: the pace-centred action that picks it
    choices = env._plans[0].items[0].choices
    options = [8.0 * choice.nbytes / first.n_params for choice in choices]
    pace = 8.0 * env._budget / model.n_quantizable_params
    assert action_index(observation[names.index("estimate_action")], options, pace) == env._anchor

    # action 0 is the exact ILP over the estimate: an untrained policy's allocation is that ILP's (action
    # mapping 3's per-step Lagrangian re-solve came to 1.046x at 3.3 bpw and 1.014x at 6 bpw here)
    for bpw in (3.3, 4.6, 6.0):
        followed = rollout(env, lambda _: np.array([0.0]), budget_bpw=bpw)
        ilp = allocate(model, "ilp", Budget.parse(f"{followed['budget_bytes']}B"), estimate, ladder=DEFAULT_LADDER)
        print(bpw, "bpw: action zero", predicted_damage(model, followed["formats"], estimate), "ilp", ilp.extra["predicted_damage"])
        assert followed["bytes"] <= followed["budget_bytes"]
        assert predicted_damage(model, followed["formats"], estimate) == pytest.approx(ilp.extra["predicted_damage"], rel=1e-9)


def test_after_a_departure_action_zero_is_the_estimate_ilp_of_the_bytes_left(model: Model) -> None:
    from ramp.allocate import ilp
    from ramp.allocate.problem import Problem

    estimate = damage_table(model, seed=1)
    env = BitAllocationEnv([tiny_context(model, estimate=estimate)], (4.6, 4.6), DEFAULT_LADDER)
    env.reset()
    plan = env._plans[0]
    planned = env._anchor
    _, _, _, _, info = env.step(np.array([-1.0]))  # the lowest option: away from the plan, bytes freed
    assert info["granted"] == 0 != planned
    rest = plan.items[1:]
    damage = [plan.estimate[1 + i, : len(item.choices)] for i, item in enumerate(rest)]
    expected, _ = ilp.solve(Problem(rest, env._budget - env._spent, DEFAULT_LADDER), damage)
    picks = []
    while True:
        _, _, terminated, _, info = env.step(np.array([0.0]))
        picks.append(info["granted"])
        if terminated:
            break
    best = sum(d[p] for d, p in zip(damage, expected))
    assert sum(d[p] for d, p in zip(damage, picks)) == pytest.approx(best, rel=1e-9)
    assert info["bytes"] <= info["budget_bytes"]


def test_contexts_carry_an_estimate_all_or_none_and_budgets_per_model(model: Model) -> None:
    with_estimate = tiny_context(model, estimate=damage_table(model))
    with pytest.raises(RampError, match="some model contexts carry a damage estimate"):
        BitAllocationEnv([with_estimate, tiny_context(model)], (4.6, 4.6), DEFAULT_LADDER)
    env = BitAllocationEnv([tiny_context(model), tiny_context(model)], [(4.5, 4.5), (6.0, 6.0)], DEFAULT_LADDER)
    for index, bpw in ((0, 4.5), (1, 6.0)):
        env.reset(options={"context": index})
        assert env._budget_bpw == pytest.approx(bpw, abs=1e-3)
    with pytest.raises(RampError, match="2 budget ranges for 1 models"):
        BitAllocationEnv([tiny_context(model)], [(4.5, 4.5), (6.0, 6.0)], DEFAULT_LADDER)


def test_departing_from_the_estimates_choice_costs_per_option(model: Model) -> None:
    # no table: shaping is zero, so a step's reward is the deviation cost alone (a generous budget: no cliff)
    env = BitAllocationEnv([tiny_context(model, estimate=damage_table(model, seed=1))], (7.0, 7.0), DEFAULT_LADDER)
    env.reset()
    anchor = env._anchor
    assert anchor > 0
    _, reward, _, _, info = env.step(np.array([-1.0]))  # the lowest option
    assert info["requested"] == 0 and reward == pytest.approx(-env.reward_config.deviation_weight * anchor)
    _, reward, _, _, info = env.step(np.array([0.0]))  # the estimate's own choice costs nothing
    assert info["requested"] == info["granted"] and reward == 0.0
