"""`ramp train`: train a SAC allocation policy on one or more models (`ramp.agent.training`)."""
from __future__ import annotations

import argparse

from ramp.measure.calibration import AGENT
from ramp.commands._options import add_calibration_arguments, calibration_of, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", default=[], metavar="PATH",
                        help="GGUF file, safetensors directory or a name from `ramp models` to train on (repeatable; default: smollm2-135m)")
    parser.add_argument("--sensitivity", action="append", default=[], metavar="FILE",
                        help="sensitivity table per --model, same order, to shape rewards with (default: the model's damage estimate)")
    parser.add_argument("--budget", action="append", default=[], metavar="LOW..HIGH",
                        help="budget range episodes draw from, e.g. 3bpw..5bpw: one for every model or one per --model "
                             "(default per model: just above its smallest allocation up to its source checkpoint's bpw)")
    parser.add_argument("--imatrix", action="append", default=[], metavar="FILE",
                        help="importance matrix per --model that the damage estimate quantizes with, or auto / none "
                             "(default auto: `ramp imatrix`'s, computed once and cached)")
    parser.add_argument("--estimate", default="fisher", choices=("fisher", "imatrix-error", "none"),
                        help="sweep-free damage estimate the policy reads, per format (default fisher); none: embeddings only")
    parser.add_argument("--timesteps", type=positive_int, default=60000, help="environment steps in total (default 60000)")
    parser.add_argument("--out", default="policy.zip", help="policy file to write (default policy.zip)")
    parser.add_argument("--formats", help="comma-separated format ladder (default: the formats every --sensitivity table measured, "
                                          "ramp's default ladder without tables)")
    parser.add_argument("--grouping", choices=("tensor", "block"), default="tensor",
                        help="one step per tensor, or per transformer block sharing a format (default tensor)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=int, default=3000, metavar="STEPS",
                        help="write a resumable checkpoint every STEPS steps (default 3000; 0 = only on Ctrl-C)")
    parser.add_argument("--select-every", type=int, default=3000, metavar="STEPS",
                        help="score the policy on the tables every STEPS steps and write the best one, not the last "
                             "(default 3000; 0 = the last)")
    parser.add_argument("--checkpoint-dir", help="where checkpoints go (default: <out>_checkpoints/)")
    parser.add_argument("--resume", nargs="?", const="latest", metavar="CHECKPOINT",
                        help="continue from a checkpoint (default: the latest in the checkpoint directory); auto: keep a "
                             "policy that finished its --timesteps, continue an interrupted training, start afresh where "
                             "none was begun or the earlier one was trained under another action mapping, observation "
                             "layout or reward")
    parser.add_argument("--tensorboard", default="runs", metavar="DIR", help="TensorBoard log directory (default runs/)")
    parser.add_argument("--evaluate-episodes", action="store_true",
                        help="score every episode by a real KLD forward too (slow; with gamma 0 it reaches only the last step)")
    add_calibration_arguments(parser, AGENT, "--evaluate-episodes' evaluation", "--calibration-tokens")
    parser.add_argument("--reward", action="append", default=[], metavar="KEY=VALUE",
                        help="override a RewardConfig constant, e.g. over_weight=30 (repeatable)")
    parser.add_argument("--sac", action="append", default=[], metavar="KEY=VALUE",
                        help="override a SAC setting, e.g. learning_rate=1e-3 or net_arch=128,128 (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def paths(args: argparse.Namespace) -> tuple[dict, dict]:
    """Inputs and outputs, checked against each other by `ramp.cli` before the command runs."""
    resume = args.resume if args.resume not in (None, "latest", "auto") else None
    imatrix = [path for path in args.imatrix if path not in ("auto", "none")]
    return {"--model": args.model, "--sensitivity": args.sensitivity, "--imatrix": imatrix, "--resume": resume}, {"--out": args.out}


def _per_model(values: list[str], n_models: int, option: str, default: str) -> list[str]:
    from ramp.errors import RampError

    if not values:
        return [default] * n_models
    if len(values) == 1:
        return values * n_models
    if len(values) != n_models:
        raise RampError(f"give one {option} for every model or one per --model ({n_models}), not {len(values)}")
    return values


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from ramp.agent.arguments import parse_overrides
    from ramp.agent.checkpoints import TrainingInterrupted, default_checkpoint_dir, latest_checkpoint
    from ramp.agent.sac import SACConfig
    from ramp.agent.training import AUTO, TrainingModel, TrainingRun, resume_point, train_policy
    from ramp.envs.reward import RewardConfig
    from ramp.errors import RampError
    from ramp.files import check_output_path
    from ramp.measure.ladder import parse_ladder

    # Command-line mistakes fail before any model loads.
    out = check_output_path(args.out)
    refs = args.model or [None]
    if args.sensitivity and len(args.sensitivity) != len(refs):
        raise RampError("give one --sensitivity per --model, in the same order, or none")
    budgets = _per_model(args.budget, len(refs), "--budget", AUTO)
    imatrices = _per_model(args.imatrix, len(refs), "--imatrix", AUTO)
    if args.estimate == "none" and not args.sensitivity:
        raise RampError("--estimate none leaves nothing to shape rewards with; give a --sensitivity table per --model")
    checkpoint_dir = Path(args.checkpoint_dir) if args.checkpoint_dir else default_checkpoint_dir(out)
    reward = RewardConfig(**parse_overrides(args.reward, RewardConfig, "reward"))
    resume = None
    if args.resume == "auto":
        point = resume_point(out, checkpoint_dir, args.timesteps, reward)
        print(f"--resume auto: {point.why}")
        if point.finished:
            return 0
        resume = point.checkpoint
    elif args.resume is not None:
        resume = latest_checkpoint(checkpoint_dir) if args.resume == "latest" else Path(args.resume)
        if resume is None or not resume.is_file():
            raise RampError(f"no checkpoint to resume from ({args.resume if args.resume != 'latest' else checkpoint_dir}); "
                            "drop --resume to start afresh")
    training = TrainingRun(
        models=[TrainingModel(ref, sensitivity, budget, imatrix) for ref, sensitivity, budget, imatrix
                in zip(refs, args.sensitivity or [None] * len(refs), budgets, imatrices)],
        out=out, timesteps=args.timesteps, estimate=None if args.estimate == "none" else args.estimate,
        formats=parse_ladder(args.formats) if args.formats else None, grouping=args.grouping, seed=args.seed,
        checkpoint_dir=checkpoint_dir, checkpoint_every=args.checkpoint_every, select_every=args.select_every,
        resume=resume, tensorboard=args.tensorboard, progress=not args.no_progress,
        evaluate_calibration=calibration_of(args, args.calibration_tokens) if args.evaluate_episodes else None,
        reward=reward,
        sac=SACConfig(**parse_overrides(args.sac, SACConfig, "sac")),
    )
    try:
        sac, record = train_policy(training)
    except TrainingInterrupted as stop:
        print(f"ramp: interrupted at step {stop.timesteps}; continue with the same command plus --resume", file=sys.stderr)
        return 130
    if "selected_at_step" in record.extra:
        print(f"kept the policy of step {record.extra['selected_at_step']} (table regret {record.extra['selection_regret']:.3f})")
    print(f"wrote {out} after {sac.num_timesteps} steps; TensorBoard logs in {args.tensorboard}/")
    return 0
