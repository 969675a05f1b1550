"""Evaluation through llama.cpp: windows and BOS like llama-perplexity, KLD from the cached float16
reference against the exact float64 value, command-line errors."""
from __future__ import annotations

import numpy as np
import pytest

from ramp.cli import main
from ramp.export.gguf_writer import write_gguf, write_reference
from ramp.evaluate.llama_eval import evaluate, make_windows, reference_logprobs, reference_result, scored_logits
from ramp.models.text import evaluation_text
from ramp.models.tokenizer import open_vocabulary, tokenize
from tiny_gguf import tiny_llama

N_CTX, N_WINDOWS = 64, 3


@pytest.fixture(scope="module")
def windows(tiny_reference):
    return make_windows(tiny_reference, evaluation_text(), N_CTX, N_WINDOWS)


@pytest.fixture(scope="module")
def quantized(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("q") / "tiny-Q4_0.gguf"
    write_gguf(tiny_model, {spec.name: "Q4_0" for spec in tiny_model.quantizable}, path, progress=False)
    return path


def test_tokenize_is_the_models_own_tokenizer(tiny_reference):
    text = "def f(x):\n    return x ** 2  # squares"
    tokens = tokenize(tiny_reference, text)
    llm = open_vocabulary(tiny_reference)
    try:
        assert llm.detokenize(tokens.tolist()).decode("utf-8") == text
    finally:
        llm.close()
    assert tokens.dtype == np.int32 and len(tokens) < len(text)


def test_windows_cut_the_token_stream_without_bos(tiny_reference, windows):
    # SmolLM2's vocabulary does not ask for BOS: windows are consecutive slices of the stream
    stream = tokenize(tiny_reference, evaluation_text())
    assert windows.tokens.shape == (N_WINDOWS, N_CTX)
    np.testing.assert_array_equal(windows.tokens.reshape(-1), stream[: N_WINDOWS * N_CTX])
    assert windows.n_scored == N_WINDOWS * (N_CTX // 2 - 1)
    np.testing.assert_array_equal(windows.targets[1], stream[N_CTX + N_CTX // 2 + 1 : 2 * N_CTX])


def test_windows_start_with_bos_when_the_vocabulary_adds_it(tmp_path):
    path = tmp_path / "bos.gguf"
    write_reference(tiny_llama(add_bos=True), path, progress=False)
    with_bos = make_windows(path, evaluation_text(), N_CTX, N_WINDOWS)
    stream = tokenize(path, evaluation_text())
    bos = int(stream[0])  # llama-perplexity's tokenization starts with BOS too
    assert (with_bos.tokens[:, 0] == bos).all()
    np.testing.assert_array_equal(with_bos.tokens[:, 1:], stream[: N_WINDOWS * N_CTX].reshape(N_WINDOWS, N_CTX)[:, 1:])


def exact_logprobs(path, windows) -> np.ndarray:
    """float64 log-softmax of llama.cpp's logits at every scored position: the exact values ramp's float32
    arithmetic and float16 cache approximate."""
    rows = []
    for logits in scored_logits(path, windows, "exact"):
        shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
        rows.append(shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True)))
    return np.concatenate(rows)


def test_cached_float16_kld_matches_exact_kld(tiny_reference, quantized, windows, ramp_cache):
    reference = reference_logprobs(tiny_reference, windows)
    assert reference.logprobs.dtype == np.float16 and reference.logprobs.shape[0] == windows.n_scored
    entries = sorted((ramp_cache / "reference_logits").glob("*"))  # the run's one cache holds other tests' too
    assert reference.path == str(tiny_reference)
    exact_ref = exact_logprobs(tiny_reference, windows)
    exact_q = exact_logprobs(quantized, windows)
    exact_kld = (np.exp(exact_ref) * (exact_ref - exact_q)).sum(axis=-1)
    targets = windows.targets.reshape(-1)
    result = evaluate(quantized, reference, windows)
    assert result.n_tokens == windows.n_scored
    assert result.kld_mean == pytest.approx(exact_kld.mean(), abs=1e-4)
    assert result.kld_mean > 1e-3  # Q4_0 really differs from the reference
    # the float32 arithmetic itself: against float64 on the same float16 reference values
    cached = reference.logprobs.astype(np.float64)
    assert result.kld_mean == pytest.approx((np.exp(cached) * (cached - exact_q)).sum(axis=-1).mean(), abs=1e-6)
    # float32 log-softmax: each NLL within about 1e-6 of float64's (the logits' own float32 spacing)
    assert result.perplexity == pytest.approx(np.exp(-exact_q[np.arange(len(targets)), targets].mean()), rel=1e-6)
    assert result.top1_agreement == pytest.approx((exact_q.argmax(-1) == exact_ref.argmax(-1)).mean())
    # a second request reads the cache: identical values, no new file
    again = reference_logprobs(tiny_reference, windows)
    np.testing.assert_array_equal(again.logprobs, reference.logprobs)
    np.testing.assert_array_equal(again.top1, reference.top1)
    assert sorted((ramp_cache / "reference_logits").glob("*")) == entries


def test_reference_against_itself(tiny_reference, windows):
    reference = reference_logprobs(tiny_reference, windows)
    own = reference_result(tiny_reference, reference, windows)
    measured = evaluate(tiny_reference, reference, windows)
    assert measured.perplexity == pytest.approx(own.perplexity, rel=1e-3)
    assert measured.kld_mean < 1e-5 and measured.top1_agreement == 1.0
    assert own.bits_per_weight == 32.0


def test_eval_command_prints_table(tiny_reference, quantized, tmp_path, capsys):
    out = tmp_path / "results.json"
    code = main(["eval", str(quantized), "--reference", str(tiny_reference), "--ctx", str(N_CTX),
                 "--max-windows", "2", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "tiny-Q4_0" in printed and "reference" in printed and "62 scored tokens" in printed
    assert out.is_file()


def test_eval_rejects_truncated_gguf(quantized, tiny_reference, tmp_path, capsys):
    truncated = tmp_path / "truncated.gguf"
    data = quantized.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    code = main(["eval", str(truncated), "--reference", str(tiny_reference), "--max-windows", "1"])
    assert code != 0
    err = capsys.readouterr().err
    assert "truncated" in err and len(err.strip().splitlines()) == 1


def test_eval_rejects_missing_file(tiny_reference, tmp_path, capsys):
    code = main(["eval", str(tmp_path / "nope.gguf"), "--reference", str(tiny_reference)])
    assert code != 0
    assert "does not exist" in capsys.readouterr().err


def test_eval_command_rates_other_files_against_the_nearest_preset(tiny_model, tiny_reference, quantized, tmp_path, capsys):
    import json

    from ramp.evaluate.intervals import paired_bootstrap_ratio

    mixed = tmp_path / "tiny-mixed.gguf"  # no preset in its name: a file of ramp's, compared with one
    write_gguf(tiny_model, {spec.name: ("Q8_0" if index % 2 else "Q4_0") for index, spec in enumerate(tiny_model.quantizable)},
               mixed, progress=False)
    out = tmp_path / "results.json"
    code = main(["eval", str(quantized), str(mixed), "--reference", str(tiny_reference), "--ctx", str(N_CTX),
                 "--max-windows", str(N_WINDOWS), "--json", str(out)])
    assert code == 0
    rows = {row["name"]: row for row in json.loads(out.read_text())}
    preset, ours = rows["tiny-Q4_0"], rows["tiny-mixed"]
    assert preset["kld_ratio"] is None and rows["reference"]["kld_ratio"] is None
    for row in (preset, ours):  # equal windows: the mean of the window means is the mean
        assert len(row["window_kld"]) == len(row["window_nll"]) == N_WINDOWS
        assert np.mean(row["window_kld"]) == pytest.approx(row["kld_mean"], rel=1e-9)
    ratio = ours["kld_ratio"]
    assert ratio["preset"] == "tiny-Q4_0" and ratio["ratio"] == pytest.approx(ours["kld_mean"] / preset["kld_mean"], rel=1e-9)
    assert ratio["low"] <= ratio["ratio"] <= ratio["high"]
    again = paired_bootstrap_ratio(ours["window_kld"], preset["window_kld"], resamples=ratio["resamples"], seed=ratio["seed"])
    assert (again.low, again.high) == (ratio["low"], ratio["high"])
    printed = capsys.readouterr().out
    assert f"{ratio['ratio']:.2f}x [{ratio['low']:.2f}-{ratio['high']:.2f}] vs tiny-Q4_0" in printed
