"""`ramp models`, the short names `--model` accepts, and the joining of a model shipped in part packages
(Qwen2.5-Coder-1.5B's 22 wheels), on real files: small parts for the bad states, the installed models for
the rest."""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

from ramp.cli import main
from ramp.models import embedded
from ramp.models.embedded import (
    KNOWN_MODELS, QWEN_BYTES, QWEN_NAME, embedded_models, join_parts, qwen_file, qwen_part_paths,
    qwen_part_sizes, resolve_model,
)
from ramp.errors import RampError
from ramp.models.embedded import default_model_path
from ramp.models import load_model

FIX = "run `the fix`"


def make_parts(folder: Path, sizes: list[int]) -> tuple[list[Path], str]:
    """Part files of the given sizes with distinct bytes, and the sha256 of their concatenation."""
    folder.mkdir(parents=True, exist_ok=True)
    parts, digest = [], hashlib.sha256()
    for index, size in enumerate(sizes):
        data = bytes((index * 7 + offset) % 251 for offset in range(size))
        (part := folder / f"part{index:02d}.bin").write_bytes(data)
        parts.append(part)
        digest.update(data)
    return parts, digest.hexdigest()


def test_join_parts_writes_the_file_once_and_replaces_a_damaged_one(tmp_path):
    sizes = [4096, 4096, 1000]
    parts, sha256 = make_parts(tmp_path / "parts", sizes)
    target = tmp_path / "models" / "joined.gguf"
    assert join_parts(parts, sizes, sha256, target, FIX) == target
    assert target.read_bytes() == b"".join(part.read_bytes() for part in parts)
    before = os.stat(target)
    join_parts(parts, sizes, sha256, target, FIX)  # joined already: nothing is written
    after = os.stat(target)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    target.write_bytes(b"x" * sum(sizes))  # the right size, the wrong bytes
    join_parts(parts, sizes, sha256, target, FIX)
    assert hashlib.sha256(target.read_bytes()).hexdigest() == sha256
    assert sorted(path.name for path in target.parent.iterdir()) == ["joined.gguf"]  # no temporary file left


@pytest.mark.parametrize("damage", ["package missing", "file missing", "truncated", "other bytes"])
def test_join_parts_bad_states_are_one_line_and_leave_no_file(tmp_path, damage):
    sizes = [4096, 4096, 1000]
    parts, sha256 = make_parts(tmp_path / "parts", sizes)
    if damage == "package missing":
        parts[1] = None
        expected = "part 2 of 3 of joined.gguf is missing"
    elif damage == "file missing":
        parts[2].unlink()
        expected = "part 3 of 3 of joined.gguf is missing"
    elif damage == "truncated":
        parts[0].write_bytes(parts[0].read_bytes()[:100])
        expected = "part 1 of 3 of joined.gguf is 100 bytes instead of 4,096"
    else:
        parts[2].write_bytes(b"y" * 1000)
        expected = "join into a file with sha256"
    target = tmp_path / "models" / "joined.gguf"
    with pytest.raises(RampError) as raised:
        join_parts(parts, sizes, sha256, target, FIX)
    message = str(raised.value)
    assert expected in message and message.endswith(FIX) and "\n" not in message
    assert not target.parent.exists() or list(target.parent.iterdir()) == []


def test_qwen_parts_add_up_to_the_recorded_file():
    sizes = qwen_part_sizes()
    assert len(sizes) == len(qwen_part_paths()) == 22 and sum(sizes) == QWEN_BYTES and sizes[-1] == 16_315_968


def test_models_lists_every_known_model_with_its_state(capsys):
    assert main(["models"]) == 0
    printed = capsys.readouterr().out
    for status in embedded_models():
        state = "installed" if status.installed else "missing"
        assert re.search(rf"^{re.escape(status.name)} +{state} ", printed, re.MULTILINE), printed
        if not status.installed:
            assert f"ramp models install {status.name}" in printed
    assert list(KNOWN_MODELS) == ["smollm2-135m", "gemma3-270m", QWEN_NAME]
    assert str(default_model_path()) in printed


def test_models_install_of_an_installed_model_does_nothing(capsys):
    assert main(["models", "install", "smollm2-135m"]) == 0
    printed = capsys.readouterr().out
    assert printed == f"smollm2-135m is installed: {default_model_path()}\n"  # no pip run


def test_models_install_needs_a_known_name(capsys):
    assert main(["models", "install"]) == 2
    assert "name the model to install: one of smollm2-135m, gemma3-270m" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["models", "install", "llama-70b"])
    assert "invalid choice: 'llama-70b'" in capsys.readouterr().err


@pytest.mark.real_model  # loads SmolLM2 by its short name
def test_a_short_name_is_a_model_and_an_existing_path_wins(tmp_path, monkeypatch):
    assert resolve_model("smollm2-135m") == resolve_model(None) == default_model_path()
    assert load_model("smollm2-135m").source_path == default_model_path()
    monkeypatch.chdir(tmp_path)
    Path("gemma3-270m").write_text("not a model")
    assert resolve_model("gemma3-270m") == Path("gemma3-270m")
    with pytest.raises(RampError, match="not a readable GGUF"):
        load_model("gemma3-270m")


def test_an_unknown_model_name_is_one_line_listing_the_known_names(tmp_path, capsys):
    assert main(["imatrix", "smollm3-135m", "--out", str(tmp_path / "imatrix.gguf")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("ramp: error: model smollm3-135m does not exist and is not a known model name (smollm2-135m, "
                   "gemma3-270m, qwen2.5-coder-1.5b); pass a .gguf file, a safetensors directory or one of those "
                   "names (`ramp models` lists them)")
    assert list(tmp_path.iterdir()) == []


def test_qwen_not_installed_says_how_to_install_it(tmp_path, monkeypatch):
    # a machine without the part packages, whether or not this one has them
    monkeypatch.setattr(embedded, "qwen_part_paths", lambda: [None] * len(qwen_part_sizes()))
    monkeypatch.setenv("RAMP_DATA", str(tmp_path))  # no joined file either
    with pytest.raises(RampError) as raised:
        load_model(QWEN_NAME)
    assert str(raised.value) == f"{QWEN_NAME} is not installed; run `ramp models install {QWEN_NAME}` (1.1 GB download)"
    status = KNOWN_MODELS[QWEN_NAME].status()
    assert not status.installed and status.optional and f"ramp models install {QWEN_NAME}" in status.note


def test_qwen_install_when_installed_does_nothing(tmp_path, monkeypatch, capsys):
    # a joined file that checks out, on every machine: a small one whose size and sha256 are the recorded ones
    # (the real 1.1 GB file is not in .ci/install); nothing may be downloaded or joined again
    monkeypatch.setenv("RAMP_DATA", str(tmp_path))
    target = qwen_file()
    target.parent.mkdir(parents=True)
    target.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    monkeypatch.setattr(embedded, "QWEN_BYTES", target.stat().st_size)
    monkeypatch.setattr(embedded, "QWEN_SHA256", hashlib.sha256(target.read_bytes()).hexdigest())
    monkeypatch.setattr(embedded, "pip_install", lambda *args, **kwargs: pytest.fail("a checked-out file was downloaded again"))
    before = os.stat(target)
    assert main(["models", "install", QWEN_NAME]) == 0
    assert capsys.readouterr().out == f"{QWEN_NAME} is installed: {target}\n"
    after = os.stat(target)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_damaged_joined_qwen_file_is_refused_on_use(tmp_path, monkeypatch):
    monkeypatch.setenv("RAMP_DATA", str(tmp_path))
    damaged = qwen_file()
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"GGUF" + bytes(96))
    with pytest.raises(RampError) as raised:
        load_model(QWEN_NAME)
    assert str(raised.value) == (f"{damaged} is 100 bytes, not 1,117,320,768: it is damaged; run "
                                 f"`ramp models install {QWEN_NAME}` to join it again from its packages")
    status = KNOWN_MODELS[QWEN_NAME].status()
    assert not status.installed and not status.optional and "100 bytes" in status.note


def test_the_gguf_reader_reads_what_gguf_py_reads_and_a_cut_header_is_one_line(tmp_path):
    import gguf
    import numpy as np

    from ramp.models.gguf import read_gguf

    path = default_model_path()
    ours, theirs = read_gguf(path), gguf.GGUFReader(path)
    keys = [key for key in theirs.fields if not key.startswith("GGUF.")]
    assert list(ours.fields) == keys
    for key in keys:
        field = theirs.fields[key]
        assert ours.fields[key].value == field.contents(), key
        assert (ours.fields[key].value_type, ours.fields[key].element_type) == (field.types[0], field.types[1] if len(field.types) > 1 else None)
    assert len(ours.fields["tokenizer.ggml.tokens"].value) == 49152
    for mine, reference in zip(ours.tensors, theirs.tensors, strict=True):
        assert (mine.name, mine.tensor_type, mine.shape, mine.n_bytes, mine.data_offset) == (
            reference.name, reference.tensor_type, tuple(int(d) for d in reference.shape), reference.n_bytes, reference.data_offset)
        assert mine.data.dtype == reference.data.dtype and np.array_equal(mine.data, reference.data), mine.name

    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:100_000])  # inside the vocabulary
    with pytest.raises(RampError, match="is not a readable GGUF file") as error:
        read_gguf(cut)
    assert "\n" not in str(error.value)
