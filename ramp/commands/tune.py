"""`ramp tune`: Optuna search over SAC hyper-parameters and reward constants (`ramp.agent.tune`), trials
`--timesteps` long, each scored at `--eval-points` budgets."""
from __future__ import annotations

import argparse

from ramp.measure.calibration import AGENT
from ramp.commands._options import add_calibration_arguments, calibration_of, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", default=[], metavar="PATH",
                        help="GGUF file, safetensors directory or a name from `ramp models` (repeatable; default: smollm2-135m)")
    parser.add_argument("--sensitivity", action="append", default=[], metavar="FILE",
                        help="sensitivity table per --model, same order, for shaped step rewards (optional)")
    parser.add_argument("--budget", required=True, help="budget range, LOW..HIGH (e.g. 4.2bpw..5bpw)")
    parser.add_argument("--trials", type=positive_int, default=20, help="trials to run in this invocation (default 20)")
    parser.add_argument("--timesteps", type=positive_int, default=1000, help="training steps per trial (default 1000)")
    parser.add_argument("--eval-points", type=positive_int, default=3, help="budgets per model a trial is scored at (default 3)")
    parser.add_argument("--storage", default="sqlite:///ramp_tune.db",
                        help="Optuna RDB storage URL (default sqlite:///ramp_tune.db; any SQLAlchemy URL works)")
    parser.add_argument("--study", default="ramp", help="study name; re-running with the same name continues it")
    parser.add_argument("--out", default="tuned.json", help="best settings as JSON (default tuned.json)")
    parser.add_argument("--formats", help="comma-separated format ladder (default: the formats every --sensitivity "
                                          "table measured, ramp's default ladder without tables)")
    parser.add_argument("--grouping", choices=("tensor", "block"), default="tensor")
    parser.add_argument("--seed", type=int, default=0)
    add_calibration_arguments(parser, AGENT, "each episode-end evaluation", "--calibration-tokens")


def paths(args: argparse.Namespace) -> tuple[dict, dict]:
    """Inputs and outputs, checked against each other by `ramp.cli` before the command runs."""
    return {"--model": args.model, "--sensitivity": args.sensitivity}, {"--out": args.out}


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ramp.agent.arguments import load_tables, parse_budget_range
    from ramp.agent.contexts import build_contexts
    from ramp.agent.tune import Study, tune
    from ramp.files import atomic_output, check_output_path
    from ramp.measure.ladder import ladder_of, parse_ladder
    from ramp.models import load_model

    check_output_path(args.out)
    asked_ladder = parse_ladder(args.formats) if args.formats else None
    paths = args.model or [None]
    tables = load_tables(args.sensitivity, len(paths))
    ladder = asked_ladder or ladder_of(tables)
    models = [load_model(path) for path in paths]
    names = [Path(path).name if path else "SmolLM2-135M-Instruct" for path in paths]
    budget_bpw = parse_budget_range(args.budget, models)
    contexts = build_contexts(models, names, tables, calibration_of(args, args.calibration_tokens), ladder, args.grouping)
    result = tune(Study(args.storage, args.study), contexts, models, budget_bpw, ladder, args.grouping, args.trials,
                  args.timesteps, args.eval_points, args.seed)
    flags = result.pop("flags")
    with atomic_output(args.out, "w") as handle:
        json.dump(result, handle, indent=1)
    print(f"best trial {result['trial']}: mean KLD {result['mean_kld']:.5f}; wrote {args.out}\ntrain with: ramp train ... {flags}")
    return 0
