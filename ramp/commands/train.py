"""`ramp train`: train a SAC allocation policy on one or more models over a range of budgets."""
from __future__ import annotations

import argparse

from ramp.measure.calibration import AGENT
from ramp.commands._options import add_calibration_arguments, calibration_of, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", default=[], metavar="PATH",
                        help="GGUF file, safetensors directory or a name from `ramp models` to train on (repeatable; default: smollm2-135m)")
    parser.add_argument("--sensitivity", action="append", default=[], metavar="FILE",
                        help="sensitivity table per --model, same order, for shaped step rewards (optional)")
    parser.add_argument("--budget", required=True,
                        help="budget range each episode draws from, LOW..HIGH (4.2bpw..5bpw) or one budget")
    parser.add_argument("--timesteps", type=positive_int, default=2000, help="environment steps in total (default 2000)")
    parser.add_argument("--out", default="policy.zip", help="policy file to write (default policy.zip)")
    parser.add_argument("--formats", help="comma-separated format ladder (default: the formats every --sensitivity table measured, "
                                          "ramp's default ladder without tables)")
    parser.add_argument("--grouping", choices=("tensor", "block"), default="tensor",
                        help="one step per tensor, or per transformer block sharing a format (default tensor)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=int, default=500, metavar="STEPS",
                        help="write a resumable checkpoint every STEPS steps (default 500; 0 = only on Ctrl-C)")
    parser.add_argument("--select-every", type=int, default=2000, metavar="STEPS",
                        help="with --sensitivity: score the policy on the table every STEPS steps and write the best "
                             "one, not the last (default 2000; 0 = the last)")
    parser.add_argument("--checkpoint-dir", help="where checkpoints go (default: <out>_checkpoints/)")
    parser.add_argument("--resume", nargs="?", const="latest", metavar="CHECKPOINT",
                        help="continue from a checkpoint (default: the latest in the checkpoint directory)")
    parser.add_argument("--tensorboard", default="runs", metavar="DIR", help="TensorBoard log directory (default runs/)")
    add_calibration_arguments(parser, AGENT, "each episode-end evaluation", "--calibration-tokens")
    parser.add_argument("--reward", action="append", default=[], metavar="KEY=VALUE",
                        help="override a RewardConfig constant, e.g. over_weight=30 (repeatable)")
    parser.add_argument("--sac", action="append", default=[], metavar="KEY=VALUE",
                        help="override a SAC setting, e.g. learning_rate=1e-3 or net_arch=128,128 (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def paths(args: argparse.Namespace) -> tuple[dict, dict]:
    """Inputs and outputs, checked against each other by `ramp.cli` before the command runs."""
    resume = args.resume if args.resume not in (None, "latest") else None
    return {"--model": args.model, "--sensitivity": args.sensitivity, "--resume": resume}, {"--out": args.out}


def run(args: argparse.Namespace) -> int:
    import sys
    import time
    from pathlib import Path

    from ramp.agent import sac as agent
    from ramp.measure.ladder import ladder_of, parse_ladder
    from ramp.envs.bit_allocation import BitAllocationEnv, RewardConfig
    from ramp.errors import RampError
    from ramp.files import check_output_path
    from ramp.models import load_model

    # Command-line mistakes fail before any model loads.
    out = check_output_path(args.out)
    asked_ladder = parse_ladder(args.formats) if args.formats else None
    reward = RewardConfig(**agent.parse_overrides(args.reward, RewardConfig, "reward"))
    config = agent.SACConfig(**agent.parse_overrides(args.sac, agent.SACConfig, "sac"))
    checkpoint_dir = Path(args.checkpoint_dir) if args.checkpoint_dir else agent.default_checkpoint_dir(out)
    resume = None
    if args.resume is not None:
        resume = agent.latest_checkpoint(checkpoint_dir) if args.resume == "latest" else Path(args.resume)
        if resume is None or not resume.is_file():
            raise RampError(f"no checkpoint to resume from ({args.resume if args.resume != 'latest' else checkpoint_dir}); "
                            "drop --resume to start afresh")

    paths = args.model or [None]
    tables = agent.load_tables(args.sensitivity, len(paths))
    models = [load_model(path) for path in paths]
    names = [Path(path).name if path else "SmolLM2-135M-Instruct" for path in paths]
    ladder = asked_ladder or ladder_of(tables)
    budget_bpw = agent.parse_budget_range(args.budget, models)
    started = time.monotonic()
    contexts = agent.build_contexts(models, names, tables, calibration_of(args, args.calibration_tokens), ladder, args.grouping)
    env = BitAllocationEnv(contexts, budget_bpw, ladder, args.grouping, reward)
    record = agent.new_record(env, models, config, args.seed)
    print(f"profiled {len(models)} model(s) in {time.monotonic() - started:.0f}s; "
          f"training to {args.timesteps} steps, budgets {budget_bpw[0]:.3f}..{budget_bpw[1]:.3f} bpw")
    try:
        sac = agent.train(env, record, out, args.timesteps, config, checkpoint_dir=checkpoint_dir,
                          checkpoint_every=args.checkpoint_every, tensorboard_log=args.tensorboard,
                          resume=resume, progress_bar=not args.no_progress, select_every=args.select_every)
    except agent.TrainingInterrupted as stop:
        print(f"ramp: interrupted at step {stop.timesteps}; continue with the same command plus --resume", file=sys.stderr)
        return 130
    chosen = agent.read_policy_record(out).extra
    if "selected_at_step" in chosen:
        print(f"kept the policy of step {chosen['selected_at_step']} (table regret {chosen['selection_regret']:.3f})")
    print(f"wrote {out} after {sac.num_timesteps} steps ({time.monotonic() - started:.0f}s in all); "
          f"TensorBoard logs in {args.tensorboard}/")
    return 0
