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
from ramp.models.model import Model, TensorSpec
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
# 16 minutes (its 262k vocabulary makes each forward dearer). Past 7e13 the sweep outlasts the 20 minutes or
# so a user waits for a measurement (Qwen2.5-1.5B: 6e14, hours), and the Fisher estimate, which agrees with
# the measured table to Spearman 0.997 on SmolLM2 (docs/BENCHMARKS.md), takes its place.
SWEEP_WORK_LIMIT = 7e13


def choose_damage(model: Model, formats: list[str] | tuple[str, ...], n_tokens: int) -> tuple[str, str]:
    """`--damage auto`: the measured KLD sweep ("kld") where it finishes in minutes on two cores, else the
    Fisher estimate; with the reason, for the user to read."""
    from ramp.measure.sensitivity import sweep_cells

    forwards = len(sweep_cells(model, formats))
    sweep = f"the measured sweep takes {forwards} forwards of {n_tokens} tokens"
    if forwards * model.n_quantizable_params * n_tokens <= SWEEP_WORK_LIMIT:
        return "kld", f"{sweep}: minutes on two cores"
    return FISHER, f"{sweep} of a {model.n_quantizable_params / 1e9:.2f}B-weight model: hours on two cores"


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


def error_table(
    model: Model, formats: list[str] | tuple[str, ...], imatrix: "ImportanceMatrix | None",
    damage_of: Callable[[TensorSpec, np.ndarray], float], measure: str, calibration_sha256: str = "",
    extra: dict | None = None, progress: bool = True,
) -> SensitivityTable:
    """The table with damage[tensor, format] = damage_of(spec, Q(w) - w), Q(w) being llama.cpp's quantization of
    the tensor in the format it really writes (ladder formats that fall back alike are quantized once) with the
    tensor's importance-matrix entry, as llama-quantize --imatrix does. Tensors and formats run on every core:
    the subtraction and `damage_of` are single-threaded numpy, the quantization itself already spreads its rows;
    `damage_of` must therefore be safe to call from several threads."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from ramp.kernels import DequantCache, get_format, resolve_format  # ramp.kernels loads torch: not at CLI start

    formats = [get_format(name).name for name in formats]
    importance = imatrix.importances(model) if imatrix is not None else None
    # the disk cache keeps the packed bytes: the sweep, the export and a second estimate share them
    weights = DequantCache(model, backend="ggml", importance=importance, max_memory_bytes=0)
    tasks = [(row, spec, real) for row, spec in enumerate(model.quantizable)
             for real in dict.fromkeys(resolve_format(fmt, spec.row_length).name for fmt in formats)]

    def damage_for(task: tuple[int, TensorSpec, str]) -> float:
        _, spec, real = task
        original = model.tensors[spec.name]
        quantized = weights.written(spec.name, real)
        # in place where the dequantization is a fresh array: one float32 copy of the tensor per worker
        error = np.subtract(quantized, original, out=quantized if quantized is not original else None)
        return damage_of(spec, error)

    damage = np.zeros((len(model.quantizable), len(formats)))
    # pool.map keeps the order and holds one error array per worker, where one thread held the dequantized
    # tensor and its error: two workers peak at what one did (more would add memory, not cores, on two)
    with ThreadPoolExecutor(max_workers=2) as pool, \
            tqdm(total=len(tasks), desc="quantization error", unit="tensor-format", disable=not progress, leave=False) as bar:
        for (row, spec, real), value in zip(tasks, pool.map(damage_for, tasks)):
            for column, fmt in enumerate(formats):
                if resolve_format(fmt, spec.row_length).name == real:
                    damage[row, column] = value
            bar.update()
    return SensitivityTable([spec.name for spec in model.quantizable], formats, damage, measure, model.sha256,
                            calibration_sha256, {"imatrix": imatrix.content_sha256() if imatrix else None, **(extra or {})})


def weight_error_table(model: Model, formats: list[str] | tuple[str, ...], imatrix: "ImportanceMatrix | None" = None,
                       progress: bool = True) -> SensitivityTable:
    """The stand-in: the plain summed squared weight error, blind to how much each tensor matters."""
    return error_table(model, formats, imatrix, lambda spec, error: float(row_weighted_squares(error).sum()),
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
    from tqdm import tqdm

    from ramp.measure.forward import Forward

    forward = Forward(model, device)
    total = torch.zeros(forward.weights[forward.output_name].shape[1], dtype=torch.float64)

    def capture(name: str, x: "torch.Tensor") -> None:
        if name == "output.weight":
            total.add_(x.reshape(-1, x.shape[-1]).double().square().sum(0).cpu())

    for window in tqdm(tokens, desc="output statistics", unit="window", disable=not progress, leave=False):
        forward.logits(window[None].to(forward.device), capture=capture)
    n_vocab = forward.weights["token_embd.weight"].shape[0]
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

    def damage_of(spec: TensorSpec, error: np.ndarray) -> float:
        if spec.name == "token_embd.weight":
            lookup = stats.token_share * stats.embed_scale**2
            total = float(lookup @ row_weighted_squares(error))
            return total + (float(row_weighted_squares(error, stats.head_importance).sum()) if tied else 0.0)
        if spec.name == "output.weight":
            return float(row_weighted_squares(error, stats.head_importance).sum())
        importance = imatrix.importance(spec.name) if imatrix is not None else None
        if importance is None:
            importance = fallback.importance(spec.name)
        return float(row_weighted_squares(error, importance).sum())

    table = error_table(model, formats, imatrix, damage_of, MEASURES[IMATRIX_ERROR], tokens_sha256(tokens),
                        {"estimate": IMATRIX_ERROR, "calibration": record, "tied_embedding": tied}, progress)
    cache_table(path, table)
    return table


def diagonal_fisher(
    model: Model, tokens: "torch.Tensor", labels: str = "model", samples: int = 1, seed: int = 0,
    device: str = "cpu", progress: bool = True,
) -> dict[str, "torch.Tensor"]:
    """Per quantizable tensor, the mean per-token squared gradient of log q(label) (module docstring), in bfloat16:
    one backward per window and label draw; labels drawn from the model's own prediction (`model`) or the
    text's next token (`text`). A tied embedding's entry covers both its uses."""
    import torch
    from tqdm import tqdm

    from ramp.errors import RampError
    from ramp.measure.forward import Forward

    if labels not in FISHER_LABELS:
        raise RampError(f"Fisher labels {labels!r} are not one of {', '.join(FISHER_LABELS)}")
    if samples < 1 or (labels == "text" and samples != 1):
        raise RampError("the Fisher needs one label draw per window with the text's labels, at least one with the model's")
    forward = Forward(model, device)
    # leaves sharing the model's storage: gradients flow to them, the weights themselves are never copied
    params = {spec.name: forward.weights[spec.name].detach().requires_grad_() for spec in model.quantizable}
    # bfloat16 halves what the Fisher adds to the model (3.5 GB instead of 7.1 GB on a 1.5B model); each
    # window's sum is formed in float32 and rounded once (relative 2^-8), and the damage sums millions of them
    fisher = {name: torch.zeros_like(param, dtype=torch.bfloat16) for name, param in params.items()}

    def accumulate(name: str) -> Callable[["torch.Tensor"], None]:
        def hook(param: "torch.Tensor") -> None:
            fisher[name] = param.grad.square().add_(fisher[name]).bfloat16()
            param.grad = None  # one gradient alive at a time: peak memory is the model plus its Fisher
        return hook

    handles = [param.register_post_accumulate_grad_hook(accumulate(name)) for name, param in params.items()]
    generator = torch.Generator().manual_seed(seed)
    n_scored = 0
    try:
        for window in tqdm(tokens, desc="fisher", unit="window", disable=not progress, leave=False):
            with torch.enable_grad():
                h = forward.embed(window[None].to(forward.device), params)
                for index in range(forward.n_blocks):
                    h = forward.block(index, h, params)
                log_q = torch.log_softmax(forward.head(h, params)[0].float(), dim=-1)
                if labels == "text":  # position t predicts token t + 1; the last position has no label
                    log_q, targets = log_q[:-1], window[1:, None].to(forward.device)
                else:
                    targets = torch.multinomial(log_q.detach().exp().cpu(), samples, replacement=True,
                                                generator=generator).to(forward.device)
                n_scored += targets.shape[0] * samples
                for draw in range(samples):
                    (-log_q.gather(1, targets[:, draw:draw + 1]).sum()).backward(retain_graph=draw + 1 < samples)
    finally:
        for handle in handles:
            handle.remove()
    for name, value in fisher.items():  # in place, one tensor at a time: no second copy of the Fisher
        fisher[name] = value.float().div_(n_scored).bfloat16()
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
    fisher = diagonal_fisher(model, tokens, labels, samples, seed, device, progress)
    table = error_table(
        model, formats, imatrix,
        lambda spec, error: 0.5 * float(row_weighted_squares(error, fisher[spec.name].float().cpu().numpy()).sum()),
        MEASURES[FISHER], tokens_sha256(tokens),
        {"estimate": FISHER, "calibration": record, "labels": labels, "samples": samples, "seed": seed}, progress)
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
