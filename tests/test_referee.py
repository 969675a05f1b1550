"""llama.cpp's own referee: llama-perplexity on the same text and windows agrees with ramp's evaluation.

The tools come from .ci/install: a missing tool fails these tests, it does not skip them.
"""
from __future__ import annotations

import math

import pytest

from ramp.cli import main
from ramp.export.gguf_writer import write_gguf, write_reference
from ramp.evaluate.llama_eval import evaluate, make_windows, reference_logprobs, reference_result
from ramp.evaluate.referee import format_agreement, referee
from ramp.models.text import evaluation_text
from tiny_gguf import tiny_llama

# 4 windows of 64 score 124 tokens: llama-perplexity prints its final statistics only from 100 on
N_CTX, N_WINDOWS, TEXT = 64, 4, "python-docs"


def error_line(capsys) -> str:
    """The one line ramp prints. pytest's capture also catches what llama-cpp-python's log callback writes
    through sys.stderr while ramp has file descriptor 2 pointed at /dev/null (ramp.evaluate.llama_eval.quiet_llama),
    which a terminal never shows; ramp's own error must still be a single line, and the last."""
    lines = capsys.readouterr().err.strip().splitlines()
    ours = [line for line in lines if line.startswith("ramp:")]
    assert len(ours) == 1 and lines[-1] == ours[0]
    return ours[0]


@pytest.fixture(scope="module", params=[False, True], ids=["no-bos", "bos"])
def files(request, tmp_path_factory):
    """The tiny model's reference and its Q4_0, with a vocabulary without and with BOS (which llama-perplexity
    and ramp both put at the start of every window)."""
    model = tiny_llama(add_bos=request.param)
    folder = tmp_path_factory.mktemp(f"referee-{request.param}")
    reference, quantized = folder / "tiny-F32.gguf", folder / "tiny-Q4_0.gguf"
    write_reference(model, reference, progress=False)
    write_gguf(model, {spec.name: "Q4_0" for spec in model.quantizable}, quantized, progress=False)
    return reference, quantized


def test_llama_perplexity_agrees_with_ramp(files):
    reference, quantized = files
    text = evaluation_text(TEXT)
    windows = make_windows(reference, text, N_CTX, N_WINDOWS)
    logprobs = reference_logprobs(reference, windows)
    ours = [reference_result(reference, logprobs, windows), evaluate(quantized, logprobs, windows)]
    theirs = referee(reference, [quantized], text, windows)  # also checks its windows' tokens are ramp's
    print(format_agreement(ours, theirs))
    assert [r.n_tokens for r in theirs] == [windows.n_scored] * 2

    # Measured (both vocabularies; also 128-token windows on austen): quantized perplexity within 1e-7 relative,
    # reference perplexity within 4e-4, mean KLD within 7e-6 nats (ramp higher), top-1 identical.
    q_ours, q_theirs = ours[1], theirs[1]
    # Both compute the quantized file's perplexity from the same float32 logits; llama-perplexity rounds each
    # token's NLL to float32 (about 1e-6 relative at these NLLs of 11 nats). A different window or target
    # would move it by more than 1e-3.
    assert q_ours.perplexity == pytest.approx(q_theirs.perplexity, rel=1e-5)
    # ramp's reference row comes from its float16 log-prob cache: each NLL is rounded to 2^-11 relative, so
    # ln(PPL) moves by at most 2^-11 * ln(PPL); llama-perplexity's base pass is float32.
    assert abs(math.log(ours[0].perplexity / theirs[0].perplexity)) <= 2**-11 * math.log(theirs[0].perplexity)
    # ramp's float16 cache keeps mean KLD within 1e-4 nats of the exact value (ramp.evaluate.llama_eval, test_eval);
    # llama-perplexity's 16-bit base here agrees with the exact float64 KLD to its 6 printed decimals.
    assert q_ours.kld_mean == pytest.approx(q_theirs.kld_mean, abs=1e-4)
    assert q_theirs.kld_mean > 1e-2  # Q4_0 of random weights really diverges: the agreement is not 0 == 0
    # top-1 from unrounded values in ramp, from the 16-bit base in llama.cpp: a near-tie may flip one position
    assert abs(q_ours.top1_agreement - q_theirs.same_top_p) <= 1 / windows.n_scored + 1e-5


@pytest.mark.parametrize("files", [False], ids=["no-bos"], indirect=True)  # the command once is enough
def test_eval_referee_prints_both(files, capsys):
    reference, quantized = files
    code = main(["eval", str(quantized), "--reference", str(reference), "--text", TEXT, "--ctx", str(N_CTX),
                 "--max-windows", str(N_WINDOWS), "--referee"])
    assert code == 0
    printed = capsys.readouterr().out
    print(printed)
    rows = {line.split()[0]: line.split() for line in printed.splitlines()[-3:-1]}
    assert set(rows) == {"reference", "tiny-Q4_0"}
    ppl_ours, ppl_theirs, ppl_diff, kld_ours, kld_theirs, kld_diff = map(float, rows["tiny-Q4_0"][1:7])
    assert ppl_diff == pytest.approx(abs(ppl_ours - ppl_theirs) / ppl_theirs, rel=0.01, abs=1e-9) and ppl_diff < 1e-5
    assert kld_diff < 1e-2 and kld_theirs > 1e-2
    assert printed.splitlines()[-1].startswith("agreement: perplexity within ")


@pytest.mark.parametrize("files", [False], ids=["no-bos"], indirect=True)  # the command once is enough
def test_referee_needs_100_scored_tokens(files, capsys):
    reference, quantized = files
    code = main(["eval", str(quantized), "--reference", str(reference), "--text", TEXT, "--ctx", str(N_CTX),
                 "--max-windows", "3", "--referee"])
    assert code != 0
    err = error_line(capsys)
    assert "at least 100 scored tokens, these windows have 93" in err


@pytest.mark.parametrize("files", [False], ids=["no-bos"], indirect=True)  # the command once is enough
def test_referee_without_the_tool_says_how_to_build_it(files, tmp_path, monkeypatch, capsys):
    reference, quantized = files
    monkeypatch.setenv("RAMP_LLAMA_BIN", str(tmp_path))  # an explicit tool folder without the tools
    code = main(["eval", str(quantized), "--reference", str(reference), "--text", TEXT, "--ctx", str(N_CTX),
                 "--referee"])
    assert code != 0
    err = error_line(capsys)
    assert "llama-perplexity is not an executable in $RAMP_LLAMA_BIN" in err
