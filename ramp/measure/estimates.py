"""Damage per (tensor, format) estimated from a few passes over calibration text, instead of the measured
sweep's one forward per (tensor, format) (`ramp.measure.sensitivity`): cheap enough for models where the sweep would
take hours. Every estimate is  sum over the weights of  weight x (Q(w) - w)^2, where Q(w) is llama.cpp's own
quantization of the tensor with its importance-matrix entry (the weights `llama-quantize --imatrix` writes,
the same `DequantCache` bytes the sweep and the export use); the estimates differ in the weight:

- `imatrix-error`: the squared error llama.cpp PR #15550 (`--target-bpw`) weighs by the importance matrix,
  importance[col] = mean over calibration tokens of the column's squared input activation, summed over rows
  and columns (not normalised per row as the PR's allocator does, see `ramp.allocate.target_bpw`). Under a
  diagonal model of the input covariance this is the mean squared change of the layer's output per token.
  Tensors without an imatrix entry get the same quantity from one extra forward: the output projection's
  importance is its input's mean square (llama-imatrix leaves it out without --process-output); token_embd
  is a row lookup, so row r weighs by token r's share of the calibration tokens (times Gemma's embedding
  scale squared: the change of the hidden state entering block 0); a tied embedding is both and gets the
  sum. Units: squared activations, different per tensor role; only the ranking within one model means
  anything, not KLD.
- `fisher`: 1/2 sum F (Q(w) - w)^2 with F the diagonal Fisher information per token: the mean squared
  gradient of log q(y) w.r.t. each weight, y drawn from the model's own prediction at every position. Its
  expectation is the Hessian of KL(model || perturbed) at the model, so the estimate is the second-order
  Taylor expansion of the mean KLD the sweep measures, diagonal part only: approximately KLD in nats. One
  backward per window: with labels drawn independently per position and the inputs fixed, the cross terms
  of the window gradient's square vanish in expectation, so sum over windows of g^2 / tokens is unbiased.
  `labels="text"` takes the text's next tokens instead (the empirical Fisher of the loss; its cross terms do
  not vanish).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from ramp.measure.calibration import ESTIMATE, CalibrationSpec, calibration_tokens
from ramp.measure.ladder import DEFAULT_LADDER
from ramp.machine import release_memory
from ramp.models.model import Model, TensorSpec
from ramp.models.store import beyond_cache, tensor_rows
from ramp.measure.sensitivity_table import SensitivityTable

if TYPE_CHECKING:
    import torch

    from ramp.measure.imatrix import ImportanceMatrix

IMATRIX_ERROR = "imatrix-error"
FISHER = "fisher"
ESTIMATES = (IMATRIX_ERROR, FISHER)
MEASURES = {
    IMATRIX_ERROR: "imatrix-error: sum of importance x (Q(w) - w)^2 (squared activations; relative within one model, not KLD)",
    FISHER: "fisher: 1/2 sum F (Q(w) - w)^2, diagonal Fisher of the model's own predictions (second-order KLD, approx. nats)",
}
STAND_IN = "weight-error stand-in"
FISHER_LABELS = ("model", "text")
_CHUNK_ELEMENTS = 1 << 22  # float64 temporaries of reductions stay at 32 MiB
AUTO = "auto"
# The measured sweep's work in forwards x quantizable weights x tokens, and what it cost on two idle cores:
# SmolLM2-135M, 964 x 1.3e8 x 256 = 3.3e13, about 7 minutes; Gemma 3 270M, 652 x 2.7e8 x 256 = 4.5e13, about
# 16 minutes (its 262k vocabulary makes each forward dearer); Qwen2.5-1.5B 6e14, hours. The Fisher estimate
# takes a minute or two on any of them, agrees with the measured table to Spearman 0.997 on SmolLM2 and gives
# ramp's row the same 0.55x the Q4_K_M preset on its twin (docs/BENCHMARKS.md): past about two minutes of sweep
# it takes the sweep's place, which is what keeps the default `ramp run` within 8 minutes.
SWEEP_WORK_PER_MINUTE = 3.3e13 / 7
SWEEP_WORK_LIMIT = 1e13


def choose_damage(model: Model, formats: list[str] | tuple[str, ...], n_tokens: int) -> tuple[str, str]:
    """`--damage auto`: the measured KLD sweep ("kld") where it finishes in minutes on two cores, else the
    Fisher estimate; with the reason, for the user to read."""
    from ramp.measure.sensitivity import sweep_cells

    forwards = len(sweep_cells(model, formats))
    work = forwards * model.n_quantizable_params * n_tokens
    sweep = (f"the measured sweep takes {forwards} forwards of {n_tokens} tokens of a {model.n_quantizable_params / 1e9:.2f}B-weight "
             f"model, about {max(1, round(work / SWEEP_WORK_PER_MINUTE)):,d} min on two cores")
    if work <= SWEEP_WORK_LIMIT:
        return "kld", sweep
    return FISHER, f"{sweep}, the Fisher estimate a minute or two (`--damage kld` measures anyway)"


def row_weighted_squares(error: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
    """Per row r of a [rows, cols] error: sum_j weight[r, j] * error[r, j]^2, accumulated in float64.

    `weight` broadcasts against the error: [cols] (per column), [rows, 1] (per row), [rows, cols], or None
    (all ones). Rows are reduced in chunks, so a large embedding never gets a float64 copy.
    """
    rows = error.shape[0]
    step = max(1, _CHUNK_ELEMENTS // max(1, error.shape[1]))
    weight = None if weight is None else np.asarray(weight)
    per_row = weight is not None and weight.ndim == 2 and weight.shape[0] == rows
    result = np.empty(rows, dtype=np.float64)
    for start in range(0, rows, step):
        chunk = np.square(error[start:start + step], dtype=np.float64)
        if weight is not None:
            chunk *= weight[start:start + step] if per_row else weight
        result[start:start + step] = chunk.sum(axis=1)
    return result


# Rows of a tensor whose quantization error is formed at once: a 152k-token embedding's error is never whole.
_BAND_ELEMENTS = 1 << 23

# damage_of(spec, error, rows): the damage per row of a band `rows` of a tensor, from their quantization error
DamageOf = Callable[[TensorSpec, np.ndarray, slice], np.ndarray]
# reduce(spec, per_row): the tensor's damage from every row's (by default their sum)
Reduce = Callable[[TensorSpec, np.ndarray], float]


def _sum(spec: TensorSpec, per_row: np.ndarray) -> float:
    return float(per_row.sum())


def error_table(
    model: Model, formats: list[str] | tuple[str, ...], imatrix: "ImportanceMatrix | None",
    damage_of: DamageOf, measure: str, calibration_sha256: str = "",
    extra: dict | None = None, progress: bool = True, reduce: Reduce = _sum,
) -> SensitivityTable:
    """The table with damage[tensor, format] = reduce(spec, damage_of(spec, Q(w) - w, rows) of every row), Q(w) being
    llama.cpp's quantization of the tensor in the format it really writes (ladder formats that fall back alike are
    quantized once) with the tensor's importance-matrix entry, as llama-quantize --imatrix does."""
    from tqdm import tqdm

    errors = QuantizationErrors(model, formats, imatrix)
    damage = np.zeros((len(model.quantizable), len(errors.formats)))
    with tqdm(total=len(model.quantizable), desc="quantization error", unit="tensor", disable=not progress, leave=False) as bar:
        for row, spec in enumerate(model.quantizable):
            damage[row] = errors.row(spec, damage_of, reduce)
            bar.update()
    return errors.table(damage, measure, calibration_sha256, extra)


class QuantizationErrors:
    """A tensor's damage row, one per ladder format, from its quantization errors (`error_table`): formats run on
    both cores (the subtraction and `damage_of` are single-threaded numpy, the quantization itself already spreads
    its rows), so `damage_of` must be safe to call from several threads; rows are taken in bands, so memory holds
    the tensor, its packed bytes and a band per worker, never a second float32 copy of the tensor."""

    def __init__(self, model: Model, formats: list[str] | tuple[str, ...], imatrix: "ImportanceMatrix | None") -> None:
        from ramp.kernels import DequantCache, get_format  # ramp.kernels loads torch: not at CLI start

        self.model = model
        self.formats = [get_format(name).name for name in formats]
        self.imatrix = imatrix
        importance = imatrix.importances(model) if imatrix is not None else None
        # the disk cache keeps the packed bytes: the sweep, the export and a second estimate share them; not for a model
        # larger than the weight cache, whose ladder of packed bytes (about 5x its Q4 checkpoint: 38 GB for a 7B)
        # would fill the disk for the export's reuse of one format per tensor
        self.weights = DequantCache(model, backend="ggml", importance=importance, max_memory_bytes=0,
                                    use_disk=not beyond_cache(model.tensors))

    def row(self, spec: TensorSpec, damage_of: DamageOf, reduce: Reduce = _sum) -> np.ndarray:
        from concurrent.futures import ThreadPoolExecutor

        from ramp.kernels import dequantize, resolve_format, tensor_bytes

        real_formats = list(dict.fromkeys(resolve_format(fmt, spec.row_length).name for fmt in self.formats))
        n_rows, row_length = spec.shape
        band = max(1, _BAND_ELEMENTS // row_length)

        def damage_for(real: str) -> float:
            per_row = np.zeros(n_rows)
            if real != "F32":  # F32 is written as it is: no error
                packed = self.weights.packed(spec.name, real)
                row_bytes = tensor_bytes((1, row_length), real)
                for start in range(0, n_rows, band):
                    rows = slice(start, min(start + band, n_rows))
                    error = dequantize(packed[rows.start * row_bytes:rows.stop * row_bytes], real,
                                       (rows.stop - rows.start, row_length), "ggml")
                    original = tensor_rows(self.model.tensors, spec.name, rows.start, rows.stop)
                    per_row[rows] = damage_of(spec, np.subtract(error, original, out=error), rows)
            return reduce(spec, per_row)

        # two workers: more would add memory, not cores, on two
        with ThreadPoolExecutor(max_workers=2) as pool:
            by_format = dict(zip(real_formats, pool.map(damage_for, real_formats)))
        release_memory()  # the workers' bands, freed, would otherwise stay in the heap tensor after tensor
        return np.array([by_format[resolve_format(fmt, spec.row_length).name] for fmt in self.formats])

    def table(self, damage: np.ndarray, measure: str, calibration_sha256: str = "", extra: dict | None = None) -> SensitivityTable:
        imatrix = self.imatrix
        return SensitivityTable([spec.name for spec in self.model.quantizable], self.formats, damage, measure,
                                self.model.sha256, calibration_sha256,
                                {"imatrix": imatrix.content_sha256() if imatrix else None, **(extra or {})})


def weight_error_table(model: Model, formats: list[str] | tuple[str, ...], imatrix: "ImportanceMatrix | None" = None,
                       progress: bool = True) -> SensitivityTable:
    """The stand-in: the plain summed squared weight error, blind to how much each tensor matters."""
    return error_table(model, formats, imatrix, lambda spec, error, rows: row_weighted_squares(error),
                       STAND_IN, progress=progress)


@dataclass
class OutputStatistics:
    """What the importance matrix lacks, from one forward over calibration tokens."""

    head_importance: np.ndarray  # [n_embd]: mean squared input of the output projection per column
    token_share: np.ndarray  # [n_vocab]: share of the calibration tokens that look up each embedding row
    embed_scale: float  # the forward multiplies looked-up rows by it (Gemma: sqrt(n_embd))
    n_tokens: int


def output_statistics(model: Model, tokens: "torch.Tensor", device: str = "cpu", progress: bool = True) -> OutputStatistics:
    """Mean squared input of the output projection (tied or not) and token frequencies over `tokens`."""
    import torch

    from ramp.measure.forward import Forward

    forward = Forward(model, device)
    total = torch.zeros(model.shape(forward.output_name)[1], dtype=torch.float64)

    def capture(name: str, x: "torch.Tensor") -> None:
        if name == "output.weight":
            total.add_(x.reshape(-1, x.shape[-1]).double().square().sum(0).cpu())

    forward.observe(list(torch.split(tokens, 1)), capture, output=True)
    n_vocab = model.shape("token_embd.weight")[0]
    counts = np.bincount(tokens.reshape(-1).numpy(), minlength=n_vocab)[:n_vocab]
    n_tokens = int(tokens.numel())
    return OutputStatistics((total / n_tokens).numpy(), counts / n_tokens, float(forward.embed_scale), n_tokens)


def imatrix_error_table(
    model: Model, calibration: "CalibrationSpec | torch.Tensor" = ESTIMATE, imatrix: "ImportanceMatrix | None" = None,
    formats: list[str] | tuple[str, ...] = DEFAULT_LADDER, device: str = "cpu", progress: bool = True,
    use_cache: bool = True,
) -> SensitivityTable:
    """The `imatrix-error` estimate (module docstring). The calibration windows give the output projection's
    and the embedding's weights, and every blk tensor's importance where `imatrix` is None or lacks it."""
    from ramp.measure.forward import tokens_sha256
    from ramp.measure.imatrix import compute_imatrix
    from ramp.measure.sensitivity import cache_table, cached_table

    tokens, record = calibration_tokens(model, calibration)
    formats = _formats(formats)
    path = _cache_path(model, tokens, formats, imatrix, IMATRIX_ERROR) if use_cache else None
    if (cached := cached_table(path, model, formats, record)) is not None:
        return cached
    stats = output_statistics(model, tokens, device, progress)
    fallback = imatrix  # llama-imatrix's statistic on these tokens, for blk tensors the file lacks
    if imatrix is None or any(imatrix.importance(spec.name) is None for spec in model.quantizable
                              if spec.name.startswith("blk.")):
        fallback = compute_imatrix(model, tokens, device=device, progress=progress)
    tied = "output.weight" not in model.tensors

    def damage_of(spec: TensorSpec, error: np.ndarray, rows: slice) -> np.ndarray:
        if spec.name == "token_embd.weight":
            lookup = stats.token_share[rows] * stats.embed_scale**2 * row_weighted_squares(error)
            return lookup + row_weighted_squares(error, stats.head_importance) if tied else lookup
        if spec.name == "output.weight":
            return row_weighted_squares(error, stats.head_importance)
        importance = imatrix.importance(spec.name) if imatrix is not None else None
        if importance is None:
            importance = fallback.importance(spec.name)
        return row_weighted_squares(error, importance)

    table = error_table(model, formats, imatrix, damage_of, MEASURES[IMATRIX_ERROR], tokens_sha256(tokens),
                        {"estimate": IMATRIX_ERROR, "calibration": record, "tied_embedding": tied}, progress)
    cache_table(path, table)
    return table


def diagonal_fisher(
    model: Model, tokens: "torch.Tensor", labels: str = "model", samples: int = 1, seed: int = 0,
    device: str = "cpu", progress: bool = True, on_tensor: Callable[[str, "torch.Tensor"], None] | None = None,
) -> dict[str, "torch.Tensor"]:
    """Per quantizable tensor, the mean per-token squared gradient of log q(label) (module docstring), in bfloat16:
    one backward per window and label draw; labels drawn from the model's own prediction (`model`) or the
    text's next token (`text`). A tied embedding's entry covers both its uses.

    The backward runs block by block, last first, from the hidden states a forward kept at every block's entrance
    (recomputing one block at a time, as gradient checkpointing does): only one block's weights, gradients and
    Fisher live at once, so a streamed model is read twice and never held. With `on_tensor` each tensor's Fisher is
    handed over as soon as it is complete, and not kept (the dict returned is empty): the damage can be reduced from
    it there, and the whole model's Fisher never exists."""
    import torch
    from tqdm import tqdm

    from ramp.errors import RampError
    from ramp.measure.forward import Forward

    if labels not in FISHER_LABELS:
        raise RampError(f"Fisher labels {labels!r} are not one of {', '.join(FISHER_LABELS)}")
    if samples < 1 or (labels == "text" and samples != 1):
        raise RampError("the Fisher needs one label draw per window with the text's labels, at least one with the model's")
    forward = Forward(model, device)
    windows = [window[None].to(forward.device) for window in tokens]
    n_scored = len(windows) * (tokens.shape[1] - 1 if labels == "text" else tokens.shape[1] * samples)
    fisher: dict[str, torch.Tensor] = {}

    def accumulate(total: "torch.Tensor | None", gradient: "torch.Tensor") -> "torch.Tensor":
        # bfloat16 halves what a Fisher holds; each gradient's square is formed in float32 and rounded once
        # (relative 2^-8), and the damage sums millions of them
        return gradient.square().bfloat16() if total is None else gradient.square().add_(total).bfloat16()

    def finish(name: str, total: "torch.Tensor") -> None:
        mean = total.div_(n_scored)  # in place: bfloat16 division rounds as float32 division then rounding does
        if on_tensor is not None:
            on_tensor(name, mean)
        else:
            fisher[name] = mean

    bar = tqdm(total=forward.n_blocks + 2, desc="fisher", unit="block", disable=not progress, leave=False)
    entering: list[list[torch.Tensor]] = [[] for _ in range(forward.n_blocks + 1)]
    with torch.no_grad():  # not inference mode: the kept states are recomputed from, with gradients
        forward.blocks([forward.embed(window) for window in windows], keep=entering)
    bar.update()

    # the head, per window and draw, by hand so that the output weight is read in row bands (`Forward.bands`): its
    # gradient dz^T x and the hidden states' dz W, with dz = softmax - onehot(label) (times the soft-cap's slope)
    generator = torch.Generator().manual_seed(seed)
    output_name = forward.output_name
    tied = output_name == "token_embd.weight"
    output_total = torch.zeros(model.shape(output_name), dtype=torch.bfloat16, device=forward.device)
    lookups = [torch.unique(window[0], return_inverse=True) for window in windows]  # rows each window looks up
    head_rows: list[torch.Tensor] = []  # tied: the head's gradient on those rows, added to the lookup's below
    grads: list[torch.Tensor] = []  # per (window, draw): d loss / d the hidden states leaving the current block
    for w, window in enumerate(windows):
        h = entering[forward.n_blocks][w].detach().requires_grad_()
        with torch.enable_grad():
            x = forward.head_input(h)
        flat = x.detach()[0]
        with torch.no_grad():
            z = forward.head(h.detach())[0].float()
            slope = None
            if forward.logit_softcap > 0:
                slope = 1 - (z / forward.logit_softcap).square()  # z is capped already: d cap(u) / du = 1 - tanh(u)^2
            probabilities = torch.softmax(z, dim=-1)
            del z
            scored = torch.arange(flat.shape[0] - (1 if labels == "text" else 0), device=forward.device)
            if labels == "text":  # position t predicts token t + 1; the last position has no label
                targets = window[0, 1:, None]
            else:
                targets = torch.multinomial(probabilities.cpu(), samples, replacement=True,
                                            generator=generator).to(forward.device)
            for draw in range(samples):
                dz = probabilities.clone()
                dz[scored, targets[:, draw]] -= 1
                if labels == "text":
                    dz[-1] = 0
                if slope is not None:
                    dz *= slope
                dx = torch.zeros_like(flat)
                rows_here = torch.zeros((len(lookups[w][0]), flat.shape[1]), device=forward.device) if tied else None
                for start, weights in forward.bands(output_name, None):
                    stop = start + weights.shape[0]
                    gradient = dz[:, start:stop].T @ flat
                    dx += dz[:, start:stop] @ weights
                    if rows_here is not None:  # a row both looked up and projected onto: squared with the lookup's, below
                        rows = lookups[w][0]
                        inside = (rows >= start) & (rows < stop)
                        rows_here[inside] = gradient[rows[inside] - start]
                        gradient[rows[inside] - start] = 0
                    output_total[start:stop] = gradient.square().add_(output_total[start:stop]).bfloat16()
                if rows_here is not None:
                    head_rows.append(rows_here)
                (grad_h,) = torch.autograd.grad(x, h, grad_outputs=dx[None], retain_graph=draw + 1 < samples)
                grads.append(grad_h)
            del probabilities, dz
    entering[forward.n_blocks] = []
    embedding_total: torch.Tensor | None = output_total if tied else None  # completed by the lookup's gradients
    if not tied:
        finish(output_name, output_total)
    del output_total
    bar.update()

    for index in reversed(range(forward.n_blocks)):
        leaves = {spec.name: forward.weights[spec.name].detach().requires_grad_()
                  for spec in model.quantizable if spec.block == index}
        totals: dict[str, torch.Tensor | None] = dict.fromkeys(leaves)
        unit, entering_grads = 0, []
        for h_in in entering[index]:
            h_in = h_in.detach().requires_grad_()
            with torch.enable_grad():
                h_out = forward.block(index, h_in, leaves)
                for draw in range(samples):
                    *weight_grads, grad_in = torch.autograd.grad(h_out, [*leaves.values(), h_in], grad_outputs=grads[unit],
                                                                 retain_graph=draw + 1 < samples)
                    for name, gradient in zip(leaves, weight_grads):
                        totals[name] = accumulate(totals[name], gradient)
                    entering_grads.append(grad_in)
                    unit += 1
        grads, entering[index] = entering_grads, []
        for name, total in totals.items():
            if total is not None:
                finish(name, total)
        bar.update()

    # the lookup: block 0's input at position t is row tokens[t] of the embedding times the embedding scale
    embedding = forward.weights["token_embd.weight"]
    for unit, grad_h in enumerate(grads):
        rows, position_row = lookups[unit // samples]
        gradient = torch.zeros((len(rows), embedding.shape[1]), dtype=grad_h.dtype, device=grad_h.device)
        gradient.index_add_(0, position_row, grad_h[0]).mul_(forward.embed_scale)
        if tied:
            gradient += head_rows[unit]
        if embedding_total is None:
            embedding_total = torch.zeros(embedding.shape, dtype=torch.bfloat16, device=embedding.device)
        embedding_total[rows] = gradient.square().add_(embedding_total[rows]).bfloat16()
    if embedding_total is not None and "token_embd.weight" in {spec.name for spec in model.quantizable}:
        finish("token_embd.weight", embedding_total)
    bar.update()
    bar.close()
    return fisher


def fisher_table(
    model: Model, calibration: "CalibrationSpec | torch.Tensor" = ESTIMATE, imatrix: "ImportanceMatrix | None" = None,
    formats: list[str] | tuple[str, ...] = DEFAULT_LADDER, labels: str = "model", samples: int = 1, seed: int = 0,
    device: str = "cpu", progress: bool = True, use_cache: bool = True,
) -> SensitivityTable:
    """The `fisher` estimate (module docstring) on the calibration windows; `seed` draws the labels."""
    from ramp.measure.forward import tokens_sha256
    from ramp.measure.sensitivity import cache_table, cached_table

    tokens, record = calibration_tokens(model, calibration)
    formats = _formats(formats)
    path = _cache_path(model, tokens, formats, imatrix, f"{FISHER}|{labels}|{samples}|{seed}") if use_cache else None
    if (cached := cached_table(path, model, formats, record)) is not None:
        return cached
    errors = QuantizationErrors(model, formats, imatrix)
    rows: dict[str, np.ndarray] = {}

    def reduce(name: str, fisher: "torch.Tensor") -> None:
        weight = fisher.cpu()  # bfloat16; each band in float32 as it is used
        rows[name] = errors.row(model.spec(name),
                                lambda spec, error, band: 0.5 * row_weighted_squares(error, weight[band].float().numpy()))

    # each tensor's damages as soon as its Fisher is complete: the whole model's Fisher is never held
    diagonal_fisher(model, tokens, labels, samples, seed, device, progress, on_tensor=reduce)
    table = errors.table(np.stack([rows[spec.name] for spec in model.quantizable]), MEASURES[FISHER], tokens_sha256(tokens),
                         {"estimate": FISHER, "calibration": record, "labels": labels, "samples": samples, "seed": seed})
    cache_table(path, table)
    return table


def estimate_sensitivity(
    estimate: str, model: Model, calibration: "CalibrationSpec | torch.Tensor" = ESTIMATE,
    imatrix: "ImportanceMatrix | None" = None, formats: list[str] | tuple[str, ...] = DEFAULT_LADDER,
    device: str = "cpu", progress: bool = True, seed: int = 0,
) -> SensitivityTable:
    """`imatrix_error_table` or `fisher_table` by name (`--damage`), both disk-cached; `seed` draws the
    Fisher's labels."""
    from ramp.errors import RampError

    if estimate == IMATRIX_ERROR:
        return imatrix_error_table(model, calibration, imatrix, formats, device, progress)
    if estimate == FISHER:
        return fisher_table(model, calibration, imatrix, formats, seed=seed, device=device, progress=progress)
    raise RampError(f"unknown damage estimate {estimate!r}; choose one of {', '.join(ESTIMATES)}")


def _formats(formats: list[str] | tuple[str, ...]) -> list[str]:
    from ramp.kernels import get_format

    return [get_format(name).name for name in formats]


def _cache_path(model: Model, tokens: "torch.Tensor", formats: list[str], imatrix: "ImportanceMatrix | None",
                estimate: str) -> Path | None:
    from ramp.measure.forward import tokens_sha256
    from ramp.measure.sensitivity import table_cache_path

    return table_cache_path(model, tokens_sha256(tokens), formats, imatrix.content_sha256() if imatrix is not None else None,
                            estimate)
