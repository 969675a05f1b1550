"""llama.cpp's own command-line tools (llama-quantize, llama-imatrix, llama-perplexity): found without
configuration and run with their failures turned into one-line RampErrors.

`.ci/install` builds them in the same CMake build as llama-cpp-python's wheel, which carries them in
llama_cpp/bin, linked to its own libllama (`.ci/llama_tools.cmake`). For a llama-cpp-python that came from
elsewhere, `.ci/build_llama_tools.sh` builds them statically from the llama.cpp source its sdist vendors into
data_dir()/llama.cpp-<llama-cpp-python version>/bin. Either way the tools and the libllama ramp loads through
llama-cpp-python are the same llama.cpp; the version in the folder name means an upgrade of llama-cpp-python
never runs tools from the old one.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Iterator

from ramp.errors import RampError
from ramp.files import data_dir, silenced

TOOLS = ("llama-quantize", "llama-imatrix", "llama-perplexity")
BUILD_FIX = "build them with `bash .ci/build_llama_tools.sh` (part of `bash .ci/install`)"


def llama_cpp_python_version() -> str | None:
    try:
        return version("llama_cpp_python")
    except PackageNotFoundError:
        return None


def tools_dir() -> Path | None:
    """Where the separate static build installs the tools for the installed llama-cpp-python; None without it."""
    installed = llama_cpp_python_version()
    return None if installed is None else data_dir() / f"llama.cpp-{installed}" / "bin"


def wheel_tools_dir() -> Path | None:
    """llama_cpp/bin in the installed llama-cpp-python, where the wheel .ci/install builds carries the tools;
    None without llama-cpp-python. Found without importing llama_cpp, which would load libllama."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "bin"


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def built_tools_dir() -> Path | None:
    """The folder of ramp's own build holding all three tools: the wheel's, else the static build's; None
    when neither does. The three always come from one folder, so from one llama.cpp."""
    for folder in (wheel_tools_dir(), tools_dir()):
        if folder is not None and all(_executable(folder / name) for name in TOOLS):
            return folder
    return None


def find_tool(name: str) -> Path | None:
    """The tool's path, or None. `$RAMP_LLAMA_BIN`, when set, is the only place looked at: an explicit choice
    must not silently fall back to another llama.cpp. Otherwise ramp's own build, then PATH."""
    explicit = os.environ.get("RAMP_LLAMA_BIN")
    if explicit:
        path = Path(explicit) / name
        return path if _executable(path) else None
    built = built_tools_dir()
    if built is not None:
        return built / name
    on_path = shutil.which(name)
    return Path(on_path) if on_path else None


def require_tool(name: str) -> Path:
    path = find_tool(name)
    if path is not None:
        return path
    explicit = os.environ.get("RAMP_LLAMA_BIN")
    if explicit:
        raise RampError(f"{name} is not an executable in $RAMP_LLAMA_BIN ({explicit}); point it at llama.cpp's bin folder or unset it")
    raise RampError(f"llama.cpp's {name} is not built (looked in {wheel_tools_dir()}, {tools_dir()} and PATH); {BUILD_FIX}")


@contextlib.contextmanager
def quiet_llama() -> Iterator[None]:
    """Keep libllama's load and quantize logs (hundreds of lines, on descriptor 2) off the terminal; failures
    still surface as return codes that ramp turns into RampErrors."""
    with silenced(2):
        yield


def last_error_line(output: str) -> str:
    """The line that says what went wrong: llama.cpp logs everything to stderr and ends a failure with generic
    lines ("main: unable to load model"), so the last line mentioning an error beats the last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if not lines:
        return "no output"
    errors = [line for line in lines if re.search(r"error|failed|unable|invalid|cannot", line, re.IGNORECASE)]
    line = (errors or lines)[-1]
    return line if len(line) <= 300 else line[:297] + "..."


def run_tool(name: str, args: list[str], *, fix: str | None = None, timeout: float | None = None,
             cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """Run a llama.cpp tool to completion with its output captured (its logs run to hundreds of lines).

    A non-zero exit raises one RampError line: the tool's own error line and `fix` (by default, the command
    to rerun to see the full log)."""
    tool = require_tool(name)
    command = [str(tool), *map(str, args)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=timeout, cwd=cwd)
    except OSError as exc:
        raise RampError(f"cannot run {tool} ({exc.strerror}); rebuild it: {BUILD_FIX}") from None
    except subprocess.TimeoutExpired:
        raise RampError(f"{name} ran past {timeout:g} s; give it fewer windows or a smaller model") from None
    if done.returncode != 0:
        status = f"exit {done.returncode}" if done.returncode > 0 else f"killed by signal {-done.returncode}"
        fix = fix or f"run `{' '.join(command)}` to see its full log"
        raise RampError(f"{name} failed ({status}): {last_error_line(done.stderr + done.stdout)}; {fix}")
    return done


def tool_build(name: str = "llama-perplexity") -> str | None:
    """llama.cpp's build line of a tool ("0.5.0-dev (build 0, commit 0c1e57098)"), None when it is missing or
    does not say. The tools built on llama.cpp's common argument parser answer --version without loading
    anything."""
    tool = find_tool(name)
    if tool is None:
        return None
    try:
        done = subprocess.run([str(tool), "--version"], capture_output=True, text=True, errors="replace", timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"^version: (.+)$", done.stderr + done.stdout, re.MULTILINE)
    return match.group(1).strip() if match else None


def llama_cpp_version() -> str:
    """What to quote in a bug report: llama-cpp-python's version and the llama.cpp it vendors, with the tools'
    build commit when they are built (libllama itself only knows its version number)."""
    installed = llama_cpp_python_version()
    if installed is None:
        return "llama-cpp-python not installed"
    build = tool_build()
    if build is None:
        try:
            import llama_cpp

            build = llama_cpp.llama_version().decode()
        except Exception:  # a broken libllama must not stop a version report; say so instead
            build = "unknown (libllama does not load)"
    return f"llama-cpp-python {installed}, llama.cpp {build}"
