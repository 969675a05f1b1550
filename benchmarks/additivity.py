"""How additive is the damage table? Predicted (the table's sum) against measured (the whole model's mean KLD)
damage for the ILP's allocation and random feasible allocations near it, at a few budgets.

    python -m benchmarks.additivity --model smollm2-135m --budgets 3,4,5 --neighbours 30

Per budget: the ILP over the table, and `--neighbours` allocations a few budget-keeping level switches away from
it (1 to `--moves`, `ramp.allocate.search.level_switch`), each scored by the KLD oracle on calibration windows
(`ramp.measure.oracle`, the same windows for all). Reported per budget: Spearman's rank correlation between
predicted and measured, the ratio measured / predicted (median, range), where the ILP ranks by measured KLD
among its neighbours, and the best neighbour's measured KLD over the ILP's. A Spearman near 1 and a ratio near
a constant mean the table orders allocations the way the model does; the ILP's rank says whether the table's
optimum is the model's optimum in its own neighbourhood.

By default the model's off-grid twin (`ramp twin`, cached) is measured, so no format writes the checkpoint's own
grid back and lands on a damage the table cannot know; `--raw` measures the checkpoint itself. Results:
docs/additivity-<model>[-twin].json and .png; budgets outside the feasible range are reported as such.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from ramp.measure.estimates import ESTIMATES
    from ramp.models.text import DEFAULT_TEXT

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="GGUF path or a name from `ramp models`")
    parser.add_argument("--raw", action="store_true", help="measure the checkpoint itself, not its off-grid twin")
    parser.add_argument("--name", help="name in the output files (default: the model's short name or file stem)")
    parser.add_argument("--damage", default="kld", choices=("kld", *ESTIMATES),
                        help="the table: the measured sweep (kld, default) or a sweep-free estimate")
    parser.add_argument("--budgets", default="3,4,5", help="comma-separated bits per quantizable weight (default 3,4,5)")
    parser.add_argument("--neighbours", type=int, default=30, help="random allocations per budget (default 30)")
    parser.add_argument("--moves", type=int, default=4, help="at most this many level switches from the ILP (default 4)")
    parser.add_argument("--tokens", type=int, default=512, help="calibration tokens the KLD is measured on (default 512)")
    parser.add_argument("--window", type=int, default=128, help="calibration window (default 128)")
    parser.add_argument("--text", default=DEFAULT_TEXT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "docs"), help="folder for the JSON and the PNG (default docs/)")
    return parser.parse_args(argv)


def table_for(args: argparse.Namespace, model) -> "object":
    from ramp.measure.calibration import ESTIMATE, SENSITIVITY
    from ramp.measure.estimates import estimate_sensitivity
    from ramp.measure.sensitivity import measure_sensitivity

    if args.damage == "kld":
        return measure_sensitivity(model, SENSITIVITY.sized(text=args.text))
    return estimate_sensitivity(args.damage, model, ESTIMATE.sized(text=args.text), seed=args.seed)


def spearman(predicted: list[float], measured: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(predicted, measured).statistic)


def measure_budget(model, table, oracle, bpw: float, args: argparse.Namespace, rng: np.random.Generator) -> dict:
    from ramp.allocate import allocate, predicted_damage
    from ramp.allocate.budget import Budget
    from ramp.allocate.problem import build_problem
    from ramp.allocate.search import level_switch
    from ramp.errors import RampError

    budget = f"{bpw:g}bpw"
    try:
        ilp = allocate(model, "ilp", budget, table)
    except RampError as error:
        return {"budget": budget, "infeasible": str(error)}
    problem = build_problem(model, Budget.parse(budget).bytes_for(model), tuple(ilp.extra["ladder"]))
    start = [next(c for c, choice in enumerate(item.choices) if choice.formats == tuple(ilp.formats[m] for m in item.members))
             for item in problem.items]
    picks_list, seen = [start], {tuple(start)}
    while len(picks_list) < args.neighbours + 1:
        child = level_switch(start, problem, rng, int(rng.integers(1, args.moves + 1)))
        if tuple(child) not in seen:
            seen.add(tuple(child))
            picks_list.append(child)
    rows = []
    for index, picks in enumerate(picks_list):
        formats = problem.formats(picks)
        started = time.monotonic()
        rows.append({"kind": "ilp" if index == 0 else "neighbour", "bytes": problem.picks_bytes(picks),
                     "predicted": predicted_damage(model, formats, table), "measured": oracle(formats),
                     "changed": sum(a != b for a, b in zip(picks, start))})
        print(f"  {budget} {index:3d}/{len(picks_list) - 1}: predicted {rows[-1]['predicted']:.5f} measured "
              f"{rows[-1]['measured']:.5f} ({time.monotonic() - started:.1f} s)", flush=True)
    predicted = [row["predicted"] for row in rows]
    measured = [row["measured"] for row in rows]
    ratios = np.array(measured) / np.array(predicted)
    return {
        "budget": budget, "budget_bytes": problem.budget_bytes, "rows": rows,
        "spearman": spearman(predicted, measured),
        "ratio_median": float(np.median(ratios)), "ratio_min": float(ratios.min()), "ratio_max": float(ratios.max()),
        "ilp_ratio": float(ratios[0]),
        "ilp_measured_rank": int(np.argsort(np.argsort(measured))[0]) + 1,  # 1: no neighbour measured better
        "best_neighbour_over_ilp": float(min(measured[1:]) / measured[0]),
        "neighbours_better_than_ilp": int(sum(m < measured[0] for m in measured[1:])),
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ramp.files import atomic_output

    budgets = [b for b in results["budgets"] if "rows" in b]
    figure, axes = plt.subplots(1, max(1, len(budgets)), figsize=(4.2 * max(1, len(budgets)), 4), squeeze=False)
    for axis, budget in zip(axes[0], budgets):
        neighbours = [row for row in budget["rows"] if row["kind"] == "neighbour"]
        axis.scatter([r["predicted"] for r in neighbours], [r["measured"] for r in neighbours], s=14, label="neighbours")
        ilp = budget["rows"][0]
        axis.scatter([ilp["predicted"]], [ilp["measured"]], marker="*", s=160, color="red", label="ILP")
        low = min(min(r["predicted"], r["measured"]) for r in budget["rows"])
        high = max(max(r["predicted"], r["measured"]) for r in budget["rows"])
        axis.plot([low, high], [low, high], color="grey", linewidth=0.8, linestyle="--", label="measured = predicted")
        axis.set_title(f"{budget['budget']}: Spearman {budget['spearman']:.2f}, ratio {budget['ratio_median']:.2f}",
                       fontsize=9)
        axis.set_xlabel("predicted (sum of the table)")
        axis.set_ylabel("measured mean KLD (nats)")
        axis.legend(fontsize=7)
    figure.suptitle(f"additivity on {results['model']} ({results['damage']} table, {results['checkpoint']}, "
                    f"{results['calibration']['tokens']} calibration tokens)", fontsize=10)
    figure.tight_layout()
    with atomic_output(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    from ramp.files import atomic_output
    from ramp.measure.calibration import CalibrationSpec
    from ramp.measure.oracle import KLDOracle
    from ramp.models import load_model

    args = parse_args(argv)
    started = time.monotonic()
    model = load_model(args.model)
    name = args.name or Path(args.model).stem
    if not args.raw:
        from ramp.evaluate.twin import cached_twin

        twin = cached_twin(model)
        checkpoint = f"off-grid twin of {model.sha256[:12]} ({twin.name})"
        model, name = load_model(twin), name + "-twin"
    else:
        checkpoint = "raw (no off-grid twin)"
    table = table_for(args, model)
    calibration = CalibrationSpec(args.text, args.tokens, args.window)
    oracle = KLDOracle(model, calibration, checkpoint_blocks=False)
    rng = np.random.default_rng(args.seed)
    print(f"additivity of {name}'s {args.damage} table, seed {args.seed}, on {calibration}", flush=True)
    results = {
        "model": name, "model_sha256": model.sha256, "damage": args.damage, "checkpoint": checkpoint,
        "calibration": calibration.as_dict(), "neighbours": args.neighbours, "moves": args.moves, "seed": args.seed,
        "budgets": [measure_budget(model, table, oracle, float(bpw), args, rng) for bpw in args.budgets.split(",")],
    }
    results["wall_s"] = round(time.monotonic() - started, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_output(out / f"additivity-{name}.json", "w") as handle:
        json.dump(results, handle, indent=1)
    plot(results, out / f"additivity-{name}.png")
    for budget in results["budgets"]:
        if "rows" not in budget:
            print(f"{budget['budget']}: {budget['infeasible']}")
            continue
        print(f"{budget['budget']}: Spearman {budget['spearman']:.3f}, measured/predicted median "
              f"{budget['ratio_median']:.3f} ({budget['ratio_min']:.3f}-{budget['ratio_max']:.3f}), ILP's measured rank "
              f"{budget['ilp_measured_rank']}/{len(budget['rows'])}, best neighbour / ILP {budget['best_neighbour_over_ilp']:.3f}")
    print(f"wrote {out / f'additivity-{name}.json'} and .png ({results['wall_s']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
