"""`ramp allocate`: choose a format per quantizable tensor under a budget, with one of the baselines
(uniform, ilp, quadratic, greedy, target-bpw), the whole-model search or a trained policy, and write the allocation JSON."""
from __future__ import annotations

import argparse
from collections import Counter

from ramp.commands._options import (
    add_fold_argument, add_imatrix_argument, add_text_argument, load_importance, load_model_for, positive_int,
)
from ramp.allocate import METHODS  # the registry imports no solver until a method runs: the CLI stays quick
from ramp.measure.ladder import DEFAULT_LADDER


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="GGUF file, safetensors directory or a name from `ramp models` (default: smollm2-135m)")
    parser.add_argument("--method", choices=list(METHODS), default="ilp",
                        help="allocation method (default: ilp); target-bpw is llama.cpp PR 15550's allocator on its own "
                             "error from --imatrix (with --sensitivity, its solver on that table)")
    parser.add_argument("--budget", required=True,
                        help="bits per quantizable weight (3.65bpw) or bytes of their data (60MB, 57.2MiB, 123456789B)")
    parser.add_argument("--formats", help="comma-separated candidate formats (default: the formats the sensitivity table "
                                          f"measured, {','.join(DEFAULT_LADDER)} without one)")
    parser.add_argument("--sensitivity", metavar="FILE", help="sensitivity table from `ramp profile` (computed here when omitted)")
    parser.add_argument("--pin", action="append", default=[], metavar="REGEX=FORMAT",
                        help="force tensors whose name matches REGEX to FORMAT, as llama-quantize --tensor-type (repeatable)")
    parser.add_argument("--group", action="append", default=[], metavar="REGEX",
                        help="tensors matching REGEX in the same block share one format, e.g. 'attn_[qkv]' (repeatable)")
    parser.add_argument("--embedding-format", default="same",
                        help="uniform: format of an untied token_embd ('same' = the uniform format, llama.cpp's default)")
    parser.add_argument("--output-format", default="Q6_K",
                        help="uniform: format of the output projection (tied token_embd included) unless the uniform "
                             "format is larger; llama.cpp's default Q6_K, 'same' = the uniform format")
    parser.add_argument("--pairs-per-role", type=positive_int, default=2,
                        help="quadratic: adjacent-block pairs measured per tensor role to estimate interaction (default 2)")
    parser.add_argument("--search-minutes", type=float, default=10.0, metavar="MIN",
                        help="search: minutes the search may take in all, an interrupted and resumed search counted "
                             "once (default 10)")
    parser.add_argument("--search-generations", type=positive_int, metavar="N",
                        help="search: stop after N generations at the latest (the allocation is fixed by --seed and N)")
    parser.add_argument("--seed", type=int, default=0, help="search: seed of its random moves (default 0)")
    parser.add_argument("--policy", metavar="FILE",
                        help="policy: a policy file from `ramp train` (default: the policy that ships with ramp, trained on every family it loads)")
    parser.add_argument("--embeddings", metavar="FILE",
                        help="policy: the model's embeddings.json from `ramp profile` (or a job folder), instead of "
                             "profiling it again")
    parser.add_argument("--out", default="allocation.json", help="allocation JSON to write (default allocation.json)")
    parser.add_argument("--tensor-type-file", metavar="FILE", help="also write llama-quantize's --tensor-type-file")
    add_fold_argument(parser, "allocating for it")
    add_imatrix_argument(parser, "quantize the tensors whose sensitivity is measured here (without --sensitivity), "
                                 "and to weigh target-bpw's error")
    add_text_argument(parser, "measure sensitivity on (without --sensitivity)")


def embeddings_file(given: str | None) -> str | None:
    """--embeddings as a file: a job folder (or `ramp profile`'s --out folder) stands for its embeddings.json."""
    from pathlib import Path

    return str(Path(given) / "embeddings.json") if given is not None and Path(given).is_dir() else given


def paths(args: argparse.Namespace) -> tuple[dict, dict]:
    """Inputs and outputs, checked against each other by `ramp.cli` before the command runs."""
    return ({"--model": args.model, "--sensitivity": args.sensitivity, "--policy": args.policy, "--imatrix": args.imatrix,
             "--embeddings": embeddings_file(args.embeddings)},
            {"--out": args.out, "--tensor-type-file": args.tensor_type_file})


def run(args: argparse.Namespace) -> int:
    from ramp.allocate import SearchSettings, allocate
    from ramp.allocate.budget import Budget, describe_bytes
    from ramp.allocate.problem import Pin
    from ramp.allocate.quadratic import kld_pair_measure
    from ramp.errors import RampError
    from ramp.files import check_output_path
    from ramp.measure.ladder import parse_ladder
    from ramp.measure.sensitivity_table import SensitivityTable

    # Everything that can be wrong with the command line fails before the model loads.
    budget = Budget.parse(args.budget)
    ladder = parse_ladder(args.formats) if args.formats else None
    pins = [Pin.parse(text) for text in args.pin]
    for path in (args.out, args.tensor_type_file):
        if path:
            check_output_path(path)
    if args.method == "policy":
        from ramp.agent.policy import DEFAULT_POLICY, TrainedPolicy
        from ramp.agent.policy_file import read_policy_record

        read_policy_record(args.policy or DEFAULT_POLICY)  # a foreign file fails before the model loads
    elif args.embeddings:
        raise RampError("--embeddings feed a trained policy; pass --method policy --policy FILE, or drop --embeddings")
    if args.method == "search" and args.search_minutes <= 0:
        raise RampError(f"--search-minutes must be positive, got {args.search_minutes}; give the minutes the search may take")
    if args.method == "target-bpw" and not (args.imatrix or args.sensitivity):
        raise RampError("--method target-bpw weighs its error by an importance matrix; pass --imatrix FILE (`ramp imatrix`)")
    table = SensitivityTable.load(args.sensitivity) if args.sensitivity else None

    model = load_model_for(args)
    imatrix = load_importance(args.imatrix, model)
    policy = None
    if args.method == "policy":
        from ramp.measure.profile import Profile

        policy = TrainedPolicy(args.policy or DEFAULT_POLICY, Profile.load(embeddings_file(args.embeddings)) if args.embeddings else None, imatrix)
    if table is None and args.method == "target-bpw":
        from ramp.allocate import target_bpw

        table = target_bpw.error_table(model, ladder or DEFAULT_LADDER, imatrix)
    elif table is None and METHODS[args.method].needs_sensitivity:
        from ramp.measure.calibration import SENSITIVITY
        from ramp.measure.sensitivity import measure_sensitivity

        table = measure_sensitivity(model, SENSITIVITY.sized(text=args.text), ladder or DEFAULT_LADDER, imatrix=imatrix)
    allocation = allocate(
        model, args.method, budget, table, ladder=ladder, pins=pins, groups=args.group,
        embedding_format=args.embedding_format, output_format=args.output_format,
        measure_pair=kld_pair_measure(model, table, imatrix) if args.method == "quadratic" else None,
        pairs_per_role=args.pairs_per_role, policy=policy,
        search=SearchSettings(imatrix, args.seed, args.search_minutes, args.search_generations) if args.method == "search" else None,
    )
    allocation.save(args.out)
    if args.tensor_type_file:
        allocation.save_tensor_type_file(args.tensor_type_file)

    extra = allocation.extra
    print(f"{args.method}: {describe_bytes(extra['data_bytes'], model)} of quantizable weights "
          f"(budget {budget.text} = {describe_bytes(extra['budget_bytes'], model)})")
    if extra["predicted_damage"] is not None:
        print(f"predicted damage (sum of measured {table.measure} increases): {extra['predicted_damage']:.5g}")
    if "predicted_damage_with_interaction" in extra:
        print(f"predicted damage with pair interaction: {extra['predicted_damage_with_interaction']:.5g}")
    if args.method == "search":
        print(f"measured KLD on {extra['calibration']['tokens']} calibration tokens: {extra['kld']:.5g} after "
              f"{extra['generations']} generations ({extra['scorings']} scorings), the ILP's {extra['ilp_kld']:.5g}")
    counts = Counter(allocation.formats.values())
    print("formats: " + ", ".join(f"{fmt} x{counts[fmt]}" for fmt in sorted(counts, key=_bits)))
    print(f"wrote {args.out}" + (f" and {args.tensor_type_file}" if args.tensor_type_file else ""))
    return 0


def _bits(fmt: str) -> float:
    from ramp.kernels.formats import get_format

    return get_format(fmt).bits_per_weight
