"""Baselines sweep: every allocation method over a range of budgets on the embedded model, exported to GGUF
and measured through llama.cpp (perplexity, KLD against the unquantized reference on held-out text), next
to llama.cpp's own presets. Writes a results JSON, a Pareto plot (KLD vs file bytes) and the `## Baselines`
section of docs/BENCHMARKS.md.

    python benchmarks/baselines.py --sensitivity sensitivity.json

Budgets an allocation cannot meet on this model (below every tensor's smallest written format) are
listed as infeasible rather than silently dropped.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SECTION = "## Baselines"


def parse_budgets(text: str) -> list[float]:
    """`3.0:5.5:0.25` (inclusive range) or `4.2,4.5,5.0` -> bits per weight."""
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


def sweep(args: argparse.Namespace) -> dict:
    from ramp.allocate import allocate
    from ramp.allocate.quadratic import kld_pair_measure
    from ramp.errors import RampError
    from ramp.export.gguf_writer import write_allocation, write_reference
    from ramp.llama_eval import evaluate, make_windows, reference_logprobs, reference_result
    from ramp.model import load_model
    from ramp.presets import preset_path
    from ramp.sensitivity_table import SensitivityTable
    from ramp.text import evaluation_text

    model = load_model()
    table = SensitivityTable.load(args.sensitivity)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    reference = work / "reference.gguf"
    if not reference.is_file():
        write_reference(model, reference)
    windows = make_windows(reference, evaluation_text(), max_windows=args.max_windows)
    reference_lp = reference_logprobs(reference, windows)
    measure_pair = cached_pairs(kld_pair_measure(model, table)) if "quadratic" in args.methods else None

    rows, infeasible, by_formats = [], [], {}
    for method in args.methods:
        for bpw in args.budgets:
            try:
                allocation = allocate(model, method, f"{bpw}bpw", table, measure_pair=measure_pair)
            except RampError as exc:
                infeasible.append({"method": method, "budget_bpw": bpw, "reason": str(exc)})
                print(f"{method} {bpw}bpw: {exc}", file=sys.stderr)
                continue
            key = hashlib.sha256(json.dumps(allocation.formats, sort_keys=True).encode()).hexdigest()
            if key not in by_formats:  # uniform gives one file for many budgets: measure it once
                path = work / f"{method}-{bpw}bpw.gguf"
                write_allocation(model, allocation, path, progress=False)
                by_formats[key] = evaluate(path, reference_lp, windows, name=f"{method} {bpw}").as_dict()
                path.unlink()  # keep the work folder to the reference and cached logits
            result = by_formats[key]
            rows.append({"method": method, "budget_bpw": bpw, "predicted_damage": allocation.extra["predicted_damage"],
                         "data_bytes": allocation.extra["data_bytes"], **{k: result[k] for k in _MEASURED}})
            print(f"{method} {bpw}bpw: {result['file_bytes']:,} bytes, KLD {result['kld_mean']:.5f}", file=sys.stderr)
    presets = []
    for name in args.presets:
        result = evaluate(preset_path(reference, name), reference_lp, windows, name=name).as_dict()
        presets.append({"preset": name, **{k: result[k] for k in _MEASURED}})
    ref = reference_result(reference, reference_lp, windows).as_dict()
    return {"model": str(model.source_path), "model_sha256": model.sha256, "sensitivity": str(args.sensitivity),
            "sensitivity_measure": table.measure, "eval_tokens": ref["n_tokens"], "reference_perplexity": ref["perplexity"],
            "reference_file_bytes": ref["file_bytes"], "rows": rows, "presets": presets, "infeasible": infeasible}


_MEASURED = ("file_bytes", "bits_per_weight", "perplexity", "kld_mean", "kld_p99", "top1_agreement")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.5, 5))
    for method in dict.fromkeys(row["method"] for row in results["rows"]):
        points = sorted((row["file_bytes"] / 2**20, row["kld_mean"]) for row in results["rows"] if row["method"] == method)
        axes.plot(*zip(*points), marker="o", label=method)
    for preset in results["presets"]:
        axes.scatter(preset["file_bytes"] / 2**20, preset["kld_mean"], marker="*", s=140, color="black", zorder=3)
        axes.annotate(preset["preset"], (preset["file_bytes"] / 2**20, preset["kld_mean"]), textcoords="offset points",
                      xytext=(6, 4))
    axes.set_yscale("log")
    axes.set_xlabel("GGUF file size (MiB)")
    axes.set_ylabel("mean KLD vs unquantized (nats/token)")
    axes.set_title("SmolLM2-135M: allocation baselines vs llama.cpp presets")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def markdown(results: dict, png: Path, command: str) -> str:
    lines = [
        SECTION, "",
        f"`{command}` on the embedded SmolLM2-135M-Instruct: each method allocates at each budget (bits per "
        "quantizable weight), the allocation is written as GGUF and measured through llama.cpp on the held-out "
        f"evaluation text ({results['eval_tokens']:,} scored tokens; reference perplexity "
        f"{results['reference_perplexity']:.4f}), next to llama.cpp's presets made from the same reference. "
        f"Predicted damage is the sum of the sensitivity table's per-tensor {results['sensitivity_measure']} increases.",
        "", f"![Pareto: KLD vs file bytes]({png.name})", "",
        "| method | budget bpw | file bytes | bpw (file) | predicted damage | PPL | KLD mean | KLD p99 | top-1 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        lines.append(
            f"| {row['method']} | {row['budget_bpw']:.2f} | {row['file_bytes']:,} | {row['bits_per_weight']:.3f} | "
            f"{row['predicted_damage']:.4g} | {row['perplexity']:.4f} | {row['kld_mean']:.5f} | {row['kld_p99']:.4f} | "
            f"{row['top1_agreement']:.2%} |"
        )
    for preset in results["presets"]:
        lines.append(
            f"| preset {preset['preset']} | | {preset['file_bytes']:,} | {preset['bits_per_weight']:.3f} | | "
            f"{preset['perplexity']:.4f} | {preset['kld_mean']:.5f} | {preset['kld_p99']:.4f} | {preset['top1_agreement']:.2%} |"
        )
    if results["infeasible"]:
        skipped = sorted({(item["method"], item["budget_bpw"]) for item in results["infeasible"]})
        lines += ["", "Infeasible on this model (no allocation of the ladder fits): "
                  + ", ".join(f"{method} {bpw:g}bpw" for method, bpw in skipped) + ". "
                  "Every 576-wide row falls back from Q2_K/Q3_K to Q4_0 in llama.cpp, which bounds the smallest file."]
    return "\n".join(lines) + "\n"


def write_section(doc: Path, section: str) -> None:
    """Replace the `## Baselines` section of the document (or append it), leaving other sections alone."""
    from ramp.files import atomic_output

    text = doc.read_text() if doc.is_file() else "# Benchmarks\n"
    start = text.find(SECTION + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        following = text.find("\n## ", start + len(SECTION))
        text = text[:start] + section + ("" if following < 0 else text[following:])
    with atomic_output(doc, "w") as handle:
        handle.write(text)


def main(argv: list[str] | None = None) -> int:
    from ramp.allocate import METHODS
    from ramp.files import cache_dir
    from ramp.presets import DEFAULT_PRESETS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sensitivity", required=True, help="sensitivity table of the embedded model (`ramp profile`)")
    parser.add_argument("--budgets", default="3.0:5.5:0.25", help="START:STOP:STEP or a comma list, in bpw")
    parser.add_argument("--methods", default="uniform,greedy,ilp,quadratic", help="comma list of methods")
    parser.add_argument("--presets", default=",".join(("Q4_0", *DEFAULT_PRESETS)), help="llama.cpp presets to compare")
    parser.add_argument("--max-windows", type=int, default=32, help="512-token evaluation windows (default 32)")
    parser.add_argument("--work", default=str(cache_dir() / "baselines"), help="folder for the reference GGUF")
    parser.add_argument("--out", default=str(REPO / "docs"), help="folder for baselines.json, baselines.png, BENCHMARKS.md")
    args = parser.parse_args(argv)
    args.budgets = parse_budgets(args.budgets)
    args.methods = [method for method in args.methods.split(",") if method]
    args.presets = [preset for preset in args.presets.split(",") if preset]
    unknown = [method for method in args.methods if method not in METHODS or method == "policy"]
    if unknown:
        parser.error(f"unknown or unsupported method {unknown[0]!r}; choose from uniform, greedy, ilp, quadratic")

    out = Path(args.out)
    results = sweep(args)
    (out / "baselines.json").write_text(json.dumps(results, indent=1) + "\n")
    png = out / "baselines.png"
    plot(results, png)
    command = "python benchmarks/baselines.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_section(out / "BENCHMARKS.md", markdown(results, png, command.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
