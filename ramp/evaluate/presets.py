"""llama.cpp's own preset quantizations (Q4_K_M and friends) of ramp's reference GGUF: with an importance
matrix by the `llama-quantize` tool itself (`--imatrix`), without one by the same library function it calls
(`llama_model_quantize`), so the comparison is against exactly what users download.

The full ladder of k-quant presets users choose between is `PRESET_LADDER`; `DEFAULT_PRESETS` are the three
`ramp run` prints."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ramp.errors import RampError
from ramp.files import atomic_path, cache_dir, file_sha256
from ramp.llama_tools import quiet_llama
from ramp.machine import usable_cores

if TYPE_CHECKING:
    from ramp.models.model import Model

DEFAULT_PRESETS = ("Q3_K_M", "Q4_K_M", "Q5_K_M")
PRESET_LADDER = ("Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "IQ4_XS", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K")


def ftype_of(name: str) -> int:
    """The llama_ftype value of a preset name as llama-quantize spells it (Q4_K_M, Q8_0, F16, ...)."""
    import llama_cpp

    key = name.upper()
    for symbol in (f"LLAMA_FTYPE_MOSTLY_{key}", f"LLAMA_FTYPE_ALL_{key}"):
        if hasattr(llama_cpp, symbol):
            return int(getattr(llama_cpp, symbol))
    known = sorted(s.removeprefix("LLAMA_FTYPE_MOSTLY_") for s in dir(llama_cpp) if s.startswith("LLAMA_FTYPE_MOSTLY_"))
    raise RampError(f"unknown llama.cpp preset {name!r}; known presets: {', '.join(known)}")


# llama.cpp refuses these without an importance matrix (llama-quant.cpp: too few bits to guess the weights' importance)
NEEDS_IMATRIX = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S")


def check_presets(names: "list[str] | tuple[str, ...]", with_imatrix: bool) -> None:
    """Every preset name known to llama.cpp, and none that it refuses to make without an importance matrix
    when there is none: both fail here, before the reference is written, not inside llama-quantize."""
    for name in names:
        ftype_of(name)
        if not with_imatrix and name.upper() in NEEDS_IMATRIX:
            raise RampError(f"llama.cpp makes the {name.upper()} preset only with an importance matrix; pass --imatrix "
                            "(or, in `ramp run`, leave --no-imatrix out), or choose another preset")


def quantize_preset(reference: str | os.PathLike, name: str, output: str | os.PathLike,
                    imatrix: str | os.PathLike | None = None) -> Path:
    """Quantize the reference GGUF to preset `name` with llama.cpp's defaults, with `imatrix` (an imatrix
    GGUF) as `llama-quantize --imatrix` when given."""
    import llama_cpp

    ftype = ftype_of(name)
    reference = Path(reference)
    if not reference.is_file():
        raise RampError(f"reference GGUF {reference} does not exist; write it with `ramp export --reference`")
    threads = str(usable_cores())
    with atomic_path(output) as tmp:
        if imatrix is not None:
            _quantize_with_imatrix(reference, name, Path(tmp), Path(imatrix), threads)
            return Path(output)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        params.nthread = int(threads)
        with quiet_llama():
            status = llama_cpp.llama_model_quantize(str(reference).encode(), str(tmp).encode(), params)
        if status != 0:
            raise RampError(f"llama.cpp could not quantize {reference} to {name} (status {status}); is the reference a complete GGUF?")
    return Path(output)


def _quantize_with_imatrix(reference: Path, name: str, output: Path, imatrix: Path, threads: str) -> None:
    """`llama-quantize --imatrix`, given the matrix under a name made of its content.

    llama-quantize writes the path it was given into the file (`quantize.imatrix.file`), so two jobs whose
    matrices are the same bytes in different folders would write presets of different bytes. Run in a
    scratch folder holding a link named by the matrix's hash, the preset's bytes depend on content only."""
    import tempfile

    from ramp.llama_tools import run_tool

    if not imatrix.is_file():
        raise RampError(f"importance matrix {imatrix} does not exist; make one with `ramp imatrix`")
    with tempfile.TemporaryDirectory(prefix="ramp-quantize-") as scratch:
        named = f"imatrix-{file_sha256(imatrix)[:16]}.gguf"
        (Path(scratch) / named).symlink_to(imatrix.resolve())
        run_tool("llama-quantize", ["--imatrix", named, str(reference.resolve()), str(output.resolve()), name.upper(), threads],
                 cwd=scratch)


def quantizable_bytes(path: str | os.PathLike, model: "Model") -> int:
    """Bytes a GGUF spends on `model`'s quantizable tensors: a preset's size on the scale budgets bound."""
    from ramp.models.gguf import read_gguf

    names = {spec.name for spec in model.quantizable}
    return sum(int(tensor.n_bytes) for tensor in read_gguf(path).tensors if tensor.name in names)


def preset_path(reference: str | os.PathLike, name: str, imatrix: str | os.PathLike | None = None) -> Path:
    """The cached preset made from this reference (and importance matrix), built on first use and checked
    against its seal on every later one (`ramp.cache_entries`). Keyed by the files' contents."""
    from ramp.cache_entries import cache_entry_path, trusted_entry
    from ramp.export.gguf_writer import readable_gguf

    ftype_of(name)
    tag = f"-imatrix{file_sha256(imatrix)[:16]}" if imatrix is not None else ""
    path = cache_dir() / "presets" / f"{file_sha256(reference)[:16]}{tag}-{name.upper()}.gguf"
    if not trusted_entry(path, readable_gguf):
        with cache_entry_path(path) as tmp:
            quantize_preset(reference, name, tmp, imatrix)
    return path
