"""Sensitivity without a sweep (`ramp.measure.estimates`: imatrix-weighted error, diagonal Fisher) and
llama.cpp PR 15550's allocator (`ramp.allocate.target_bpw`), on the tiny llama of tiny_gguf (256-wide rows,
so K-quants apply; the embedding is tied to the output)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import ramp.measure.estimates as estimates
from ramp.allocate import allocate, greedy, predicted_damage, target_bpw
from ramp.allocate.problem import Choice, Item, Problem, build_items, item_damage
from ramp.cli import main
from ramp.measure.forward import Forward, KLDReference
from ramp.measure.imatrix import compute_imatrix
from ramp.kernels import quantize_dequantize
from ramp.models.model import Model, TensorSpec
from ramp.measure.sensitivity_table import SensitivityTable

FORMATS = ["Q3_K", "Q4_K", "Q6_K"]  # on ffn_down's 320-wide rows: Q4_0, Q5_0, Q8_0
BLK = ("blk.0.attn_q.weight", "blk.1.ffn_down.weight")  # ffn_down's 320-wide rows fall back to 32-wide formats


def random_tokens(model: Model, seed: int, windows: int = 2, length: int = 32) -> torch.Tensor:
    print(f"token seed {seed}")
    n_vocab = model.tensors["token_embd.weight"].shape[0]
    return torch.randint(0, n_vocab, (windows, length), generator=torch.Generator().manual_seed(seed))


def untied(model: Model) -> Model:
    """The tiny llama with its own output projection (a copy of the embedding, scaled)."""
    output = (model.tensors["token_embd.weight"] * 0.5).astype(np.float32)
    spec = TensorSpec("output.weight", output.shape, "output", None)
    return dataclasses.replace(model, tensors={**model.tensors, "output.weight": output},
                               quantizable=[*model.quantizable, spec], sha256=model.sha256 + "-untied")


def head_input_mean_square(model: Model, tokens: torch.Tensor) -> np.ndarray:
    seen = []
    Forward(model).logits(tokens, capture=lambda name, x: seen.append(x.clone()) if name == "output.weight" else None)
    return torch.cat(seen).reshape(-1, seen[0].shape[-1]).double().square().mean(0).numpy()


def cell(table: SensitivityTable, tensor: str, fmt: str) -> float:
    return float(table.damage[table.tensors.index(tensor), table.formats.index(fmt)])


def squared(error: np.ndarray) -> np.ndarray:
    return np.square(error.astype(np.float64))


@pytest.mark.parametrize("weight_shape", ["columns", "rows", "full", "none"])
def test_row_weighted_squares_matches_numpy_across_chunks(monkeypatch, weight_shape):
    seed = 11
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    error = rng.standard_normal((37, 24)).astype(np.float32)
    weight = {"columns": rng.random(24), "rows": rng.random((37, 1)), "full": rng.random((37, 24)), "none": None}[weight_shape]
    monkeypatch.setattr(estimates, "_CHUNK_ELEMENTS", 100)  # 4 rows per chunk: the last chunk is partial
    expected = (squared(error) * (1.0 if weight is None else weight)).sum(axis=1)
    np.testing.assert_allclose(estimates.row_weighted_squares(error, weight), expected, rtol=1e-12)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("with_imatrix", [True, False])
def test_imatrix_error_is_importance_weighted_squared_error(tiny_model, tied, with_imatrix):
    model = tiny_model if tied else untied(tiny_model)
    tokens = random_tokens(model, seed=3)
    # without a file, the estimate measures the same statistics on its own tokens
    imatrix = compute_imatrix(model, tokens, progress=False)
    table = estimates.imatrix_error_table(model, tokens, imatrix if with_imatrix else None, FORMATS,
                                          progress=False, use_cache=False)
    assert table.measure.startswith("imatrix-error") and "not KLD" in table.measure
    assert table.extra["calibration"] == {"text": None, "tokens": tokens.numel(), "window": tokens.shape[1]} and table.extra["tied_embedding"] == tied
    for name in BLK:
        weights, importance = model.tensors[name], imatrix.importance(name)
        for fmt in FORMATS:
            # Q is llama.cpp's quantization with the importance llama-quantize --imatrix would pass, if any
            error = quantize_dequantize(weights, fmt, importance if with_imatrix else None, backend="ggml") - weights
            assert cell(table, name, fmt) == pytest.approx(float((importance * squared(error)).sum()), rel=1e-6)

    share = np.bincount(tokens.reshape(-1).numpy(), minlength=model.tensors["token_embd.weight"].shape[0]) / tokens.numel()
    head = head_input_mean_square(model, tokens)
    embedding = model.tensors["token_embd.weight"]
    for fmt in FORMATS:  # llama-imatrix records neither: both quantize without importance
        error = squared(quantize_dequantize(embedding, fmt, None, backend="ggml") - embedding)
        lookup = float(share @ error.sum(axis=1))  # the tiny llama's embedding scale is 1
        head_term = float((error * head).sum())
        assert cell(table, "token_embd.weight", fmt) == pytest.approx(lookup + (head_term if tied else 0.0), rel=1e-5)
        if not tied:
            output = model.tensors["output.weight"]
            out_error = squared(quantize_dequantize(output, fmt, None, backend="ggml") - output)
            assert cell(table, "output.weight", fmt) == pytest.approx(float((out_error * head).sum()), rel=1e-5)


@pytest.mark.parametrize("labels, samples", [("text", 1), ("model", 2)])
def test_fisher_is_the_mean_squared_gradient_per_token(tiny_model, labels, samples):
    seed = 5
    tokens = random_tokens(tiny_model, seed=seed, windows=2, length=16)
    fisher = estimates.diagonal_fisher(tiny_model, tokens, labels, samples, seed=seed, progress=False)
    assert set(fisher) == {spec.name for spec in tiny_model.quantizable}

    # the same quantity by torch.autograd.grad, one gradient per window and label draw, summed by hand
    names = ["token_embd.weight", *BLK]  # the tied embedding collects the lookup's and the head's gradient
    forward = Forward(tiny_model)
    generator = torch.Generator().manual_seed(seed)
    total = {name: torch.zeros_like(forward.weights[name]) for name in names}
    n_scored = 0
    for window in tokens:
        leaves = {spec.name: forward.weights[spec.name].clone().requires_grad_() for spec in tiny_model.quantizable}
        h = forward.embed(window[None], leaves)
        for index in range(forward.n_blocks):
            h = forward.block(index, h, leaves)
        log_q = torch.log_softmax(forward.head(h, leaves)[0], dim=-1)
        if labels == "text":
            log_q, targets = log_q[:-1], window[1:, None]
        else:
            targets = torch.multinomial(log_q.detach().exp(), samples, replacement=True, generator=generator)
        for draw in range(targets.shape[1]):
            loss = -log_q.gather(1, targets[:, draw:draw + 1]).sum()
            for name, grad in zip(names, torch.autograd.grad(loss, [leaves[n] for n in names], retain_graph=True)):
                total[name] += grad.square()
            n_scored += targets.shape[0]
    for name in names:
        assert float(total[name].abs().max()) > 0
        # stored in bfloat16: each window's add and the final mean round once (relative 2^-8 each; two windows of two draws: five roundings)
        assert fisher[name].dtype == torch.bfloat16
        torch.testing.assert_close(fisher[name].float(), total[name] / n_scored, rtol=2e-2, atol=1e-12)


def test_fisher_predicts_the_kld_of_a_small_random_perturbation(tiny_model):
    """1/2 sum F d^2 is the second-order KLD for iid perturbations d; drawn labels make F an estimate."""
    seed = 1
    tokens = random_tokens(tiny_model, seed=seed, windows=4, length=64)
    fisher = estimates.diagonal_fisher(tiny_model, tokens, "model", samples=4, seed=seed, progress=False)
    reference = KLDReference(Forward(tiny_model), tokens)
    rng = np.random.default_rng(seed)
    for name in ("token_embd.weight", "blk.0.ffn_down.weight", "blk.1.attn_v.weight"):
        weights = tiny_model.tensors[name]
        delta = (rng.standard_normal(weights.shape) * 0.03 * weights.std()).astype(np.float32)
        kld = reference.kld({name: torch.from_numpy(weights + delta)})
        predicted = 0.5 * float((fisher[name].float().numpy() * squared(delta)).sum())
        print(name, kld, predicted)
        assert 0.75 < predicted / kld < 1.33


def test_fisher_table_is_half_the_fisher_weighted_squared_error_and_cached(tiny_model):
    seed = 2
    tokens = random_tokens(tiny_model, seed=seed)
    imatrix = compute_imatrix(tiny_model, tokens, progress=False)
    table = estimates.fisher_table(tiny_model, tokens, imatrix, FORMATS, seed=seed, progress=False)
    fisher = estimates.diagonal_fisher(tiny_model, tokens, "model", seed=seed, progress=False)
    assert "fisher" in table.measure and table.extra["labels"] == "model" and table.extra["imatrix"] == imatrix.content_sha256()
    for name in BLK:
        weights = tiny_model.tensors[name]
        error = quantize_dequantize(weights, "Q4_K", imatrix.importance(name), backend="ggml") - weights
        assert cell(table, name, "Q4_K") == pytest.approx(0.5 * float((fisher[name].float().numpy() * squared(error)).sum()), rel=1e-5)
    # cached under a key of its own: the same call reads the file back, another estimate does not
    path = estimates._cache_path(tiny_model, tokens, FORMATS, imatrix, f"fisher|model|1|{seed}")
    assert path.is_file()
    np.testing.assert_array_equal(estimates.fisher_table(tiny_model, tokens, imatrix, FORMATS, seed=seed).damage, table.damage)
    assert not estimates._cache_path(tiny_model, tokens, FORMATS, imatrix, "imatrix-error").is_file()


# --- llama.cpp PR 15550's allocator ----------------------------------------------------------------------


def test_target_bpw_error_is_the_prs_row_relative_trimmed_mean():
    seed = 7
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    weights, error = rng.standard_normal((120, 32)), rng.standard_normal((120, 32)) * 0.1
    error[3] *= 40  # an outlier row the trimmed mean drops
    importance = rng.random(32)
    importance[0] = -1.0  # the PR clamps negative importance to 0
    v = np.maximum(importance, 0)
    relative = np.sort((v * error**2).sum(1) / ((v * weights**2).sum(1) + 1e-12))
    expected = relative[3:117].mean() * 120  # floor(2.5% of 120) = 3 rows off each end
    per_tensor = target_bpw.tensor_error(None, target_bpw.row_relative_errors(weights, error, importance))
    assert per_tensor == pytest.approx(expected, rel=1e-12)
    few = slice(0, 40)  # under 50 rows: a plain mean
    plain = ((error[few] ** 2).sum(1) / ((weights[few] ** 2).sum(1) + 1e-12)).mean() * 40
    assert target_bpw.tensor_error(None, target_bpw.row_relative_errors(weights[few], error[few], None)) == pytest.approx(plain, rel=1e-12)


def items(names: list[str], n_bytes: list[list[int]]) -> list[Item]:
    return [Item((name,), tuple(Choice((f"F{c}",), b) for c, b in enumerate(sizes))) for name, sizes in zip(names, n_bytes)]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_target_bpw_without_important_tensors_is_the_greedy_lagrangian_sweep(seed):
    """Bisection on the price then filling greedily picks exactly what the greedy hull climb picks."""
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    n_items = 12
    sizes = [sorted(rng.choice(np.arange(100, 1000), 5, replace=False).tolist()) for _ in range(n_items)]
    damage = [np.sort(rng.lognormal(0, 2, 5))[::-1] * rng.choice([1.0, 1.5], 5) for _ in range(n_items)]  # some off the hull
    problem_items = items([f"blk.{i}.attn_q.weight" for i in range(n_items)], sizes)
    smallest, largest = sum(s[0] for s in sizes), sum(s[-1] for s in sizes)
    for budget in np.linspace(smallest, largest, 9).astype(int):
        problem = Problem(problem_items, int(budget), ())
        picks, facts = target_bpw.solve(problem, damage)
        assert problem.picks_bytes(picks) <= budget
        expected, _ = greedy.solve(problem, damage)
        assert sum(d[p] for d, p in zip(damage, picks)) == pytest.approx(sum(d[p] for d, p in zip(damage, expected)), rel=1e-12)
        for d, item, pick in zip(damage, problem_items, picks):  # Pareto-pruned: nothing cheaper is as good
            assert not any(d[c] <= d[pick] and item.choices[c].nbytes < item.choices[pick].nbytes for c in range(5))


def test_target_bpw_prefers_the_tensors_the_pr_calls_important():
    damage = [np.array([10.0, 1.0]), np.array([10.0, 1.0])]
    problem = Problem(items(["blk.0.attn_q.weight", "blk.0.ffn_down.weight"], [[100, 200], [100, 200]]), 300, ())
    picks, _ = target_bpw.solve(problem, damage)
    assert picks == [0, 1]
    # a lower price for important tensors lets them win even when their error drop is smaller
    picks, facts = target_bpw.solve(problem, [np.array([10.0, 1.0]), np.array([10.0, 5.0])])
    assert picks == [0, 1] and facts["important_items"] == 1


def test_target_bpw_beats_uniform_on_its_own_error(tiny_model):
    tokens = random_tokens(tiny_model, seed=4)
    imatrix = compute_imatrix(tiny_model, tokens, progress=False)
    ladder = ("Q2_K", "Q3_K", "Q4_0", "Q4_K", "Q5_K", "Q6_K", "Q8_0")
    table = target_bpw.error_table(tiny_model, ladder, imatrix, progress=False)
    assert table.measure == target_bpw.MEASURE and table.extra["imatrix"] == imatrix.content_sha256()
    problem_items = build_items(tiny_model, ladder)
    damage = item_damage(tiny_model, problem_items, table)
    for budget in ("3.5bpw", "4.5bpw", "5.0bpw", "5.5bpw"):
        chosen = allocate(tiny_model, "target-bpw", budget, table, ladder=ladder)
        assert chosen.extra["data_bytes"] <= chosen.extra["budget_bytes"]
        # llama.cpp's Q6_K floor for the output (here the tied embedding) would price uniform out of low budgets
        uniform = predicted_damage(tiny_model, allocate(tiny_model, "uniform", budget, table, ladder=ladder,
                                                        output_format="same").formats, table)
        assert predicted_damage(tiny_model, chosen.formats, table) < uniform
        # without the PR's preference for attn_v/ffn_down/attn_output too: that is the search itself
        plain, _ = target_bpw.solve(Problem(problem_items, chosen.extra["budget_bytes"], ladder), damage,
                                    important_tensor=lambda name: False)
        assert sum(d[p] for d, p in zip(damage, plain)) < uniform


def test_cli_target_bpw_needs_an_imatrix_and_writes_an_allocation(tiny_model, tiny_reference, tmp_path, capsys):
    imatrix_path = tmp_path / "imatrix.gguf"
    compute_imatrix(tiny_model, random_tokens(tiny_model, seed=6), progress=False).save(imatrix_path)
    out = tmp_path / "alloc.json"
    common = ["allocate", "--model", str(tiny_reference), "--method", "target-bpw", "--budget", "4.5bpw", "--out", str(out),
              "--formats", ",".join(FORMATS)]
    assert main(common) != 0
    assert "--imatrix" in capsys.readouterr().err
    assert main([*common, "--imatrix", str(imatrix_path)]) == 0
    assert "target-bpw error" in capsys.readouterr().out
    from ramp.allocate.allocation import Allocation

    allocation = Allocation.load(out)
    assert allocation.method == "target-bpw" and allocation.extra["reference"].startswith("llama.cpp PR 15550")


# --- checking an estimate against a measured table --------------------------------------------------------


def test_estimate_check_agreement_and_regret(tiny_model):
    from benchmarks.estimate_check import distinct_cells, rank_agreement, regret
    from ramp.measure.sensitivity_table import SensitivityTable

    seed = 8
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    formats = ["Q2_K", "Q4_0", "Q4_K", "Q8_0"]
    names = [spec.name for spec in tiny_model.quantizable]
    # damage falls with bits; ffn_down's Q2_K falls back to Q4_0 there, so those columns must agree
    damage = rng.lognormal(0, 1, (len(names), 1)) * np.array([8.0, 4.0, 2.0, 0.1])
    ffn_down = [i for i, name in enumerate(names) if "ffn_down" in name]
    damage[ffn_down, 0] = damage[ffn_down, 1]
    measured = SensitivityTable(names, formats, damage, model_sha256=tiny_model.sha256)
    truth = distinct_cells(tiny_model, measured)
    assert len(truth) == len(names) * 4 - len(ffn_down)  # fallbacks count once
    same = rank_agreement(tiny_model, truth, measured)
    assert same["overall"] == pytest.approx(1.0) and same["within_tensor"]["min"] == pytest.approx(1.0)
    assert same["n_cells"] == len(truth) and same["within_format"]["mean"] == pytest.approx(1.0)
    reversed_ = SensitivityTable(names, formats, 1.0 / damage, model_sha256=tiny_model.sha256)
    assert rank_agreement(tiny_model, truth, reversed_)["within_tensor"]["mean"] == pytest.approx(-1.0)
    partial = dict(list(truth.items())[:20])  # a sweep still running: agreement on what it has
    assert rank_agreement(tiny_model, partial, measured)["n_cells"] == 20

    noisy = SensitivityTable(names, formats, damage * rng.lognormal(0, 1.0, damage.shape), model_sha256=tiny_model.sha256)
    rows = regret(tiny_model, measured, {"self": measured, "noisy": noisy}, ["4.5bpw", "6bpw"])
    for row in rows:
        assert row["self_regret"] == pytest.approx(1.0)  # the measured table's own ILP has no regret
        assert row["noisy_regret"] >= 1.0 - 1e-9  # nothing beats the optimum on the table that judges it


def test_damage_auto_measures_where_the_sweep_takes_a_minute_or_two_and_estimates_beyond(smollm2):
    """SmolLM2's sweep is the 964 forwards docs/BENCHMARKS.md reports (7 minutes on two cores at 256 tokens):
    auto estimates with the Fisher there, and measures the sweep on a quarter of the tokens (under 2 minutes)."""
    from ramp.measure.ladder import DEFAULT_LADDER

    model, ladder = smollm2, DEFAULT_LADDER
    damage, why = estimates.choose_damage(model, ladder, 64)
    assert damage == "kld" and why == ("the measured sweep takes 964 forwards of 64 tokens of a 0.13B-weight model, "
                                       "about 2 min on two cores")
    damage, why = estimates.choose_damage(model, ladder, 256)
    assert damage == estimates.FISHER and "about 7 min on two cores" in why
