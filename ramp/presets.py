"""llama.cpp's own preset quantizations (Q4_K_M and friends), made by llama.cpp's `llama_model_quantize`
from ramp's reference GGUF, so the comparison is against exactly what `llama-quantize` would produce."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ramp.errors import RampError
from ramp.files import atomic_path, cache_dir, file_sha256
from ramp.llama_eval import quiet_llama

if TYPE_CHECKING:
    from ramp.model import Model

DEFAULT_PRESETS = ("Q3_K_M", "Q4_K_M", "Q5_K_M")


def ftype_of(name: str) -> int:
    """The llama_ftype value of a preset name as llama-quantize spells it (Q4_K_M, Q8_0, F16, ...)."""
    import llama_cpp

    key = name.upper()
    for symbol in (f"LLAMA_FTYPE_MOSTLY_{key}", f"LLAMA_FTYPE_ALL_{key}"):
        if hasattr(llama_cpp, symbol):
            return int(getattr(llama_cpp, symbol))
    known = sorted(s.removeprefix("LLAMA_FTYPE_MOSTLY_") for s in dir(llama_cpp) if s.startswith("LLAMA_FTYPE_MOSTLY_"))
    raise RampError(f"unknown llama.cpp preset {name!r}; known presets: {', '.join(known)}")


def quantize_preset(reference: str | os.PathLike, name: str, output: str | os.PathLike) -> Path:
    """Run llama.cpp's quantizer on the reference GGUF with its default parameters for preset `name`."""
    import llama_cpp

    ftype = ftype_of(name)
    reference = Path(reference)
    if not reference.is_file():
        raise RampError(f"reference GGUF {reference} does not exist; write it with `ramp export --reference`")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = os.cpu_count() or 1
    with atomic_path(output) as tmp:
        with quiet_llama():
            status = llama_cpp.llama_model_quantize(str(reference).encode(), str(tmp).encode(), params)
        if status != 0:
            raise RampError(f"llama.cpp could not quantize {reference} to {name} (status {status}); is the reference a complete GGUF?")
    return Path(output)


def quantizable_bytes(path: str | os.PathLike, model: "Model") -> int:
    """Bytes a GGUF spends on `model`'s quantizable tensors: a preset's size on the scale budgets bound."""
    from ramp.model import read_gguf

    names = {spec.name for spec in model.quantizable}
    return sum(int(tensor.n_bytes) for tensor in read_gguf(path).tensors if tensor.name in names)


def preset_path(reference: str | os.PathLike, name: str) -> Path:
    """The cached preset made from this reference, built on first use. Keyed by the reference's content."""
    ftype_of(name)
    folder = cache_dir() / "presets"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{file_sha256(reference)[:16]}-{name.upper()}.gguf"
    if not path.is_file():
        quantize_preset(reference, name, path)
    return path
