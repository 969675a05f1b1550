"""Leave-one-family-out: a policy trained on two families allocates zero-shot for the third, rotated over
SmolLM2 (llama), Gemma 3 and Qwen2.5, next to everything else that could allocate for the held-out model.

    python -m benchmarks.transfer                       # all three rotations, then the all-family policy
    python -m benchmarks.transfer --held-out gemma3-270m --timesteps 30000

Training runs and jobs, then a table. Each policy is one `ramp train --resume auto` (a finished policy is
kept, an interrupted one continued, one trained under another contract or reward trained again). Per held-out
model, its rows are `ramp run` jobs at each imatrix preset's quantizable bytes below the source's size (from
`benchmarks.baselines`' job of that model: run it first) and two bpw budgets:
- policy (zero-shot): trained on the other two families, reading the held-out model's profile and its
  cheap damage estimate only;
- ILP (measured): the ILP over the held-out model's own measured KLD table, the best the table allows
  (not on Qwen: its sweep would take hours; `--no-measured`);
- ILP (estimate): the ILP over the cheap Fisher estimate, which costs about what the policy's inputs cost;
- policy (own): trained on the held-out model itself;
- uniform, and the imatrix preset.
Every file is measured once (`ramp run` caches measurements by formats), so the rows the jobs share cost
nothing twice. The jobs run on each model's off-grid twin (`ramp twin`; `--raw`: on the checkpoints, where
presets at or above the source's size make no claim and are left out). Policies train on the checkpoints:
with `--raw` shaped by each training model's measured table where every one has one (the baselines job's),
else, and always on twins (whose tables belong to the twin), by the estimate. Writes transfer.json, transfer.png and the
`## Agent: leave one family out` section of BENCHMARKS.md into --out.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from benchmarks.baselines import write_section

REPO = Path(__file__).resolve().parent.parent
FAMILIES = ("smollm2-135m", "gemma3-270m", "qwen2.5-coder-1.5b")
EXTRA_BPW = {"smollm2-135m": (4.5, 5.0), "gemma3-270m": (5.5, 6.5), "qwen2.5-coder-1.5b": (2.75, 5.0)}
NO_MEASURED = ("qwen2.5-coder-1.5b",)
HEADING = "## Agent: leave one family out"
GOALS = {"preset": 1.0, "measured ILP": 1.15, "estimate ILP": 1.0}


def baselines_job(args: argparse.Namespace, family: str):
    """The record of `benchmarks.baselines`' job of this family (imatrix): its presets and measured table."""
    from ramp.errors import RampError
    from ramp.job.record import read_job
    from ramp.job.settings import model_label

    folder = Path(args.jobs) / f"baselines-{model_label(family)}{'' if args.raw else '-twin'}-imatrix"
    try:
        return read_job(folder)
    except RampError:
        raise SystemExit(f"{folder} holds no finished job: run `python -m benchmarks.baselines --model {family} "
                         f"--max-windows {args.windows} --jobs {args.jobs}{' --raw' if args.raw else ''}` first") from None


def train(args: argparse.Namespace, families: list[str], out: Path) -> Path:
    """`ramp train --resume auto` on `families`: kept when finished, continued when interrupted."""
    from ramp.cli import main as ramp
    from ramp.measure.estimates import MEASURES

    records = [baselines_job(args, family) for family in families]
    measured = args.raw and all(record.damage_measure not in MEASURES.values() for record in records)
    command = ["train", "--out", str(out), "--timesteps", str(args.timesteps), "--seed", str(args.seed), "--resume", "auto",
               "--checkpoint-every", str(min(3000, args.timesteps)), "--select-every", str(min(3000, args.timesteps)),
               "--tensorboard", str(Path(args.work) / "runs"), *(["--formats", args.formats] if args.formats else [])]
    for family, record in zip(families, records):
        command += ["--model", family] + (["--sensitivity", str(record.folder / "sensitivity.json")] if measured else [])
    command += [option for override in args.sac for option in ("--sac", override)]
    if ramp(command):
        raise SystemExit(f"ramp {' '.join(command)} failed")
    return out


def job(args: argparse.Namespace, family: str, name: str, methods: str, damage: str, budgets: list[str],
        presets: list[str], policy: Path | None = None):
    """One `ramp run` job on the held-out family, read back."""
    from ramp.cli import main as ramp
    from ramp.job.record import read_job
    from ramp.job.settings import model_label

    folder = Path(args.jobs) / f"transfer-{model_label(family)}-{name}"
    command = ["run", "--model", family, "--method", methods, "--damage", damage, "--budget", ",".join(budgets),
               "--max-windows", str(args.windows), "--out-dir", str(folder), "--no-twin" if args.raw else "--twin",
               *(["--policy", str(policy)] if policy else [])]
    command += [option for preset in presets for option in ("--preset", preset)]
    for option, value in (("--formats", args.formats), ("--calibration-tokens", args.calibration_tokens), ("--ctx", args.ctx)):
        if value is not None:
            command += [option, str(value)]
    if ramp(command):
        raise SystemExit(f"ramp {' '.join(command)} failed")
    return read_job(folder)


MEASURED = ("file_bytes", "bits_per_weight", "perplexity", "kld_mean", "kld_p99", "top1_agreement")


def held_out_rows(args: argparse.Namespace, family: str, zero_shot: Path | None, own: Path | None) -> tuple[list[dict], list[dict]]:
    """The held-out model's rows and its presets below the source's size."""
    baselines = baselines_job(args, family)
    presets = [preset for preset in baselines.presets if not preset["result"]["at_or_above_source"]]
    names = [preset["preset"] for preset in presets]
    budgets = names + [f"{bpw:g}bpw" for bpw in EXTRA_BPW.get(family, ())] + [f"{bpw:g}bpw" for bpw in args.extra_bpw]
    labels = {"ilp": "ILP (estimate)", "uniform": "uniform", "policy": "policy (zero-shot)"}
    records = [(job(args, family, "estimate", ",".join(["ilp", "uniform"] + (["policy"] if zero_shot else [])), "fisher",
                    budgets, names, zero_shot), labels)]
    if own is not None:
        records.append((job(args, family, "own", "policy", "fisher", budgets, names, own), {"policy": "policy (own)"}))
    if family not in args.no_measured:
        records.append((job(args, family, "measured", "ilp", "kld", budgets, names), {"ilp": "ILP (measured)"}))
    rows = [{"method": label_of[row["method"]], "budget": f"{row['budget']} bytes" if row["budget"] in names else row["budget"],
             **{key: row["result"][key] for key in MEASURED}}
            for record, label_of in records for row in record.rows if row["result"] is not None]
    return rows, [{"preset": preset["preset"], **{key: preset["result"][key] for key in MEASURED}} for preset in presets]


# one colour per method in every panel (Qwen has no measured-table rows, which would shift the default cycle)
METHOD_COLORS = {"policy (zero-shot)": "tab:blue", "ILP (measured)": "tab:orange", "ILP (estimate)": "tab:green",
                 "policy (own)": "tab:red", "uniform": "tab:purple"}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ramp.files import atomic_output

    figure, axes = plt.subplots(1, len(results["held_out"]), figsize=(6 * len(results["held_out"]), 4.8), squeeze=False)
    for axis, (name, entry) in zip(axes[0], results["held_out"].items()):
        for method in dict.fromkeys(row["method"] for row in entry["rows"]):
            points = sorted((row["file_bytes"] / 1e6, row["kld_mean"]) for row in entry["rows"] if row["method"] == method)
            axis.plot(*zip(*points), marker="o", label=method, linestyle="-" if "policy" in method else ":",
                      color=METHOD_COLORS.get(method))
        presets = [(p["file_bytes"] / 1e6, p["kld_mean"], p["preset"]) for p in entry["presets"]]
        axis.scatter([x for x, _, _ in presets], [y for _, y, _ in presets], marker="s", color="black", label="imatrix preset")
        for x, y, label in presets:
            axis.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        axis.set(yscale="log", xlabel="file MB", ylabel="mean KLD vs reference (nats)",
                 title=f"held out: {name}\n(trained on {', '.join(entry['trained_on'])})")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    with atomic_output(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110)
    plt.close(figure)


def markdown(results: dict, command: str) -> str:
    lines = [HEADING, "",
             f"`{command}`. Each held-out model's policy (zero-shot) was trained on the other two families only; "
             f"{results['timesteps']} steps per policy, seed {results['seed']}. Every file is measured through llama.cpp on "
             f"the held-out windows of `benchmarks.baselines` ({results['windows']} windows of held-out Austen); presets "
             "made by llama-quantize with the same importance matrix; references are the dequantized source checkpoints. "
             "Qwen2.5 has no measured table (its sweep would take hours): its training shapes with the Fisher estimate "
             "and its `ILP (measured)` rows are absent. The policy's action is a correction to the estimate: action 0 "
             "is the choice of the exact ILP over the estimate for the bytes left, solved again after any departure (action mapping "
             f"{results.get('action_mapping', '?')}), so a policy that learned nothing allocates like `ILP (estimate)`; "
             f"training charges {results.get('deviation_weight', '?')} per option of departure from that choice "
             "(`RewardConfig.deviation_weight`), so only corrections the training tables are sure of are learned.",
             "", "![leave one family out](transfer.png)", ""]
    for name, entry in results["held_out"].items():
        lines += [f"**Held out: {name}** (policy trained on {' + '.join(entry['trained_on'])})", "",
                  "| budget | method | file bytes | PPL | KLD mean | KLD p99 | top-1 | vs preset | vs measured ILP | vs estimate ILP |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        presets = {f"{p['preset']} bytes": p for p in entry["presets"]}
        for budget in dict.fromkeys(row["budget"] for row in entry["rows"]):
            rows = {row["method"]: row for row in entry["rows"] if row["budget"] == budget}
            if budget in presets:
                p = presets[budget]
                lines.append(f"| {budget} | imatrix preset | {p['file_bytes']:,} | {p['perplexity']:.3f} | {p['kld_mean']:.5f} | "
                             f"{p['kld_p99']:.4f} | {p['top1_agreement']:.2%} | | | |")
            for method, row in rows.items():
                def ratio(other: dict | None) -> str:
                    return f"{row['kld_mean'] / other['kld_mean']:.2f}x" if other and other is not row else ""
                lines.append(f"| {budget} | {method} | {row['file_bytes']:,} | {row['perplexity']:.3f} | {row['kld_mean']:.5f} | "
                             f"{row['kld_p99']:.4f} | {row['top1_agreement']:.2%} | {ratio(presets.get(budget))} | "
                             f"{ratio(rows.get('ILP (measured)'))} | {ratio(rows.get('ILP (estimate)'))} |")
        lines.append("")
    lines += ["Goals for the zero-shot policy, per held-out family (worst ratio over its budgets; `n/a`: no such row):", "",
              "| held out | vs preset (goal <= 1.00) | vs measured ILP (goal <= 1.15) | vs estimate ILP (goal <= 1.00) |",
              "|---|---:|---:|---:|"]
    for name, entry in results["held_out"].items():
        worst = entry["worst_ratio"]
        cells = [f"{worst[goal]:.2f}x" if worst.get(goal) is not None else "n/a" for goal in GOALS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if results.get("shipped"):
        lines += ["", f"The policy that ships (`{results['shipped']['path']}`, used by `ramp allocate --method policy` without "
                  f"`--policy`) was trained the same way on all of {', '.join(results['shipped']['trained_on'])}."]
    return "\n".join(lines) + "\n"


def worst_ratios(rows: list[dict], presets: list[dict]) -> dict:
    """The zero-shot policy's largest KLD ratio to each rival over the budgets where both exist."""
    by = {(row["method"], row["budget"]): row for row in rows}
    preset_of = {f"{p['preset']} bytes": p for p in presets}
    rivals = {"preset": lambda budget: preset_of.get(budget), "measured ILP": lambda budget: by.get(("ILP (measured)", budget)),
              "estimate ILP": lambda budget: by.get(("ILP (estimate)", budget))}
    worst = {}
    for goal, rival in rivals.items():
        ratios = [row["kld_mean"] / rival(row["budget"])["kld_mean"] for row in rows
                  if row["method"] == "policy (zero-shot)" and rival(row["budget"]) is not None]
        worst[goal] = max(ratios) if ratios else None
    return worst


def main(argv: list[str] | None = None) -> int:
    from ramp.agent.policy import DEFAULT_POLICY
    from ramp.envs.action_mapping import ACTION_MAPPING_VERSION
    from ramp.envs.reward import RewardConfig
    from ramp.files import atomic_output
    from ramp.job.settings import model_label as stem

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", action="append", help=f"the families, model names or files (default {', '.join(FAMILIES)})")
    parser.add_argument("--held-out", action="append", help="rotations to run (default: every family)")
    parser.add_argument("--timesteps", type=int, default=30000, help="environment steps per policy (default 30000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--raw", action="store_true",
                        help="run the jobs on the checkpoints themselves, not their off-grid twins (read --raw baselines jobs)")
    parser.add_argument("--windows", type=int, default=4, help="held-out windows, as the baselines job's (default 4)")
    parser.add_argument("--ctx", type=int, help="tokens per evaluation window (default ramp run's)")
    parser.add_argument("--formats", help="candidate formats (default ramp's ladder)")
    parser.add_argument("--calibration-tokens", type=int, help="damage calibration tokens of the jobs (default ramp run's)")
    parser.add_argument("--extra-bpw", action="append", type=float, default=[], help="another bpw budget for every family")
    parser.add_argument("--no-measured", action="append", default=list(NO_MEASURED),
                        help=f"families without ILP (measured) rows (default {', '.join(NO_MEASURED)})")
    parser.add_argument("--sac", action="append", default=[], metavar="KEY=VALUE", help="a SAC setting for every training")
    parser.add_argument("--ship", action="store_true", help="also train on every family and install it as the default policy")
    parser.add_argument("--own", action="append", help="held-out families that also get a policy trained on themselves (default all)")
    parser.add_argument("--jobs", default="ramp-jobs", help="folder of the job folders, the baselines' among them (default ramp-jobs)")
    parser.add_argument("--work", default="ramp-jobs/transfer-policies", help="the trained policies (resumable)")
    parser.add_argument("--out", default=str(REPO / "docs"), help="folder for transfer.json, transfer.png and BENCHMARKS.md")
    args = parser.parse_args(argv)

    families = args.families or list(FAMILIES)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = {"timesteps": args.timesteps, "seed": args.seed, "windows": args.windows, "action_mapping": ACTION_MAPPING_VERSION,
               "deviation_weight": RewardConfig().deviation_weight, "held_out": {}}
    if args.ship:  # first: the policy users get exists even if a rotation is cut short
        shipped = train(args, families, work / f"all-{args.timesteps}-{args.seed}.zip")
        shutil.copyfile(shipped, DEFAULT_POLICY)
        results["shipped"] = {"path": "ramp/agent/default_policy.zip", "trained_on": families}
    for family in args.held_out or families:
        others = [other for other in families if other != family]
        zero_shot = train(args, others, work / f"without-{stem(family)}-{args.timesteps}-{args.seed}.zip") if others else None
        own = (train(args, [family], work / f"only-{stem(family)}-{args.timesteps}-{args.seed}.zip")
               if family in (args.own or families) else None)
        rows, presets = held_out_rows(args, family, zero_shot, own)
        results["held_out"][stem(family)] = {"trained_on": [stem(other) for other in others], "rows": rows, "presets": presets,
                                             "worst_ratio": worst_ratios(rows, presets)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_output(out / "transfer.json", "w") as handle:
        handle.write(json.dumps(results, indent=1) + "\n")
    plot(results, out / "transfer.png")
    command = "python -m benchmarks.transfer " + " ".join(argv if argv is not None else sys.argv[1:])
    write_section(out / "BENCHMARKS.md", HEADING, markdown(results, command.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
