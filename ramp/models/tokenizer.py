"""A model's own tokenizer, llama.cpp's: the token stream that calibration and evaluation windows are cut from,
as llama-imatrix and llama-perplexity cut theirs (special tokens added as the vocabulary asks, special-token
text not parsed; the first token of every window replaced by BOS when the vocabulary adds one).

A GGUF model carries its vocabulary; a safetensors directory's (converted to llama.cpp's keys on loading) is
written once into a vocabulary-only GGUF under the cache, so both tokenize through the same llama.cpp code.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ramp.errors import RampError

if TYPE_CHECKING:
    from ramp.models.model import Model

# Tokens past the last window that a prefix of the text must still yield: tokenization can differ only
# near the cut (a word split in two, trailing white space), never hundreds of tokens before it.
_PREFIX_MARGIN = 256
_CHARS_PER_TOKEN = 8  # generous for English prose and code, so one prefix is usually enough


def open_vocabulary(gguf_path: str | os.PathLike):
    """llama.cpp's vocabulary of a GGUF file (llama_cpp.Llama with vocab_only), its load log kept quiet."""
    import llama_cpp

    from ramp.llama_tools import quiet_llama

    try:
        with quiet_llama():
            return llama_cpp.Llama(str(gguf_path), vocab_only=True, verbose=False)
    except ValueError as exc:
        raise RampError(f"llama.cpp cannot read the vocabulary of {gguf_path} ({exc}); re-export the model") from None


def tokens_and_bos(gguf_path: str | os.PathLike, text: str) -> tuple[np.ndarray, int | None]:
    """Tokens as llama-perplexity makes them, and the BOS id when the vocabulary asks for BOS, else None."""
    vocabulary = open_vocabulary(gguf_path)
    try:
        tokens = np.asarray(vocabulary.tokenize(text.encode("utf-8"), add_bos=True, special=False), dtype=np.int32)
        return tokens, (vocabulary.token_bos() if vocabulary._model.add_bos_token() else None)
    finally:
        vocabulary.close()


def tokenize(gguf_path: str | os.PathLike, text: str) -> np.ndarray:
    """Token ids of `text` from the model's own tokenizer, exactly the stream the windows are cut from."""
    return tokens_and_bos(gguf_path, text)[0]


def token_windows(gguf_path: str | os.PathLike, text: str, n_ctx: int, max_windows: int | None = None) -> np.ndarray:
    """[windows, n_ctx] int32: consecutive windows of the text's token stream from its start, each starting at
    BOS when the vocabulary adds one; every window there is, or the first `max_windows`.

    With `max_windows`, only a prefix of the text long enough for them (and a margin) is tokenized: the same
    tokens as the whole text's, in a fraction of the time (Austen's calibration half is 800,000 tokens)."""
    limit = len(text) if max_windows is None else (max_windows * n_ctx + _PREFIX_MARGIN) * _CHARS_PER_TOKEN
    while True:
        tokens, bos = tokens_and_bos(gguf_path, text[:limit])
        if limit >= len(text) or len(tokens) >= max_windows * n_ctx + _PREFIX_MARGIN:
            break
        limit *= 2
    n_windows = len(tokens) // n_ctx if limit >= len(text) else max_windows
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)
    if n_windows < 1:
        raise RampError(f"the text has {len(tokens)} tokens, fewer than one window of {n_ctx}; use shorter windows (--ctx)")
    windows = tokens[: n_windows * n_ctx].reshape(n_windows, n_ctx).copy()
    if bos is not None:
        windows[:, 0] = bos
    return windows


def vocabulary_file(model: "Model") -> Path:
    """A GGUF llama.cpp reads `model`'s vocabulary from: the model's own file, or for a safetensors directory a
    vocabulary-only GGUF of its metadata (no tensors), written once under the cache."""
    if model.source_path is not None and model.source_path.is_file():
        return model.source_path
    if not model.sha256 or not model.metadata.get("tokenizer.ggml.tokens"):
        raise RampError("tokenizing needs the model's vocabulary; load the model from a GGUF file or a Hugging Face directory")
    from ramp.cache_entries import cache_entry_path, trusted_entry
    from ramp.files import cache_dir

    path = cache_dir() / "vocabulary" / f"{model.sha256[:16]}.gguf"
    if not trusted_entry(path):
        with cache_entry_path(path) as tmp:
            _write_vocabulary(model, tmp)
    return path


def _write_vocabulary(model: "Model", path: Path) -> None:
    import gguf

    writer = gguf.GGUFWriter(path, model.arch)
    for key, entry in model.metadata.items():
        if key != "general.architecture":  # the writer has it from its constructor
            writer.add_key_value(key, entry.value, entry.value_type, sub_type=entry.element_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
