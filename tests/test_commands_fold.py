"""`--fold ALPHA` through the command line on the tiny llama: `ramp profile`, `ramp fold`, and the commands
that quantize (`allocate`, `export`, `run`), whose allocations remember the fold they were made for."""
from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest

from ramp.allocate.allocation import Allocation
from ramp.cli import main
from ramp.files import file_sha256
from ramp.evaluate.llama_eval import exact_token_kld, log_softmax, make_windows, scored_logits
from ramp.measure.sensitivity_table import SensitivityTable
from ramp.models.text import evaluation_text

NORM = "blk.1.attn_norm.weight"


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def assert_one_line_error(code: int, err: str, fragment: str) -> None:
    assert code == 2 and err.startswith("ramp: error:") and len(err.splitlines()) == 1 and fragment in err, err


def tensors_of(path: Path) -> dict[str, np.ndarray]:
    """The tensors of an F32 GGUF; one read, since parsing the 49k-token vocabulary costs seconds."""
    return {t.name: np.asarray(t.data) for t in gguf.GGUFReader(path).tensors}


@pytest.fixture(scope="module")
def folded_profile(tiny_reference, tmp_path_factory):
    """`ramp profile --fold 0.5`, kept small: one format, one short window (the tiny model's 49k vocab dominates)."""
    out = tmp_path_factory.mktemp("fold-profile") / "profile"
    code = main(["profile", str(tiny_reference), "--out", str(out), "--fold", "0.5", "--tokens", "64",
                 "--sensitivity-tokens", "64", "--window", "64", "--formats", "Q4_0"])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def folded_allocation(tiny_reference, folded_profile) -> str:
    """`ramp allocate --fold 0.5` with the table `ramp profile --fold 0.5` measured: both fold to one model."""
    path = folded_profile.parent / "allocation.json"
    assert main(["allocate", "--model", str(tiny_reference), "--budget", "5bpw", "--formats", "Q4_0",
                 "--sensitivity", str(folded_profile / "sensitivity.json"), "--fold", "0.5", "--out", str(path)]) == 0
    return str(path)


def test_profile_fold_writes_embeddings_and_the_folded_models_table(tiny_model, tiny_reference, folded_profile):
    assert sorted(p.name for p in folded_profile.iterdir()) == [
        "embeddings.csv", "embeddings.json", "sensitivity.json", "sensitivity.png"]
    table = SensitivityTable.load(folded_profile / "sensitivity.json")
    assert table.tensors == [spec.name for spec in tiny_model.quantizable] and table.formats == ["Q4_0"]
    assert np.all(table.damage > 0)
    # measured on the folded model, which has its own hash; the embeddings say the same
    assert table.model_sha256 != file_sha256(tiny_reference)
    assert json.loads((folded_profile / "embeddings.json").read_text())["model_sha256"] == table.model_sha256


def test_profile_command_refuses_bad_alpha_before_writing(tiny_reference, tmp_path, capsys):
    out = tmp_path / "profile"
    code, _, err = run_cli(capsys, "profile", str(tiny_reference), "--out", str(out), "--fold", "1.5")
    assert_one_line_error(code, err, "[0, 1]")
    assert not out.exists()


def test_fold_command_writes_the_folded_model(tiny_model, tiny_reference, tmp_path, capsys):
    out = tmp_path / "folded.gguf"
    code, printed, _ = run_cli(capsys, "fold", str(tiny_reference), "--alpha", "0.5", "--out", str(out),
                               "--tokens", "128", "--window", "64")
    assert code == 0 and f"wrote {out}" in printed
    written = tensors_of(out)
    assert list(written) == list(tiny_model.tensors)
    assert not np.allclose(written[NORM], tiny_model.tensors[NORM])
    # token_embd has no input activations to fold; that the function is kept: test_folding.py and llama.cpp below
    assert np.array_equal(written["token_embd.weight"], tiny_model.tensors["token_embd.weight"])


def test_fold_command_refuses_bad_alpha_before_writing(tiny_reference, tmp_path, capsys):
    out = tmp_path / "folded.gguf"
    code, _, err = run_cli(capsys, "fold", str(tiny_reference), "--alpha", "-0.1", "--out", str(out))
    assert_one_line_error(code, err, "[0, 1]")
    assert list(tmp_path.iterdir()) == []


def test_export_fold_writes_folded_norms_and_llama_cpp_agrees_with_unfolded(tiny_model, tiny_reference, tmp_path, capsys):
    out = tmp_path / "folded-F32.gguf"
    code, printed, _ = run_cli(capsys, "export", "--model", str(tiny_reference), "--reference", "F32",
                               "--fold", "0.5", "--out", str(out))
    assert code == 0 and "Scale-Folded with alpha 0.5" in printed
    assert not np.allclose(tensors_of(out)[NORM], tiny_model.tensors[NORM])
    windows = make_windows(tiny_reference, evaluation_text(), n_ctx=64, max_windows=2)
    for folded_logits, unfolded_logits in zip(scored_logits(out, windows, "folded"), scored_logits(tiny_reference, windows, "unfolded")):
        folded, unfolded = log_softmax(folded_logits.astype(np.float64)), log_softmax(unfolded_logits.astype(np.float64))
        # not bit-identical: llama.cpp's KV cache is F16 and folding rescales V (measured here: 2e-3, 1e-7)
        assert np.abs(folded - unfolded).max() < 1e-2
        assert exact_token_kld(unfolded_logits, folded_logits).max() < 1e-6
        assert np.array_equal(folded.argmax(axis=1), unfolded.argmax(axis=1))


def test_allocation_remembers_its_fold_and_export_needs_the_same(folded_allocation, tiny_reference, tmp_path, capsys):
    assert Allocation.load(folded_allocation).fold_alpha == 0.5
    out = tmp_path / "out.gguf"
    code, _, err = run_cli(capsys, "export", "--model", str(tiny_reference), "--allocation", folded_allocation, "--out", str(out))
    assert_one_line_error(code, err, "pass --fold 0.5")
    code, _, err = run_cli(capsys, "export", "--model", str(tiny_reference), "--allocation", folded_allocation,
                           "--fold", "0.3", "--out", str(out))
    assert_one_line_error(code, err, "not alpha 0.3")
    assert not out.exists()

    code, _, _ = run_cli(capsys, "export", "--model", str(tiny_reference), "--allocation", folded_allocation,
                         "--fold", "0.5", "--out", str(out))
    assert code == 0 and out.is_file()


def test_unfolded_allocation_is_refused_by_export_with_fold(tiny_model, tiny_reference, tmp_path, capsys):
    allocation = tmp_path / "allocation.json"
    Allocation({spec.name: "Q8_0" for spec in tiny_model.quantizable}, "test", "-", tiny_model.sha256).save(allocation)
    out = tmp_path / "out.gguf"
    code, _, err = run_cli(capsys, "export", "--model", str(tiny_reference), "--allocation", str(allocation),
                           "--fold", "0.5", "--out", str(out))
    assert_one_line_error(code, err, "drop --fold")
    assert not out.exists()


def test_run_refuses_bad_alpha_before_any_work(tiny_reference, tmp_path, capsys):
    code, _, err = run_cli(capsys, "run", "--model", str(tiny_reference), "--fold", "2", "--out-dir", str(tmp_path))
    assert_one_line_error(code, err, "[0, 1]")
    assert list(tmp_path.iterdir()) == []
