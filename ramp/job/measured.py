"""Measurements of files through llama.cpp, cached by what determines them, so a file a job has measured is
never measured again, in this job or another: a preset by its name, an allocation by its formats, each with
the source model, the importance matrix, the fold, the evaluation windows and the versions of ramp and
llama.cpp. The key names the file's recipe rather than its bytes, so the bytes need not be hashed (a GGUF
of a billion-weight model takes seconds to hash), and the entry is sealed like every cache entry
(`ramp.cache_entries`)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ramp.evaluate.llama_eval import EvalResult, ReferenceLogits, Windows


def measurement_path(recipe: dict) -> Path:
    """The cache entry of the measurement of the file `recipe` describes (JSON-serialisable)."""
    from importlib.metadata import PackageNotFoundError, version

    from ramp.evaluate.llama_eval import EvalResult
    from ramp.files import cache_dir

    try:
        ramp_version = version("ramp")
    except PackageNotFoundError:
        ramp_version = "unknown"
    # the result's fields are part of the key: a measurement that records more is a new entry
    key = {"recipe": recipe, "ramp_version": ramp_version, "fields": [field.name for field in fields(EvalResult)]}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return cache_dir() / "measured" / f"{digest}.json"


def measured(recipe: dict, path: str | Path, name: str, reference: "ReferenceLogits", windows: "Windows") -> "EvalResult":
    """`evaluate(path, ...)` named `name`, taken from the cache when a file of the same recipe was measured."""
    from ramp.cache_entries import trusted_entry, write_cache_entry
    from ramp.evaluate.llama_eval import EvalResult, evaluate

    entry = measurement_path(recipe)
    if trusted_entry(entry):
        result = EvalResult(**json.loads(entry.read_text()))
        print(f"{name}: measured before ({entry.name[:12]}), not again")
        return replace(result, name=name, path=str(path))
    result = evaluate(path, reference, windows, name)
    write_cache_entry(entry, lambda tmp: tmp.write_text(json.dumps(result.as_dict())))
    return result
