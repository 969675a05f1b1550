"""GGUF export: exact types and sizes, verbatim metadata, files llama.cpp loads and runs."""
from __future__ import annotations

import os

import gguf
import numpy as np
import pytest

from ramp.allocate.allocation import Allocation
from ramp.cli import main
from ramp.export.gguf_writer import predict_file_size, reference_formats, write_allocation, write_gguf
from ramp.kernels import quantize
from ramp.kernels.formats import resolve_format

# One format per quantizable tensor of the tiny model, cycling through K-quants, legacy quants and floats
# so every writer path and llama.cpp's 256-block fallback (320-wide ffn_down rows) appear in one file.
MIXED = ("Q4_K", "Q6_K", "Q3_K", "Q8_0", "Q5_K", "Q4_0", "F16", "Q2_K", "Q5_0", "IQ4_NL", "Q5_1", "Q4_1", "F32")


@pytest.fixture(scope="module")
def mixed_allocation(tiny_model) -> Allocation:
    formats = {spec.name: MIXED[i % len(MIXED)] for i, spec in enumerate(tiny_model.quantizable)}
    return Allocation(formats, method="test", budget="-", model_sha256=tiny_model.sha256)


@pytest.fixture(scope="module")
def mixed_file(tiny_model, mixed_allocation, tmp_path_factory):
    path = tmp_path_factory.mktemp("mixed") / "mixed.gguf"
    return path, write_allocation(tiny_model, mixed_allocation, path, progress=False)


@pytest.mark.parametrize("dtype", ["F32", "F16"])
def test_reference_size_is_predicted_exactly(tiny_model, tmp_path, dtype):
    path = tmp_path / f"ref-{dtype}.gguf"
    n_bytes = write_gguf(tiny_model, reference_formats(tiny_model, dtype), path, progress=False)
    assert n_bytes == os.path.getsize(path) == predict_file_size(tiny_model, reference_formats(tiny_model, dtype))
    reader = gguf.GGUFReader(path)
    for tensor in reader.tensors:
        expected = dtype if tensor.name in reference_formats(tiny_model, dtype) else "F32"
        assert tensor.tensor_type.name == expected
    np.testing.assert_array_equal(
        np.asarray(reader.get_tensor(0).data).reshape(tiny_model.tensors["token_embd.weight"].shape),
        tiny_model.tensors["token_embd.weight"].astype({"F32": np.float32, "F16": np.float16}[dtype]),
    )


def test_mixed_file_has_assigned_types_bytes_and_size(tiny_model, mixed_allocation, mixed_file):
    path, n_bytes = mixed_file
    assert n_bytes == os.path.getsize(path) == predict_file_size(tiny_model, mixed_allocation.formats)
    reader = gguf.GGUFReader(path)
    written = {tensor.name: tensor for tensor in reader.tensors}
    assert list(written) == list(tiny_model.tensors)  # every tensor, in the source order
    fell_back = 0
    for spec in tiny_model.quantizable:
        requested = mixed_allocation.formats[spec.name]
        expected = resolve_format(requested, spec.row_length).name
        fell_back += expected != requested
        tensor = written[spec.name]
        assert tensor.tensor_type.name == expected, spec.name
        assert tuple(int(d) for d in reversed(tensor.shape)) == spec.shape
        if expected not in ("F32", "F16"):
            # the bytes are llama.cpp's own quantization of the weights
            assert bytes(tensor.data) == quantize(tiny_model.tensors[spec.name], expected, backend="ggml").tobytes()
    assert fell_back > 0
    for name in ("blk.0.attn_norm.weight", "output_norm.weight"):
        assert written[name].tensor_type.name == "F32"


def test_metadata_is_copied_and_file_type_set(tiny_model, mixed_file):
    reader = gguf.GGUFReader(mixed_file[0])
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.pre", "llama.rope.freq_base"):
        assert reader.fields[key].contents() == tiny_model.metadata[key].value
    # the format holding most parameters names the file type; token_embd (Q4_K) dominates the tiny model
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q4_K_M


def test_written_file_loads_in_llama_cpp_and_generates(mixed_file):
    from ramp.evaluate.llama_eval import open_llama

    llm = open_llama(mixed_file[0], n_ctx=64)
    try:
        completion = llm.create_completion("The Python language", max_tokens=8, temperature=0.0)
    finally:
        llm.close()
    assert completion["usage"]["completion_tokens"] > 0
    assert isinstance(completion["choices"][0]["text"], str)


def test_export_command_writes_gguf_and_tensor_type_file(tiny_reference, mixed_allocation, tmp_path, capsys):
    allocation_path = tmp_path / "allocation.json"
    mixed_allocation.save(allocation_path)
    out, types = tmp_path / "out.gguf", tmp_path / "types.txt"
    code = main(["export", "--model", str(tiny_reference), "--allocation", str(allocation_path),
                 "--out", str(out), "--tensor-type-file", str(types)])
    assert code == 0
    reader = gguf.GGUFReader(out)
    written = {tensor.name: tensor.tensor_type.name for tensor in reader.tensors}
    lines = types.read_text().splitlines()
    assert len(lines) == len(mixed_allocation.formats)
    assert lines[0] == f"^token_embd\\.weight$={mixed_allocation.formats['token_embd.weight'].lower()}"
    assert written["token_embd.weight"] == mixed_allocation.formats["token_embd.weight"]
    assert f"wrote {out}" in capsys.readouterr().out


def test_export_creates_missing_directories(tiny_reference, tmp_path, capsys):
    out = tmp_path / "new" / "nested" / "out.gguf"
    code = main(["export", "--model", str(tiny_reference), "--reference", "F16", "--out", str(out)])
    assert code == 0
    assert {t.tensor_type.name for t in gguf.GGUFReader(out).tensors if len(t.shape) == 2} == {"F16"}
    assert sorted(path.name for path in out.parent.iterdir()) == ["out.gguf"]  # no temporary file left beside it


def test_export_under_a_file_fails_before_work(tiny_reference, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    code = main(["export", "--model", str(tiny_reference), "--reference", "F16", "--out", str(a_file / "out.gguf")])
    assert code != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("ramp: error: cannot create output directory") and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == [a_file]


def test_export_rejects_allocation_of_another_model(tiny_reference, tmp_path, capsys):
    allocation_path = tmp_path / "allocation.json"
    Allocation({"blk.99.attn_q.weight": "Q4_K"}, "test", "-", "").save(allocation_path)
    out = tmp_path / "out.gguf"
    code = main(["export", "--model", str(tiny_reference), "--allocation", str(allocation_path), "--out", str(out)])
    assert code != 0
    assert "another model" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["allocation.json"]
