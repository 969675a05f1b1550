"""The torch forward against llama.cpp itself, and the KLD-vs-reference machinery built on it."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from ramp.models.embedded import KNOWN_MODELS, QWEN_NAME
from ramp.measure.calibration import CalibrationSpec
from ramp.measure.forward import Forward, KLDReference
from ramp.models.model import Model
from ramp.models import load_model
from ramp.models.store import TensorStore


@pytest.fixture(scope="module")
def model(smollm2):
    return smollm2


@pytest.fixture(scope="module")
def forward(model):
    return Forward(model)


@pytest.fixture(scope="module")
def tokens(model):
    return CalibrationSpec("austen", 256, 128).windows(model)


def llama_cpp_logits(path, tokens: torch.Tensor, all_positions: bool = True) -> np.ndarray:
    """llama.cpp's logits [positions, vocab] for one window (only the last position unless all_positions).

    An F32 file holds exactly the weights load_model gives; F32 KV cache (type 0) keeps llama.cpp's
    attention in float32 too, so the only differences left are summation order.
    """
    import llama_cpp

    n_tokens = len(tokens)
    llm = llama_cpp.Llama(str(path), n_ctx=n_tokens, n_batch=n_tokens, n_ubatch=n_tokens, logits_all=all_positions,
                          type_k=0, type_v=0, n_threads=2, verbose=False)
    try:
        llm.eval(tokens.tolist())
        if all_positions:
            return np.asarray(llm.scores[:n_tokens], dtype=np.float64)
        # without logits_all, llama-cpp-python keeps no scores: read the context's last output row
        last = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return np.ctypeslib.as_array(last, shape=(1, llm.n_vocab())).astype(np.float64)
    finally:
        llm.close()


def assert_logits_match(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert np.linalg.norm(ours - theirs) / np.linalg.norm(theirs) < 1e-3
    assert np.abs(ours - theirs).max() < 1e-2 * np.abs(theirs).max()
    assert (ours.argmax(-1) == theirs.argmax(-1)).mean() > 0.99


def test_logits_match_llama_cpp_on_real_text(model, forward, tokens, tmp_path_factory):
    from ramp.export.gguf_writer import write_reference

    path = tmp_path_factory.mktemp("ref") / "reference.gguf"
    write_reference(model, path, "F32", progress=False)
    theirs = llama_cpp_logits(path, tokens[0])
    ours = forward.logits(tokens[:1])[0].double().numpy()
    assert_logits_match(ours, theirs)


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
    reference = KLDReference(forward, tokens)
    first = reference.kld({"token_embd.weight": embedding * 1.02})
    again = reference.kld({"token_embd.weight": embedding * 1.02})
    assert first > 0 and first == again


# Gemma 3 270M, the second real model: a different block (scaled embeddings, q/k norms, post-norms, GELU,
# sliding-window layers with their own rope base), a 262144-token vocabulary and tied embeddings.
# .ci/install installs its packages, so a missing package fails here instead of skipping.


@pytest.fixture(scope="module")
def gemma(gemma3) -> Model:
    return gemma3


@pytest.fixture(scope="module")
def gemma_forward(gemma):
    return Forward(gemma)


@pytest.fixture(scope="module")
def gemma_reference(gemma, tmp_path_factory):
    from ramp.export.gguf_writer import write_reference

    path = tmp_path_factory.mktemp("gemma") / "reference.gguf"
    write_reference(gemma, path, "F32", progress=False)
    return path


def test_gemma3_logits_match_llama_cpp(gemma, gemma_forward, gemma_reference):
    tokens = CalibrationSpec("austen", 64, 64).windows(gemma)
    theirs = llama_cpp_logits(gemma_reference, tokens[0])
    ours = gemma_forward.logits(tokens[:1])[0].double().numpy()
    assert_logits_match(ours, theirs)


def test_gemma3_sliding_window_matches_llama_cpp(gemma, gemma_forward, gemma_reference):
    """Past the 512-token window the sliding layers stop seeing the oldest tokens; compared on the last
    position only, as all 262144-wide logits of a long window would take gigabytes."""
    window = gemma_forward.layers[0].window
    assert window == 512 and [layer.window for layer in gemma_forward.layers].count(None) == 3  # layers 5, 11, 17
    tokens = CalibrationSpec("austen", 640, 640).windows(gemma)[0]
    theirs = llama_cpp_logits(gemma_reference, tokens, all_positions=False)[0]

    def last_logits(forward: Forward) -> np.ndarray:
        with torch.inference_mode():
            h = forward.embed(tokens[None])
            for index in range(forward.n_blocks):
                h = forward.block(index, h)
            return forward.head(h[:, -1])[0].double().numpy()

    ours = last_logits(gemma_forward)
    assert np.linalg.norm(ours - theirs) / np.linalg.norm(theirs) < 1e-3
    # the comparison can tell: attending to the whole past instead moves the logits far more
    unmasked = Forward(gemma)
    unmasked.layers = [replace(layer, window=None) for layer in unmasked.layers]
    assert np.linalg.norm(last_logits(unmasked) - theirs) > 10 * np.linalg.norm(ours - theirs)


def test_gemma3_capture_and_profile_cover_only_the_quantizable_tensors(gemma, gemma_forward):
    from ramp.measure.profile import FEATURE_NAMES, profile_model

    tokens = CalibrationSpec("austen", 64, 64).windows(gemma)
    seen: set[str] = set()
    gemma_forward.logits(tokens[:, :16], capture=lambda name, x: seen.add(name))
    block_tensors = {spec.name for spec in gemma.quantizable if spec.block is not None}
    assert seen == block_tensors | {"output.weight"}
    assert not any("norm" in spec.name for spec in gemma.quantizable)  # post-attention/FFN norms stay float
    profile = profile_model(gemma, tokens, forward=gemma_forward)
    assert profile.tensors == [spec.name for spec in gemma.quantizable]
    assert profile.features.shape == (len(gemma.quantizable), len(FEATURE_NAMES))
    assert np.isfinite(profile.features).all()


def test_gemma3_block_checkpoints_and_tied_embedding(gemma_forward):
    tokens = CalibrationSpec("austen", 64, 32).windows(gemma_forward.model)
    weight = gemma_forward.weights["blk.10.ffn_down.weight"]
    overrides = {"blk.10.ffn_down.weight": weight * 1.05}
    resumed = KLDReference(gemma_forward, tokens, checkpoint_blocks=True).kld(overrides)
    full = KLDReference(gemma_forward, tokens, checkpoint_blocks=False).kld(overrides)
    assert resumed > 0 and resumed == pytest.approx(full, rel=1e-4)
    embedding = gemma_forward.weights["token_embd.weight"]
    assert KLDReference(gemma_forward, tokens).kld({"token_embd.weight": embedding * 1.02}) > 0


# Qwen2.5-Coder-1.5B, the K-quant-native model: llama.cpp's qwen2 graph (src/models/qwen2.cpp) is the llama
# block with biases on q, k and v, neox rope, and an output matrix of its own. It is optional (1.1 GB, not in
# .ci/install), so this test skips when, and only when, it is not installed.


@pytest.fixture(scope="module")
def qwen() -> Model:
    status = KNOWN_MODELS[QWEN_NAME].status()
    if not status.installed:
        pytest.skip(f"{QWEN_NAME} is not installed ({status.note}); `ramp models install {QWEN_NAME}` enables this test")
    return load_model(QWEN_NAME)


def test_qwen2_logits_match_llama_cpp(qwen):
    """On the F32 reference (cached: 7 GB, the file every later Qwen evaluation reads too); the comparison
    can tell a forward that drops the q/k/v biases or ties the output to the embedding."""
    from ramp.export.gguf_writer import cached_reference

    forward = Forward(qwen)
    assert qwen.arch == "qwen2" and forward.rope_neox and forward.output_name == "output.weight"
    tokens = CalibrationSpec("austen", 32, 32).windows(qwen)
    theirs = llama_cpp_logits(cached_reference(qwen, progress=False), tokens[0])
    ours = forward.logits(tokens[:1])[0].double().numpy()
    assert_logits_match(ours, theirs)
    error = np.linalg.norm(ours - theirs)

    # the same streamed tensors without the biases (no copy of the 7 GB)
    kept = {name: qwen.shape(name) for name in qwen.tensors if not name.endswith(".bias")}
    unbiased = Forward(replace(qwen, tensors=TensorStore(kept, qwen.tensors.__getitem__, cached=lambda name: False)))
    assert np.linalg.norm(unbiased.logits(tokens[:1])[0].double().numpy() - theirs) > 10 * error
    tied = Forward(qwen)
    tied.output_name = "token_embd.weight"
    assert np.linalg.norm(tied.logits(tokens[:1])[0].double().numpy() - theirs) > 10 * error
