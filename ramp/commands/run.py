"""`ramp run`: the whole path on one model. Load it, write its F32 reference, compute its importance matrix
on calibration text, build llama.cpp's presets from that reference with that importance matrix (by
`llama-quantize --imatrix` itself), allocate formats under the budget with damage measured on weights
quantized with the same importance matrix, export ramp's GGUF with it, and evaluate everything on the same
held-out windows through llama.cpp, printing one table. `--no-imatrix` leaves the importance matrix out on
both sides.

The text is one named text (`--text`, default Jane Austen's novels): calibration from some novels,
evaluation from others. Every row records whether it used the importance matrix, the share of its
quantizable weights equal to the source checkpoint's, and whether the file is at or above the source's size.

Damage per (tensor, format) is `ramp profile`'s measured sensitivity (mean KLD with only that tensor
quantized), taken from `--sensitivity FILE` or measured here on calibration text (disk-cached, so a second
run skips it), on `ramp profile`'s default windows (`ramp.measure.calibration.SENSITIVITY`), so the two share one cached
table. `--damage imatrix-error` or `--damage fisher` estimate the damage
instead from a pass or two over the calibration text (`ramp.measure.estimates`), for models where the
sweep would not finish. `--damage weight-error` selects the WEIGHT-ERROR STAND-IN: the squared error of
each tensor's weights after llama.cpp's own quantization round trip, seconds to compute but blind to how
much each tensor matters to the output; it is named as such in the table and the allocation.

Without `--model` the job runs on the embedded model's off-grid twin (`ramp twin`, made once and cached):
the twin is its own reference and the presets are made from it, so no format can score by writing the
source checkpoint's grid back and the ramp row is a claim at every size. `--model X` runs on X as given;
`--twin` runs on X's twin, `--no-twin` on the embedded model itself.

With `--fold ALPHA` ramp's own GGUF is made from the Scale-Folded model while the F32 reference and the
presets stay those of the model as given, so the table shows what folding buys against llama.cpp's presets.

`--out-dir` is the job folder (`ramp.job`): job.json holds every setting, each stage writes its artifacts
beside it, and the same command run again keeps every stage whose artifacts still match their inputs, so an
interrupted run resumes; `--from STAGE` makes a stage and all after it again; `--job FILE` reruns a job from
its job.json alone. A folder refuses a run with other settings than its job.json's.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ramp.measure.calibration import ESTIMATE, SENSITIVITY
from ramp.commands._options import add_fold_argument, add_text_argument, positive_int
from ramp.commands.eval import DEFAULT_N_CTX, add_window_arguments
from ramp.allocate import SearchSettings  # the registry: light, no solver imported
from ramp.job.settings import JOB_FILE, job_methods
from ramp.job.stages import STAGE_NAMES, artifact_names  # both light: no torch, no model
from ramp.evaluate.presets import DEFAULT_PRESETS  # numpy-only at import time, so the CLI stays quick
from ramp.measure.estimates import AUTO, ESTIMATES, STAND_IN  # numpy-only too
from ramp.models.text import DEFAULT_TEXT

DEFAULT_MAX_WINDOWS = 32
DEFAULT_BUDGET = "Q4_K_M"
DEFAULT_METHOD = "ilp"
JOBS_FOLDER = "ramp-jobs"
# Options that say what the job computes: with --job they come from its job.json. (--model, --imatrix and
# --sensitivity only say where an input is, checked by its sha256: they may point the job at its files.)
SETTINGS = ("twin", "budget", "method", "formats", "damage", "calibration_tokens", "preset", "no_imatrix", "text", "fold", "ctx",
            "max_windows", "search_minutes", "search_generations", "reference_dtype")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="GGUF file, safetensors directory or a name from `ramp models` (default: smollm2-135m)")
    parser.add_argument("--twin", action=argparse.BooleanOptionalAction, default=None,
                        help="work on the model's off-grid twin (`ramp twin`, cached): no format can write the source's "
                             "grid back, so every size makes a claim (default: on the embedded model without --model, "
                             "else --no-twin: the model as given)")
    parser.add_argument("--budget",
                        help="bits per quantizable weight (4.5bpw), bytes of their data (60MB), or a preset name: "
                             f"the bytes llama.cpp's preset spends on them (default {DEFAULT_BUDGET}); a comma list "
                             "makes one row per budget")
    parser.add_argument("--method",
                        help=f"allocation method, or a comma list of them: one row per method and budget "
                             f"({', '.join(job_methods())}; default ilp; target-bpw is llama.cpp PR #15550's "
                             "allocator; search improves the ILP by the whole model's measured KLD)")
    parser.add_argument("--policy", metavar="FILE",
                        help="the trained policy (`ramp train`) of a `policy` row (--method policy,...); default: the "
                             "policy that ships with ramp")
    parser.add_argument("--search-minutes", type=float, metavar="MIN",
                        help="the minutes each `search` row may take, a resumed job counted once (default "
                             f"{SearchSettings.minutes:g})")
    parser.add_argument("--search-generations", type=positive_int, metavar="N",
                        help="a `search` row stops after N generations at the latest (then its allocation is fixed by the "
                             "seed and N)")
    parser.add_argument("--formats", help="comma-separated candidate formats (default: ramp's ladder, ramp.measure.ladder)")
    parser.add_argument("--sensitivity", metavar="FILE", help="sensitivity table from `ramp profile` (default: measure it)")
    parser.add_argument("--damage", choices=(AUTO, "kld", *ESTIMATES, "weight-error"),
                        help="without --sensitivity: measure KLD sensitivity (kld), estimate it from the importance "
                             f"matrix (imatrix-error) or backward passes (fisher), or use the {STAND_IN}; default auto: "
                             "kld where the measured sweep takes minutes, fisher on bigger models")
    parser.add_argument("--calibration-tokens", type=positive_int,
                        help=f"calibration tokens for measuring sensitivity (default {SENSITIVITY.tokens}) or "
                             f"estimating it (default {ESTIMATE.tokens})")
    parser.add_argument("--preset", action="append", metavar="NAME",
                        help=f"llama.cpp presets to compare against, repeatable (default: {', '.join(DEFAULT_PRESETS)})")
    parser.add_argument("--reference-dtype", choices=("F32", "F16"),  # export.gguf_writer.REFERENCE_TYPES, not imported at CLI start
                        help="type of the unquantized reference the presets are made from and every KLD is measured "
                             "against (default F32; F16 halves what llama.cpp reads for a large model, at a KLD floor "
                             "docs/BENCHMARKS.md measures; a twin is always its own F32 file)")
    parser.add_argument("--imatrix", metavar="FILE",
                        help="importance matrix for both sides (default: `ramp imatrix` of the model on the calibration text)")
    parser.add_argument("--no-imatrix", action="store_true", default=None,
                        help="quantize ramp's file and the presets without an importance matrix")
    add_text_argument(parser, "calibrate on (its calibration half) and evaluate on (its held-out half)")
    parser.add_argument("--out-dir",
                        help=f"the job folder: {JOB_FILE} and every stage's artifacts (default: the folder of --job, "
                             f"else {JOBS_FOLDER}/MODEL-BUDGET; created if missing)")
    parser.add_argument("--job", metavar="FILE", help=f"rerun the job a {JOB_FILE} describes, with its settings")
    parser.add_argument("--from", dest="from_stage", choices=STAGE_NAMES, metavar="STAGE",
                        help=f"make this stage and every later one again ({', '.join(STAGE_NAMES)})")
    add_fold_argument(parser, "profiling, allocating and exporting it; the reference and presets stay unfolded")
    add_window_arguments(parser, DEFAULT_MAX_WINDOWS)
    # No defaults here: an option left out is told from one given, so --job can refuse settings beside it.
    parser.set_defaults(text=None, ctx=None, max_windows=None)


def _names(text: str | None, default: str) -> tuple[str, ...]:
    """A comma list of names as given (empty entries dropped), or the default alone."""
    return tuple(dict.fromkeys(part.strip() for part in (text or default).split(",") if part.strip())) or (default,)


def _budgets(args: argparse.Namespace) -> tuple[str, ...]:
    # budgets start with a number; a preset's name is written as llama.cpp spells it
    return tuple(budget.upper() if budget[:1].isalpha() else budget for budget in _names(args.budget, DEFAULT_BUDGET))


def _methods(args: argparse.Namespace) -> tuple[str, ...]:
    return _names(args.method, DEFAULT_METHOD)


def _shape(args: argparse.Namespace):
    from ramp.job.settings import JobSettings, JobShape, job_rows

    if args.job and Path(args.job).is_file():
        return JobSettings.load(args.job).shape
    imatrix = "none" if args.no_imatrix else "file" if args.imatrix else "computed"
    return JobShape(args.fold, job_rows(_methods(args), _budgets(args)), imatrix)


def _out_dir(args: argparse.Namespace) -> "Path":
    """--out-dir; else the folder of --job; else a folder of its own under ramp-jobs/, named by the model, the
    methods (when not the default alone) and the budgets."""
    if args.out_dir or args.job:
        return Path(args.out_dir or Path(args.job).parent)
    from ramp.job.settings import model_label

    methods = _methods(args)
    parts = [model_label(args.model), *([",".join(methods)] if methods != (DEFAULT_METHOD,) else []), ",".join(_budgets(args))]
    return Path(JOBS_FOLDER) / "-".join(parts)


def paths(args: argparse.Namespace) -> tuple[dict, dict]:
    """Inputs and outputs, checked against each other by `ramp.cli` before the command runs."""
    if args.job and Path(args.job).name != JOB_FILE:  # J/ramp.gguf, or the folder: say what --job takes
        from ramp.errors import RampError

        folder = Path(args.job) if Path(args.job).is_dir() else Path(args.job).parent
        raise RampError(f"--job takes a job folder's {JOB_FILE}, not {args.job}; pass --job {folder / JOB_FILE}")
    # rerunning a job in its own folder rewrites its job.json, which is then an input too
    outputs = {f"--out-dir ({name})": _out_dir(args) / name for name in artifact_names(_shape(args))
               if name != JOB_FILE or not args.job}
    return ({"--model": args.model, "--sensitivity": args.sensitivity, "--imatrix": args.imatrix, "--policy": args.policy,
             "--job": args.job}, outputs)


def run(args: argparse.Namespace) -> int:
    from ramp.files import check_output_path
    from ramp.job.settings import check_inputs, check_same_job, job_lock
    from ramp.job.stages import Job

    folder = _out_dir(args)
    check_output_path(folder / JOB_FILE)
    with job_lock(folder):
        settings, source = _job_settings(args) if args.job else _new_settings(args)
        job = Job(folder, settings, source)
        check_inputs(settings, job.source)  # before job.json names the inputs given here
        if not check_same_job(folder, settings):
            settings.save(folder)  # new, or with the inputs found elsewhere now
        job.run(args.from_stage)
    return 0


def _job_settings(args: argparse.Namespace):
    """The settings of `--job`, pointed at the inputs given here; the versions are this machine's."""
    from dataclasses import replace

    from ramp.errors import RampError
    from ramp.job.settings import JobSettings, located, versions

    given = [name for name in SETTINGS if getattr(args, name) not in (None, False)]
    if given:
        raise RampError(f"--job takes the settings from {args.job}; drop --{given[0].replace('_', '-')} (or run without --job)")
    settings = JobSettings.load(args.job)
    ramp_version, llama_cpp = versions()
    if (ramp_version, llama_cpp) != (settings.ramp_version, settings.llama_cpp_version):
        print(f"note: {args.job} was made with ramp {settings.ramp_version}, {settings.llama_cpp_version}; "
              f"this is ramp {ramp_version}, {llama_cpp}")
    return replace(settings, model=located(args.model) or settings.model,
                   imatrix_file=located(args.imatrix) or settings.imatrix_file,
                   sensitivity_file=located(args.sensitivity) or settings.sensitivity_file,
                   policy_file=located(args.policy) or settings.policy_file,
                   ramp_version=ramp_version, llama_cpp_version=llama_cpp), None


def _new_settings(args: argparse.Namespace):
    """The settings the command line asks for, every mistake it can hold found before the first expensive step."""
    from ramp.errors import RampError
    from ramp.commands._options import check_fold_argument, load_importance
    from ramp.job.settings import check_search_bounds, check_table_model, new_settings
    from ramp.measure.ladder import parse_ladder
    from ramp.evaluate.llama_eval import check_window_length
    from ramp.models import load_model
    from ramp.evaluate.presets import check_presets
    from ramp.measure.sensitivity_table import SensitivityTable
    from ramp.models.text import check_text

    text = check_text(args.text or DEFAULT_TEXT)
    presets = tuple(name.upper() for name in (args.preset or DEFAULT_PRESETS))
    budgets, methods = _budgets(args), _methods(args)
    for method in methods:
        if method not in job_methods():
            raise RampError(f"ramp run has no allocation method {method!r}; choose from "
                            f"{', '.join(job_methods())} (`ramp allocate` runs the others)")
    search = None
    if "search" in methods:
        minutes = SearchSettings.minutes if args.search_minutes is None else args.search_minutes
        search = {"minutes": minutes, "generations": args.search_generations}
        check_search_bounds(**search)
    elif args.search_minutes is not None or args.search_generations is not None:
        raise RampError("--search-minutes and --search-generations bound a `search` row; add search to --method, or drop them")
    policy = None
    if "policy" in methods:
        from ramp.agent.policy import DEFAULT_POLICY
        from ramp.agent.policy_file import read_policy_record

        policy = args.policy or str(DEFAULT_POLICY)
        read_policy_record(policy)  # a foreign file fails before the model loads
    elif args.policy:
        raise RampError("--policy feeds a `policy` row; add policy to --method, or drop --policy")
    check_presets(presets + tuple(budget for budget in budgets if budget[:1].isalpha()), with_imatrix=not args.no_imatrix)
    ladder = parse_ladder(args.formats)
    eval_ctx = check_window_length(args.ctx or DEFAULT_N_CTX)
    if args.sensitivity:
        SensitivityTable.load(args.sensitivity)
    check_fold_argument(args)
    source = load_model(args.model)
    if args.sensitivity:
        check_table_model(args.sensitivity, source, args.fold)
    load_importance(args.imatrix, source)  # a matrix made for another model fails here
    settings = new_settings(
        source, args.model, twin=args.model is None if args.twin is None else args.twin, text=text, fold=args.fold,
        imatrix_file=args.imatrix, no_imatrix=bool(args.no_imatrix),
        damage=args.damage or AUTO, damage_tokens=args.calibration_tokens, sensitivity_file=args.sensitivity,
        ladder=ladder, budgets=budgets, methods=methods, policy_file=policy, search=search, presets=presets,
        reference_dtype=args.reference_dtype or "F32", eval_ctx=eval_ctx, eval_max_windows=args.max_windows or DEFAULT_MAX_WINDOWS,
    )
    return settings, source
