"""`ramp imatrix` against llama.cpp's own `llama-imatrix` on the embedded model and the same tokens, and
`llama-quantize --imatrix` reading ramp's file and writing exactly the bytes ramp's export writes with it."""
from __future__ import annotations

import numpy as np
import pytest

from ramp.cli import main
from ramp.errors import RampError
from ramp.export.gguf_writer import cached_reference
from ramp.measure.calibration import CalibrationSpec
from ramp.measure.imatrix import ImportanceMatrix, compute_imatrix
from ramp.kernels import quantize
from ramp.llama_tools import run_tool
from ramp.models import load_model
from ramp.models.gguf import read_gguf
from ramp.models.text import calibration_text
from tiny_gguf import tiny_llama

N_CTX, N_CHUNKS = 256, 4


@pytest.fixture(scope="module")
def model(smollm2):
    return smollm2


@pytest.fixture(scope="module")
def reference(model):
    return cached_reference(model, progress=False)


@pytest.fixture(scope="module")
def ramp_matrix(model):
    return compute_imatrix(model, CalibrationSpec("austen", N_CTX * N_CHUNKS, N_CTX).windows(model), "austen", progress=False)


@pytest.fixture(scope="module")
def llama_matrix(reference, tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama-imatrix")
    # a prefix of the calibration text tokenizes to the same first chunks as the whole text
    (folder / "calibration.txt").write_text(calibration_text("austen")[:60_000], encoding="utf-8")
    run_tool("llama-imatrix", ["-m", str(reference), "-f", str(folder / "calibration.txt"), "-c", str(N_CTX),
                               "--chunks", str(N_CHUNKS), "--no-ppl", "-t", "2", "-o", str(folder / "imatrix.gguf")])
    return ImportanceMatrix.load(folder / "imatrix.gguf")


def test_ramp_imatrix_matches_llama_imatrix(ramp_matrix, llama_matrix, model):
    assert sorted(ramp_matrix.sums) == sorted(llama_matrix.sums)  # blk.* only: no token_embd, no output
    assert len(ramp_matrix.sums) == 7 * model.n_blocks
    assert ramp_matrix.counts == llama_matrix.counts == {name: N_CTX * N_CHUNKS for name in ramp_matrix.sums}
    worst = max(
        float(np.abs(ramp_matrix.importance(name) - llama_matrix.importance(name)).max() / llama_matrix.importance(name).max())
        for name in ramp_matrix.sums
    )
    print(f"largest per-tensor difference of in_sum2/counts, relative to the tensor's largest value: {worst:.2e}")
    # float32 forwards on different kernels (torch vs ggml, ggml rounds some intermediates) drift ~1e-4
    assert worst < 2e-3


def test_llama_quantize_reads_ramps_imatrix_and_agrees_with_ramps_quantizer(ramp_matrix, reference, model, tmp_path):
    path = ramp_matrix.save(tmp_path / "ramp-imatrix.gguf")
    run_tool("llama-quantize", ["--imatrix", str(path), str(reference), str(tmp_path / "q.gguf"), "Q3_K_M", "2"])
    importance = ramp_matrix.importances(model)
    checked = 0
    for tensor in read_gguf(tmp_path / "q.gguf").tensors:
        if tensor.name not in importance or tensor.name.split(".")[1] not in ("0", "7", "29"):
            continue
        ours = quantize(model.tensors[tensor.name], tensor.tensor_type.name, importance[tensor.name], backend="ggml")
        assert np.array_equal(np.asarray(ours).reshape(-1), np.asarray(tensor.data).reshape(-1).view(np.uint8)), tensor.name
        checked += 1
    assert checked == 21
    # and the importance really changed the result: without it the same tensor quantizes differently
    name = "blk.0.ffn_down.weight"
    plain = quantize(model.tensors[name], "Q4_0", None, backend="ggml")
    weighted = quantize(model.tensors[name], "Q4_0", importance[name], backend="ggml")
    assert not np.array_equal(plain, weighted)


def test_imatrix_round_trips_and_command_writes_it(ramp_matrix, tmp_path, capsys):
    path = ramp_matrix.save(tmp_path / "m.gguf")
    again = ImportanceMatrix.load(path)
    assert again.counts == ramp_matrix.counts and again.chunk_count == N_CHUNKS and again.chunk_size == N_CTX
    assert all(np.array_equal(again.importance(n), ramp_matrix.importance(n)) for n in ramp_matrix.sums)
    assert main(["imatrix", "--out", str(tmp_path / "cli.gguf"), "--tokens", "512", "--window", "256"]) == 0
    assert "210 tensors, 2 chunks of 256 tokens (austen)" in capsys.readouterr().out
    assert ImportanceMatrix.load(tmp_path / "cli.gguf").chunk_count == 2


def test_imatrix_of_another_model_is_refused(ramp_matrix):
    with pytest.raises(RampError, match="computed on another model"):
        ramp_matrix.importances(tiny_llama())


def test_damaged_imatrix_cache_entry_is_computed_again(tiny_reference, capsys):
    from ramp.measure.imatrix import cached_imatrix

    tiny = load_model(tiny_reference)
    calibration = CalibrationSpec("austen", 128, 64)
    first, path = cached_imatrix(tiny, calibration, progress=False)
    path.write_bytes(bytes(len(path.read_bytes())))  # same length, all zeros: only the checksum can tell
    again, again_path = cached_imatrix(tiny, calibration, progress=False)
    assert again_path == path and "is damaged" in capsys.readouterr().err
    assert all(np.array_equal(again.importance(n), first.importance(n)) for n in first.sums)
    assert ImportanceMatrix.load(path).counts == first.counts


def test_presets_from_the_same_imatrix_in_different_folders_are_the_same_bytes(tiny_reference, tmp_path):
    import shutil

    from ramp.evaluate.presets import quantize_preset
    from ramp.files import file_sha256
    from ramp.measure.imatrix import cached_imatrix

    _, cached = cached_imatrix(load_model(tiny_reference), CalibrationSpec("austen", 128, 64), progress=False)
    outputs = []
    for folder in ("job-a", "elsewhere/job-b"):
        (tmp_path / folder).mkdir(parents=True)
        copy = shutil.copyfile(cached, tmp_path / folder / "imatrix.gguf")
        outputs.append(quantize_preset(tiny_reference, "Q4_K_M", tmp_path / folder / "Q4_K_M.gguf", copy))
    assert outputs[0].read_bytes() == outputs[1].read_bytes()
    # llama-quantize recorded the matrix by its content, not by either folder
    assert read_gguf(outputs[0]).fields["quantize.imatrix.file"].value == f"imatrix-{file_sha256(cached)[:16]}.gguf"
    with pytest.raises(RampError, match="importance matrix .*missing.gguf does not exist"):
        quantize_preset(tiny_reference, "Q4_K_M", tmp_path / "never.gguf", tmp_path / "missing.gguf")
    assert not (tmp_path / "never.gguf").exists()
