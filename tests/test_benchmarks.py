"""Every benchmark module run as users run it (`python -m benchmarks.NAME`) on the tiny model, one evaluation
window and a few training steps, as CleanRL's CI runs each of its scripts: each writes its outputs, and they
hold real measurements (finite KLDs of files llama.cpp loaded, the rows and sections the docs are made of)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_gguf import tiny_llama

REPO = Path(__file__).resolve().parent.parent
SMALL = ["--formats", "Q4_0,Q5_0,Q8_0", "--calibration-tokens", "256", "--max-windows", "1", "--ctx", "64"]
PNG = b"\x89PNG\r\n\x1a\n"


def benchmark(name: str, cache: Path, *args: str) -> str:
    """`python -m benchmarks.NAME ARGS` from the checkout; its stdout."""
    done = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "RAMP_CACHE": str(cache), "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0, f"benchmarks.{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def families(tiny_reference, tmp_path_factory) -> list[Path]:
    """Two tiny models of different weights: the families transfer leaves out in turn."""
    from ramp.export.gguf_writer import write_reference

    second = tmp_path_factory.mktemp("tiny2") / "tiny2-F32.gguf"
    write_reference(tiny_llama(seed=1), second, progress=False)
    return [tiny_reference, second]


@pytest.fixture(scope="module")
def baselines(families, ramp_cache, tmp_path_factory) -> Path:
    """benchmarks.baselines on both families (the jobs transfer reads); the folder holding jobs/ and docs/."""
    root = tmp_path_factory.mktemp("bench")
    for family in families:
        benchmark("baselines", ramp_cache, "--model", str(family), "--presets", "Q8_0", "--budgets", "7",
                  "--methods", "ilp,uniform", *SMALL, "--jobs", str(root / "jobs"), "--out", str(root / "docs"))
    return root


def test_baselines_writes_its_json_plot_and_section(baselines, families):
    docs = baselines / "docs"
    results = json.loads((docs / "baselines-tiny-F32-twin-imatrix.json").read_text())
    assert results["imatrix"]["chunks"] > 0 and results["sensitivity_measure"] == "kld" and results["eval_windows"] == 1
    assert [(row["method"], row["budget"]) for row in results["rows"]] == [
        ("ilp", "Q8_0 bytes"), ("ilp", "7bpw"), ("uniform", "Q8_0 bytes"), ("uniform", "7bpw")]
    for row in results["rows"] + results["presets"]:
        assert math.isfinite(row["kld_mean"]) and row["kld_mean"] > 0 and row["file_bytes"] > 0
    assert results["rows"][1]["file_bytes"] < results["rows"][0]["file_bytes"]  # 7 bpw is below Q8_0's bytes
    assert (docs / "baselines-tiny-F32-twin-imatrix.png").read_bytes()[:8] == PNG
    text = (docs / "BENCHMARKS.md").read_text()
    assert "## Baselines: tiny-F32 twin, imatrix" in text and "## Baselines: tiny2-F32 twin, imatrix" in text
    assert "| **ramp ilp** | Q8_0 bytes |" in text and "| stage | wall | CPU | peak RSS |" in text


def test_estimate_check_judges_the_estimate_by_the_measured_table(baselines, families, ramp_cache):
    out = baselines / "estimate-check.json"
    benchmark("estimate_check", ramp_cache, "--model", str(families[0]), "--twin", "--estimate", "fisher", "--tokens", "256",
              "--measured", str(baselines / "jobs" / "baselines-tiny-F32-twin-imatrix" / "sensitivity.json"),
              "--budgets", "5.5bpw,7bpw", "--out", str(out))
    checked = json.loads(out.read_text())
    assert checked["measured_cells"] > 0 and -1 <= checked["estimates"]["fisher"]["agreement"]["overall"] <= 1
    assert [row["budget"] for row in checked["regret"]] == ["5.5bpw", "7bpw"]
    # no allocation beats the ILP over the table that judges it
    assert all(row["fisher_regret"] >= 1 - 1e-9 for row in checked["regret"] if row["fisher_regret"] is not None)


def test_transfer_trains_runs_its_jobs_and_writes_the_table(baselines, families, ramp_cache):
    docs = baselines / "docs"
    benchmark("transfer", ramp_cache, *(option for family in families for option in ("--families", str(family))),
              "--own", str(families[0]), "--no-measured", str(families[1]), "--timesteps", "40", "--extra-bpw", "7",
              "--sac", "learning_starts=10", "--sac", "batch_size=16", "--windows", "1", "--ctx", "64",
              "--formats", "Q4_0,Q5_0,Q8_0", "--calibration-tokens", "256", "--jobs", str(baselines / "jobs"),
              "--work", str(baselines / "policies"), "--out", str(docs))
    results = json.loads((docs / "transfer.json").read_text())
    assert set(results["held_out"]) == {"tiny-F32", "tiny2-F32"}
    first = {row["method"] for row in results["held_out"]["tiny-F32"]["rows"]}
    assert {"policy (zero-shot)", "policy (own)", "ILP (estimate)", "ILP (measured)", "uniform"} <= first
    second = {row["method"] for row in results["held_out"]["tiny2-F32"]["rows"]}
    assert "ILP (measured)" not in second and "policy (zero-shot)" in second
    for entry in results["held_out"].values():
        assert all(math.isfinite(row["kld_mean"]) and row["kld_mean"] > 0 for row in entry["rows"])
        assert entry["worst_ratio"]["estimate ILP"] is not None
    assert (docs / "transfer.png").read_bytes()[:8] == PNG
    assert "## Agent: leave one family out" in (docs / "BENCHMARKS.md").read_text()
    # a second run keeps every finished policy instead of training it again
    printed = benchmark("transfer", ramp_cache, *(option for family in families for option in ("--families", str(family))),
                        "--own", str(families[0]), "--no-measured", str(families[1]), "--timesteps", "40", "--extra-bpw", "7",
                        "--windows", "1", "--ctx", "64", "--formats", "Q4_0,Q5_0,Q8_0", "--calibration-tokens", "256",
                        "--sac", "learning_starts=10", "--sac", "batch_size=16",
                        "--jobs", str(baselines / "jobs"), "--work", str(baselines / "policies"), "--out", str(docs))
    kept = [line for line in printed.splitlines() if line.startswith("--resume auto:")]
    assert len(kept) == 3 and all(line.endswith(": kept") for line in kept)


def test_resume_kills_and_resumes_to_the_same_results(tiny_reference, ramp_cache, tmp_path):
    printed = benchmark("resume", ramp_cache, "--model", str(tiny_reference), "--sweep-seconds", "1", "--eval-seconds", "0",
                        "--work", str(tmp_path), "--", "--budget", "5.5bpw", "--preset", "Q8_0", "--no-imatrix", *SMALL)
    assert "results.json: identical to the uninterrupted run" in printed


def test_folding_prints_its_table(tiny_reference, ramp_cache, tmp_path):
    printed = benchmark("folding", ramp_cache, "--model", str(tiny_reference), "--requests", "Q4_0", "--alphas", "0.5",
                        "--fold-tokens", "256", "--windows", "1", "--ctx", "64", "--work", str(tmp_path))
    rows = [line for line in printed.splitlines() if line.startswith("| Q4_0 |") or line.startswith("| F32 |")]
    assert len(rows) == 3  # folded F32, Q4_0 unfolded and folded
    assert all(float(row.split("|")[7]) >= 0 for row in rows)


def test_kernels_prints_its_table():
    printed = benchmark("kernels", Path(os.environ.get("RAMP_CACHE", "/tmp")), "--size", "256", "--formats", "Q4_0,Q8_0",
                        "--repeats", "1")
    rows = [line for line in printed.splitlines() if line.startswith(("| Q4_0 |", "| Q8_0 |"))]
    assert len(rows) == 2 and all(row.rstrip().endswith("| yes |") for row in rows)


def test_eval_speed_times_both_sides_on_the_same_windows(tiny_reference, ramp_cache):
    printed = benchmark("eval_speed", ramp_cache, "--models", str(tiny_reference), "--preset", "Q8_0", "--windows", "1",
                        "--ctx", "256")  # llama-perplexity reports nothing under 100 scored tokens
    *_, ramp_seconds, llama_seconds, ratio, kld_ramp, kld_llama = printed.strip().splitlines()[-1].split()
    assert float(ramp_seconds) > 0 and float(llama_seconds) > 0
    assert float(ratio) == pytest.approx(float(ramp_seconds) / float(llama_seconds), rel=0.05)
    assert 0 < float(kld_ramp) == pytest.approx(float(kld_llama), rel=0.05, abs=2e-5)  # one preset, two referees


def test_additivity_measures_the_ilp_and_its_neighbours(tiny_reference, ramp_cache, tmp_path):
    benchmark("additivity", ramp_cache, "--model", str(tiny_reference), "--name", "tiny", "--damage", "fisher",
              "--budgets", "5", "--neighbours", "3", "--tokens", "64", "--window", "32", "--out", str(tmp_path))
    results = json.loads((tmp_path / "additivity-tiny-twin.json").read_text())
    [budget] = results["budgets"]
    assert [row["kind"] for row in budget["rows"]][:1] == ["ilp"] and len(budget["rows"]) == 4
    assert all(row["measured"] > 0 and math.isfinite(row["predicted"]) for row in budget["rows"])
    assert -1 <= budget["spearman"] <= 1 and results["checkpoint"].startswith("off-grid twin of")
    assert (tmp_path / "additivity-tiny-twin.png").read_bytes()[:8] == PNG


def test_seven_b_copies_a_truncated_header_into_a_file_llama_cpp_runs(tiny_model, ramp_cache, tmp_path):
    """The 7B's header comes from the first part of a cut file: here the tiny llama's Q4_K/Q6_K GGUF cut inside
    its second tensor. The copy keeps every key, tensor name, shape and type; llama.cpp evaluates it and
    ramp loads it; the same seed gives the same bytes, and --blocks keeps the first blocks' tensors' bytes."""
    from ramp.export.gguf_writer import write_gguf
    from ramp.models.gguf import read_gguf

    source = tmp_path / "tiny-K.gguf"
    write_gguf(tiny_model, {spec.name: "Q6_K" if "ffn" in spec.name else "Q4_K" for spec in tiny_model.quantizable},
               source, progress=False)
    whole = read_gguf(source)
    header = tmp_path / "tiny-K.part0"
    header.write_bytes(source.read_bytes()[:whole.tensors[1].data_offset + 100])
    out, report = tmp_path / "synthetic.gguf", tmp_path / "report.json"
    benchmark("seven_b", ramp_cache, "--header", str(header), "--out", str(out), "--seed", "5", "--load-model", "--json", str(report))
    measured = json.loads(report.read_text())
    assert measured["ramp_listing"]["tensors"] == len(whole.tensors) and measured["llama_perplexity"]["returncode"] == 0
    assert math.isfinite(measured["llama_perplexity"]["perplexity"]) and measured["llama_perplexity"]["peak_rss_bytes"] > 0
    assert measured["load_model"]["returncode"] == 0 and measured["load_model"]["last_line"].startswith("loaded")

    copy = read_gguf(out)
    layout = [(t.name, t.shape, t.tensor_type) for t in whole.tensors]
    assert [(t.name, t.shape, t.tensor_type) for t in copy.tensors] == layout
    assert {key: value for key, value in copy.fields.items() if key != "ramp.synthetic"} == whole.fields
    assert json.loads(copy.fields["ramp.synthetic"].value)["seed"] == 5
    assert any(t.tensor_type.name == "Q4_K" for t in copy.tensors) and any(t.tensor_type.name == "Q6_K" for t in copy.tensors)

    written_at = out.stat().st_mtime_ns
    assert "kept" in benchmark("seven_b", ramp_cache, "--header", str(header), "--out", str(out), "--seed", "5", "--no-check")
    assert out.stat().st_mtime_ns == written_at
    again = tmp_path / "again.gguf"
    benchmark("seven_b", ramp_cache, "--header", str(header), "--out", str(again), "--seed", "5", "--no-check")
    assert again.read_bytes() == out.read_bytes()

    one = tmp_path / "one-block.gguf"
    benchmark("seven_b", ramp_cache, "--header", str(header), "--out", str(one), "--seed", "5", "--blocks", "1")
    cut = read_gguf(one)
    assert [t.name for t in cut.tensors] == [t.name for t in copy.tensors if not t.name.startswith("blk.1.")]
    assert cut.fields["llama.block_count"].value == 1
    by_name = {t.name: t for t in copy.tensors}
    assert all(np.array_equal(t.data, by_name[t.name].data) for t in cut.tensors)

    refused = subprocess.run([sys.executable, "-m", "benchmarks.seven_b", "--header", str(header), "--blocks", "3"],
                             cwd=REPO, capture_output=True, text=True, env={**os.environ, "RAMP_CACHE": str(ramp_cache)})
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        f"seven_b: error: --blocks 3 is outside 1..2, the blocks of {header}"]
