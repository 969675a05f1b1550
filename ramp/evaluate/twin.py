"""The twin as a file (`ramp twin`): an F32 GGUF, like ramp's references, that llama.cpp loads and every ramp
command takes as `--model`. It is its own reference: its origin is itself, so every file made from it is
measured against it, never against the source.

Besides the twin's provenance (`ramp.measure.twin`: source sha256, seed, sigma, noise) the file
records how far it moved from the source: its mean KLD to the source's F32 reference through llama.cpp on
held-out text, and on how many scored tokens. That needs the twin written first, so the twin is written
once to measure it and again with the measurement, both under a temporary name, renamed when complete.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import gguf

from ramp.errors import RampError
from ramp.measure.twin import (
    DEFAULT_NOISE, DEFAULT_SEED, DEFAULT_SIGMA, TWIN_NOISE_KEY, TWIN_SEED_KEY, TWIN_SIGMA_KEY, TWIN_SOURCE_KEY,
)
from ramp.models.model import MetadataValue, Model

TWIN_KLD_KEY = "ramp.twin.kld_to_source"
TWIN_KLD_TOKENS_KEY = "ramp.twin.kld_tokens"
TWIN_KLD_TEXT_KEY = "ramp.twin.kld_text"
DEFAULT_KLD_WINDOWS = 4  # of 512 tokens: 1,020 scored tokens


@dataclass(frozen=True)
class TwinRecord:
    """What a twin's GGUF says about itself."""

    source_sha256: str
    seed: int
    sigma: float
    noise: float
    kld_to_source: float
    kld_tokens: int
    kld_text: str

    def describe(self) -> str:
        return (f"twin of {self.source_sha256[:12]} (seed {self.seed}, sigma {self.sigma:g}, noise "
                f"{self.noise:.3g} step; KLD to the source {self.kld_to_source:.2e} nats on "
                f"{self.kld_tokens:,d} held-out {self.kld_text} tokens)")


def twin_record(path: str | os.PathLike) -> TwinRecord | None:
    """The record of the twin at `path`, or None for a GGUF that is no twin."""
    from ramp.models.gguf import read_gguf

    fields = read_gguf(path).fields
    if TWIN_SOURCE_KEY not in fields:
        return None
    value = lambda key: fields[key].value  # noqa: E731
    return TwinRecord(str(value(TWIN_SOURCE_KEY)), int(value(TWIN_SEED_KEY)), float(value(TWIN_SIGMA_KEY)),
                      float(value(TWIN_NOISE_KEY)), float(value(TWIN_KLD_KEY)), int(value(TWIN_KLD_TOKENS_KEY)),
                      str(value(TWIN_KLD_TEXT_KEY)))


def kld_to_source(twin_path: str | os.PathLike, source: Model, text: str, n_windows: int) -> tuple[float, int]:
    """(mean KLD of the twin's file to the source's F32 reference through llama.cpp, scored tokens) on the
    held-out half of `text`. Both files run side by side, window by window, and are compared in float64: the
    float16 reference cache other evaluations read rounds near 1e-5 nats, the size of what is measured here."""
    import numpy as np

    from ramp.evaluate.llama_eval import DEFAULT_N_CTX, exact_token_kld, make_windows, scored_logits
    from ramp.export.gguf_writer import cached_reference
    from ramp.models.text import evaluation_text

    reference = cached_reference(source)
    windows = make_windows(reference, evaluation_text(text), DEFAULT_N_CTX, n_windows)
    kld = [exact_token_kld(ours, theirs) for ours, theirs in zip(scored_logits(reference, windows, "source logits"),
                                                                scored_logits(twin_path, windows, "twin logits"))]
    return float(np.concatenate(kld).mean()), windows.n_scored


def write_twin(source: Model, out: str | os.PathLike, seed: int = DEFAULT_SEED, sigma: float = DEFAULT_SIGMA,
               noise: float = DEFAULT_NOISE, text: str | None = None,
               kld_windows: int = DEFAULT_KLD_WINDOWS, progress: bool = True) -> TwinRecord:
    """Write the source's twin to `out` (F32 GGUF) with its record, and return the record."""
    from ramp.export.gguf_writer import predict_file_size, reference_formats, write_reference
    from ramp.files import atomic_path, check_output_path
    from ramp.measure.twin import twin_model
    from ramp.models.text import DEFAULT_TEXT, check_text

    text = check_text(text or DEFAULT_TEXT)
    if kld_windows < 1:
        raise RampError(f"--kld-windows must be at least 1, got {kld_windows}")
    twin = twin_model(source, seed, sigma, noise)
    check_output_path(out, needed_bytes=2 * predict_file_size(twin, reference_formats(twin)))
    with atomic_path(out) as final:
        write_reference(twin, final, progress=progress)
        kld, n_tokens = kld_to_source(final, source, text, kld_windows)
        if math.isnan(kld):
            raise RampError(f"the twin's KLD to the source is NaN: llama.cpp cannot run the twin of "
                            f"{source.source_path or 'the model'}; report it")
        twin.metadata |= {
            TWIN_KLD_KEY: MetadataValue(float(kld), gguf.GGUFValueType.FLOAT64),
            TWIN_KLD_TOKENS_KEY: MetadataValue(int(n_tokens), gguf.GGUFValueType.INT64),
            TWIN_KLD_TEXT_KEY: MetadataValue(text, gguf.GGUFValueType.STRING),
        }
        write_reference(twin, final, progress=progress)  # the record does not change the logits measured
    record = twin_record(out)
    assert record is not None
    return record


def cached_twin(source: Model, seed: int = DEFAULT_SEED, sigma: float = DEFAULT_SIGMA,
                noise: float = DEFAULT_NOISE) -> Path:
    """The source's twin under the cache, made on first use (minutes on the embedded model) and checked against
    its seal on every later one (`ramp.cache_entries`)."""
    from ramp.cache_entries import cache_entry_path, trusted_entry
    from ramp.export.gguf_writer import readable_gguf
    from ramp.files import cache_dir

    path = cache_dir() / "twins" / f"{source.sha256[:16]}-seed{seed}-sigma{sigma:g}-noise{noise:.4g}.gguf"
    if not trusted_entry(path, readable_gguf):
        print(f"making the off-grid twin of {source.source_path or 'the model'} (seed {seed}, sigma {sigma:g}), once: "
              f"{path}", flush=True)
        with cache_entry_path(path) as tmp:
            write_twin(source, tmp, seed, sigma, noise)
    return path
