"""Kernels: ggml ground truth against independent references, torch against ggml, the cache, bad input."""
from __future__ import annotations

import os

import gguf
import numpy as np
import pytest
import torch

from ramp.errors import RampError
from ramp.kernels import DequantCache, dequantize, quantize, quantize_dequantize, resolve_format, tensor_bytes

QUANT_FORMATS = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS")
ALL_FORMATS = QUANT_FORMATS + ("F16", "BF16", "F32")
# gguf-py's own numpy quantizers, written independently of libggml, exist for these.
GGUF_PY_QUANTIZERS = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "F16", "BF16")


def awkward_matrix(seed: int, rows: int = 24, row_length: int = 512) -> np.ndarray:
    """Gaussian rows plus the cases quantizers get wrong: an all-zero row, a huge outlier, a constant row."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, row_length)).astype(np.float32) * rng.uniform(0.01, 2.0, (rows, 1)).astype(np.float32)
    x[1] = 0.0
    x[2, rng.integers(row_length)] = 1e4
    x[3] = 0.125
    x[4, : row_length // 2] = 0.0
    return x


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_ggml_bytes_have_llama_cpp_length_and_match_gguf_py_dequantizer(fmt: str) -> None:
    x = awkward_matrix(seed=11)
    packed = quantize(x, fmt)
    assert packed.dtype == np.uint8 and packed.size == tensor_bytes(x.shape, fmt)
    ours = dequantize(packed, fmt, x.shape)
    reference = gguf.quants.dequantize(packed.reshape(x.shape[0], -1), gguf.GGMLQuantizationType[fmt])
    np.testing.assert_array_equal(ours, reference)
    rel_rms = np.sqrt(np.mean((ours - x) ** 2) / np.mean(x**2))
    assert rel_rms < {"Q2_K": 0.4, "Q3_K": 0.2}.get(fmt, 0.12)


@pytest.mark.parametrize("fmt", GGUF_PY_QUANTIZERS)
def test_ggml_bytes_match_gguf_py_quantizer(fmt: str) -> None:
    x = awkward_matrix(seed=12)
    expected = gguf.quants.quantize(x, gguf.GGMLQuantizationType[fmt]).reshape(-1).view(np.uint8)
    np.testing.assert_array_equal(quantize(x, fmt), expected)


@pytest.mark.parametrize("fmt, row_length, written", [
    ("Q4_K", 576, "Q5_0"), ("Q6_K", 576, "Q8_0"), ("Q2_K", 96, "Q4_0"), ("IQ4_XS", 160, "IQ4_NL"), ("Q4_K", 48, "F16"),
])
def test_rows_not_divisible_by_256_get_llama_cpp_fallback_bytes(fmt: str, row_length: int, written: str) -> None:
    x = np.random.default_rng(13).standard_normal((8, row_length)).astype(np.float32)
    assert resolve_format(fmt, row_length).name == written
    np.testing.assert_array_equal(quantize(x, fmt), quantize(x, written))
    np.testing.assert_array_equal(dequantize(quantize(x, fmt), fmt, x.shape), dequantize(quantize(x, written), written, x.shape))


def test_importance_changes_k_quant_and_is_respected() -> None:
    x = awkward_matrix(seed=14)
    importance = np.ones(x.shape[1], dtype=np.float32)
    importance[:64] = 100.0
    plain = quantize_dequantize(x, "Q4_K", backend="ggml")
    weighted = quantize_dequantize(x, "Q4_K", importance, backend="ggml")
    err = lambda y, cols: float(np.mean((y[:, cols] - x[:, cols]) ** 2))  # noqa: E731
    assert err(weighted, slice(0, 64)) < err(plain, slice(0, 64))


def test_quantize_dequantize_keeps_input_type() -> None:
    x = awkward_matrix(seed=15)
    as_numpy = quantize_dequantize(x, "Q6_K", backend="ggml")
    as_torch = quantize_dequantize(torch.from_numpy(x), "Q6_K", backend="ggml")
    assert isinstance(as_numpy, np.ndarray) and isinstance(as_torch, torch.Tensor)
    np.testing.assert_array_equal(as_numpy, as_torch.numpy())


@pytest.mark.parametrize("call, message", [
    (lambda x: quantize(x, "Q7_K"), "known formats"),
    (lambda x: quantize(x.astype(np.int32), "Q4_K"), "not a float type"),
    (lambda x: quantize(np.where(np.arange(512) == 5, np.nan, x), "Q4_K", name="blk.0.attn_q.weight"), "blk.0.attn_q.weight"),
    (lambda x: quantize(np.where(np.arange(512) == 5, np.inf, x), "Q8_0", name="output.weight"), "NaN or Inf"),
    (lambda x: quantize(x, "Q4_K", importance=np.ones(7, np.float32)), "one weight per column"),
    (lambda x: quantize(x, "Q4_K", backend="cuda-magic"), "unknown kernel backend"),
    (lambda x: dequantize(quantize(x, "Q4_K")[:-1], "Q4_K", x.shape), "must be"),
    (lambda x: dequantize(quantize(x, "Q4_K"), "Q4_K", (4, 512)), "must be"),
])
def test_bad_input_raises_one_line_ramp_error(call, message: str) -> None:
    x = awkward_matrix(seed=16, rows=8)
    with pytest.raises(RampError, match=message) as info:
        call(x)
    assert "\n" not in str(info.value)


@pytest.fixture(scope="module")
def model(smollm2):
    return smollm2


# A new seed each run explores inputs no fixed seed would; RAMP_TEST_SEED replays the one a failure names.
SEED = int(os.environ.get("RAMP_TEST_SEED") or np.random.SeedSequence().entropy % 2**32)
REPLAY = f"seed {SEED}: rerun with RAMP_TEST_SEED={SEED}"


@pytest.mark.parametrize("with_importance", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_torch_backend_bytes_equal_libggml(fmt: str, with_importance: bool) -> None:
    """Bit-exact, not merely close: see torch_backend's docstring for why that is achievable."""
    x = awkward_matrix(SEED, rows=12)
    rng = np.random.default_rng(SEED + 1)
    importance = rng.uniform(0.01, 5.0, x.shape[1]).astype(np.float32) if with_importance else None
    ours = quantize(x, fmt, importance, backend="torch")
    np.testing.assert_array_equal(ours, quantize(x, fmt, importance, backend="ggml"), err_msg=REPLAY)
    expected = dequantize(ours, fmt, x.shape, backend="ggml")
    np.testing.assert_array_equal(dequantize(ours, fmt, x.shape, backend="torch"), expected, err_msg=REPLAY)
    round_trip = quantize_dequantize(torch.from_numpy(x), fmt, importance, backend="torch")
    np.testing.assert_array_equal(round_trip.numpy(), expected, err_msg=REPLAY)


@pytest.mark.parametrize("fmt, row_length", [("Q4_K", 576), ("Q3_K", 96), ("IQ4_XS", 160), ("Q6_K", 48)])
def test_torch_backend_follows_fallback(fmt: str, row_length: int) -> None:
    x = np.random.default_rng(SEED).standard_normal((6, row_length)).astype(np.float32)
    np.testing.assert_array_equal(quantize(x, fmt, backend="torch"), quantize(x, fmt, backend="ggml"), err_msg=REPLAY)


@pytest.mark.parametrize("fmt", ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0"))
def test_torch_backend_on_real_model_tensors(model, fmt: str) -> None:
    for name in ("blk.0.attn_k.weight", "blk.3.ffn_down.weight"):
        weights = model.tensors[name]
        np.testing.assert_array_equal(quantize(weights, fmt, backend="torch"), quantize(weights, fmt, backend="ggml"), err_msg=name)


def test_dequant_cache_memoises_in_memory_and_on_disk(model, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RAMP_CACHE", str(tmp_path))
    name = next(spec.name for spec in model.quantizable if spec.role == "attn_k")
    first = DequantCache(model, backend="ggml")
    value = first.get(name, "Q4_K")
    assert first.get(name, "Q4_K") is value and (first.hits, first.misses) == (1, 1)
    expected = quantize_dequantize(model.tensors[name], "Q4_K", backend="ggml")
    np.testing.assert_array_equal(value.numpy(), expected)

    second = DequantCache(model, backend="ggml")
    np.testing.assert_array_equal(second.get(name, "Q4_K").numpy(), expected)
    assert (second.disk_hits, second.misses) == (1, 0)
    assert len(list(tmp_path.rglob("*.bin"))) == 1


@pytest.mark.parametrize("fmt", ("Q4_0", "Q5_0", "Q3_K", "Q6_K", "IQ4_NL"))
def test_torch_backend_breaks_magnitude_ties_like_libggml(fmt: str) -> None:
    """Groups whose largest magnitude occurs as both +v and -v: C keeps the first, whatever its sign."""
    x = np.random.default_rng(17).uniform(-0.5, 0.5, (8, 512)).astype(np.float32)
    for row in range(8):
        first, second = (1.5, -1.5) if row % 2 else (-1.5, 1.5)
        x[row, 3::16], x[row, 9::16] = first, second
    np.testing.assert_array_equal(quantize(x, fmt, backend="torch"), quantize(x, fmt, backend="ggml"))


def test_torch_backend_from_concurrent_threads_restores_torch_threads() -> None:
    from concurrent.futures import ThreadPoolExecutor

    x = awkward_matrix(seed=18, rows=64)
    formats = ["Q4_K", "Q6_K", "Q8_0", "Q3_K"] * 2
    before = torch.get_num_threads()
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda fmt: quantize(x, fmt, backend="torch"), formats))
    assert torch.get_num_threads() == before
    for fmt, packed in zip(formats, results):
        np.testing.assert_array_equal(packed, quantize(x, fmt, backend="ggml"), err_msg=fmt)
