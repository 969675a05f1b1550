"""`ramp twin`: through llama.cpp the twin computes the source's function (KLD on held-out Austen text), its
weights lie on no ladder format's grid, and it is a model of its own that ramp's commands take.

Three architectures: SmolLM2 (llama, tied output, GQA 9/3), Gemma 3 270M (gemma3: QK-norms, post-norms, GQA
4/1) and a seeded random qwen2 (q/k/v biases, untied output, GQA 4/2) stored as a quantized checkpoint.
"""
from __future__ import annotations

import gguf
import numpy as np
import pytest

from ramp.cli import main
from ramp.evaluate.source_grid import source_match_share
from ramp.evaluate.twin import twin_record, write_twin
from ramp.export.gguf_writer import write_gguf
from ramp.files import file_sha256
from ramp.measure.ladder import DEFAULT_LADDER
from ramp.measure.twin import twin_model
from ramp.models import load_model
from ramp.models.model import ORIGIN_KEY
from tiny_gguf import N_EMBD, tiny_llama

QWEN_SEED = 7
# A block's largest weight comes back exactly when the float16 scale a format derives from it happens to be
# exact, about one 32-weight block in 2^13 (4e-6 of the weights), as for weights never quantized; a grid the
# twin had kept would come back whole (the source's own format: 100%).
CHANCE_SHARE = 2e-5
KLD_WITH_NOISE, KLD_WITHOUT_NOISE = 1e-3, 1e-5


def tiny_qwen2_checkpoint(path) -> None:
    """A seeded random qwen2 with q/k/v biases and an untied output, written as a quantized checkpoint
    (K-quants, Q5_0 where rows are not 256-wide, a Q8_0 embedding) like the ones users download."""
    print(f"tiny qwen2 seed {QWEN_SEED}")
    model = tiny_llama(QWEN_SEED, arch="qwen2")
    rng = np.random.default_rng(QWEN_SEED)
    for block in range(model.n_blocks):
        for role in ("attn_q", "attn_k", "attn_v"):
            rows = model.tensors[f"blk.{block}.{role}.weight"].shape[0]
            model.tensors[f"blk.{block}.{role}.bias"] = rng.normal(0, 0.1, rows).astype(np.float32)
    n_vocab = model.tensors["token_embd.weight"].shape[0]
    model.tensors["output.weight"] = rng.normal(0, 0.05, (n_vocab, N_EMBD)).astype(np.float32)
    model.quantizable.append(type(model.quantizable[0])("output.weight", (n_vocab, N_EMBD), "output", None))
    formats = {spec.name: "Q4_K" for spec in model.quantizable} | {"token_embd.weight": "Q8_0", "output.weight": "Q6_K"}
    write_gguf(model, formats, path, progress=False)


@pytest.fixture(scope="module")
def qwen2_source(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen2") / "qwen2-q4_k.gguf"
    tiny_qwen2_checkpoint(path)
    return load_model(path)


@pytest.fixture(scope="module")
def qwen2_twin(qwen2_source, tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen2-twin") / "twin.gguf"
    return path, write_twin(qwen2_source, path, seed=3, kld_windows=2, progress=False)


def check_off_grid(twin_path) -> None:
    """Every ladder format re-quantizing every tensor of the twin writes back no more than chance."""
    twin = load_model(twin_path)
    for fmt in DEFAULT_LADDER:
        path = twin_path.with_name(f"requantized-{fmt}.gguf")
        write_gguf(twin, {spec.name: fmt for spec in twin.quantizable}, path, progress=False)
        share = source_match_share(path, twin)
        print(f"{fmt}: {share:.2e} of the twin's weights written back bit for bit")
        assert share < CHANCE_SHARE, fmt
        path.unlink()


def test_qwen2_twin_keeps_the_function_and_records_itself(qwen2_source, qwen2_twin, tmp_path):
    path, record = qwen2_twin
    print(f"qwen2 twin: {record.describe()}")
    assert record.kld_to_source < KLD_WITH_NOISE and record.kld_tokens == 2 * 255
    assert (record.source_sha256, record.seed, record.sigma) == (qwen2_source.origin_sha256, 3, 0.25)
    assert twin_record(path) == record
    twin = load_model(path)
    # its own checkpoint: not the source's origin, and the origin ramp writes into every file made from it
    assert twin.origin_sha256 not in ("", qwen2_source.origin_sha256)
    assert str(gguf.GGUFReader(path).fields[ORIGIN_KEY].contents()) == twin.origin_sha256
    for block in range(qwen2_source.n_blocks):
        p = f"blk.{block}."
        # q/k biases are added after input-channel scaling; v's rescales with its rows
        np.testing.assert_array_equal(twin.tensors[p + "attn_q.bias"], qwen2_source.tensors[p + "attn_q.bias"])
        assert not np.allclose(twin.tensors[p + "attn_v.bias"], qwen2_source.tensors[p + "attn_v.bias"])
    for spec in qwen2_source.quantizable:
        assert not np.allclose(twin.tensors[spec.name], qwen2_source.tensors[spec.name]), spec.name

    quiet = tmp_path / "no-noise.gguf"
    exact = write_twin(qwen2_source, quiet, seed=3, noise=0.0, kld_windows=2, progress=False)
    print(f"qwen2 twin without noise: {exact.describe()}")
    assert exact.kld_to_source < KLD_WITHOUT_NOISE and exact.noise == 0.0
    np.testing.assert_array_equal(load_model(quiet).tensors["token_embd.weight"], qwen2_source.tensors["token_embd.weight"])


def test_qwen2_twin_is_off_every_ladder_grid(qwen2_source, qwen2_twin, tmp_path):
    path, _ = qwen2_twin
    check_off_grid(path)
    # the measure sees a grid that is there: the source's Q8_0 embedding re-quantized in Q8_0 comes back whole
    own = tmp_path / "source-again.gguf"
    write_gguf(qwen2_source, {"token_embd.weight": "Q8_0"}, own, progress=False)
    embedding = qwen2_source.tensors["token_embd.weight"].size / qwen2_source.n_quantizable_params
    assert source_match_share(own, qwen2_source) >= embedding > 0.4


def test_same_seed_same_bytes_other_seed_other_twin(qwen2_source, qwen2_twin, tmp_path):
    path, _ = qwen2_twin
    again = tmp_path / "again.gguf"
    assert main(["twin", str(qwen2_source.source_path), "--out", str(again), "--seed", "3", "--kld-windows", "2"]) == 0
    assert file_sha256(again) == file_sha256(path)
    other = twin_model(qwen2_source, seed=4)
    assert other.sha256 != load_model(path).origin_sha256
    assert not np.array_equal(other.tensors["blk.0.ffn_up.weight"], load_model(path).tensors["blk.0.ffn_up.weight"])


def test_twin_is_its_own_reference(qwen2_twin, tmp_path, capsys):
    """A ramp command takes the twin as --model and measures files made from it against it."""
    path, _ = qwen2_twin
    quantized = tmp_path / "twin-q4_0.gguf"
    allocation = tmp_path / "alloc.json"
    assert main(["allocate", "--model", str(path), "--method", "uniform", "--budget", "8bpw", "--out", str(allocation)]) == 0
    assert main(["export", "--model", str(path), "--allocation", str(allocation), "--out", str(quantized)]) == 0
    capsys.readouterr()
    assert main(["eval", str(quantized), "--reference", str(path), "--max-windows", "1"]) == 0
    assert "twin-q4_0" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.real_model
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_real_model_twin_keeps_the_function_and_leaves_the_grid(name, tmp_path):
    source = load_model(name)
    twin_path = tmp_path / f"{name}-twin.gguf"
    record = write_twin(source, twin_path, kld_windows=2, progress=False)
    print(f"{name}: {record.describe()}")
    assert record.kld_to_source < KLD_WITH_NOISE and record.source_sha256 == source.origin_sha256
    exact = write_twin(source, tmp_path / f"{name}-no-noise.gguf", noise=0.0, kld_windows=2, progress=False)
    print(f"{name} without noise: {exact.describe()}")
    assert exact.kld_to_source < KLD_WITHOUT_NOISE
    (tmp_path / f"{name}-no-noise.gguf").unlink()
    del source
    check_off_grid(twin_path)


def test_bad_settings_are_one_line_errors(tmp_path, capsys):
    out = tmp_path / "twin.gguf"
    assert main(["twin", "--out", str(out), "--sigma", "0"]) == 2
    assert main(["twin", "--out", str(out), "--noise", "-1"]) == 2
    assert main(["twin", "--out", str(out), "--seed", "-3"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(line.startswith("ramp: error: --") for line in errors)
    assert not out.exists()

