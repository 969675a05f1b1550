"""`ramp run` end to end on the embedded SmolLM2-135M (few short windows), and its one-line errors."""
from __future__ import annotations

import json
import os

import gguf
import pytest

from ramp.allocate.allocation import Allocation
from ramp.cli import main
from ramp.export.gguf_writer import predict_file_size, write_reference
from ramp.kernels.formats import resolve_format
from tiny_gguf import tiny_llama


@pytest.mark.slow
def test_run_on_embedded_model(smollm2, tmp_path, capsys):
    """Without --model the job runs on the embedded model's off-grid twin, its own reference: no format can write
    the source's grid back, so no row is starred."""
    from ramp.evaluate.twin import cached_twin, twin_record
    from ramp.models import load_model

    # the weight-error stand-in keeps this under CI's budget; the measured-KLD path is tested on the tiny model
    out_dir = tmp_path / "new" / "run"  # created when missing
    code = main(["run", "--damage", "weight-error", "--formats", "Q4_0,Q6_K,Q8_0", "--preset", "Q4_K_M",
                 "--ctx", "128", "--max-windows", "2", "--out-dir", str(out_dir)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "weight-error stand-in" in printed and "126 scored tokens" in printed and "austen text" in printed
    assert "imatrix: " in printed and (out_dir / "imatrix.gguf").is_file()
    source = smollm2
    twin_path = cached_twin(source)  # made by the run: found in the cache now
    assert f"model: the off-grid {twin_record(twin_path).describe()}" in printed
    job = json.loads((out_dir / "job.json").read_text())
    assert job["model"] is None and job["model_sha256"] == source.sha256 and job["twin"]["sigma"] == 0.25

    results = {row["name"]: row for row in json.loads((out_dir / "results.json").read_text())}
    assert set(results) == {"F32 twin (reference)", "Q4_K_M imatrix", "ramp ilp (stand-in) imatrix"}
    ours, preset, reference = results["ramp ilp (stand-in) imatrix"], results["Q4_K_M imatrix"], results["F32 twin (reference)"]
    assert ours["file_bytes"] <= preset["file_bytes"] < reference["file_bytes"]  # the budget is Q4_K_M's bytes
    assert reference["path"] == str(twin_path)
    for row in (ours, preset):
        assert 0 < row["kld_mean"] < 1 and 0.5 < row["top1_agreement"] < 1
        assert 1 < reference["perplexity"] < row["perplexity"] < 2 * reference["perplexity"]
        assert row["imatrix"] is True and row["text"] == "austen" and row["kld_p99"] > row["kld_mean"]
        # the twin's checkpoint is its F32 file: every row is below it, and a claim
        assert row["at_or_above_source"] is False and 0 <= row["source_match"] < 1e-4
    assert reference["source_match"] == 1.0 and reference["imatrix"] is None
    assert "*" not in printed.split("scored tokens")[-1]

    # the file holds exactly the allocated types, at exactly the predicted size
    model = load_model(twin_path)
    allocation = Allocation.load(out_dir / "allocation.json")
    written = {tensor.name: tensor.tensor_type.name for tensor in gguf.GGUFReader(out_dir / "ramp.gguf").tensors}
    for spec in model.quantizable:
        assert written[spec.name] == resolve_format(allocation.formats[spec.name], spec.row_length).name
    assert "output.weight" not in written  # tied embeddings stay tied
    assert os.path.getsize(out_dir / "ramp.gguf") == predict_file_size(model, allocation.formats) == ours["file_bytes"]


def test_run_with_measured_sensitivity(tiny_reference, tmp_path, capsys):
    code = main(["run", "--model", str(tiny_reference), "--budget", "5.5bpw", "--formats", "Q4_0,Q8_0", "--calibration-tokens", "64",
                 "--preset", "Q8_0", "--ctx", "64", "--max-windows", "1", "--out-dir", str(tmp_path), "--no-imatrix"])
    assert code == 0
    assert "KLD sensitivity measured on 64 tokens of austen in windows of 64" in capsys.readouterr().out
    allocation = Allocation.load(tmp_path / "allocation.json")
    assert allocation.method == "ilp" and allocation.extra["damage"] == "kld"
    assert allocation.extra["data_bytes"] <= allocation.extra["budget_bytes"]
    assert len(set(allocation.formats.values())) > 1  # a mixed allocation, not one format
    rows = json.loads((tmp_path / "results.json").read_text())
    assert sorted(row["name"] for row in rows) == ["F32 reference", "Q8_0", "ramp ilp"]
    assert [row["imatrix"] for row in rows if row["name"] != "F32 reference"] == [False, False]
    assert allocation.extra["imatrix"] is None and not (tmp_path / "imatrix.gguf").exists()


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory, tiny_reference):
    folder = tmp_path_factory.mktemp("bad")
    unmappable = folder / "gptj.gguf"
    write_reference(tiny_llama(arch="gptj"), unmappable, progress=False)
    truncated = folder / "truncated.gguf"
    data = tiny_reference.read_bytes()
    truncated.write_bytes(data[: len(data) * 2 // 3])
    return {"unmappable": unmappable, "truncated": truncated, "tiny": tiny_reference, "missing": folder / "missing.gguf"}


@pytest.mark.parametrize(
    ("model", "extra", "message"),
    [
        ("missing", [], "does not exist"),
        ("unmappable", [], "unsupported architecture 'gptj'"),
        ("truncated", [], "truncated"),
        ("tiny", ["--budget", "1bpw"], "outside the feasible range"),
        ("tiny", ["--budget", "17bpw"], "outside the feasible range"),
        ("tiny", ["--budget", "Q9_K_Z"], "unknown llama.cpp preset"),
        ("tiny", ["--out-dir", "{a_file}/sub"], "cannot create output directory"),  # a missing one is created
    ],
)
def test_run_errors_are_one_line_and_leave_no_file(bad_models, tmp_path, capsys, model, extra, message):
    extra = [arg.format(a_file=bad_models["truncated"]) for arg in extra]
    args = ["run", "--model", str(bad_models[model]), "--max-windows", "1", *extra]
    if "--out-dir" not in extra:
        args += ["--out-dir", str(tmp_path)]
    code = main(args)
    assert code != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("ramp: error:") and message in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_presets_command_runs_llama_cpp_quantizer(tiny_reference, tmp_path, capsys):
    code = main(["presets", "--reference", str(tiny_reference), "--preset", "Q8_0", "--preset", "q4_k_m",
                 "--out-dir", str(tmp_path)])
    assert code == 0
    q8 = gguf.GGUFReader(tmp_path / f"{tiny_reference.stem}-Q8_0.gguf")
    assert q8.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0
    assert {t.tensor_type.name for t in q8.tensors if len(t.shape) == 2} == {"Q8_0"}
    q4 = gguf.GGUFReader(tmp_path / f"{tiny_reference.stem}-Q4_K_M.gguf")
    assert q4.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q4_K_M
    assert "Q4_K" in {t.tensor_type.name for t in q4.tensors}
    assert capsys.readouterr().out.count("wrote") == 2


def test_presets_command_rejects_unknown_preset(tiny_reference, tmp_path, capsys):
    code = main(["presets", "--reference", str(tiny_reference), "--preset", "Q4_K_X", "--out-dir", str(tmp_path)])
    assert code != 0
    assert "unknown llama.cpp preset 'Q4_K_X'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
