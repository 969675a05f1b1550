"""llama.cpp's own referee: `llama-perplexity` measures the same files on the same text and windows as
ramp's evaluation (ramp.evaluate.llama_eval), so ramp's perplexity and KLD can be checked against llama.cpp's.

llama-perplexity cuts its token stream into `-c` windows and scores the second half of each, as ramp does;
`--chunks` caps the number of windows as ramp's max_windows does. It is run with the settings ramp's
evaluation uses through llama-cpp-python: one window per batch (`-b`/`-ub` = window length), flash attention
off, all cores. The first pass, on the reference, writes `--kl-divergence-base`: the window tokens, then per
scored position the log-probs as 16-bit codes on a linear grid from the top logit down to 16 nats below it
(a step of at most 16/65535 nats; tokens further down are dropped from its KLD sum). A pass per quantized
file with `--kl-divergence` reads them back. The tokens in that file are checked against ramp's windows,
so the two evaluations provably see the same input.
"""
from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ramp.errors import RampError
from ramp.files import cache_dir
from ramp.evaluate.llama_eval import EvalResult, Windows, _check_gguf
from ramp.llama_tools import last_error_line, require_tool, run_tool
from ramp.machine import usable_cores

# llama-perplexity prints its final statistics only over at least this many scored tokens
MIN_SCORED = 100


@dataclass(frozen=True)
class RefereeResult:
    name: str
    path: str
    n_tokens: int
    perplexity: float
    kld_mean: float | None  # None for the reference itself: it is the base
    same_top_p: float | None  # share of positions whose top token is the reference's


def _window_options(windows: Windows) -> list[str]:
    threads = str(usable_cores())
    n_ctx = str(windows.n_ctx)
    return ["-c", n_ctx, "-b", n_ctx, "-ub", n_ctx, "-fa", "off", "-fit", "off", "-t", threads, "-tb", threads]


def _perplexity_numbers(args: list, patterns: dict[str, str], path: Path) -> dict[str, float]:
    """Run llama-perplexity and read the named numbers from its log. llama.cpp's logger writes from a thread
    the process does not wait for at exit, so the last lines (where the final statistics are) are now and
    then lost (llama.cpp issue 22142): a run missing any of them is repeated once."""
    for _ in range(2):
        done = run_tool("llama-perplexity", args)
        output = done.stdout + done.stderr
        matches = {what: re.search(pattern, output, re.MULTILINE) for what, pattern in patterns.items()}
        missing = [what for what, match in matches.items() if match is None]
        if not missing:
            return {what: float(match.group(1)) for what, match in matches.items()}
    raise RampError(f"llama-perplexity printed no {missing[0]} for {path} ({last_error_line(output)}); "
                    "run it by hand with the same options to see its log")


def _base_tokens(base: Path) -> np.ndarray:
    """The windows llama-perplexity wrote into its base file: '_logits_', n_ctx (u32), n_vocab and n_chunk
    (i32), then n_chunk x n_ctx token ids (i32)."""
    with open(base, "rb") as handle:
        magic = handle.read(8)
        n_ctx, _, n_chunk = np.frombuffer(handle.read(12), dtype=np.int32)
        tokens = np.frombuffer(handle.read(4 * int(n_ctx) * int(n_chunk)), dtype=np.int32)
    if magic != b"_logits_" or tokens.size != int(n_ctx) * int(n_chunk):
        raise RampError(f"llama-perplexity wrote an unreadable base file {base}; a llama-perplexity of another llama.cpp? delete its folder and rerun `bash .ci/install`")
    return tokens.reshape(int(n_chunk), int(n_ctx))


def _check_same_windows(base: Path, windows: Windows) -> None:
    tokens = _base_tokens(base)
    # llama-perplexity stores each window's first token before it puts BOS there, ramp after, so column 0
    # may differ (by BOS only); every other token must be identical.
    if tokens.shape != windows.tokens.shape or not np.array_equal(tokens[:, 1:], windows.tokens[:, 1:]):
        raise RampError(f"llama-perplexity cut windows {tokens.shape} that differ from ramp's {windows.tokens.shape}; "
                        "the text or the tokenizer differs between them, report it as a bug")


def check_referee(windows: Windows) -> None:
    """The referee can run on these windows: llama-perplexity is built and there are enough scored tokens."""
    require_tool("llama-perplexity")
    if windows.n_scored < MIN_SCORED:
        raise RampError(f"llama-perplexity reports statistics only over at least {MIN_SCORED} scored tokens, these "
                        f"windows have {windows.n_scored}; use more windows (--max-windows) or longer ones (--ctx)")


def referee(reference: str | os.PathLike, files: list[str | os.PathLike], text: str, windows: Windows) -> list[RefereeResult]:
    """llama-perplexity's perplexity of the reference and perplexity, mean KLD and top-token agreement of
    each file against it, on `windows` (ramp.evaluate.llama_eval.make_windows of the reference on `text`)."""
    check_referee(windows)
    reference = _check_gguf(reference)
    paths = [_check_gguf(path) for path in files]
    options = _window_options(windows)
    # the base file holds n_vocab 16-bit codes per scored position (hundreds of MB for a real model): it
    # belongs beside the other large caches, not in a possibly small /tmp
    with tempfile.TemporaryDirectory(prefix="referee-", dir=cache_dir()) as scratch:
        text_file, base = Path(scratch) / "text.txt", Path(scratch) / "base.dat"
        # llama-perplexity drops one trailing newline of its -f file; the added one keeps the text exact
        text_file.write_bytes((text + "\n").encode("utf-8"))
        base_pass = ["-m", reference, "-f", text_file, "--chunks", len(windows.tokens), "--kl-divergence-base", base]
        found = _perplexity_numbers([*base_pass, *options], {"perplexity": r"Final estimate: PPL = ([0-9.]+)"}, reference)
        results = [RefereeResult("reference", str(reference), windows.n_scored, found["perplexity"], None, None)]
        _check_same_windows(base, windows)
        for path in paths:
            found = _perplexity_numbers(["-m", path, "--kl-divergence-base", base, "--kl-divergence", *options], {
                "perplexity": r"^Mean PPL\(Q\)\s*:\s*([0-9.]+)",
                "mean KLD": r"^Mean\s+KLD:\s*([-0-9.]+)",
                "top-token agreement": r"^Same top p:\s*([0-9.]+)",
            }, path)
            results.append(RefereeResult(path.stem, str(path), windows.n_scored, found["perplexity"], found["mean KLD"],
                                         found["top-token agreement"] / 100))
    return results


def relative_difference(ours: float, theirs: float) -> float:
    return abs(ours - theirs) / max(abs(theirs), 1e-12)


def format_agreement(ours: list[EvalResult], theirs: list[RefereeResult]) -> str:
    """ramp's numbers next to llama-perplexity's, row by row, and the largest relative differences."""
    header = (f"{'model':<24} {'PPL ramp':>10} {'PPL llama':>10} {'rel diff':>9} {'KLD ramp':>10} {'KLD llama':>10} "
              f"{'rel diff':>9} {'top-1 ramp':>10} {'top llama':>10}")
    lines = ["llama.cpp's referee (llama-perplexity --kl-divergence, same text and windows):", header, "-" * len(header)]
    ppl_diffs, kld_diffs = [], []
    for mine, ref in zip(ours, theirs):
        ppl_diffs.append(relative_difference(mine.perplexity, ref.perplexity))
        line = f"{mine.name:<24} {mine.perplexity:>10.4f} {ref.perplexity:>10.4f} {ppl_diffs[-1]:>9.2e}"
        if ref.kld_mean is not None:
            kld_diffs.append(relative_difference(mine.kld_mean, ref.kld_mean))
            line += (f" {mine.kld_mean:>10.6f} {ref.kld_mean:>10.6f} {kld_diffs[-1]:>9.2e}"
                     f" {mine.top1_agreement:>10.2%} {ref.same_top_p:>10.2%}")
        lines.append(line)
    summary = f"agreement: perplexity within {max(ppl_diffs):.2e} relative"
    if kld_diffs:
        summary += f", mean KLD within {max(kld_diffs):.2e} relative"
    lines.append(summary)
    return "\n".join(lines)
