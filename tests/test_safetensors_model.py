"""A Hugging Face safetensors directory must reach the same function in ramp's forward, in the GGUF ramp
writes, and in llama.cpp running that GGUF, as in transformers itself."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from hf_fixture import build_tiny_hf_llama  # noqa: E402

from ramp.errors import RampError  # noqa: E402
from ramp.models import load_model  # noqa: E402
from ramp.models.text import evaluation_text  # noqa: E402


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    return build_tiny_hf_llama(tmp_path_factory.mktemp("hf") / "tiny-llama", seed=3)


@pytest.fixture(scope="module")
def hf_logits_and_tokens(hf_dir):
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    tokens = tokenizer(evaluation_text()[:600], return_tensors="pt").input_ids[:, :96]
    model = LlamaForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        return model(tokens).logits[0].numpy(), tokens


def test_ramp_forward_matches_transformers(hf_dir, hf_logits_and_tokens):
    from ramp.measure.forward import Forward

    expected, tokens = hf_logits_and_tokens
    model = load_model(hf_dir)
    assert {spec.role for spec in model.quantizable} == {
        "token_embd", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down", "output"
    }
    got = Forward(model).logits(tokens.to(torch.int64))[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_reference_gguf_runs_in_llama_cpp_like_transformers(hf_dir, hf_logits_and_tokens, tmp_path):
    import gguf

    from ramp.export.gguf_writer import write_reference
    from ramp.evaluate.llama_eval import open_llama
    from ramp.models.tokenizer import tokenize

    expected, tokens = hf_logits_and_tokens
    path = tmp_path / "tiny.gguf"
    write_reference(load_model(hf_dir), path, progress=False)
    reader = gguf.GGUFReader(path)
    assert {t.tensor_type.name for t in reader.tensors} == {"F32"}

    text = evaluation_text()[:600]
    llama_tokens = tokenize(path, text)
    # llama.cpp's byte-level BPE must split the text exactly as the Hugging Face tokenizer does
    from transformers import AutoTokenizer

    hf_tokens = AutoTokenizer.from_pretrained(hf_dir)(text).input_ids
    assert list(llama_tokens[-len(hf_tokens):]) == hf_tokens

    llm = open_llama(path, n_ctx=128, logits_all=True)
    try:
        llm.eval(tokens[0].tolist())
        got = np.asarray(llm.scores[: tokens.shape[1]], dtype=np.float32)
    finally:
        llm.close()
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-3)


def test_tied_embeddings_keep_one_copy(tmp_path):
    model = load_model(build_tiny_hf_llama(tmp_path / "tied", seed=1, tie_embeddings=True))
    assert "output.weight" not in model.tensors
    assert "output" not in {spec.role for spec in model.quantizable}


def test_unsupported_architecture_is_one_clear_line(hf_dir, tmp_path, capsys):
    broken = tmp_path / "gpt2-like"
    broken.mkdir()
    for item in hf_dir.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    config = json.loads((broken / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(RampError, match="unsupported architecture 'GPT2LMHeadModel'"):
        load_model(broken)


def test_directory_without_weights_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(RampError, match="no \\*.safetensors files"):
        load_model(tmp_path)


def test_a_directory_calibrates_on_the_tokens_of_its_gguf(hf_dir, tmp_path):
    # its vocabulary reaches llama.cpp's tokenizer through a vocabulary-only GGUF: the windows are the ones
    # its reference GGUF would give
    from ramp.measure.calibration import CalibrationSpec
    from ramp.export.gguf_writer import write_reference
    from ramp.models.tokenizer import vocabulary_file

    model = load_model(hf_dir)
    path = tmp_path / "tiny.gguf"
    write_reference(model, path, progress=False)
    spec = CalibrationSpec("austen", 128, 64)
    windows = spec.windows(model)
    assert windows.shape == (2, 64) and vocabulary_file(model) != path
    assert torch.equal(windows, spec.windows(load_model(path)))
