"""`ramp doctor` and the llama.cpp tools it reports: the tools .ci/install builds are found and run, what is
missing is reported instead of raised.

The tools come from .ci/install: a missing tool fails these tests, it does not skip them.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from ramp.cli import main
from ramp.errors import RampError
from ramp.llama_tools import TOOLS, built_tools_dir, llama_cpp_version, run_tool, tools_dir, wheel_tools_dir
from ramp.models.embedded import default_model_path
from ramp.models.text import installed_texts


def doctor_json(capsys) -> dict:
    assert main(["doctor", "--json"]) == 0
    return json.loads(capsys.readouterr().out)  # exactly one JSON object: anything else fails to parse


def test_doctor_reports_built_tools_models_texts_and_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RAMP_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "sub").mkdir(parents=True)
    (tmp_path / "cache" / "sub" / "entry.npy").write_bytes(b"x" * 1234)
    report = doctor_json(capsys)

    assert set(report["llama_tools"]) == set(TOOLS)
    # ramp's own build: in llama-cpp-python's wheel (.ci/install) or the separate static build's folder
    assert built_tools_dir() in (wheel_tools_dir(), tools_dir()), "the tools are not built: run bash .ci/install"
    for name, path in report["llama_tools"].items():
        assert path == str(built_tools_dir() / name)
        assert os.access(path, os.X_OK)
    version = subprocess.run([report["llama_tools"]["llama-perplexity"], "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and "version:" in version.stderr + version.stdout
    # the build script names the vendored llama.cpp commit (from the sdist's changelog) in the tools' build info
    assert re.search(r"commit [0-9a-f]{7,}", report["versions"]["llama.cpp"]), report["versions"]["llama.cpp"]
    assert report["versions"]["llama.cpp"] == llama_cpp_version()
    assert Path(report["libllama"]).is_file() and "llama" in Path(report["libllama"]).name

    assert report["models"]["smollm2-135m"] == {"installed": True, "path": str(default_model_path()), "note": "the default model",
                                                "optional": False}
    assert report["models"]["gemma3-270m"]["installed"]  # .ci/install installs its packages
    qwen = report["models"]["qwen2.5-coder-1.5b"]  # optional (`ramp models install`): either state is fine
    assert qwen["installed"] or qwen["optional"], qwen
    assert not any("qwen" in problem for problem in report["problems"])
    assert report["texts"] == installed_texts() and "python-docs" in report["texts"]
    assert report["cache_dir"] == str(tmp_path / "cache") and report["cache_bytes"] == 1234
    assert report["free_disk_bytes"] > 0 and Path(report["data_dir"]).is_dir()
    assert all(key in report["versions"] for key in ("ramp", "python", "torch", "numpy", "gguf", "llama-cpp-python"))


def test_doctor_reports_what_is_missing_and_still_succeeds(tmp_path, monkeypatch, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    monkeypatch.setenv("RAMP_LLAMA_BIN", str(tmp_path))  # an explicit tool folder without the tools
    monkeypatch.setenv("RAMP_CACHE", str(a_file / "cache"))  # a cache that cannot be created
    report = doctor_json(capsys)
    assert report["llama_tools"] == {name: None for name in TOOLS}
    assert report["cache_dir"] is None and report["cache_bytes"] is None
    assert any("$RAMP_LLAMA_BIN" in problem for problem in report["problems"])
    assert any("RAMP_CACHE" in problem for problem in report["problems"])
    assert report["models"]["smollm2-135m"]["installed"]  # the rest of the report is still there

    assert main(["doctor"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"llama-perplexity +not built", next(line for line in printed if line.startswith("llama-perplexity")))
    assert any(line.startswith("problem: ") and "$RAMP_LLAMA_BIN" in line for line in printed)
    listing = [line for line in printed if not line.startswith("problem: ")]
    assert len({re.match(r"\S.*?\s{2,}(\S)", line).start(1) for line in listing}) == 1  # values in one column


def test_run_tool_failure_is_one_line_with_the_tools_own_error(tmp_path):
    missing = tmp_path / "missing.gguf"
    with pytest.raises(RampError) as raised:
        run_tool("llama-quantize", [missing, tmp_path / "out.gguf", "Q4_0"])
    message = str(raised.value)
    assert message.startswith("llama-quantize failed (exit 1): ") and "failed to quantize" in message
    assert str(missing) in message and len(message.splitlines()) == 1
    assert not (tmp_path / "out.gguf").exists()
