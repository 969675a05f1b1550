"""Allocation baselines on tiny hand-built models: exact optimality of the ILP against brute force, budgets,
pins and groups, greedy and quadratic feasibility, and the `ramp allocate` command line."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from ramp.allocate import allocate, predicted_damage
from ramp.allocate import greedy, ilp, quadratic
from ramp.allocate.budget import Budget, feasible_range
from ramp.allocate.problem import Pin, build_items, build_problem, item_damage, member_damage, tensor_damage
from ramp.allocate.allocation import Allocation
from ramp.cli import main
from ramp.errors import RampError
from ramp.kernels.formats import tensor_bytes
from ramp.models.model import Model, TensorSpec, role_of
from ramp.measure.sensitivity_table import SensitivityTable

LADDER = ("Q2_K", "Q4_K", "Q8_0")
# A (4, 256) tensor: Q2_K 4*84 = 336 bytes, Q4_K 4*144 = 576, Q8_0 4*8*34 = 1088.
SMALL = (4, 256)


def make_model(shapes: dict[str, tuple[int, int]]) -> Model:
    specs = []
    for name, shape in shapes.items():
        role, block = role_of(name)
        specs.append(TensorSpec(name, shape, role, block))
    n_blocks = 1 + max((spec.block for spec in specs if spec.block is not None), default=-1)
    return Model("llama", n_blocks, {}, specs)


def make_table(model: Model, damage: list[list[float]], formats: tuple[str, ...] = LADDER) -> SensitivityTable:
    return SensitivityTable([spec.name for spec in model.quantizable], list(formats), np.array(damage, dtype=float))


def three_tensors() -> tuple[Model, SensitivityTable]:
    model = make_model({"blk.0.attn_q.weight": SMALL, "blk.0.attn_k.weight": SMALL, "blk.0.attn_v.weight": SMALL})
    return model, make_table(model, [[10, 2, 0], [4, 1, 0], [1, 0.5, 0]])


def damage_of(allocation: Allocation, model: Model, table: SensitivityTable) -> float:
    return predicted_damage(model, allocation.formats, table)


def brute_force(problem, damage: list[np.ndarray]) -> float:
    """Least total damage over every combination of choices within the budget."""
    best = np.inf
    for picks in itertools.product(*(range(len(item.choices)) for item in problem.items)):
        if problem.picks_bytes(list(picks)) <= problem.budget_bytes:
            best = min(best, sum(d[p] for d, p in zip(damage, picks)))
    return best


def random_case(seed: int, n_tensors: int = 8) -> tuple[Model, SensitivityTable, int]:
    rng = np.random.default_rng(seed)
    names = [f"blk.{i // 2}.{('attn_q', 'ffn_up')[i % 2]}.weight" for i in range(n_tensors)]
    model = make_model({name: (int(rng.integers(1, 9)) * 4, 256) for name in names})
    # Damage falls with bits but with noise, sometimes non-monotone, as measured tables are.
    damage = rng.lognormal(0, 1, (n_tensors, 1)) * np.array([8.0, 1.0, 0.1]) * rng.uniform(0.5, 1.5, (n_tensors, 3))
    items = build_items(model, LADDER)
    low = sum(item.choices[0].nbytes for item in items)
    high = sum(item.choices[-1].nbytes for item in items)
    return model, make_table(model, damage.tolist()), int(rng.integers(low, high))


# --- budgets -------------------------------------------------------------------------------------------


def test_budget_parsing_in_bits_and_bytes():
    model = make_model({"blk.0.attn_q.weight": (1000, 256)})  # 256,000 weights
    assert Budget.parse("3.65bpw").bytes_for(model) == 116_800  # 3.65 * 256000 / 8
    assert Budget.parse("60MB").bytes_for(model) == 60_000_000
    assert Budget.parse("57.2MiB").bytes_for(model) == int(57.2 * 2**20)
    assert Budget.parse("123456789B").bytes_for(model) == 123_456_789
    assert Budget.parse(" 4.5 BPW ").bytes_for(model) == 144_000
    for text in ("5", "5xx", "-3bpw", "0bpw", "bpw"):
        with pytest.raises(RampError):
            Budget.parse(text)


def test_feasible_range_is_smallest_format_to_f16():
    model, _ = three_tensors()
    assert feasible_range(model, LADDER) == (3 * 336, 3 * tensor_bytes(SMALL, "F16"))
    # A pin raises the floor: that tensor can no longer drop to Q2_K.
    assert feasible_range(model, LADDER, [Pin.parse("attn_q=Q8_0")])[0] == 1088 + 2 * 336


@pytest.mark.parametrize("budget", ["1000B", "1bpw", "6145B"])  # 1008 is the floor, 3 * 2048 = 6144 is F16
def test_budget_outside_feasible_range_is_one_error(budget):
    model, table = three_tensors()
    for method in ("uniform", "ilp", "greedy"):
        with pytest.raises(RampError, match="feasible range"):
            allocate(model, method, budget, table, ladder=LADDER)


# --- candidate formats ----------------------------------------------------------------------------------


def test_formats_resolve_per_row_length_and_collapse():
    model = make_model({"blk.0.ffn_up.weight": (1536, 576), "blk.0.ffn_down.weight": (576, 1536)})
    narrow, wide = build_items(model)
    # 576-wide rows: Q2_K, Q3_K -> Q4_0; Q4_K -> Q5_0; Q5_K -> Q5_1; Q6_K -> Q8_0 (llama.cpp's fallbacks).
    assert [choice.formats for choice in narrow.choices] == [("Q4_0",), ("Q5_0",), ("Q5_1",), ("Q8_0",)]
    assert len(wide.choices) == 8
    assert [choice.nbytes for choice in wide.choices] == sorted(choice.nbytes for choice in wide.choices)


def test_group_members_share_a_ladder_format_across_row_lengths():
    model = make_model({"blk.0.ffn_up.weight": (1536, 576), "blk.0.ffn_down.weight": (576, 1536)})
    (item,) = build_items(model, ("Q2_K", "Q4_K"), groups=["ffn_(up|down)"])
    assert [choice.formats for choice in item.choices] == [("Q4_0", "Q2_K"), ("Q5_0", "Q4_K")]
    assert item.choices[0].nbytes == tensor_bytes((1536, 576), "Q4_0") + tensor_bytes((576, 1536), "Q2_K")


def test_table_column_of_a_format_that_falls_back_is_used_for_what_is_written():
    model = make_model({"blk.0.attn_q.weight": (576, 576)})
    table = make_table(model, [[3.0, 2.0]], formats=("Q2_K", "Q8_0"))
    assert tensor_damage(table, "blk.0.attn_q.weight", "Q4_0", 576) == 3.0  # Q2_K is written as Q4_0 here
    assert tensor_damage(table, "blk.0.attn_q.weight", "Q5_0", 576) is None
    with pytest.raises(RampError, match="no measurement"):
        member_damage(model, build_items(model, ("Q2_K", "Q4_K")), table)


# --- ILP ------------------------------------------------------------------------------------------------


def test_ilp_hand_computed_optimum():
    # All Q2_K: 1008 bytes, damage 15; budget 2000 leaves 992 bytes of upgrades (+240 to Q4_K, +752 to
    # Q8_0, +512 from Q4_K to Q8_0). attn_q to Q8_0 (+752, -10) with attn_k to Q4_K (+240, -3) uses all
    # 992 for damage 0 + 1 + 1 = 2; every other affordable set is worse (all Q4_K: 3.5; q Q4_K + k Q8_0: 3).
    model, table = three_tensors()
    allocation = allocate(model, "ilp", "2000B", table, ladder=LADDER)
    assert list(allocation.formats.values()) == ["Q8_0", "Q4_K", "Q2_K"]
    assert allocation.data_bytes(model) == 2000
    assert allocation.extra["predicted_damage"] == pytest.approx(2.0)
    # One byte less and the 992-byte upgrades no longer fit: all Q4_K (+720) for 2 + 1 + 0.5 = 3.5.
    tighter = allocate(model, "ilp", "1999B", table, ladder=LADDER)
    assert list(tighter.formats.values()) == ["Q4_K", "Q4_K", "Q4_K"]
    assert tighter.extra["predicted_damage"] == pytest.approx(3.5)


@pytest.mark.parametrize("seed", range(6))
def test_ilp_matches_brute_force(seed):
    model, table, budget = random_case(seed)
    problem = build_problem(model, budget, LADDER)
    damage = item_damage(model, problem.items, table)
    picks, facts = ilp.solve(problem, damage)
    assert facts["optimal"]
    assert problem.picks_bytes(picks) <= budget
    assert sum(d[p] for d, p in zip(damage, picks)) == pytest.approx(brute_force(problem, damage), rel=1e-9)


def test_ilp_respects_pins():
    # attn_q pinned to Q2_K (damage 10): 992 spare bytes go to attn_k Q8_0 (+752, -4) and attn_v Q4_K
    # (+240, -0.5): 10 + 0 + 0.5 = 10.5, against 11 for attn_k Q4_K with attn_v Q8_0.
    model, table = three_tensors()
    allocation = allocate(model, "ilp", "2000B", table, ladder=LADDER, pins=[r"attn_q\.weight=Q2_K"])
    assert list(allocation.formats.values()) == ["Q2_K", "Q8_0", "Q4_K"]
    assert allocation.extra["predicted_damage"] == pytest.approx(10.5)
    # A pin outside the ladder is honoured too, and first match wins as in llama-quantize.
    pinned = allocate(model, "ilp", "3000B", table, ladder=LADDER, pins=["attn_q=F16", "attn=Q2_K"])
    assert [pinned.formats[name] for name in table.tensors] == ["F16", "Q2_K", "Q2_K"]


@pytest.mark.parametrize("seed", range(3))
def test_ilp_groups_share_format_and_are_optimal_among_grouped(seed):
    rng = np.random.default_rng(100 + seed)
    names = [f"blk.{b}.attn_{r}.weight" for b in range(2) for r in "qkv"] + ["blk.0.ffn_up.weight", "blk.1.ffn_up.weight"]
    model = make_model({name: (int(rng.integers(1, 6)) * 4, 256) for name in names})
    table = make_table(model, (rng.lognormal(0, 1, (8, 1)) * [8.0, 1.0, 0.1]).tolist())
    problem = build_problem(model, int(np.mean(feasible_range(model, LADDER)) * 0.4), LADDER, groups=["attn_[qkv]"])
    assert len(problem.items) == 4  # q/k/v of block 0, of block 1, and the two ffn_up alone
    allocation = allocate(model, "ilp", f"{problem.budget_bytes}B", table, ladder=LADDER, groups=["attn_[qkv]"])
    for block in range(2):
        assert len({allocation.formats[f"blk.{block}.attn_{r}.weight"] for r in "qkv"}) == 1
    best = brute_force(problem, item_damage(model, problem.items, table))
    assert allocation.extra["predicted_damage"] == pytest.approx(best, rel=1e-9)


# --- greedy ---------------------------------------------------------------------------------------------


def test_greedy_hand_computed():
    # Upgrades by damage saved per byte: q Q2_K->Q4_K 8/240, k 3/240, q Q4_K->Q8_0 2/512, v 0.5/240, ...
    # Taking them in that order fills 1008 + 240 + 240 + 512 = 2000 bytes; v's upgrade no longer fits.
    model, table = three_tensors()
    allocation = allocate(model, "greedy", "2000B", table, ladder=LADDER)
    assert list(allocation.formats.values()) == ["Q8_0", "Q4_K", "Q2_K"]


def test_greedy_skips_choices_off_the_convex_hull():
    # (bytes, damage) 336/10, 576/9.5, 1088/0: Q4_K sits above the line from Q2_K to Q8_0, so it is skipped.
    assert greedy.lower_hull([336, 576, 1088], np.array([10.0, 9.5, 0.0])) == [0, 2]
    # A larger format that damages more (measurement noise) is never bought.
    assert greedy.lower_hull([336, 576, 1088], np.array([10.0, 2.0, 3.0])) == [0, 1]
    # Equal bytes (Q4_0 and Q4_K, Q5_0 and Q5_K): the less damaging one, first or not, stays on the hull.
    assert greedy.lower_hull([288, 576, 576, 704], np.array([10.0, 6.0, 3.0, 2.5])) == [0, 2, 3]
    assert greedy.lower_hull([576, 576, 704], np.array([6.0, 4.0, 1.0])) == [1, 2]


@pytest.mark.parametrize("seed", range(12))
def test_greedy_within_budget_and_within_one_upgrade_of_the_optimum(seed):
    # Greedy takes hull upgrades in the LP relaxation's order until the first that does not fit, which
    # leaves its item where it stands; all it takes later only lowers its damage. The LP optimum lies below
    # the integer one and greedy above the LP by at most that one upgrade, so the gap to the optimum is at
    # most the damage drop of the next hull upgrade of some item greedy left short of its hull's end.
    model, table, budget = random_case(seed)
    problem = build_problem(model, budget, LADDER)
    damage = item_damage(model, problem.items, table)
    picks, _ = greedy.solve(problem, damage)
    assert problem.picks_bytes(picks) <= budget
    next_upgrade = 0.0
    for item, d, pick in zip(problem.items, damage, picks):
        hull = greedy.lower_hull([choice.nbytes for choice in item.choices], d)
        at = hull.index(pick)
        if at + 1 < len(hull):
            next_upgrade = max(next_upgrade, float(d[pick] - d[hull[at + 1]]))
    gap = sum(d[p] for d, p in zip(damage, picks)) - brute_force(problem, damage)
    assert gap <= next_upgrade + 1e-12


# --- uniform --------------------------------------------------------------------------------------------


def test_uniform_picks_largest_fitting_format_with_llama_cpp_conventions():
    shapes = {"token_embd.weight": SMALL, "blk.0.attn_q.weight": SMALL, "output.weight": SMALL}
    model = make_model(shapes)
    # Q4_K everywhere but output at Q6_K (4 * 210 = 840): 576 + 576 + 840 = 1992 bytes; Q8_0 would need 3264.
    allocation = allocate(model, "uniform", "2000B", ladder=LADDER)
    assert allocation.formats == {"token_embd.weight": "Q4_K", "blk.0.attn_q.weight": "Q4_K", "output.weight": "Q6_K"}
    assert allocation.extra["uniform_format"] == "Q4_K"
    # Explicit conventions: embedding at Q8_0, output like the rest.
    explicit = allocate(model, "uniform", "3000B", ladder=LADDER, embedding_format="Q8_0", output_format="same")
    assert explicit.formats == {"token_embd.weight": "Q8_0", "blk.0.attn_q.weight": "Q4_K", "output.weight": "Q4_K"}
    # Tied embeddings (no output.weight): token_embd is the output projection and gets Q6_K.
    tied = make_model({"token_embd.weight": SMALL, "blk.0.attn_q.weight": SMALL})
    assert allocate(tied, "uniform", "1500B", ladder=LADDER).formats["token_embd.weight"] == "Q6_K"


# --- quadratic ------------------------------------------------------------------------------------------


def true_pair_model(table: SensitivityTable, rho: dict[str, float], model: Model):
    """A measure_pair obeying the quadratic model exactly, with per-role correlation `rho`."""

    def measure(assignments: dict[str, str]) -> float:
        (first, fmt_a), (second, fmt_b) = assignments.items()
        alone_a = tensor_damage(table, first, fmt_a, 256)
        alone_b = tensor_damage(table, second, fmt_b, 256)
        return alone_a + alone_b + 2 * rho[model.spec(first).role] * np.sqrt(alone_a * alone_b)

    return measure


def test_quadratic_hand_computed_interaction_changes_the_choice():
    # One upgrade fits (1008 + 240 bytes). Additively ffn_up's (-6) beats either attn_q's (-4); but the
    # two attn_q tensors interact with rho = 1: both at Q2_K cost 4 + 4 + 2*sqrt(16) = 16, so upgrading
    # ffn_up leaves 16 while upgrading one attn_q leaves 0 + 4 + 6 = 10.
    shapes = {"blk.0.attn_q.weight": SMALL, "blk.1.attn_q.weight": SMALL, "blk.0.ffn_up.weight": SMALL}
    model = make_model(shapes)
    table = make_table(model, [[4, 0], [4, 0], [6, 0]], formats=("Q2_K", "Q4_K"))
    additive = allocate(model, "ilp", "1248B", table, ladder=("Q2_K", "Q4_K"))
    assert additive.formats["blk.0.ffn_up.weight"] == "Q4_K"
    measure = true_pair_model(table, {"attn_q": 1.0}, model)
    allocation = allocate(model, "quadratic", "1248B", table, ladder=("Q2_K", "Q4_K"), measure_pair=measure)
    assert allocation.extra["rho"] == {"attn_q": pytest.approx(1.0)}
    assert allocation.formats["blk.0.ffn_up.weight"] == "Q2_K"
    assert sorted(allocation.formats[f"blk.{b}.attn_q.weight"] for b in range(2)) == ["Q2_K", "Q4_K"]
    assert allocation.extra["predicted_damage_with_interaction"] == pytest.approx(10.0)


@pytest.mark.parametrize("seed", range(4))
def test_quadratic_within_budget_and_optimal_for_its_model(seed):
    # 8 tensors (attn_q, attn_k in blocks 0-3) whose pair measurements follow the quadratic model with a
    # rho per role, so the estimate is exact and the solution must be the brute-force optimum of it.
    rng = np.random.default_rng(200 + seed)
    names = [f"blk.{b}.attn_{r}.weight" for b in range(4) for r in "qk"]
    model = make_model({name: (int(rng.integers(1, 9)) * 4, 256) for name in names})
    table = make_table(model, (rng.lognormal(0, 1, (8, 1)) * [8.0, 1.0, 0.1]).tolist())
    rho = {"attn_q": float(rng.uniform(-0.5, 1)), "attn_k": float(rng.uniform(-0.5, 1))}
    low, _ = feasible_range(model, LADDER)
    budget = int(low * rng.uniform(1.2, 2.5))
    allocation = allocate(model, "quadratic", f"{budget}B", table, ladder=LADDER,
                          measure_pair=true_pair_model(table, rho, model), pairs_per_role=2)
    assert allocation.data_bytes(model) <= budget
    assert allocation.extra["rho"] == pytest.approx(rho)

    problem = build_problem(model, budget, LADDER)
    damage, terms = quadratic.pair_terms(model, problem, member_damage(model, problem.items, table), rho)
    best = min(quadratic.predicted_damage(damage, terms, list(picks))
               for picks in itertools.product(range(3), repeat=8) if problem.picks_bytes(list(picks)) <= budget)
    assert allocation.extra["predicted_damage_with_interaction"] == pytest.approx(best, rel=1e-9, abs=1e-12)


def test_real_pair_measure_repeats_the_sweep_alone_and_sees_interaction_together(tiny_reference):
    from ramp.measure.calibration import CalibrationSpec
    from ramp.measure.imatrix import compute_imatrix
    from ramp.models import load_model
    from ramp.measure.sensitivity import measure_sensitivity

    model = load_model(tiny_reference)
    calibration = CalibrationSpec("austen", 64, 32)
    imatrix = compute_imatrix(model, calibration.windows(model), progress=False)
    table = measure_sensitivity(model, calibration, ["Q2_K", "Q8_0"], progress=False, use_cache=False, imatrix=imatrix)
    assert table.extra["calibration"] == {"text": "austen", "tokens": 64, "window": 32}
    with pytest.raises(RampError, match="importance matrix"):
        quadratic.kld_pair_measure(model, table)  # without the table's importance matrix pairs would not compare
    measure = quadratic.kld_pair_measure(model, table, imatrix)
    first, second = "blk.0.attn_v.weight", "blk.1.attn_v.weight"
    alone = [float(table.damage[table.tensors.index(name), 0]) for name in (first, second)]
    # one tensor alone is the sweep's own measurement: the same windows, the same imatrix-quantized weights
    assert measure({first: "Q2_K"}) == pytest.approx(alone[0], rel=1e-9)
    together = measure({first: "Q2_K", second: "Q2_K"})
    assert together > max(alone) and together != pytest.approx(sum(alone), rel=1e-3)

    budget = f"{feasible_range(model, ('Q2_K', 'Q8_0'))[0] * 3 // 2}B"
    allocation = allocate(model, "quadratic", budget, table, ladder=("Q2_K", "Q8_0"), measure_pair=measure)
    assert allocation.data_bytes(model) <= allocation.extra["budget_bytes"]
    assert set(allocation.extra["rho"]) == {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"}
    assert all(-1 <= rho <= 1 for rho in allocation.extra["rho"].values())
    [measured] = [m for m in allocation.extra["pair_measurements"] if m["pair"] == [first, second]]
    assert measured["together"] == pytest.approx(together, rel=1e-9)


# --- command line ---------------------------------------------------------------------------------------


@pytest.fixture
def tiny_gguf(tmp_path):
    """A 2-block llama GGUF with F32 weights of 256-wide rows (so every ladder format fits) and a table."""
    import gguf

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (64, 256), "output.weight": (64, 256)}
    shapes.update({f"blk.{b}.{role}.weight": (32, 256) for b in range(2) for role in ("attn_q", "attn_k", "ffn_up")})
    for name, shape in shapes.items():
        writer.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    from ramp.models import load_model

    model = load_model(path)
    ladder = ("Q2_K", "Q3_K", "Q4_0", "Q4_K", "Q5_0", "Q5_K", "Q6_K", "Q8_0")
    damage = rng.lognormal(0, 1, (len(model.quantizable), 1)) * 2.0 ** -np.arange(len(ladder))
    table = make_table(model, damage.tolist(), formats=ladder)
    table.model_sha256 = model.sha256
    table.save(tmp_path / "sensitivity.json")
    return path, tmp_path / "sensitivity.json", model


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["allocate", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("method", ["uniform", "ilp", "greedy"])
def test_cli_writes_allocation_and_tensor_type_file(tiny_gguf, tmp_path, capsys, method):
    path, sensitivity, model = tiny_gguf
    out, types = tmp_path / "alloc.json", tmp_path / "types.txt"
    code, stdout, _ = run_cli(capsys, "--model", str(path), "--method", method, "--budget", "5.0bpw",
                              "--sensitivity", str(sensitivity), "--out", str(out), "--tensor-type-file", str(types),
                              "--pin", "output.weight=Q8_0")
    assert code == 0
    allocation = Allocation.load(out)
    allocation.check_matches(model)
    assert allocation.method == method and allocation.model_sha256 == model.sha256
    assert allocation.formats["output.weight"] == "Q8_0"
    assert allocation.data_bytes(model) <= Budget.parse("5.0bpw").bytes_for(model)
    assert "bpw" in stdout and "predicted damage" in stdout
    assert types.read_text().splitlines()[0] == r"^token_embd\.weight$=" + allocation.formats["token_embd.weight"].lower()
    assert json.loads(out.read_text())["extra"]["data_bytes"] == allocation.data_bytes(model)


@pytest.mark.parametrize(("budget", "fragment"), [("1.0bpw", "feasible range"), ("17bpw", "feasible range"),
                                                   ("3.5", "not understood"), ("1KiB", "feasible range")])
def test_cli_bad_budget_is_one_line_error(tiny_gguf, capsys, budget, fragment):
    path, sensitivity, _ = tiny_gguf
    code, _, err = run_cli(capsys, "--model", str(path), "--budget", budget, "--sensitivity", str(sensitivity))
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and fragment in err


def test_cli_rejects_table_of_another_model(tiny_gguf, tmp_path, capsys):
    path, sensitivity, _ = tiny_gguf
    table = SensitivityTable.load(sensitivity)
    table.model_sha256 = "0" * 64
    table.save(tmp_path / "other.json")
    code, _, err = run_cli(capsys, "--model", str(path), "--budget", "5bpw", "--sensitivity", str(tmp_path / "other.json"))
    assert code == 2 and "another model" in err


def test_default_ladder_keeps_to_the_formats_a_table_measured():
    # `ramp profile` skips Q5_0 by default; a 1536-wide tensor then has no Q5_0 damage, so the default
    # ladder drops Q5_0 rather than failing, while an explicit ladder naming it is an error.
    model = make_model({"blk.0.ffn_down.weight": (576, 1536)})
    formats = ("Q2_K", "Q4_K", "Q8_0")
    table = make_table(model, [[3.0, 1.0, 0.1]], formats=formats)
    allocation = allocate(model, "ilp", "5bpw", table)
    assert allocation.formats == {"blk.0.ffn_down.weight": "Q4_K"}  # 4.5 bpw; Q8_0 (8.5) does not fit
    assert allocation.extra["ladder"] == list(formats)
    with pytest.raises(RampError, match="no measurement"):
        allocate(model, "ilp", "5bpw", table, ladder=("Q2_K", "Q5_0"))


@pytest.mark.parametrize("seed", range(5))
def test_lagrangian_choices_fit_and_are_optimal_for_the_bytes_they_spend(seed):
    """The relaxation's choices fit the budget, and no allocation of at most their bytes has less damage
    (each is the argmin of damage + price * bytes), checked against every allocation of a small problem;
    with room for everything it takes the least damaging choice of every row."""
    import itertools

    from ramp.allocate.lagrangian import lagrangian_choices

    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    nbytes = np.sort(rng.integers(10, 100, size=(4, 3)), axis=1).astype(float)
    damage = np.sort(rng.lognormal(-3, 1, size=(4, 3)), axis=1)[:, ::-1]  # more bytes, less damage
    rows = np.arange(4)
    budget = float(rng.uniform(nbytes[:, 0].sum(), nbytes[:, -1].sum()))
    chosen = lagrangian_choices(damage, nbytes, budget)
    spent, ours = nbytes[rows, chosen].sum(), damage[rows, chosen].sum()
    assert spent <= budget
    for picks in itertools.product(range(3), repeat=4):
        if nbytes[rows, list(picks)].sum() <= spent:
            assert damage[rows, list(picks)].sum() >= ours - 1e-12
    # with room for everything, every row takes its least damaging choice
    assert list(lagrangian_choices(damage, nbytes, nbytes[:, -1].sum())) == [2, 2, 2, 2]
