"""Leave-one-family-out: a policy trained on two families allocates zero-shot for the third, rotated over
SmolLM2 (llama), Gemma 3 and Qwen2.5, next to everything else that could allocate for the held-out model.

    python benchmarks/transfer.py                       # all three rotations, then the all-family policy
    python benchmarks/transfer.py --held-out gemma3-270m --timesteps 30000

Per held-out model and budget (each imatrix preset's quantizable bytes below the source's size, and two
bpw budgets), every file measured through llama.cpp on the held-out windows of `benchmarks/baselines.py`:
- policy (zero-shot): trained on the other two families, reading the held-out model's profile and its
  cheap damage estimate only;
- ILP (measured): the ILP over the held-out model's own measured KLD table, the best the table allows
  (SmolLM2 and Gemma; Qwen has no measured table: its sweep would take hours);
- ILP (estimate): the ILP over the cheap estimate, which costs about what the policy's inputs cost;
- policy (own): trained on the held-out model itself;
- uniform, and the imatrix preset (from `benchmarks/baselines.py`'s results JSON for that model: run it first).

Training: shaping by each training model's best table (measured where it exists, else the estimate), the
estimate in every observation, each model's budget range from just above its smallest allocation to its
source's bpw (`ramp.agent.training.default_budget_range`). Each model loads once; trained policies and
measured files are kept in --work, so an interrupted run resumes where it stopped. Writes
docs/transfer.json, docs/transfer.png and the `## Agent: leave one family out` section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from baselines import StageClock, write_section  # noqa: E402

FAMILIES = ("smollm2-135m", "gemma3-270m", "qwen2.5-coder-1.5b")
EXTRA_BPW = {"smollm2-135m": (4.5, 5.0), "gemma3-270m": (5.5, 6.5), "qwen2.5-coder-1.5b": (2.75, 5.0)}
HEADING = "## Agent: leave one family out"
GOALS = {"preset": 1.0, "measured ILP": 1.15, "estimate ILP": 1.0}


class Family:
    """One model with everything the rotations need from it, loaded and computed once."""

    def __init__(self, name: str, ladder: tuple[str, ...], clock: StageClock, text: str, windows: int) -> None:
        from ramp.agent.contexts import episode_items, model_embedding
        from ramp.agent.training import default_budget_range
        from ramp.envs.bit_allocation import ModelContext
        from ramp.evaluate.llama_eval import make_windows, reference_logprobs
        from ramp.export.gguf_writer import cached_reference
        from ramp.measure.calibration import SENSITIVITY
        from ramp.measure.estimates import FISHER, estimate_sensitivity
        from ramp.measure.imatrix import cached_imatrix
        from ramp.measure.calibration import calibration_tokens
        from ramp.measure.forward import tokens_sha256
        from ramp.measure.sensitivity import cached_table, table_cache_path
        from ramp.models import load_model
        from ramp.models.text import evaluation_text

        self.name = name
        with clock(f"load {name}"):
            self.model = load_model(name)
            self.imatrix, _ = cached_imatrix(self.model)
        with clock(f"estimate {name}"):
            self.estimate = estimate_sensitivity(FISHER, self.model, imatrix=self.imatrix, formats=ladder)
        # the measured table only where it already exists (baselines.py made it): never hours of sweep here
        tokens, record = calibration_tokens(self.model, SENSITIVITY.sized(text=text))
        self.measured = cached_table(table_cache_path(self.model, tokens_sha256(tokens), list(ladder), self.imatrix.content_sha256()),
                                     self.model, list(ladder), record)
        with clock(f"profile {name}"):
            embedding, _ = model_embedding(self.model)
        self.context = ModelContext(name, self.model, embedding, damage=self.measured or self.estimate,
                                    items=episode_items(self.model, ladder), estimate=self.estimate)
        self.budget_range = default_budget_range(self.model, ladder)
        baselines = REPO / "docs" / f"baselines-{name}-imatrix.json"
        if not baselines.is_file():
            raise SystemExit(f"{baselines} is missing: run `python benchmarks/baselines.py --model {name} --max-windows {windows}` first")
        self.baselines = json.loads(baselines.read_text())
        if self.baselines["model_sha256"] != self.model.sha256 or self.baselines["eval_windows"] != windows:
            raise SystemExit(f"{baselines} was measured on another model or window count; rerun benchmarks/baselines.py")
        with clock("reference log-probs (llama.cpp)"):
            self.reference = cached_reference(self.model)
            self.windows = make_windows(self.reference, evaluation_text(text), max_windows=windows)
            self.reference_lp = reference_logprobs(self.reference, self.windows)

    def budgets(self) -> list[tuple[str, int | str]]:
        """(label, budget) pairs: each preset's quantizable bytes below the source's size, then two bpw budgets."""
        sizes = [(f"{p['preset']} bytes", f"{p['quantizable_bytes']}B") for p in self.baselines["presets"]
                 if not p["at_or_above_source"]]
        return sizes + [(f"{bpw:g} bpw", f"{bpw}bpw") for bpw in EXTRA_BPW[self.name]]


def train(families: list[Family], out: Path, timesteps: int, seed: int, ladder: tuple[str, ...], clock: StageClock) -> Path:
    """A policy trained on `families` (kept: a rerun reuses it)."""
    from ramp.agent.checkpoints import default_checkpoint_dir, latest_checkpoint
    from ramp.agent.policy_file import read_policy_record
    from ramp.agent.sac import SACConfig, new_record, train as train_sac
    from ramp.envs.action_mapping import ACTION_MAPPING_VERSION
    from ramp.envs.bit_allocation import BitAllocationEnv
    from ramp.envs.observation import OBSERVATION_VERSION
    from ramp.envs.reward import RewardConfig

    # done when the last checkpoint reached the step count (the file itself may hold an earlier, selected step);
    # one trained under another action mapping, observation layout or reward is stale: trained again from nothing
    checkpoints = default_checkpoint_dir(out)
    if (last := latest_checkpoint(checkpoints)) is not None:
        record = read_policy_record(last)
        if (record.action_mapping, record.observation_version, record.reward) != (
                ACTION_MAPPING_VERSION, OBSERVATION_VERSION, asdict(RewardConfig())):
            shutil.rmtree(checkpoints)
            out.unlink(missing_ok=True)
            last = None
        elif out.is_file() and record.timesteps >= timesteps:
            return out
    env = BitAllocationEnv([family.context for family in families], [family.budget_range for family in families], ladder)
    config = SACConfig()
    record = new_record(env, [family.model for family in families], config, seed, "fisher")
    with clock("train"):
        train_sac(env, record, out, timesteps, config, checkpoint_every=3000, select_every=3000, progress_bar=True, resume=last)
    return out


def measured(family: Family, allocation, work: Path, clock: StageClock) -> dict:
    """The allocation written and measured through llama.cpp, remembered by its formats."""
    from ramp.evaluate.llama_eval import evaluate
    from ramp.export.gguf_writer import write_allocation

    key = hashlib.sha256(json.dumps([family.model.sha256, family.windows.n_ctx, len(family.windows.tokens),
                                     sorted(allocation.formats.items())]).encode()).hexdigest()[:20]
    memo = work / "measured" / f"{key}.json"
    if memo.is_file():
        return json.loads(memo.read_text())
    path = work / f"{key}.gguf"
    with clock("export (ramp)"):
        write_allocation(family.model, allocation, path, progress=False, imatrix=family.imatrix)
    with clock("evaluate (llama.cpp)"):
        result = evaluate(path, family.reference_lp, family.windows)
    path.unlink()
    row = {key: getattr(result, key) for key in ("file_bytes", "bits_per_weight", "perplexity", "kld_mean", "kld_p99", "top1_agreement")}
    memo.parent.mkdir(parents=True, exist_ok=True)
    memo.write_text(json.dumps(row))
    return row


def held_out_rows(family: Family, zero_shot: Path | None, own: Path | None, work: Path, clock: StageClock) -> list[dict]:
    """Every row of the held-out model's table (a policy given as None: without its rows)."""
    from ramp.agent.policy import allocate_with_policy
    from ramp.allocate import allocate
    from ramp.allocate.budget import Budget
    from ramp.errors import RampError
    from ramp.measure.estimates import MEASURES

    reuse = {("ILP (estimate)" if family.baselines["sensitivity_measure"] == MEASURES["fisher"] else "ILP (measured)", r["budget"]): r
             for r in family.baselines["rows"] if r["method"] == "ilp"}
    reuse.update({("uniform", r["budget"]): r for r in family.baselines["rows"] if r["method"] == "uniform"})
    methods = {"policy (zero-shot)": ("policy", zero_shot, None), "ILP (measured)": ("ilp", None, family.measured),
               "ILP (estimate)": ("ilp", None, family.estimate), "policy (own)": ("policy", own, None),
               "uniform": ("uniform", None, None)}
    rows = []
    for label, budget in family.budgets():
        for name, (method, policy, table) in methods.items():
            if (method == "ilp" and table is None) or (method == "policy" and policy is None):
                continue
            if (name, label) in reuse:
                rows.append({"method": name, "budget": label, **{k: reuse[(name, label)][k] for k in
                             ("file_bytes", "bits_per_weight", "perplexity", "kld_mean", "kld_p99", "top1_agreement")}})
                continue
            try:
                with clock(f"allocate ({method})"):
                    if policy is not None:  # the profile and estimate the family already holds: no second pass
                        allocation = allocate_with_policy(family.model, policy, Budget.parse(budget), embedding=family.context.embedding,
                                                          estimate=family.estimate, imatrix=family.imatrix)
                    else:
                        allocation = allocate(family.model, method, Budget.parse(budget), table or family.estimate,
                                              ladder=tuple(family.estimate.formats))
            except RampError as exc:
                print(f"{family.name} {name} at {label}: {exc}", file=sys.stderr)
                continue
            rows.append({"method": name, "budget": label, **measured(family, allocation, work, clock)})
            print(f"{family.name} {name} at {label}: KLD {rows[-1]['kld_mean']:.5f}", file=sys.stderr)
    return rows


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
             "the held-out windows of `benchmarks/baselines.py` (4 windows of 512 tokens of held-out Austen); presets "
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
    if results.get("stages"):
        lines += ["", "| stage | runs | wall | CPU | peak RSS |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {stage['stage']} | {stage['runs']} | {stage['wall_s']:.0f} s | {stage['cpu_s']:.0f} s | "
                  f"{stage['peak_rss_mb'] / 1024:.1f} GB |" for stage in results["stages"]]
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
    from ramp.files import cache_dir
    from ramp.kernels import get_format
    from ramp.measure.ladder import DEFAULT_LADDER
    from ramp.models.text import DEFAULT_TEXT

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--held-out", action="append", choices=FAMILIES, help="rotations to run (default: all three)")
    parser.add_argument("--timesteps", type=int, default=30000, help="environment steps per policy (default 30000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--windows", type=int, default=4, help="held-out windows, as the baselines JSON (default 4)")
    parser.add_argument("--work", default=str(cache_dir() / "transfer"), help="policies and measured files (resumable)")
    parser.add_argument("--ship", action="store_true", help="also train on all three families and install it as the default policy")
    parser.add_argument("--own", action="append", choices=FAMILIES,
                        help="held-out families that also get a policy trained on themselves (default all)")
    parser.add_argument("--families", action="append", choices=FAMILIES,
                        help="load only these (default all): rotations missing a training family skip the zero-shot rows "
                             "and write no docs, which lets the other rows be measured ahead into --work")
    args = parser.parse_args(argv)

    ladder = tuple(get_format(name).name for name in DEFAULT_LADDER)
    clock = StageClock()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    families = {name: Family(name, ladder, clock, DEFAULT_TEXT, args.windows) for name in args.families or FAMILIES}
    complete = len(families) == len(FAMILIES)
    results = {"timesteps": args.timesteps, "seed": args.seed, "action_mapping": ACTION_MAPPING_VERSION,
               "deviation_weight": RewardConfig().deviation_weight, "held_out": {}}
    if args.ship and complete:  # first: the policy users get exists even if a rotation is cut short
        shipped = train(list(families.values()), work / f"all-{args.timesteps}-{args.seed}.zip", args.timesteps, args.seed, ladder, clock)
        shutil.copyfile(shipped, DEFAULT_POLICY)
        results["shipped"] = {"path": str(DEFAULT_POLICY.relative_to(REPO)), "trained_on": list(families)}
    for name in [name for name in args.held_out or FAMILIES if name in families]:
        others = [family for other, family in families.items() if other != name]
        zero_shot = train(others, work / f"without-{name}-{args.timesteps}-{args.seed}.zip", args.timesteps, args.seed,
                          ladder, clock) if complete else None
        own = train([families[name]], work / f"only-{name}-{args.timesteps}-{args.seed}.zip", args.timesteps, args.seed,
                    ladder, clock) if name in (args.own or FAMILIES) else None
        rows = held_out_rows(families[name], zero_shot, own, work, clock)
        presets = [p for p in families[name].baselines["presets"] if not p["at_or_above_source"]]
        results["held_out"][name] = {"trained_on": [family.name for family in others], "rows": rows, "presets": presets,
                                     "worst_ratio": worst_ratios(rows, presets)}
        if complete:  # after every rotation, so a cut-short run still documents what it measured
            results["stages"] = list(clock.stages.values())
            write_docs(results, argv)
    if not complete:
        print("measured ahead into the work folder; run again with every family for the zero-shot rows and the docs")
    return 0


def write_docs(results: dict, argv: list[str] | None) -> None:
    from ramp.files import atomic_output

    docs = REPO / "docs"
    with atomic_output(docs / "transfer.json", "w") as handle:
        handle.write(json.dumps(results, indent=1) + "\n")
    plot(results, docs / "transfer.png")
    command = "python benchmarks/transfer.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_section(docs / "BENCHMARKS.md", HEADING, markdown(results, command.strip()))

if __name__ == "__main__":
    sys.exit(main())
