"""Everything ramp reads in: model files (GGUF, safetensors directories, the models known by name), their
tokenizers, and the texts calibration and evaluation read."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ramp.errors import RampError

if TYPE_CHECKING:
    from ramp.models.model import Model


def load_model(path: str | Path | None = None) -> "Model":
    """Load a GGUF file (dequantized to float32), a Hugging Face safetensors directory, or a known model by
    its short name (`ramp models`); an existing path wins over a name."""
    from ramp.models.embedded import resolve_model
    from ramp.models.gguf import load_gguf

    model_path = resolve_model(path)
    if not model_path.exists():  # a broken symbolic link
        raise RampError(f"model path {model_path} does not exist; pass a .gguf file or a safetensors directory")
    if model_path.is_dir():
        from ramp.models.safetensors import load_safetensors_dir

        return load_safetensors_dir(model_path)
    if not model_path.is_file():  # a FIFO would block the reader forever, a device is no model
        raise RampError(f"model path {model_path} is not a regular file (a pipe, socket or device); save the model to a file")
    return load_gguf(model_path)
