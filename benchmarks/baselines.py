"""Baselines sweep against llama.cpp's whole preset ladder: each preset is made by llama.cpp's own tools from the
F32 reference (with an importance matrix: `llama-quantize --imatrix`), and each allocation method allocates at
exactly the bytes that preset spends on the quantizable tensors (and at any extra bpw budgets), quantized with
the same importance matrix; every file is written as GGUF and measured through llama.cpp on the same held-out
windows of the same text. Writes a results JSON, a Pareto plot (KLD vs file bytes) and one section of
docs/BENCHMARKS.md per (model, imatrix) pair.

    python benchmarks/baselines.py                        # SmolLM2, imatrix, Austen
    python benchmarks/baselines.py --imatrix none         # the same without importance matrix on both sides
    python benchmarks/baselines.py --model gemma3-270m --max-windows 8

Damage is the KLD sensitivity table `ramp run` measures (same calibration tokens, ladder and importance
matrix, so both share the disk cache), or with `--damage` one of its sweep-free estimates. Budgets an allocation cannot meet are listed as infeasible. Rows whose
file is at or above the source checkpoint's size are marked: no claim is made there.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
GOAL = 0.60  # issue 10: ramp's ILP at <= 60% of the imatrix preset's mean KLD, at its bytes, below the source's size


def parse_budgets(text: str) -> list[float]:
    """`3.0:5.5:0.25` (inclusive range), `4.2,4.5,5.0` (bpw) or `` (none)."""
    if not text:
        return []
    if ":" in text:
        start, stop, step = (float(part) for part in text.split(":"))
        return [round(value, 4) for value in np.arange(start, stop + step / 2, step)]
    return [float(part) for part in text.split(",")]


def cached_pairs(measure):
    """The pair KLDs do not depend on the budget: measure each pair once per sweep."""
    memo: dict[tuple, float] = {}

    def measure_pair(assignments: dict[str, str]) -> float:
        key = tuple(sorted(assignments.items()))
        if key not in memo:
            memo[key] = measure(assignments)
        return memo[key]

    return measure_pair


class StageClock:
    """Wall and CPU seconds per stage, summed over its repeats, and the peak RSS seen by its end (this process's
    and its largest child's, e.g. llama-quantize): the cost table every benchmark section carries."""

    def __init__(self) -> None:
        self.stages: dict[str, dict] = {}

    @contextmanager
    def __call__(self, name: str):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            stage = self.stages.setdefault(name, {"stage": name, "runs": 0, "wall_s": 0.0, "cpu_s": 0.0})
            stage["runs"] += 1
            stage["wall_s"] += time.perf_counter() - wall
            stage["cpu_s"] += time.process_time() - cpu
            stage["peak_rss_mb"] = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                                       resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024


def sweep(args: argparse.Namespace) -> dict:
    from ramp.allocate import allocate
    from ramp.allocate.budget import Budget
    from ramp.allocate.quadratic import kld_pair_measure
    from ramp.measure.calibration import ESTIMATE, IMATRIX, SENSITIVITY
    from ramp.errors import RampError
    from ramp.export.gguf_writer import cached_reference, write_allocation
    from ramp.measure.imatrix import ImportanceMatrix, cached_imatrix
    from ramp.measure.ladder import DEFAULT_LADDER
    from ramp.evaluate.llama_eval import evaluate, make_windows, reference_logprobs, reference_result
    from ramp.models import load_model
    from ramp.evaluate.presets import preset_path, quantizable_bytes
    from ramp.measure.sensitivity import measure_sensitivity
    from ramp.measure.estimates import ESTIMATES, estimate_sensitivity
    from ramp.evaluate.source_grid import source_match_share
    from ramp.models.text import evaluation_text

    clock = StageClock()
    with clock("load model"):
        model = load_model(args.model)  # a path, or a short name from `ramp models`
    with clock("F32 reference GGUF"):
        reference = cached_reference(model)
    with clock("importance matrix"):
        if args.imatrix == "none":
            imatrix, imatrix_file = None, None
        elif args.imatrix == "auto":
            imatrix, imatrix_file = cached_imatrix(model, IMATRIX.sized(text=args.text))
        else:
            imatrix, imatrix_file = ImportanceMatrix.load(args.imatrix), Path(args.imatrix)
    ladder = DEFAULT_LADDER
    default = ESTIMATE if args.damage in ESTIMATES else SENSITIVITY  # `ramp run`'s, so both share the cache
    n_tokens = args.calibration_tokens or default.tokens
    calibration = default.sized(n_tokens, min(default.window, n_tokens), args.text)
    with clock(f"damage ({args.damage})"):
        if not args.methods:  # presets only: no damage is needed
            table = None
        elif args.damage in ESTIMATES:
            table = estimate_sensitivity(args.damage, model, calibration, imatrix, ladder)
        else:
            table = measure_sensitivity(model, calibration, formats=ladder, imatrix=imatrix)
    with clock("reference log-probs (llama.cpp)"):
        windows = make_windows(reference, evaluation_text(args.text), max_windows=args.max_windows)
        reference_lp = reference_logprobs(reference, windows)
    source_bytes = model.source_file_bytes
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    def measured(path: Path, name: str) -> dict:
        with clock("evaluate (llama.cpp)"):
            result = evaluate(path, reference_lp, windows, name=name)
        result = result.annotate(args.text, imatrix is not None, source_match_share(path, model), source_bytes)
        return {k: getattr(result, k) for k in _MEASURED}

    presets = []
    for name in args.presets:
        with clock("presets (llama-quantize)"):
            path = preset_path(reference, name, imatrix_file)
        presets.append({"preset": name, "quantizable_bytes": quantizable_bytes(path, model), **measured(path, name)})
        print(f"preset {name}: {presets[-1]['file_bytes']:,} bytes, KLD {presets[-1]['kld_mean']:.5f}", file=sys.stderr)

    # at or above the source's size a format can write the source's grid back: no claim there, so by default
    # no allocation is spent on those sizes either
    budgets = [(f"{p['preset']} bytes", Budget.parse(f"{p['quantizable_bytes']}B")) for p in presets
               if args.all_sizes or not p["at_or_above_source"]]
    budgets += [(f"{bpw:g} bpw", Budget.parse(f"{bpw}bpw")) for bpw in args.budgets]
    measure_pair = cached_pairs(kld_pair_measure(model, table, imatrix)) if "quadratic" in args.methods else None
    rows, infeasible, by_formats = [], [], {}
    for method in args.methods:
        for label, budget in budgets:
            try:
                with clock(f"allocate ({method})"):
                    allocation = allocate(model, method, budget, table, ladder=ladder, measure_pair=measure_pair)
            except RampError as exc:
                infeasible.append({"method": method, "budget": label, "reason": str(exc)})
                print(f"{method} at {label}: {exc}", file=sys.stderr)
                continue
            key = hashlib.sha256(json.dumps(allocation.formats, sort_keys=True).encode()).hexdigest()
            if key not in by_formats:  # uniform gives one file for many budgets: measure it once
                path = work / f"{method}-{key[:12]}.gguf"
                with clock("export (ramp)"):
                    write_allocation(model, allocation, path, progress=False, imatrix=imatrix)
                by_formats[key] = measured(path, f"{method} {label}")
                path.unlink()  # keep the work folder small: the cache holds reference and presets
            rows.append({"method": method, "budget": label, "predicted_damage": allocation.extra["predicted_damage"],
                         "data_bytes": allocation.extra["data_bytes"], **by_formats[key]})
            print(f"{method} at {label}: {rows[-1]['file_bytes']:,} bytes, KLD {rows[-1]['kld_mean']:.5f}", file=sys.stderr)
    ref = reference_result(reference, reference_lp, windows)
    return {"model": str(model.source_path), "model_sha256": model.sha256, "text": args.text,
            "imatrix": None if imatrix is None else {"sha256": imatrix.content_sha256(), "chunks": imatrix.chunk_count,
                                                     "chunk_size": imatrix.chunk_size, "datasets": imatrix.datasets},
            "sensitivity_tokens": calibration.n_windows * calibration.window, "sensitivity_measure": table.measure if table else None,
            "eval_tokens": ref.n_tokens, "eval_windows": len(windows.tokens), "reference_perplexity": ref.perplexity,
            "reference_file_bytes": ref.file_bytes, "source_file_bytes": source_bytes,
            "rows": rows, "presets": presets, "infeasible": infeasible, "stages": list(clock.stages.values())}


_MEASURED = ("file_bytes", "bits_per_weight", "perplexity", "kld_mean", "kld_p99", "top1_agreement", "text", "imatrix",
             "source_match", "at_or_above_source")


def plot(results: dict, path: Path, title: str) -> None:
    from ramp.evaluate.pareto import plot_pareto

    lines = {f"ramp {method}": [(row["file_bytes"], row["kld_mean"]) for row in results["rows"] if row["method"] == method]
             for method in dict.fromkeys(row["method"] for row in results["rows"])}
    presets = [(preset["preset"], preset["file_bytes"], preset["kld_mean"]) for preset in results["presets"]]
    plot_pareto(lines, presets, "llama.cpp presets" + (" (imatrix)" if results["imatrix"] else ""), path, title,
                results["source_file_bytes"])


def markdown(results: dict, png: Path, command: str, heading: str, goal: float = GOAL) -> str:
    used = "made with the same importance matrix" if results["imatrix"] else "made without an importance matrix"
    matrix = results["imatrix"]
    lines = [
        heading, "",
        f"`{command}`. Presets by llama.cpp's own quantizer from the F32 reference, {used}"
        + (("; ramp's rows allocate at exactly the bytes each preset spends on the quantizable tensors (same quantizer, "
            f"same importance matrix), damage = `{results['sensitivity_measure']}` on {results['sensitivity_tokens']} "
            "calibration tokens") if results["sensitivity_measure"] else " (presets only)")
        + ". Measured through llama.cpp on "
        f"{results['eval_windows']} windows of 512 tokens of the held-out `{results['text']}` text "
        f"({results['eval_tokens']:,} scored tokens; reference perplexity {results['reference_perplexity']:.4f})."
        + (f" Importance matrix: `ramp imatrix`, {matrix['chunks']} chunks of {matrix['chunk_size']} tokens of the "
           "calibration half." if matrix else ""),
        f"`=source`: share of quantizable weights equal to the source checkpoint's bit for bit; `*`: file at or above "
        f"the source's {results['source_file_bytes']:,} bytes, where a format can reproduce the source's grid (no claim).",
        "", f"![Pareto: KLD vs file bytes]({png.name})", "",
        "| file | budget | file bytes | bpw | PPL | KLD mean | KLD p99 | top-1 | =source | KLD vs preset |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    preset_kld = {f"{p['preset']} bytes": p["kld_mean"] for p in results["presets"]}

    def row_line(name: str, budget: str, row: dict, ratio: str) -> str:
        star = "*" if row["at_or_above_source"] else ""
        return (f"| {name}{star} | {budget} | {row['file_bytes']:,} | {row['bits_per_weight']:.3f} | {row['perplexity']:.4f} | "
                f"{row['kld_mean']:.5f} | {row['kld_p99']:.4f} | {row['top1_agreement']:.2%} | {row['source_match']:.1%} | {ratio} |")

    for preset in sorted(results["presets"], key=lambda p: p["file_bytes"]):
        label = f"{preset['preset']} bytes"
        lines.append(row_line(f"preset {preset['preset']}", "", preset, ""))
        for row in (r for r in results["rows"] if r["budget"] == label):
            lines.append(row_line(f"**ramp {row['method']}**", label, row, f"{row['kld_mean'] / preset_kld[label]:.2f}x"))
    for row in (r for r in results["rows"] if r["budget"] not in preset_kld):
        lines.append(row_line(f"ramp {row['method']}", row["budget"], row, ""))
    below = [(p, r) for p in results["presets"] for r in results["rows"]
             if r["budget"] == f"{p['preset']} bytes" and r["method"] == "ilp" and not p["at_or_above_source"]]
    if below:
        met = [p["preset"] for p, r in below if r["kld_mean"] <= goal * p["kld_mean"]]
        missed = [f"{p['preset']} ({r['kld_mean'] / p['kld_mean']:.2f}x)" for p, r in below if r["kld_mean"] > goal * p["kld_mean"]]
        lines += ["", f"Goal (ILP at most {goal:.2f}x the preset's mean KLD at its bytes, for every preset below the source's "
                  f"size): met at {', '.join(met) or 'none'}" + (f"; missed at {', '.join(missed)}." if missed else ".")]
    by_budget = {(r["method"], r["budget"]): r for r in results["rows"]}
    rivals = [(label, r, by_budget[("target-bpw", label)]) for (method, label), r in by_budget.items()
              if method == "ilp" and ("target-bpw", label) in by_budget]
    if rivals:
        ahead = [label for label, ilp, rival in rivals if ilp["kld_mean"] < rival["kld_mean"]]
        behind = [f"{label} ({ilp['kld_mean'] / rival['kld_mean']:.2f}x)" for label, ilp, rival in rivals
                  if ilp["kld_mean"] >= rival["kld_mean"]]
        lines += ["", f"ILP below the target-bpw baseline (llama.cpp PR #15550) at the same budget: at {', '.join(ahead) or 'none'}"
                  + (f"; not at {', '.join(behind)}." if behind else ".")]
    if results["infeasible"]:
        lines += ["", "Infeasible (no allocation of the ladder fits): "
                  + ", ".join(f"{item['method']} at {item['budget']}" for item in results["infeasible"]) + "."]
    if results.get("stages"):
        lines += ["", "Cost of each stage in this run (summed over its repeats; peak RSS of the process or its largest "
                  "child so far; cached stages cost nothing):", "",
                  "| stage | runs | wall | CPU | peak RSS |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {stage['stage']} | {stage['runs']} | {stage['wall_s']:.0f} s | {stage['cpu_s']:.0f} s | "
                  f"{stage['peak_rss_mb'] / 1024:.1f} GB |" for stage in results["stages"]]
    return "\n".join(lines) + "\n"


def write_section(doc: Path, heading: str, section: str) -> None:
    """Replace the section under `heading` (or append it), leaving other sections alone."""
    from ramp.files import atomic_output

    text = doc.read_text() if doc.is_file() else "# Benchmarks\n"
    start = text.find(heading + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        following = text.find("\n## ", start + len(heading))
        text = text[:start] + section + ("" if following < 0 else text[following:])
    with atomic_output(doc, "w") as handle:
        handle.write(text)


def main(argv: list[str] | None = None) -> int:
    from ramp.allocate import METHODS
    from ramp.files import atomic_output, cache_dir
    from ramp.evaluate.presets import PRESET_LADDER
    from ramp.measure.estimates import ESTIMATES
    from ramp.models.text import DEFAULT_TEXT, TEXTS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="GGUF path or a name from `ramp models` (default smollm2-135m)")
    parser.add_argument("--imatrix", default="auto", help="auto (`ramp imatrix` on the calibration text, default), none, or a FILE")
    parser.add_argument("--text", default=DEFAULT_TEXT, choices=TEXTS)
    parser.add_argument("--damage", default="kld", choices=("kld", *ESTIMATES),
                        help="ramp's damage: measured KLD sensitivity (default) or a sweep-free estimate, as ramp run --damage")
    parser.add_argument("--calibration-tokens", type=int, help="damage calibration tokens (default: ramp run's for --damage)")
    parser.add_argument("--budgets", default="", help="extra budgets in bpw: START:STOP:STEP or a comma list (default none)")
    parser.add_argument("--methods", default="ilp", help="comma list of methods (default ilp)")
    parser.add_argument("--presets", default=",".join(PRESET_LADDER), help="llama.cpp presets (default: the whole ladder)")
    parser.add_argument("--all-sizes", action="store_true",
                        help="also allocate at the presets at or above the source checkpoint's size (default: below only)")
    parser.add_argument("--max-windows", type=int, default=32, help="512-token evaluation windows (default 32)")
    parser.add_argument("--goal", type=float, default=GOAL,
                        help=f"goal line: ILP mean KLD at most this multiple of the preset's (default {GOAL}, issue 10's)")
    parser.add_argument("--work", default=str(cache_dir() / "baselines"), help="scratch folder for the allocations' GGUFs")
    parser.add_argument("--out", default=str(REPO / "docs"), help="folder for the JSON, the PNG and BENCHMARKS.md")
    args = parser.parse_args(argv)
    args.budgets = parse_budgets(args.budgets)
    args.methods = [method for method in args.methods.split(",") if method]
    args.presets = [preset for preset in args.presets.split(",") if preset]
    unknown = [method for method in args.methods if method not in METHODS or method == "policy"]
    if unknown:
        parser.error(f"unknown or unsupported method {unknown[0]!r}; choose from uniform, greedy, ilp, quadratic")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = sweep(args)
    model_name = args.model or "smollm2-135m"
    variant = "imatrix" if results["imatrix"] else "no-imatrix"
    # the file or folder name without .gguf: a short name keeps its dots ("qwen2.5-coder-1.5b" has no suffix)
    label = Path(model_name).name.removesuffix(".gguf")
    stem = f"baselines-{label}-{variant}"
    with atomic_output(out / f"{stem}.json", "w") as handle:
        handle.write(json.dumps(results, indent=1) + "\n")
    png = out / f"{stem}.png"
    title = f"{label}: ramp vs llama.cpp presets, {'with' if results['imatrix'] else 'without'} imatrix, {args.text}"
    plot(results, png, title)
    heading = f"## Baselines: {label}, {'imatrix' if results['imatrix'] else 'no imatrix'}"
    command = "python benchmarks/baselines.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_section(out / "BENCHMARKS.md", heading, markdown(results, png, command.strip(), heading, args.goal))
    return 0


if __name__ == "__main__":
    sys.exit(main())
