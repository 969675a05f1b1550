"""ramp under bad input, corrupt caches and interrupted runs (issue 14; the table is docs/RELIABILITY.md).

Every case is reproduced on the tiny llama of tests/tiny_gguf.py and asserts what a user sees: one
`ramp: error:` line and a non-zero exit where the input is wrong, a rebuilt entry where the cache is wrong,
and never a changed or lost earlier output. Interruptions, size limits and FIFOs run ramp in a child
process, as a user's shell would."""
from __future__ import annotations

import json
import os
import resource
import signal
import stat
import subprocess
import sys
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from ramp.allocate.allocation import Allocation
from ramp.allocate.budget import Budget
from ramp.cache_entries import remove_entry, seal_path
from ramp.cli import main
from ramp.errors import RampError
from ramp.export.gguf_writer import cached_reference, write_gguf, write_reference
from ramp.files import check_output_path
from ramp.kernels import DequantCache
from ramp.evaluate.llama_eval import make_windows, reference_logprobs
from ramp.models.model import MetadataValue
from ramp.models import load_model
from ramp.measure.sensitivity import measure_sensitivity
from ramp.measure.sensitivity_table import SensitivityTable
from ramp.models.text import evaluation_text
from tiny_gguf import tiny_llama


def one_error(capsys) -> str:
    """The `ramp: error:` line that ends the command's stderr, asserted to be the only one and no traceback
    (llama.cpp's own log lines and progress bars may come before it)."""
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert "Traceback" not in err and lines and lines[-1].startswith("ramp: error:"), err
    assert sum(line.startswith("ramp: error:") for line in lines) == 1, err
    return lines[-1]


def last_line(stderr: bytes) -> str:
    """The last line a child ramp wrote (progress bars redraw with carriage returns before it)."""
    lines = [line for line in stderr.decode().replace("\r", "\n").splitlines() if line.strip()]
    assert "Traceback" not in stderr.decode(), stderr.decode()
    return lines[-1]


def ramp_child(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ramp.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kwargs)


def write_q8(model, path: Path) -> Path:
    """A small file of `model` (the tiny embedding is 50 MB in F32, 13 MB in Q8_0)."""
    write_gguf(model, {spec.name: "Q8_0" for spec in model.quantizable}, path, progress=False)
    return path


def random_tokens(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 49152, (2, 32), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def other_models(tmp_path_factory) -> dict[str, Path]:
    """Models that are not the tiny reference's: other weights, other blocks, another vocabulary size."""
    folder = tmp_path_factory.mktemp("others")
    base = tiny_llama()
    one_block = replace(
        base, n_blocks=1, tensors={k: v for k, v in base.tensors.items() if not k.startswith("blk.1.")},
        quantizable=[spec for spec in base.quantizable if spec.block != 1], sha256="tiny-one-block",
        metadata={**base.metadata, "llama.block_count": MetadataValue(1, gguf.GGUFValueType.UINT32)},
    )
    vocab = 49000
    tokens = base.metadata["tokenizer.ggml.tokens"]
    small_vocab = replace(
        base, tensors={**base.tensors, "token_embd.weight": base.tensors["token_embd.weight"][:vocab]},
        quantizable=[replace(spec, shape=(vocab, spec.shape[1])) if spec.name == "token_embd.weight" else spec
                     for spec in base.quantizable],
        metadata={**base.metadata, "tokenizer.ggml.tokens": replace(tokens, value=tokens.value[:vocab])},
        sha256="tiny-small-vocabulary",
    )
    return {
        "weights": write_q8(tiny_llama(seed=1), folder / "seed1.gguf"),
        "blocks": write_q8(one_block, folder / "one-block.gguf"),
        "vocabulary": write_q8(small_vocab, folder / "small-vocab.gguf"),
    }


@pytest.fixture
def allocation_file(tiny_reference, tmp_path) -> Path:
    """An allocation for the tiny reference: uniform Q8_0, no table needed."""
    path = tmp_path / "allocation.json"
    assert main(["allocate", "--model", str(tiny_reference), "--method", "uniform", "--budget", "8.5bpw",
                 "--out", str(path)]) == 0
    return path


# --- 1. an output that is an input, or two outputs that are one file --------------------------------------


@pytest.mark.parametrize("clash", ["--tensor-type-file", "--model", "--allocation", "--model via ../"])
def test_export_refuses_an_output_that_is_an_input_or_another_output(tiny_reference, allocation_file, tmp_path,
                                                                     capsys, clash):
    model = tmp_path / "model.gguf"
    os.link(tiny_reference, model)  # a second name for the fixture: an overwrite would not reach the original
    out = {"--tensor-type-file": tmp_path / "a.gguf", "--model": model, "--allocation": allocation_file,
           "--model via ../": tmp_path / "sub" / ".." / "model.gguf"}[clash]
    (tmp_path / "sub").mkdir()
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}
    capsys.readouterr()
    args = ["export", "--model", str(model), "--allocation", str(allocation_file), "--out", str(out)]
    code = main(args + (["--tensor-type-file", str(out)] if clash == "--tensor-type-file" else []))
    assert code == 2
    err = one_error(capsys)
    assert ("same file" in err) if clash == "--tensor-type-file" else ("input" in err and "destroy" in err)
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()} == before


# --- 2. a dequantized-weights cache entry overwritten with bytes of the same length ------------------------


def test_corrupt_dequant_entry_is_rebuilt_and_sensitivity_stays_finite(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("RAMP_CACHE", str(tmp_path))
    name = "blk.0.attn_v.weight"
    clean = DequantCache(tiny_model, backend="ggml").get(name, "Q4_K").clone()
    table = measure_sensitivity(tiny_model, random_tokens(), ["Q4_K"], progress=False, use_cache=False)
    entries = sorted((tmp_path / "dequant").rglob("*.bin"))
    assert len(entries) == len(tiny_model.quantizable)
    originals = {entry: entry.read_bytes() for entry in entries}
    rng = np.random.default_rng(0)
    for entry in entries:
        entry.write_bytes(rng.bytes(entry.stat().st_size))  # same length: a size check cannot see it

    assert torch.equal(DequantCache(tiny_model, backend="ggml").get(name, "Q4_K"), clean)
    again = measure_sensitivity(tiny_model, random_tokens(), ["Q4_K"], progress=False, use_cache=False)
    assert np.isfinite(again.damage).all()
    np.testing.assert_allclose(again.damage, table.damage, rtol=1e-6)
    assert all(entry.read_bytes() == data for entry, data in originals.items())  # rebuilt, byte for byte


# --- 3. eval against a reference of another model ---------------------------------------------------------


@pytest.mark.parametrize("other", ["weights", "blocks", "vocabulary"])
def test_eval_refuses_a_file_of_another_model(other_models, tiny_reference, tmp_path, capsys, monkeypatch, other):
    monkeypatch.setenv("RAMP_CACHE", str(tmp_path / "cache"))
    results = tmp_path / "results.json"
    code = main(["eval", str(other_models[other]), "--reference", str(tiny_reference), "--ctx", "64",
                 "--max-windows", "1", "--json", str(results)])
    assert code == 2
    assert "is not a model of the reference" in one_error(capsys)
    assert not results.exists() and not (tmp_path / "cache" / "reference_logits").exists()  # refused before any pass


# --- 4. an allocation exported onto another model with the same tensor names ------------------------------


def test_export_refuses_an_allocation_made_for_another_checkpoint(other_models, allocation_file, tmp_path, capsys):
    out = tmp_path / "out.gguf"
    code = main(["export", "--model", str(other_models["weights"]), "--allocation", str(allocation_file), "--out", str(out)])
    assert code == 2
    assert "made for another model" in one_error(capsys)
    assert not out.exists()


def test_an_allocation_follows_its_checkpoint_into_other_files(tiny_reference, allocation_file, tmp_path, capsys):
    # the same checkpoint written as F16 is another file but the same model: the allocation applies
    f16 = tmp_path / "f16.gguf"
    assert main(["export", "--model", str(tiny_reference), "--reference", "F16", "--out", str(f16)]) == 0
    assert main(["export", "--model", str(f16), "--allocation", str(allocation_file), "--out", str(tmp_path / "q.gguf")]) == 0


# --- 5. corrupt or truncated cache entries are computed again ---------------------------------------------


@pytest.mark.parametrize("damage", ["garbage", "same-length digits", "NaN, unsealed"])
def test_corrupt_sensitivity_cache_is_measured_again(tiny_model, tmp_path, monkeypatch, damage):
    monkeypatch.setenv("RAMP_CACHE", str(tmp_path))
    first = measure_sensitivity(tiny_model, random_tokens(), ["Q8_0"], progress=False)
    [entry] = (tmp_path / "sensitivity").glob("*[0-9a-f].json")
    text = entry.read_text()
    if damage == "garbage":
        entry.write_text(text[: len(text) // 2])
    elif damage == "same-length digits":
        entry.write_text(text.replace("e-", "e+", 1))
    else:
        data = json.loads(text)
        data["damage"][0][0] = float("nan")
        entry.write_text(json.dumps(data))
        seal_path(entry).unlink()
    again = measure_sensitivity(tiny_model, random_tokens(), ["Q8_0"], progress=False)
    np.testing.assert_array_equal(again.damage, first.damage)
    np.testing.assert_array_equal(SensitivityTable.load(entry).damage, first.damage)  # the entry is good again


def test_corrupt_partial_sweep_starts_over(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("RAMP_CACHE", str(tmp_path))
    first = measure_sensitivity(tiny_model, random_tokens(), ["Q8_0"], progress=False)
    [final] = (tmp_path / "sensitivity").glob("*[0-9a-f].json")
    remove_entry(final)
    # a partial sweep left behind by a crash, then cut short
    final.with_suffix(".partial.json").write_text('{"blk.0.attn_q.weight|Q8_0": ')
    again = measure_sensitivity(tiny_model, random_tokens(), ["Q8_0"], progress=False)
    np.testing.assert_array_equal(again.damage, first.damage)


def test_profile_sweep_resumes_from_its_partial_file(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("RAMP_CACHE", str(tmp_path))
    measure_sensitivity(tiny_model, random_tokens(), ["Q8_0"], progress=False)
    [final] = (tmp_path / "sensitivity").glob("*[0-9a-f].json")
    remove_entry(final)
    # a sweep interrupted after its first measurement: only the rest is measured, the first is kept
    partial = final.with_suffix(".partial.json")
    partial.write_text(json.dumps({"token_embd.weight|Q8_0": 0.5}))
    resumed = measure_sensitivity(tiny_model, random_tokens(), ["Q8_0"], progress=False)
    assert resumed.damage[resumed.tensors.index("token_embd.weight"), resumed.formats.index("Q8_0")] == 0.5


def test_truncated_reference_logits_are_computed_again(tiny_reference, tmp_path, monkeypatch):
    monkeypatch.setenv("RAMP_CACHE", str(tmp_path))
    windows = make_windows(tiny_reference, evaluation_text(), 64, 1)
    first = reference_logprobs(tiny_reference, windows)
    logprobs, top1 = np.array(first.logprobs), first.top1.copy()
    [entry] = [path for path in (tmp_path / "reference_logits").glob("*.npy") if not path.name.endswith(".top1.npy")]
    with open(entry, "r+b") as handle:
        handle.truncate(entry.stat().st_size // 2)
    again = reference_logprobs(tiny_reference, windows)
    np.testing.assert_array_equal(np.array(again.logprobs), logprobs)
    np.testing.assert_array_equal(again.top1, top1)


def test_truncated_cached_reference_gguf_is_written_again(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("RAMP_CACHE", str(tmp_path))
    path = cached_reference(tiny_model, progress=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    assert cached_reference(tiny_model, progress=False) == path
    assert path.read_bytes() == data


# --- 6. README's policy recipe: train on a table, allocate with the policy and the default ladder ---------


def test_a_policy_trained_on_a_table_allocates_without_formats(tiny_reference, tmp_path, capsys):
    from test_env import damage_table

    model = load_model(tiny_reference)
    full = damage_table(model)
    measured = [fmt for fmt in full.formats if fmt != "Q5_0"]  # `ramp profile`'s default sweep
    table = SensitivityTable(full.tensors, measured, full.damage[:, [full.formats.index(f) for f in measured]],
                             model_sha256=model.sha256)
    table.save(tmp_path / "table.json")
    policy = tmp_path / "policy.zip"
    assert main(["train", "--model", str(tiny_reference), "--sensitivity", str(tmp_path / "table.json"),
                 "--budget", "5bpw..6bpw", "--timesteps", "30", "--out", str(policy), "--calibration-tokens", "64",
                 "--window", "32", "--tensorboard", str(tmp_path / "runs"), "--no-progress", "--checkpoint-every", "0",
                 "--select-every", "0", "--sac", "learning_starts=10", "--sac", "batch_size=8"]) == 0
    out = tmp_path / "allocation.json"
    assert main(["allocate", "--model", str(tiny_reference), "--method", "policy", "--policy", str(policy),
                 "--budget", "5.5bpw", "--out", str(out)]) == 0
    assert Allocation.load(out).extra["ladder"] == measured  # the policy's own ladder, Q5_0 left out


def test_the_shipped_policy_allocates_for_a_model_it_never_saw(tiny_reference, tmp_path):
    """`ramp allocate --method policy` without --policy: the policy in the package, trained on the three real
    families, allocates for the tiny llama within budget from its profile and its own Fisher estimate."""
    from ramp.agent.policy import DEFAULT_POLICY
    from ramp.agent.policy_file import read_policy_record

    record = read_policy_record(DEFAULT_POLICY)
    assert record.estimate == "fisher" and len(record.models) == 3
    out = tmp_path / "allocation.json"
    assert main(["allocate", "--model", str(tiny_reference), "--method", "policy", "--budget", "5.5bpw", "--out", str(out)]) == 0
    allocation = Allocation.load(out)
    model = load_model(tiny_reference)
    assert allocation.extra["policy"] == str(DEFAULT_POLICY) and allocation.data_bytes(model) <= Budget.parse("5.5bpw").bytes_for(model)


# --- 7. file-system failures: before the work where they can be seen, one line where they cannot -----------


def test_an_unwritable_output_folder_fails_before_the_model_is_read(tmp_path, capsys):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF but not really")
    # /sys takes no new files, for root too, whose permission bits are no obstacle
    code = main(["export", "--model", str(broken), "--reference", "F32", "--out", "/sys/ramp-test.gguf"])
    assert code == 2
    assert "cannot write into /sys" in one_error(capsys)  # not the broken model: the output was checked first


def test_too_little_free_space_fails_before_writing(tmp_path):
    free = __import__("shutil").disk_usage(tmp_path).free
    with pytest.raises(RampError, match="MB are free"):
        check_output_path(tmp_path / "big.gguf", needed_bytes=free + 1)
    assert list(tmp_path.iterdir()) == []


def test_a_write_that_fails_midway_is_one_line_and_keeps_the_old_output(tiny_reference, tmp_path):
    out = tmp_path / "out.gguf"
    out.write_bytes(b"earlier output")

    def limit_file_size() -> None:  # as a full disk would: writes past 1 MB fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    child = ramp_child("export", "--model", tiny_reference, "--reference", "F32", "--out", out, preexec_fn=limit_file_size)
    _, err = child.communicate(timeout=300)
    assert child.returncode == 2
    line = last_line(err)
    assert line.startswith("ramp: error: File too large") and str(out) in line
    assert out.read_bytes() == b"earlier output"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.gguf"]


def test_a_cache_that_cannot_be_written_only_stops_caching(tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RAMP_CACHE", str(tmp_path))
    for folder in ("dequant", "sensitivity"):
        (tmp_path / folder).write_text("a file where the cache wants a folder")
    table = measure_sensitivity(tiny_model, random_tokens(), ["Q8_0"], progress=False)
    assert np.isfinite(table.damage).all()
    assert "not caching" in capsys.readouterr().err


# --- 8. signals and permissions ---------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_export_keeps_the_old_output_and_no_temporary_file(tiny_reference, tmp_path, signum):
    out = tmp_path / "out.gguf"
    out.write_bytes(b"earlier output")
    # Ctrl-C's default action, whatever this run inherited: a shell starts background jobs with SIGINT ignored,
    # and an ignored SIGINT would let the export finish
    child = ramp_child("export", "--model", tiny_reference, "--reference", "F32", "--out", out,
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob(".out.gguf.*.tmp")):  # the export is writing
        assert child.poll() is None and time.monotonic() < deadline, "the export ended before it could be stopped"
        time.sleep(0.0005)
    child.send_signal(signal.SIGSTOP)  # hold it mid-write, then deliver the signal as it resumes
    assert list(tmp_path.glob(".out.gguf.*.tmp")), "the export finished before it could be stopped"
    child.send_signal(signum)
    child.send_signal(signal.SIGCONT)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 128 + signum
    assert last_line(err).startswith("ramp: terminated" if signum == signal.SIGTERM else "ramp: interrupted")
    assert out.read_bytes() == b"earlier output"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.gguf"]


@pytest.mark.parametrize("umask", [0o022, 0o077], ids=["umask022", "umask077"])
def test_outputs_follow_the_umask_and_keep_an_existing_files_mode(tiny_reference, tmp_path, umask):
    previous = os.umask(umask)
    try:
        new, kept = tmp_path / "new.gguf", tmp_path / "kept.gguf"
        kept.write_bytes(b"old")
        kept.chmod(0o644)
        for out in (new, kept):
            assert main(["export", "--model", str(tiny_reference), "--reference", "F16", "--out", str(out)]) == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE(new.stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(kept.stat().st_mode) == 0o644


# --- 9. values that used to be tracebacks -----------------------------------------------------------------


@pytest.mark.parametrize("formats", [["Q4_K"], {"token_embd.weight": None}, {"token_embd.weight": 4}, {"token_embd.weight": "Q9_X"}],
                         ids=["list", "null", "number", "unknown-format"])
def test_allocation_with_bad_formats_is_one_line(tiny_reference, tmp_path, capsys, formats):
    path = tmp_path / "allocation.json"
    path.write_text(json.dumps({"formats": formats, "method": "test", "budget": "-", "model_sha256": ""}))
    code = main(["export", "--model", str(tiny_reference), "--allocation", str(path), "--out", str(tmp_path / "out.gguf")])
    assert code == 2
    assert str(path) in one_error(capsys)
    assert not (tmp_path / "out.gguf").exists()


@pytest.mark.parametrize("value", ['"0.1"', "NaN", "-5.0", "[0.1]"], ids=["string", "nan", "negative", "list"])
def test_sensitivity_table_with_bad_values_is_one_line(tiny_reference, tmp_path, capsys, value):
    model = load_model(tiny_reference)
    damage = [[0.1, 0.01] for _ in model.quantizable]
    text = json.dumps({"tensors": [spec.name for spec in model.quantizable], "formats": ["Q4_K", "Q8_0"],
                       "damage": damage, "model_sha256": model.sha256})
    # a string where a number belongs, a NaN, a negative damage, a list
    text = text.replace("0.1", value, 1)
    (tmp_path / "table.json").write_text(text)
    code = main(["allocate", "--model", str(tiny_reference), "--sensitivity", str(tmp_path / "table.json"),
                 "--budget", "6bpw", "--out", str(tmp_path / "allocation.json")])
    assert code == 2
    assert "re-run `ramp profile`" in one_error(capsys)
    assert not (tmp_path / "allocation.json").exists()


def test_policy_with_a_corrupt_network_is_one_line(tiny_reference, tmp_path, capsys):
    from test_env import damage_table

    from ramp.agent.contexts import episode_items
    from ramp.agent.policy_file import save_policy
    from ramp.agent.sac import SACConfig, make_sac, new_record
    from ramp.envs import BitAllocationEnv, ModelContext
    from ramp.measure.ladder import DEFAULT_LADDER

    model = load_model(tiny_reference)
    env = BitAllocationEnv([ModelContext("tiny", model, np.zeros((len(model.quantizable), 11)), damage=damage_table(model),
                                         items=episode_items(model, DEFAULT_LADDER))], (4.0, 6.0), DEFAULT_LADDER)
    good, bad = tmp_path / "good.zip", tmp_path / "bad.zip"
    save_policy(make_sac(env, SACConfig(net_arch=(8, 8)), 0), good, new_record(env, [model], SACConfig(), 0))
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(bad, "w") as target:
        for item in source.infolist():  # an intact zip whose network is not a pickle any more
            target.writestr(item, b"\x80garbage" if item.filename == "policy.pth" else source.read(item))
    code = main(["allocate", "--model", str(tiny_reference), "--method", "policy", "--policy", str(bad),
                 "--budget", "5bpw", "--out", str(tmp_path / "allocation.json")])
    assert code == 2
    assert "is damaged" in one_error(capsys)


def exit_code(argv: list[str]) -> int:
    """main()'s status, whether the command returned it or argparse exited with it."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


@pytest.mark.parametrize("args", [["profile", "{model}", "--window", "0"], ["profile", "{model}", "--tokens", "many"],
                                  ["eval", "{model}", "--reference", "{model}", "--max-windows", "0"],
                                  ["profile", "{model}", "--no-sensitivity", "--device", "cuda:99"]],
                         ids=["window-0", "tokens-many", "max-windows-0", "device-cuda99"])
def test_bad_option_values_are_one_line(tiny_reference, tmp_path, capsys, args):
    out = ["--out", str(tmp_path / "p")] if args[0] == "profile" else ["--json", str(tmp_path / "p")]
    assert exit_code([arg.format(model=tiny_reference) for arg in args] + out) == 2
    err = one_error(capsys)
    assert "must be at least 1" in err or "not a whole number" in err or "not on this machine" in err
    assert not (tmp_path / "p").exists()


# --- 10. NaN and Inf weights ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory) -> Path:
    model = tiny_llama()
    weights = model.tensors["blk.0.attn_q.weight"].copy()
    weights[3, 5] = np.nan
    path = tmp_path_factory.mktemp("nan") / "nan.gguf"
    write_reference(replace(model, tensors={**model.tensors, "blk.0.attn_q.weight": weights}), path, progress=False)
    return path


@pytest.mark.parametrize("command", [["profile", "{model}", "--no-sensitivity", "--out", "{out}"],
                                     ["export", "--model", "{model}", "--reference", "F16", "--out", "{out}"]],
                         ids=["profile", "export-f16"])
def test_nan_weights_are_refused_naming_the_tensor(nan_model, tmp_path, capsys, command):
    out = tmp_path / "out"
    code = main([arg.format(model=nan_model, out=out) for arg in command])
    assert code == 2
    assert "blk.0.attn_q.weight" in one_error(capsys)
    assert not out.exists()


def test_f16_export_of_weights_beyond_its_range_names_the_tensor(tmp_path, capsys):
    model = tiny_llama()
    weights = model.tensors["blk.1.ffn_up.weight"] * 1e6  # finite in F32, infinite in F16
    path = tmp_path / "huge.gguf"
    write_reference(replace(model, tensors={**model.tensors, "blk.1.ffn_up.weight": weights}), path, progress=False)
    code = main(["export", "--model", str(path), "--reference", "F16", "--out", str(tmp_path / "out.gguf")])
    assert code == 2
    assert "blk.1.ffn_up.weight" in one_error(capsys)
    assert not (tmp_path / "out.gguf").exists()


# --- 11. a --pin or --group that matches nothing ----------------------------------------------------------


@pytest.mark.parametrize("rule", [["--pin", "attn_qkv=Q8_0"], ["--group", "blk\\.40\\."]], ids=["pin", "group"])
def test_pin_or_group_matching_nothing_is_an_error(tiny_reference, tmp_path, capsys, rule):
    code = main(["allocate", "--model", str(tiny_reference), "--method", "uniform", "--budget", "8bpw",
                 "--out", str(tmp_path / "allocation.json"), *rule])
    assert code == 2
    assert "matches no quantizable tensor" in one_error(capsys)
    assert not (tmp_path / "allocation.json").exists()


# --- 12. a FIFO as --model --------------------------------------------------------------------------------


def test_a_fifo_as_model_is_refused_instead_of_hanging(tmp_path):
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    child = ramp_child("export", "--model", fifo, "--reference", "F32", "--out", tmp_path / "out.gguf")
    try:
        _, err = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 2
    assert "not a regular file" in last_line(err)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.gguf"]


# --- cases that already held, kept true ---------------------------------------------------------------------


def test_same_command_writes_the_same_bytes(tiny_reference, allocation_file, tmp_path):
    outs = [tmp_path / "a.gguf", tmp_path / "b.gguf"]
    for out in outs:
        assert main(["export", "--model", str(tiny_reference), "--allocation", str(allocation_file), "--out", str(out)]) == 0
    assert outs[0].read_bytes() == outs[1].read_bytes()


def test_silenced_keeps_c_output_off_the_descriptor_and_restores_it(capfd):
    """C libraries print past Python (HiGHS's debugging lines during an ILP, libllama's logs): inside, the
    descriptor is muted for raw writes and C's printf alike; after, both reach it again."""
    import ctypes

    from ramp.files import silenced

    libc = ctypes.CDLL(None)
    print("before", flush=True)
    with silenced(1):
        os.write(1, b"written to the descriptor\n")
        libc.printf(b"printed by C\n")
    with silenced(2):
        os.write(2, b"to stderr\n")
    libc.printf(b"after\n")
    libc.fflush(None)
    out, err = capfd.readouterr()
    assert out == "before\nafter\n" and err == ""
