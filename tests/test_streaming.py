"""Streamed models (`ramp.models.store`): a file's tensors are dequantized when a stage uses them, within a
byte-bounded cache, and every stage computes from them exactly what it computes from the same tensors held
in memory: the importance matrix, the Fisher's damages, the profile, the twin, the allocation and the file's bytes."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from ramp.allocate import allocate
from ramp.errors import RampError
from ramp.export.gguf_writer import write_allocation
from ramp.measure.estimates import fisher_table
from ramp.measure.imatrix import compute_imatrix
from ramp.measure.profile import profile_model
from ramp.measure.twin import twin_model
from ramp.models import load_model
from ramp.models import store
from ramp.models.store import CACHE_ENV, TensorStore, cache_limit_bytes
from test_twin import tiny_qwen2_checkpoint

SEED = 11
FORMATS = ["Q3_K", "Q4_K", "Q6_K", "Q8_0"]


def pipeline(model, tokens, out):
    """What `ramp run --damage fisher` computes from a model, up to its GGUF."""
    imatrix = compute_imatrix(model, tokens, progress=False)
    table = fisher_table(model, tokens, imatrix, FORMATS, seed=SEED, progress=False, use_cache=False)
    allocation = allocate(model, "ilp", "4.5bpw", table, ladder=tuple(FORMATS))
    write_allocation(model, allocation, out, progress=False, imatrix=imatrix)
    return imatrix, table, allocation, profile_model(model, tokens, SEED)


@pytest.mark.parametrize("band_elements", [None, 3000], ids=["whole-tensors", "row-bands"])
def test_streamed_and_in_memory_models_give_identical_damages_and_bytes(tmp_path, monkeypatch, band_elements):
    """Whole tensors streamed give the very numbers; row bands (a 7B's embedding and output) sum the head's
    products band by band, in another order: the same to float32 rounding, and the same allocation and bytes."""
    print(f"seed {SEED}")
    path = tmp_path / "qwen2-q4_k.gguf"
    tiny_qwen2_checkpoint(path)
    streamed = load_model(path)
    assert isinstance(streamed.tensors, TensorStore)
    # the same weights held in memory, as another checkpoint (its own caches: nothing computed is shared)
    held = load_model(path)
    in_memory = replace(held, tensors={name: np.array(held.tensors[name]) for name in held.tensors},
                        sha256="in-memory-" + held.sha256)
    tokens = torch.randint(0, streamed.shape("token_embd.weight")[0], (3, 24), generator=torch.Generator().manual_seed(SEED))
    expected = pipeline(in_memory, tokens, tmp_path / "in-memory.gguf")
    monkeypatch.setenv(CACHE_ENV, "0")  # nothing kept: every use of a tensor dequantizes it from the file again
    if band_elements is not None:
        monkeypatch.setattr(store, "BAND_ELEMENTS", band_elements)  # in bands of a few rows, as a 7B's embedding is
    got = pipeline(streamed, tokens, tmp_path / "streamed.gguf")

    assert got[0].content_sha256() == expected[0].content_sha256()
    assert got[1].damage.min() >= 0 and got[1].damage.max() > 0
    if band_elements is None:
        assert np.array_equal(got[1].damage, expected[1].damage)
    else:
        np.testing.assert_allclose(got[1].damage, expected[1].damage, rtol=1e-4, atol=1e-12)
    assert got[2].formats == expected[2].formats
    assert (tmp_path / "streamed.gguf").read_bytes() == (tmp_path / "in-memory.gguf").read_bytes()
    assert np.array_equal(got[3].features, expected[3].features)
    twin, twin_in_memory = twin_model(streamed, seed=SEED), twin_model(in_memory, seed=SEED)
    for name in twin.tensors:
        assert np.array_equal(twin.tensors[name], twin_in_memory.tensors[name]), name


def test_the_cache_keeps_within_its_budget_and_bad_budgets_are_refused(tmp_path, monkeypatch):
    path = tmp_path / "qwen2-q4_k.gguf"
    tiny_qwen2_checkpoint(path)
    model = load_model(path)
    one = model.tensors["blk.0.ffn_up.weight"]
    monkeypatch.setenv(CACHE_ENV, str(1.5 * one.nbytes / (1 << 30)))  # room for one such tensor, not two
    assert model.tensors["blk.0.ffn_up.weight"] is one  # kept
    model.tensors["blk.1.ffn_up.weight"]  # evicts the first
    again = model.tensors["blk.0.ffn_up.weight"]
    assert again is not one and np.array_equal(again, one)
    with pytest.raises(ValueError):
        again[0, 0] = 1.0  # shared with every reader: read-only
    # a model larger than the cache keeps one block's worth of itself: every pass walks it in order
    total = sum(model.tensors[name].nbytes for name in model.tensors)
    monkeypatch.setenv(CACHE_ENV, str(total / 2 / (1 << 30)))
    for name in model.tensors:
        model.tensors[name]
    block = sum(model.tensors[name].nbytes for name in model.tensors if name.startswith("blk.0."))
    assert model.tensors.keep_limit() == block < total / 2
    assert 0 < store._CACHE._owned[model.tensors._owner] <= block
    for bad in ("lots", "-1"):
        monkeypatch.setenv(CACHE_ENV, bad)
        with pytest.raises(RampError, match=CACHE_ENV):
            cache_limit_bytes()
