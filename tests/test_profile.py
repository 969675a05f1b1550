"""Tensor embeddings and the sensitivity sweep, on a small random llama built in code."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from ramp.errors import RampError
from ramp.models.model import MetadataValue, Model, TensorSpec, role_of
from ramp.measure.profile import (
    FEATURE_NAMES, ActivationStats, Profile, _activation_features, profile_model, tensor_features, weight_features,
)
from ramp.measure.sensitivity import measure_sensitivity

HIDDEN, FFN, VOCAB, BLOCKS = 64, 128, 256, 2


def tiny_llama(seed: int = 0) -> Model:
    """A 2-block llama (4 heads, 2 kv heads) with Gaussian weights: rows of 64/128 fit Q4_0 and Q8_0 blocks."""
    rng = np.random.default_rng(seed)
    shapes = {"attn_q": (HIDDEN, HIDDEN), "attn_k": (HIDDEN // 2, HIDDEN), "attn_v": (HIDDEN // 2, HIDDEN),
              "attn_output": (HIDDEN, HIDDEN), "ffn_gate": (FFN, HIDDEN), "ffn_up": (FFN, HIDDEN), "ffn_down": (HIDDEN, FFN)}
    tensors = {"token_embd.weight": rng.normal(0, 1, (VOCAB, HIDDEN)).astype(np.float32)}
    for block in range(BLOCKS):
        tensors[f"blk.{block}.attn_norm.weight"] = rng.uniform(0.5, 1.5, HIDDEN).astype(np.float32)
        tensors[f"blk.{block}.ffn_norm.weight"] = rng.uniform(0.5, 1.5, HIDDEN).astype(np.float32)
        for role, shape in shapes.items():
            tensors[f"blk.{block}.{role}.weight"] = rng.normal(0, shape[1] ** -0.5, shape).astype(np.float32)
    tensors["output_norm.weight"] = np.ones(HIDDEN, dtype=np.float32)
    quantizable = [TensorSpec(name, t.shape, *role_of(name)) for name, t in tensors.items() if role_of(name)]
    hparams = {"block_count": BLOCKS, "embedding_length": HIDDEN, "attention.head_count": 4,
               "attention.head_count_kv": 2, "attention.layer_norm_rms_epsilon": 1e-5, "rope.freq_base": 10000.0}
    metadata = {f"llama.{key}": MetadataValue(value, None) for key, value in hparams.items()}
    return Model("llama", BLOCKS, tensors, quantizable, metadata)


def features_of(profile: Profile, tensor: str) -> np.ndarray:
    return profile.features[profile.tensors.index(tensor)]


def random_tokens(seed: int = 0, windows: int = 2, length: int = 32) -> torch.Tensor:
    return torch.randint(0, VOCAB, (windows, length), generator=torch.Generator().manual_seed(seed))


def test_sensitivity_grows_as_bits_shrink_and_fallbacks_are_shared():
    model = tiny_llama()
    table = measure_sensitivity(model, random_tokens(), ["Q2_K", "Q4_0", "Q8_0"], progress=False, use_cache=False)
    q2, q4, q8 = (table.damage[:, table.formats.index(f)] for f in ("Q2_K", "Q4_0", "Q8_0"))
    assert table.tensors == [spec.name for spec in model.quantizable]
    assert np.all(q8 > 0)
    assert np.mean(q8 < q4) >= 0.9
    # 64- and 128-wide rows do not fit Q2_K's 256-blocks: llama.cpp writes Q4_0, measured once
    assert np.array_equal(q2, q4)
    assert table.extra["n_measured"] == 2 * len(model.quantizable)


@pytest.mark.parametrize("scaled_tensor, checked", [
    ("blk.1.ffn_down.weight", ("blk.1.ffn_down.weight",)),  # weight features of a scaled tensor
    ("blk.1.attn_norm.weight", ("blk.1.attn_q.weight", "blk.1.attn_v.weight")),  # inputs of q/v scaled by 4
])
def test_features_are_invariant_to_scaling_a_whole_tensor(scaled_tensor, checked):
    model = tiny_llama()
    tokens = random_tokens()
    base = profile_model(model, tokens)
    scaled = dict(model.tensors, **{scaled_tensor: model.tensors[scaled_tensor] * 4.0})
    other = profile_model(replace(model, tensors=scaled), tokens)
    for name in checked:
        np.testing.assert_allclose(features_of(other, name), features_of(base, name), rtol=1e-4, atol=1e-6)


def test_outlier_heavy_tensors_and_inputs_stand_out():
    rng = np.random.default_rng(1)
    plain = rng.normal(0, 1, (256, 512)).astype(np.float32)
    spiky = plain.copy()
    spiky[rng.integers(0, 256, 40), rng.integers(0, 512, 40)] = 40.0
    plain_w, spiky_w = weight_features(plain), weight_features(spiky)
    for name in ("w_log_kurtosis", "w_block_crest", "w_superblock_spread", "w_rtn4_error"):
        assert spiky_w[name] > plain_w[name], name

    inputs = torch.from_numpy(rng.normal(0, 1, (1024, 512)).astype(np.float32))
    plain_x, spiky_x = ActivationStats(), ActivationStats()
    plain_x.update(inputs)
    outliers = inputs.clone()
    outliers[:, :4] *= 30.0  # four outlier channels, as in real LLM residual streams
    spiky_x.update(outliers)
    plain_a, spiky_a = _activation_features(plain_x, plain), _activation_features(spiky_x, plain)
    assert spiky_a["act_channel_outlier"] > plain_a["act_channel_outlier"] + 3
    assert spiky_a["act_log_kurtosis"] > plain_a["act_log_kurtosis"]
    assert spiky_a["act_effective_channels"] < 0.5 * plain_a["act_effective_channels"]


def test_row_sampling_is_reproducible_with_a_seed(tmp_path):
    model = tiny_llama()
    tokens = random_tokens()
    profile = profile_model(model, tokens, seed=3)
    assert profile.features.shape == (len(model.quantizable), len(FEATURE_NAMES)) and np.isfinite(profile.features).all()
    from ramp.measure.forward import Forward
    from ramp.measure.profile import collect_activation_stats

    stats = collect_activation_stats(Forward(model), tokens)
    counts = np.bincount(tokens.numpy().ravel(), minlength=VOCAB).astype(np.float64)
    spec = model.spec("blk.0.ffn_gate.weight")
    # a budget of 16 rows forces sampling: same seed, same rows, same numbers
    first = tensor_features(model, spec, stats, counts, seed=5, max_values=16 * HIDDEN)
    again = tensor_features(model, spec, stats, counts, seed=5, max_values=16 * HIDDEN)
    other = tensor_features(model, spec, stats, counts, seed=6, max_values=16 * HIDDEN)
    assert np.array_equal(first, again) and not np.array_equal(first, other)

    profile.save(tmp_path / "e.json", tmp_path / "e.csv")
    loaded = Profile.load(tmp_path / "e.json")
    assert loaded.tensors == profile.tensors and np.allclose(loaded.features, profile.features)
    assert (tmp_path / "e.csv").read_text().splitlines()[0] == ",".join(("tensor",) + FEATURE_NAMES)


def test_untied_embedding_uses_token_frequencies():
    model = tiny_llama()
    tensors = dict(model.tensors, **{"output.weight": model.tensors["token_embd.weight"].copy()})
    untied = replace(model, tensors=tensors, quantizable=model.quantizable + [TensorSpec("output.weight", (VOCAB, HIDDEN), "output", None)])
    concentrated = torch.zeros(2, 32, dtype=torch.long)  # every token is id 0
    spread = random_tokens()
    column = FEATURE_NAMES.index("act_effective_channels")
    assert features_of(profile_model(untied, concentrated), "token_embd.weight")[column] < features_of(profile_model(untied, spread), "token_embd.weight")[column]
    with pytest.raises(RampError, match="ramp profile"):
        Profile.load("/nonexistent/embeddings.json")
