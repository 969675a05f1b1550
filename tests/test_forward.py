"""The torch forward against llama.cpp itself, and the KLD-vs-reference machinery built on it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ramp.forward import Forward, KLDReference, calibration_tokens, kld_against_reference
from ramp.model import load_model


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture(scope="module")
def forward(model):
    return Forward(model)


@pytest.fixture(scope="module")
def tokens(model):
    return calibration_tokens(model, n_tokens=256, window=128)


def test_logits_match_llama_cpp_on_real_text(model, forward, tokens, tmp_path_factory):
    import llama_cpp

    from ramp.export.gguf_writer import write_reference

    # An F32 file holds exactly the weights load_model gives; F32 KV cache (type 0) keeps llama.cpp's
    # attention in float32 too, so the only differences left are summation order.
    path = tmp_path_factory.mktemp("ref") / "reference.gguf"
    write_reference(model, path, "F32", progress=False)
    llm = llama_cpp.Llama(str(path), n_ctx=tokens.shape[1], n_batch=tokens.shape[1], logits_all=True,
                          type_k=0, type_v=0, n_threads=2, verbose=False)
    llm.eval(tokens[0].tolist())
    theirs = np.asarray(llm.scores[: tokens.shape[1]], dtype=np.float64)
    llm.close()
    ours = forward.logits(tokens[:1])[0].double().numpy()
    assert np.linalg.norm(ours - theirs) / np.linalg.norm(theirs) < 1e-3
    assert np.abs(ours - theirs).max() < 1e-2 * np.abs(theirs).max()
    assert (ours.argmax(-1) == theirs.argmax(-1)).mean() > 0.99


def test_capture_sees_every_linear_input(model, forward, tokens):
    seen: dict[str, tuple[int, ...]] = {}
    forward.logits(tokens[:1, :16], capture=lambda name, x: seen.setdefault(name, tuple(x.shape)))
    block_tensors = {spec.name: spec for spec in model.quantizable if spec.block is not None}
    assert set(seen) == set(block_tensors) | {"output.weight"}
    for name, spec in block_tensors.items():
        assert seen[name] == (1, 16, spec.shape[1])


def test_kld_is_zero_unmodified_and_grows_with_damage(forward, tokens):
    reference = KLDReference(forward, tokens)
    assert reference.kld() == 0.0
    weight = forward.weights["blk.12.ffn_up.weight"]
    noise = torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)) * weight.std()
    small = reference.kld({"blk.12.ffn_up.weight": weight + 0.01 * noise})
    large = reference.kld({"blk.12.ffn_up.weight": weight + 0.1 * noise})
    assert 0 < small < large
    assert not torch.equal(forward.weights["blk.12.ffn_up.weight"], weight + 0.01 * noise)  # model untouched


def test_block_checkpoints_give_the_full_forward_result(forward, tokens):
    weight = forward.weights["blk.20.attn_v.weight"]
    overrides = {"blk.20.attn_v.weight": weight * 1.05}
    resumed = KLDReference(forward, tokens, checkpoint_blocks=True).kld(overrides)
    full = KLDReference(forward, tokens, checkpoint_blocks=False).kld(overrides)
    assert resumed == pytest.approx(full, rel=1e-4)


def test_tied_embedding_override_changes_output_projection(forward, tokens):
    embedding = forward.weights["token_embd.weight"]
    first = kld_against_reference(forward, {"token_embd.weight": embedding * 1.02}, tokens)
    again = kld_against_reference(forward, {"token_embd.weight": embedding * 1.02}, tokens)
    assert first > 0 and first == again
