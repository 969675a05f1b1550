"""Measure GGUF files through llama.cpp itself (llama-cpp-python): perplexity, KLD and top-1 agreement
against the reference's logits, on held-out text.

Windows follow llama-perplexity: the token stream is cut into consecutive windows of `n_ctx` tokens, each
evaluated from an empty KV cache; when the vocabulary adds BOS, the first token of every window is replaced by
BOS; only the second half of each window is scored (logits at positions n_ctx/2 .. n_ctx-2 predicting the
next token), so every scored token sees at least n_ctx/2 tokens of context. As llama-perplexity does, llama.cpp
computes logits only at those positions, and ramp reads them in place from llama.cpp's buffer; log-softmax, NLL
and KLD run in float32 (sums are numpy's pairwise ones) over blocks of rows on every core, which keeps mean KLD
within 1e-6 nats of float64 arithmetic on the same values, well inside the float16 cache's resolution below.

Reference logits are cached on disk as the full log-softmax in float16, one row per scored position
(n_vocab x 2 bytes each, the same resolution llama-perplexity's --kl-divergence-base file keeps), written
window by window into a memory-mapped .npy so neither computing nor reading it holds it all in memory;
the reference's top-1 token per position is stored beside it from the unrounded values.
float16 keeps log-probs to a relative 2^-11, so mean KLD(P_ref || P_q) over the full vocabulary stays within
1e-4 nats of the float64 value (1e-5 measured on the embedded model with Q4_K; tests/test_eval.py checks
it on a tiny model). Truncating to the
reference's top-k tokens instead was measured and rejected: this model's distributions are heavy-tailed
(median 4,700 tokens to cover 99.9% of the mass), and a top-256 cut under-reported KLD by about 7%.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from ramp.errors import RampError
from ramp.evaluate.intervals import DEFAULT_RESAMPLES, DEFAULT_SEED, RatioInterval
from ramp.files import cache_dir, file_sha256, text_sha256
from ramp.models.tokenizer import token_windows
from ramp.machine import usable_cores

if TYPE_CHECKING:
    from ramp.models.model import MetadataValue

DEFAULT_N_CTX = 512


@dataclass(frozen=True)
class Windows:
    """The tokens llama.cpp evaluates, cut and BOS-patched exactly once so every model sees the same input."""

    tokens: np.ndarray  # [n_windows, n_ctx] int32
    text_sha256: str

    @property
    def n_ctx(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def first_scored(self) -> int:
        return self.n_ctx // 2

    @property
    def targets(self) -> np.ndarray:
        """[n_windows, n_scored]: the token each scored position predicts."""
        return self.tokens[:, self.first_scored + 1 :]

    @property
    def n_scored(self) -> int:
        return int(self.targets.size)


@dataclass(frozen=True)
class EvalResult:
    name: str
    path: str
    file_bytes: int
    bits_per_weight: float
    n_tokens: int
    perplexity: float
    kld_mean: float
    kld_median: float
    kld_p99: float
    top1_agreement: float
    # Per window, the mean KLD and NLL of its scored tokens (every window scores as many): what paired
    # bootstrap intervals between two files measured on the same windows resample (`ramp.evaluate.intervals`)
    window_kld: tuple[float, ...] = ()
    window_nll: tuple[float, ...] = ()
    # For a row that is not a preset, its mean KLD over the preset's nearest in size, with the paired bootstrap
    # interval (`ramp.evaluate.intervals.RatioInterval.as_dict` plus the preset's name under "preset")
    kld_ratio: dict | None = None
    # What the row was made and measured with, filled in by the command that knows (`annotate`)
    text: str = ""
    imatrix: bool | None = None  # quantized with an importance matrix
    source_match: float | None = None  # share of quantizable weights equal to the source checkpoint's
    at_or_above_source: bool | None = None  # file at least as large as the source checkpoint

    def as_dict(self) -> dict:
        return asdict(self)

    def annotate(self, text: str, imatrix: bool | None, source_match: float | None, source_bytes: int | None) -> "EvalResult":
        from dataclasses import replace

        return replace(self, text=text, imatrix=imatrix, source_match=source_match,
                       at_or_above_source=None if source_bytes is None else self.file_bytes >= source_bytes)


def _check_gguf(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise RampError(f"GGUF file {path} does not exist; pass the path of a .gguf file")
    if not path.is_file():
        raise RampError(f"{path} is not a regular file; pass the path of a .gguf file")
    if not os.access(path, os.R_OK):
        raise RampError(f"cannot read {path}: permission denied; check the file's permissions")
    return path


def open_llama(path: str | os.PathLike, n_ctx: int = DEFAULT_N_CTX, logits_all: bool = False):
    """A llama_cpp.Llama on the file, one batch per window, all cores. Which positions get logits is chosen per
    batch (`scored_logits`), so the output layer runs only where a token is scored; `logits_all` keeps every
    position's logits in `Llama.scores` after `eval` (for comparing whole sequences with another runtime)."""
    import llama_cpp

    from ramp.llama_tools import quiet_llama

    path = _check_gguf(path)
    try:
        with quiet_llama():
            return llama_cpp.Llama(
                str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                n_threads=usable_cores(), n_threads_batch=usable_cores(), logits_all=logits_all, verbose=False,
            )
    except ValueError as exc:
        raise RampError(f"llama.cpp cannot load {path} ({exc}); is it a complete GGUF of a supported model? re-export it") from None


def check_window_length(n_ctx: int) -> int:
    """An evaluation window scores its second half: an even length of at least 4 tokens."""
    if n_ctx < 4 or n_ctx % 2:
        raise RampError(f"window length {n_ctx} must be an even number of at least 4 tokens")
    return n_ctx


def make_windows(gguf_path: str | os.PathLike, text: str, n_ctx: int = DEFAULT_N_CTX, max_windows: int | None = None) -> Windows:
    """The evaluation windows of `text` (`ramp.models.tokenizer.token_windows`), scored from their second half."""
    check_window_length(n_ctx)
    return Windows(token_windows(gguf_path, text, n_ctx, max_windows), text_sha256(text))


def scored_logits(path: str | os.PathLike, windows: Windows, desc: str) -> Iterator[np.ndarray]:
    """Per window, llama.cpp's float32 logits [n_scored, n_vocab] at the scored positions only, as
    llama-perplexity asks for them: the output layer (for a 262k vocabulary, more weights than the rest of a
    small model) runs on nothing else. Each array is a view of llama.cpp's own output buffer, valid until the
    next window is asked for, so nothing of n_ctx x n_vocab is ever copied."""
    import llama_cpp
    from tqdm import tqdm

    llm = open_llama(path, windows.n_ctx)
    n_ctx, first = windows.n_ctx, windows.first_scored
    n_scored = n_ctx - 1 - first
    batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)
    try:
        batch.n_tokens = n_ctx
        for position in range(n_ctx):
            batch.pos[position] = position
            batch.n_seq_id[position] = 1
            batch.seq_id[position][0] = 0
            batch.logits[position] = first <= position < n_ctx - 1
        tokens = np.ctypeslib.as_array(batch.token, shape=(n_ctx,))
        n_vocab = llm.n_vocab()
        memory = llama_cpp.llama_get_memory(llm.ctx)
        for window in tqdm(windows.tokens, desc=desc, unit="window", leave=False):
            llama_cpp.llama_memory_clear(memory, True)  # every window from an empty KV cache
            tokens[:] = window
            status = llama_cpp.llama_decode(llm.ctx, batch)
            if status != 0:
                raise RampError(f"llama.cpp failed to evaluate a window of {path} (llama_decode returned {status}); "
                                "check the file loads with llama-cli")
            yield np.ctypeslib.as_array(llama_cpp.llama_get_logits(llm.ctx), shape=(n_scored, n_vocab))
    finally:
        llama_cpp.llama_batch_free(batch)
        llm.close()


# Rows of a window handled per step: a few MB of temporaries at a 262k vocabulary, which stay in cache;
# steps run on all cores (numpy releases the GIL inside its loops).
_ROWS_PER_STEP = 8


def _by_row_blocks(n_rows: int, work) -> None:
    """Run work(rows) over consecutive row blocks on every core."""
    from concurrent.futures import ThreadPoolExecutor

    blocks = [slice(start, min(start + _ROWS_PER_STEP, n_rows)) for start in range(0, n_rows, _ROWS_PER_STEP)]
    with ThreadPoolExecutor(usable_cores()) as pool:
        list(pool.map(work, blocks))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float32 log-probs of float32 logits. The normaliser's sum is numpy's pairwise float32 sum (relative
    error about 1e-7 at a 262k vocabulary), far below the float16 rounding of the reference cache."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    shifted -= np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return shifted


@dataclass(frozen=True)
class ReferenceLogits:
    file: Path  # the cached log-probs, [n_windows * n_scored, n_vocab] float16 (.npy)
    top1: np.ndarray  # [n_windows * n_scored] int32: argmax before rounding, so near-ties are not flipped
    path: str = ""  # the reference GGUF, which every evaluated file must be a model of (`check_same_model`)

    @property
    def logprobs(self) -> np.ndarray:
        """The log-probs, memory-mapped afresh on each use: the mapping goes with the slice taken of it, so a
        152k-token vocabulary's 2.5 GB never count in the evaluating process's memory at once."""
        return np.load(self.file, mmap_mode="r")


def _reference_cache_path(reference_sha: str, windows: Windows) -> Path:
    n_windows, n_ctx = windows.tokens.shape
    key = f"{reference_sha[:16]}-text{windows.text_sha256[:16]}-ctx{n_ctx}-w{n_windows}"
    return cache_dir() / "reference_logits" / f"{key}.npy"


def reference_logprobs(path: str | os.PathLike, windows: Windows) -> ReferenceLogits:
    """The reference's float16 log-probs at every scored position, memory-mapped from the cache, computed
    through llama.cpp the first time. Both cache files are sealed (`ramp.cache_entries`): a truncated or
    altered one is computed again, never read."""
    from ramp.cache_entries import cache_entry_path, trusted_entry
    from ramp.files import check_output_path

    cache = _reference_cache_path(file_sha256(_check_gguf(path)), windows)
    top1_cache = cache.with_suffix(".top1.npy")
    n_scored = windows.n_ctx - 1 - windows.first_scored
    n_rows = len(windows.tokens) * n_scored

    def logprobs_fit(entry: Path) -> bool:
        stored = np.load(entry, mmap_mode="r")  # a truncated file fails to map
        return stored.dtype == np.float16 and stored.ndim == 2 and stored.shape[0] == n_rows

    def top1_fits(entry: Path) -> bool:
        return np.load(entry, mmap_mode="r").shape == (n_rows,)

    if not (trusted_entry(cache, logprobs_fit) and trusted_entry(top1_cache, top1_fits)):
        top1 = np.zeros(n_rows, dtype=np.int32)
        with cache_entry_path(cache) as tmp:
            out = None
            for index, logits in enumerate(scored_logits(path, windows, "reference logits")):
                if out is None:
                    shape = (n_rows, logits.shape[1])
                    # writes through a memory map do not fail, they kill the process: check the space first
                    check_output_path(cache, needed_bytes=2 * shape[0] * shape[1], elsewhere="set RAMP_CACHE to a folder with room")
                    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)

                def store(rows: slice, logits: np.ndarray = logits, base: int = index * n_scored,
                          target: np.ndarray = out) -> None:
                    at = slice(base + rows.start, base + rows.stop)
                    target[at] = log_softmax(logits[rows])
                    top1[at] = logits[rows].argmax(axis=-1)  # the logits' argmax is the log-probs'

                _by_row_blocks(n_scored, store)
            out.flush()
            del out
            with cache_entry_path(top1_cache) as top1_tmp, open(top1_tmp, "wb") as handle:
                np.save(handle, top1)
    return ReferenceLogits(cache, np.load(top1_cache), str(path))


def exact_token_kld(reference_logits: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """KLD(P_ref || P) per row in float64 from two files' raw logits: for differences near the float16
    reference cache's rounding (1e-5 nats), which `evaluate` cannot resolve."""
    reference, ours = log_softmax(reference_logits.astype(np.float64)), log_softmax(logits.astype(np.float64))
    return (np.exp(reference) * (reference - ours)).sum(axis=-1)


def _score_rows(logits: np.ndarray, targets: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(NLL of the targets, KLD(P_ref || P_q) over the full vocabulary) per row, from float32 logits and the
    reference's float16 log-probs. KLD is summed term by term (p_ref * (log p_ref - log p_q)), never as a
    difference of two large sums, so float32 keeps it to about 1e-7 of the row's total |terms|."""
    logprobs = log_softmax(logits)
    nll = -logprobs[np.arange(len(targets)), targets].astype(np.float64)
    terms = reference.astype(np.float32)
    weights = np.exp(terms)
    terms -= logprobs
    terms *= weights
    return nll, terms.sum(axis=-1).astype(np.float64)


def gguf_size_stats(path: str | os.PathLike) -> tuple[int, float]:
    """(file bytes, bits per weight) where bits per weight is llama.cpp's: tensor data bits / parameters."""
    from ramp.models.gguf import read_gguf

    path = _check_gguf(path)
    reader = read_gguf(path)
    size = path.stat().st_size
    for tensor in reader.tensors:
        if tensor.data_offset + tensor.n_bytes > size:
            raise RampError(f"{path} is truncated: tensor {tensor.name} runs past the end of the file; re-export or re-download it")
    data_bytes = sum(int(t.n_bytes) for t in reader.tensors)
    n_params = sum(int(t.n_elements) for t in reader.tensors)
    return size, 8.0 * data_bytes / n_params


def gguf_signature(path: str | os.PathLike) -> dict[str, object]:
    """What makes a GGUF the model it is, whatever its tensor types: architecture, tensor names and shapes,
    vocabulary (count and a hash of the tokens), and the checkpoint ramp recorded it was made from."""
    from ramp.models.model import ORIGIN_KEY
    from ramp.models.gguf import read_gguf

    reader = read_gguf(path)
    fields = reader.fields
    tokens = fields["tokenizer.ggml.tokens"].value if "tokenizer.ggml.tokens" in fields else []
    vocabulary = hashlib.sha256()
    for token in tokens:
        vocabulary.update(token.encode("utf-8") + b"\0")
    text = lambda key: str(fields[key].value) if key in fields else None  # noqa: E731
    return {
        "architecture": text("general.architecture"),
        "tensors": {tensor.name: tuple(int(d) for d in tensor.shape) for tensor in reader.tensors},
        "vocabulary": (len(tokens), vocabulary.hexdigest()),
        "origin": text(ORIGIN_KEY),
    }


def check_finite_results(results: "list[EvalResult]") -> None:
    """A file whose log-probabilities are NaN or infinite (NaN or Inf weights that llama.cpp computes with)
    has no perplexity or KLD: one line naming it, not NaN in a table and a JSON."""
    for result in results:
        if not np.isfinite([result.perplexity, result.kld_mean, result.kld_p99]).all():
            raise RampError(f"{result.path} gives non-finite log-probabilities (perplexity {result.perplexity}, KLD "
                            f"{result.kld_mean}): its weights hold NaN or Inf; re-export it from a model with finite weights")


def check_reference(reference: str | os.PathLike, n_ctx: int) -> None:
    """A reference KLD can be measured against: unquantized (a quantized one would label its own errors
    "reference" and make every file's KLD a distance to it), and windows of `n_ctx` within the context it
    was trained on (beyond it llama.cpp either refuses to load it or scores positions the model never saw)."""
    from ramp.models.gguf import read_gguf

    fields = read_gguf(_check_gguf(reference)).fields
    quantized = [tensor for tensor in read_gguf(reference).tensors if tensor.tensor_type.name not in ("F32", "F16", "BF16")]
    if quantized:
        raise RampError(f"the reference {reference} is quantized ({quantized[0].name} is {quantized[0].tensor_type.name}); "
                        "KLD is measured against the unquantized model: pass its F32 or F16 file (`ramp export --reference F32`)")
    arch = fields["general.architecture"].value if "general.architecture" in fields else None
    check_context(n_ctx, fields.get(f"{arch}.context_length"), str(reference))


def check_context(n_ctx: int, trained: MetadataValue | None, model: str) -> None:
    """Evaluation windows within the context the model was trained on (its `<arch>.context_length`)."""
    if trained is not None and n_ctx > int(trained.value):
        raise RampError(f"--ctx {n_ctx} is beyond the {int(trained.value)} tokens of context {model} was trained on; "
                        f"pass --ctx {int(trained.value)} or less")


def check_same_model(reference: str | os.PathLike, path: str | os.PathLike) -> None:
    """Refuse to measure `path` against a reference of another model: its KLD and top-1 would look like a
    (very bad) quantization, and another vocabulary would not even line up. Cheap: headers only."""
    ours, theirs = gguf_signature(_check_gguf(reference)), gguf_signature(_check_gguf(path))
    why = None
    if ours["architecture"] != theirs["architecture"]:
        why = f"it is a {theirs['architecture']} model, the reference a {ours['architecture']} one"
    elif ours["tensors"] != theirs["tensors"]:
        first = next(name for name in sorted(set(ours["tensors"]) | set(theirs["tensors"]))
                     if ours["tensors"].get(name) != theirs["tensors"].get(name))
        why = (f"its tensor {first} is {theirs['tensors'].get(first, 'missing')}, the reference's "
               f"{ours['tensors'].get(first, 'missing')}")
    elif ours["vocabulary"] != theirs["vocabulary"]:
        why = f"its vocabulary ({theirs['vocabulary'][0]:,d} tokens) differs from the reference's ({ours['vocabulary'][0]:,d})"
    elif ours["origin"] and theirs["origin"] and ours["origin"] != theirs["origin"]:
        why = f"it was made from another checkpoint (sha256 {theirs['origin'][:12]}, the reference's {ours['origin'][:12]})"
    if why:
        raise RampError(f"{path} is not a model of the reference {reference}: {why}; evaluate files made from the "
                        "reference's model, or pass that model's reference")


def evaluate(path: str | os.PathLike, reference: ReferenceLogits, windows: Windows, name: str | None = None) -> EvalResult:
    """Perplexity of `path` on the windows and its divergence from the reference log-probs."""
    path = _check_gguf(path)
    if reference.path:
        check_same_model(reference.path, path)
    file_bytes, bpw = gguf_size_stats(path)
    n_scored = windows.n_ctx - 1 - windows.first_scored
    nll, kld = np.empty(windows.n_scored), np.empty(windows.n_scored)
    agree = np.empty(windows.n_scored, dtype=bool)
    for index, (logits, targets) in enumerate(zip(scored_logits(path, windows, f"eval {path.name}"), windows.targets)):
        if logits.shape[1] != reference.logprobs.shape[1]:
            raise RampError(f"{path} scores {logits.shape[1]:,d} tokens, the reference {reference.logprobs.shape[1]:,d}: "
                            "it is not a model of the reference; evaluate files made from the reference's model")

        def score(rows: slice, logits: np.ndarray = logits, targets: np.ndarray = targets, base: int = index * n_scored) -> None:
            at = slice(base + rows.start, base + rows.stop)
            nll[at], kld[at] = _score_rows(logits[rows], targets[rows], reference.logprobs[at])
            agree[at] = logits[rows].argmax(axis=-1) == reference.top1[at]

        _by_row_blocks(n_scored, score)
    return _result(name or path.stem, path, file_bytes, bpw, nll, kld, agree, len(windows.tokens))


def reference_result(path: str | os.PathLike, reference: ReferenceLogits, windows: Windows, name: str = "reference") -> EvalResult:
    """The reference's own row from its cached log-probs (no second pass): zero divergence by definition."""
    path = _check_gguf(path)
    file_bytes, bpw = gguf_size_stats(path)
    targets = windows.targets.reshape(-1)
    n_scored = windows.n_ctx - 1 - windows.first_scored
    nll = np.empty(len(targets))
    for start in range(0, len(targets), n_scored):  # a window at a time: each mapping holds only its own rows
        rows = np.arange(start, min(start + n_scored, len(targets)))
        nll[rows] = -reference.logprobs[rows, targets[rows]].astype(np.float64)
    return _result(name, path, file_bytes, bpw, nll, np.zeros(len(nll)), np.ones(len(nll), dtype=bool), len(windows.tokens))


def _result(name: str, path: Path, file_bytes: int, bpw: float, nll: np.ndarray, kld: np.ndarray, agree: np.ndarray,
            n_windows: int) -> EvalResult:
    return EvalResult(
        name=name, path=str(path), file_bytes=file_bytes, bits_per_weight=bpw, n_tokens=len(nll),
        perplexity=float(np.exp(nll.mean())), kld_mean=float(kld.mean()), kld_median=float(np.median(kld)),
        kld_p99=float(np.percentile(kld, 99)), top1_agreement=float(agree.mean()),
        window_kld=tuple(float(mean) for mean in kld.reshape(n_windows, -1).mean(axis=1)),
        window_nll=tuple(float(mean) for mean in nll.reshape(n_windows, -1).mean(axis=1)),
    )


def preset_in_name(name: str) -> str | None:
    """The llama.cpp preset a row's name says it is (`Q4_K_M imatrix`, `smollm2-Q4_K_M`), or None."""
    import llama_cpp

    for part in re.split(r"[-. ]+", name):
        if hasattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{part.upper()}"):
            return part
    return None


def with_kld_ratios(results: list[EvalResult], resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> list[EvalResult]:
    """Each measured row that is not a preset, with its mean KLD's ratio to the preset nearest in file size
    and the ratio's paired bootstrap interval over the windows both were scored on."""
    from dataclasses import replace

    from ramp.evaluate.intervals import paired_bootstrap_ratio

    presets = [r for r in results if preset_in_name(r.name) and r.kld_mean > 0 and len(r.window_kld) > 1]
    rated = []
    for result in results:
        rivals = [p for p in presets if len(p.window_kld) == len(result.window_kld)]
        if result in presets or result.kld_mean <= 0 or not rivals:
            rated.append(result)
            continue
        nearest = min(rivals, key=lambda p: abs(p.file_bytes - result.file_bytes))
        interval = paired_bootstrap_ratio(result.window_kld, nearest.window_kld, resamples=resamples, seed=seed)
        rated.append(replace(result, kld_ratio={"preset": nearest.name, **interval.as_dict()}))
    return rated


def format_table(results: list[EvalResult]) -> str:
    """One line per file; with annotations, whether it used an importance matrix, the share of weights equal
    to the source checkpoint's, and a `*` on files at or above the source's size (no claim is made there);
    for rows compared with a preset (`with_kld_ratios`), the KLD ratio and its 95% interval."""
    annotated = any(r.source_match is not None or r.imatrix is not None for r in results)
    rated = [r for r in results if r.kld_ratio]
    header = f"{'model':<24} {'file bytes':>12} {'bpw':>6} {'PPL':>9} {'KLD mean':>9} {'KLD med':>9} {'KLD p99':>9} {'top-1':>7}"
    header += f" {'imatrix':>7} {'=source':>7}" if annotated else ""
    header += "  KLD / nearest preset [95% CI]" if rated else ""
    lines = [header, "-" * len(header)]
    for r in results:
        line = (f"{r.name + ('*' if r.at_or_above_source else ''):<24} {r.file_bytes:>12,d} {r.bits_per_weight:>6.3f} "
                f"{r.perplexity:>9.4f} {r.kld_mean:>9.5f} {r.kld_median:>9.5f} {r.kld_p99:>9.4f} {r.top1_agreement:>7.2%}")
        if annotated:
            used = "-" if r.imatrix is None else ("yes" if r.imatrix else "no")
            line += f" {used:>7} {'-' if r.source_match is None else f'{r.source_match:.1%}':>7}"
        if r.kld_ratio:
            line += f"  {RatioInterval(**{k: v for k, v in r.kld_ratio.items() if k != 'preset'}).compact()} vs {r.kld_ratio['preset']}"
        lines.append(line)
    if any(r.at_or_above_source for r in results):
        lines.append("* at or above the source checkpoint's size: its format can reproduce the source's grid, no claim is made there")
    if rated:
        first = rated[0].kld_ratio
        lines.append(f"KLD ratios: paired bootstrap over the {first['windows']} windows ({first['resamples']:,d} resamples, "
                     f"seed {first['seed']}); below 1 with the interval's upper end below 1 is a claim of better")
    return "\n".join(lines)


def report_results(results: list[EvalResult], windows: Windows, json_path: str | None) -> None:
    """Print the table (and write the rows, with their KLD ratios to the nearest preset, as JSON) the same way
    for `ramp eval` and `ramp run`."""
    import json

    from ramp.files import atomic_output

    results = with_kld_ratios(results)
    text = results[0].text if results and results[0].text else "held-out"
    print(f"{windows.n_scored:,d} scored tokens in {len(windows.tokens)} windows of {windows.n_ctx} ({text} text, held-out half)")
    print(format_table(results))
    if json_path:
        with atomic_output(json_path, "w") as handle:
            json.dump([result.as_dict() for result in results], handle, indent=1)
            handle.write("\n")
