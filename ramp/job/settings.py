"""What determines a job's result, as `JOB/job.json` records it: the model (by its sha256) and whether the job
runs on its off-grid twin, the text and every calibration spec, the importance matrix, the damage measure, the
ladder, the rows (methods x budgets), the presets compared against, the evaluation windows, the seed, and the
versions of ramp and llama.cpp.

A few entries only say where an input was found (`LOCATIONS`: the model as given, a given importance matrix
or sensitivity table); the file's sha256 beside each is what the result depends on, so a job moves to another
machine, or another path, and still compares equal. Everything else must match for two runs to share a folder.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ramp.errors import RampError

if TYPE_CHECKING:
    from ramp.models.model import Model

JOB_FILE = "job.json"
LOCATIONS = ("model", "imatrix_file", "sensitivity_file", "policy_file")
IMATRIX_SOURCES = ("computed", "file", "none")
_REMEDY = "correct it, or rerun `ramp run` with its settings into a new --out-dir"
_KIND_NAMES = {str: "a string", type(None): "null", dict: "an object", int: "a whole number", float: "a number"}


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(char in "0123456789abcdef" for char in value)


def _needs(key: str, value: object, needed: bool, because: str) -> None:
    """An entry that `because` (another entry) makes necessary is set, and one it rules out is null."""
    if needed and value is None:
        raise RampError(f"{key} is null, but {because} needs it")
    if not needed and value is not None:
        raise RampError(f"{key} = {json.dumps(value)} is set, but {because} does not use it (it must be null)")
VERSIONS = ("ramp_version", "llama_cpp_version")
LISTS = ("ladder", "budgets", "methods", "presets")  # lists in job.json, tuples here


@dataclass(frozen=True)
class Row:
    """One row of a job's results: an allocation method at a budget."""

    method: str
    budget: str  # bits per weight, bytes, or a preset's name: the bytes it spends on the quantizable tensors


@dataclass(frozen=True)
class JobShape:
    """What fixes a job's file names (`ramp.job.stages.artifact_names`): the fold, the rows and where the
    importance matrix comes from (`JobSettings.imatrix`: none writes no matrix, a given one no folded one)."""

    fold: float | None
    rows: tuple[Row, ...]
    imatrix: str


def job_methods() -> tuple[str, ...]:
    """The methods a job's rows can run: those that need nothing beyond the table, a trained policy (its
    file is a job setting) and the whole-model search (its bounds are)."""
    from ramp.allocate import self_contained_methods

    return (*self_contained_methods(), "policy", "search")


def check_search_bounds(minutes: float, generations: int | None) -> None:
    """A search's bounds: positive minutes, and at least 0 generations when bounded by them."""
    valid_minutes = isinstance(minutes, (int, float)) and not isinstance(minutes, bool) and minutes > 0
    if not valid_minutes:
        raise RampError(f"the search's minutes must be a positive number, got {minutes!r}; give the minutes it may take "
                        "(--search-minutes)")
    if generations is not None and (not isinstance(generations, int) or isinstance(generations, bool) or generations < 0):
        raise RampError(f"the search's generations must be a whole number of at least 0, got {generations!r} "
                        "(--search-generations)")


def job_rows(methods: tuple[str, ...], budgets: tuple[str, ...]) -> tuple[Row, ...]:
    """Every method at every budget, method by method."""
    return tuple(Row(method, budget) for method in methods for budget in budgets)


@dataclass(frozen=True)
class JobSettings:
    model: str | None  # as given: a path or a name from `ramp models`; None is the default model
    model_sha256: str
    # the job works on the model's off-grid twin (`ramp twin`), made with these settings (seed, sigma,
    # noise), its own reference; None: on the model as given
    twin: dict | None
    text: str
    fold: float | None  # Scale Folding alpha of ramp's own file (the reference and presets stay unfolded)
    fold_calibration: dict | None
    imatrix: str  # "computed" (on imatrix_calibration), "file" (imatrix_file) or "none"
    imatrix_file: str | None
    imatrix_sha256: str | None  # of the given file; a computed matrix is fixed by its calibration spec
    imatrix_calibration: dict | None
    embeddings_calibration: dict
    damage: str  # kld, imatrix-error, fisher, weight-error, or "file" (sensitivity_file)
    damage_calibration: dict | None
    sensitivity_file: str | None
    sensitivity_sha256: str | None
    ladder: tuple[str, ...]
    budgets: tuple[str, ...]  # each a `Row.budget`
    methods: tuple[str, ...]  # the job's rows: every method at every budget
    policy_file: str | None  # the trained policy of a "policy" row (`ramp train`)
    policy_sha256: str | None
    # the bounds of a "search" row's whole-model search: {"minutes": M, "generations": N or null}
    search: dict | None
    presets: tuple[str, ...]
    # the type of the reference GGUF the presets are quantized from and every KLD is measured against
    reference_dtype: str
    eval_ctx: int
    eval_max_windows: int | None
    seed: int  # the embeddings' row sampling and the Fisher's label draws
    ramp_version: str
    llama_cpp_version: str

    @property
    def rows(self) -> tuple[Row, ...]:
        return job_rows(self.methods, self.budgets)

    @property
    def shape(self) -> JobShape:
        return JobShape(self.fold, self.rows, self.imatrix)

    def as_dict(self) -> dict:
        data = asdict(self)
        for key in LISTS:
            data[key] = list(data[key])
        return data

    def determining(self) -> dict:
        """The entries the result depends on (all but the locations of inputs)."""
        return {key: value for key, value in self.as_dict().items() if key not in LOCATIONS}

    def save(self, folder: Path) -> Path:
        from ramp.files import atomic_output

        path = folder / JOB_FILE
        with atomic_output(path, "w") as handle:
            json.dump(self.as_dict(), handle, indent=1)
            handle.write("\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "JobSettings":
        from ramp.files import read_json

        data = read_json(path, "job file", f"`ramp run --out-dir DIR` writes DIR/{JOB_FILE}")
        names = [field.name for field in fields(cls)]
        if not isinstance(data, dict) or set(data) != set(names):
            missing = sorted(set(names) - set(data)) if isinstance(data, dict) else names
            raise RampError(f"{path} is not a job file of this ramp (missing {', '.join(missing) or 'nothing'}, "
                            f"or entries it does not know); rerun `ramp run` with its settings")
        for key in LISTS:
            if not isinstance(data[key], list) or not all(isinstance(name, str) for name in data[key]):
                raise RampError(f"{path}: {key} = {json.dumps(data[key])} is not a list of names; {_REMEDY}")
            data[key] = tuple(data[key])
        settings = cls(**data)
        try:
            settings.check_values()
        except RampError as exc:
            raise RampError(f"{path}: {exc}; {_REMEDY}") from None
        return settings

    def check_values(self) -> None:
        """Every entry a value ramp can run, checked all at once before any stage: a hand-edited job.json
        (`"damage": "Fisher"`, a budget of 4, a ladder of unknown formats) fails here in one line, not as
        another measure quietly chosen, nor a traceback after the sweep. Raises RampError naming the entry."""
        from ramp.allocate.budget import Budget
        from ramp.export.gguf_writer import REFERENCE_TYPES
        from ramp.evaluate.llama_eval import check_window_length
        from ramp.evaluate.presets import check_presets
        from ramp.measure.calibration import CalibrationSpec
        from ramp.measure.estimates import ESTIMATES
        from ramp.measure.folding import check_alpha
        from ramp.measure.ladder import ordered
        from ramp.models.text import check_text

        def entry(key: str, problem: str) -> RampError:
            return RampError(f"{key} = {json.dumps(getattr(self, key))} {problem}")

        def checked(key: str, check: Callable[[], object]) -> None:
            try:
                check()
            except RampError as exc:
                raise RampError(f"{key}: {exc}") from None

        def expect(key: str, kinds: tuple[type, ...]) -> None:
            value = getattr(self, key)
            if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
                raise entry(key, f"is not {' or '.join(_KIND_NAMES[kind] for kind in kinds)}")

        for key in ("model_sha256", "text", "imatrix", "damage", "reference_dtype", "ramp_version", "llama_cpp_version"):
            expect(key, (str,))
        for key in ("model", "imatrix_file", "imatrix_sha256", "sensitivity_file", "sensitivity_sha256", "policy_file",
                    "policy_sha256"):
            expect(key, (str, type(None)))
        for key in ("fold_calibration", "imatrix_calibration", "damage_calibration"):
            expect(key, (dict, type(None)))
        expect("embeddings_calibration", (dict,))
        expect("twin", (dict, type(None)))
        expect("search", (dict, type(None)))
        if self.search is not None and set(self.search) != {"minutes", "generations"}:
            raise entry("search", "is not an object of minutes and generations")
        if self.twin is not None:
            from ramp.measure.twin import check_twin_settings

            numbers = all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in self.twin.values())
            if set(self.twin) != {"seed", "sigma", "noise"} or not numbers or not isinstance(self.twin["seed"], int):
                raise entry("twin", "is not an object of a whole-number seed, a sigma and a noise")
            checked("twin", lambda: check_twin_settings(**self.twin))
        expect("fold", (int, float, type(None)))
        expect("eval_ctx", (int,))
        expect("eval_max_windows", (int, type(None)))
        expect("seed", (int,))
        if not _is_sha256(self.model_sha256):
            raise entry("model_sha256", "is not a sha256")
        checked("text", lambda: check_text(self.text))
        if self.fold is not None:
            checked("fold", lambda: check_alpha(self.fold))
        _needs("fold_calibration", self.fold_calibration, self.fold is not None, "fold")
        if self.imatrix not in IMATRIX_SOURCES:
            raise entry("imatrix", f"is none of {', '.join(IMATRIX_SOURCES)}")
        _needs("imatrix_file", self.imatrix_file, self.imatrix == "file", "imatrix")
        _needs("imatrix_sha256", self.imatrix_sha256, self.imatrix == "file", "imatrix")
        _needs("imatrix_calibration", self.imatrix_calibration, self.imatrix == "computed", "imatrix")
        damages = ("kld", *ESTIMATES, "weight-error", "file")
        if self.damage not in damages:
            raise entry("damage", f"is none of {', '.join(damages)} (names are lower case)")
        _needs("damage_calibration", self.damage_calibration, self.damage in ("kld", *ESTIMATES), "damage")
        _needs("sensitivity_file", self.sensitivity_file, self.damage == "file", "damage")
        _needs("sensitivity_sha256", self.sensitivity_sha256, self.damage == "file", "damage")
        for key in ("fold_calibration", "imatrix_calibration", "embeddings_calibration", "damage_calibration"):
            if getattr(self, key) is not None:
                try:
                    CalibrationSpec.from_dict(getattr(self, key))
                except RampError as exc:
                    raise entry(key, f"is not a calibration spec ({exc})") from None
        if not self.ladder:
            raise entry("ladder", "is empty")
        checked("ladder", lambda: ordered(self.ladder))
        if ordered(self.ladder) != self.ladder:
            raise entry("ladder", f"is not a list of distinct formats in bits-per-weight order ({', '.join(ordered(self.ladder))})")
        with_imatrix = self.imatrix != "none"
        if not self.budgets:
            raise entry("budgets", "is empty")
        for budget in self.budgets:
            if budget[:1].isalpha():
                checked("budgets", lambda budget=budget: check_presets([budget], with_imatrix))
            else:
                checked("budgets", lambda budget=budget: Budget.parse(budget))
        if not self.methods:
            raise entry("methods", "is empty")
        for method in self.methods:
            if method not in job_methods():
                raise entry("methods", f"names {method!r}, none of {', '.join(job_methods())}")
        _needs("policy_file", self.policy_file, "policy" in self.methods, "methods")
        _needs("policy_sha256", self.policy_sha256, "policy" in self.methods, "methods")
        _needs("search", self.search, "search" in self.methods, "methods")
        if self.search is not None:
            checked("search", lambda: check_search_bounds(**self.search))
        checked("presets", lambda: check_presets(self.presets, with_imatrix))
        if self.reference_dtype not in REFERENCE_TYPES:
            raise entry("reference_dtype", f"is none of {', '.join(REFERENCE_TYPES)}")
        if self.twin is not None and self.reference_dtype != "F32":
            raise entry("reference_dtype", "is not F32, which a twin job's reference is: the twin's own F32 file")
        checked("eval_ctx", lambda: check_window_length(self.eval_ctx))
        if self.eval_max_windows is not None and self.eval_max_windows < 1:
            raise entry("eval_max_windows", "is not at least 1")

    def first_change(self, earlier: "JobSettings") -> tuple[str, object, object] | None:
        """(entry, earlier value, this value) of the first determining entry that differs, or None."""
        before, now = earlier.determining(), self.determining()
        for key in now:
            if before[key] != now[key]:
                return key, before[key], now[key]
        return None


def check_same_job(folder: Path, settings: JobSettings) -> bool:
    """Whether `folder` holds this job already (False: it holds none). A folder holding another job is refused:
    its artifacts were made with other settings, and mixing them with this run's would give results no single
    setting explains. One line names the first entry that differs."""
    path = folder / JOB_FILE
    if not path.is_file():
        return False
    earlier = JobSettings.load(path)
    change = settings.first_change(earlier)
    if change is not None:
        key, before, now = change
        raise RampError(f"{path} was made with {key} = {json.dumps(before)}, this run asks for {json.dumps(now)}; a job "
                        f"folder holds one job: rerun it as it was (`ramp run --job {path}`) or give another --out-dir")
    return earlier == settings


def job_lock(folder: Path):
    """One run at a time in a job folder (the folder itself is locked: no file is added to it): a second is
    refused in one line, since two writers would remove each other's temporaries and mix their artifacts."""
    from ramp.files import exclusive_lock

    return exclusive_lock(folder, f"the job folder {folder}", wait=False,
                          remedy="wait for it to finish, or give another --out-dir")


def check_table_model(path: str | Path, source: "Model", fold: float | None) -> None:
    """A sensitivity table measured on another model fails before the first stage, not at the allocation. (A
    --fold job's table is of the folded model, whose hash is known only once it is folded: the allocation
    checks that one.)"""
    from ramp.measure.sensitivity_table import SensitivityTable

    table = SensitivityTable.load(path)
    if fold is None and table.model_sha256 and table.model_sha256 != source.sha256:
        raise RampError(f"the sensitivity table {path} was measured on another model (sha256 {table.model_sha256[:12]}, "
                        f"the model is {source.sha256[:12]}); re-run `ramp profile` on this one, or leave --sensitivity out")


def check_inputs(settings: JobSettings, source: "Model") -> None:
    """What can be checked against the job's model (`source`, already checked against its hash) before stage 1:
    the importance matrix and sensitivity table it names (their hashes and their model), the evaluation
    windows against the trained context, a budget within the feasible range. A rerun pointed at other files,
    or a job.json edited by hand, fails before anything is kept, measured or rewritten."""
    from ramp.evaluate.llama_eval import check_context
    from ramp.files import file_sha256
    from ramp.measure.imatrix import ImportanceMatrix

    check_context(settings.eval_ctx, source.metadata.get(f"{source.arch}.context_length"), settings.model or "the model")
    numeric = [budget for budget in settings.budgets if not budget[:1].isalpha()]  # a preset's bytes: once it is made
    if numeric:
        from ramp.allocate.budget import Budget, feasible_range, require_within

        feasible = feasible_range(source, settings.ladder)
        for budget in numeric:
            require_within(Budget.parse(budget), source, feasible)
    given = [("importance matrix", settings.imatrix_file, settings.imatrix_sha256, "--imatrix")] if settings.imatrix == "file" else []
    if settings.damage == "file":
        given.append(("sensitivity table", settings.sensitivity_file, settings.sensitivity_sha256, "--sensitivity"))
    for what, path, digest, option in given:
        if not Path(path).is_file():
            raise RampError(f"the job's {what} {path} does not exist; pass it with {option}")
        if file_sha256(path) != digest:
            raise RampError(f"the {what} {path} is not this job's (its sha256 differs from job.json's); pass the job's "
                            f"file with {option}")
    if settings.imatrix == "file":
        ImportanceMatrix.load(settings.imatrix_file).importances(source)
    if settings.damage == "file":
        check_table_model(settings.sensitivity_file, source, settings.fold)


def versions() -> tuple[str, str]:
    """(ramp's version, llama.cpp's as `ramp doctor` reports it)."""
    from importlib.metadata import PackageNotFoundError, version

    from ramp.llama_tools import llama_cpp_version

    try:
        ramp = version("ramp")
    except PackageNotFoundError:  # run from a checkout that was never installed
        ramp = "unknown"
    return ramp, llama_cpp_version()


def located(given: str | None) -> str | None:
    """Where an input was found, as job.json keeps it: a path made absolute (the job reruns from any folder),
    a name from `ramp models` as given."""
    return str(Path(given).resolve()) if given is not None and Path(given).exists() else given


def new_settings(
    source: "Model",
    model: str | None,
    *,
    twin: bool,
    text: str,
    fold: float | None,
    imatrix_file: str | None,
    no_imatrix: bool,
    damage: str,
    damage_tokens: int | None,
    sensitivity_file: str | None,
    ladder: tuple[str, ...],
    budgets: tuple[str, ...],
    methods: tuple[str, ...],
    policy_file: str | None,
    search: dict | None,
    presets: tuple[str, ...],
    reference_dtype: str,
    eval_ctx: int,
    eval_max_windows: int | None,
) -> JobSettings:
    """The settings of a new job on `source` (loaded from `model`, as given), every default filled in: the
    calibration specs of `ramp.measure.calibration` on `text`, the default twin settings with `twin`, the damage
    measure's with `damage_tokens` when given (its window no longer than them), and for `damage` "auto" the measure it chooses for this model."""
    from ramp.measure.calibration import EMBEDDINGS, ESTIMATE, FOLD, IMATRIX, SENSITIVITY
    from ramp.files import file_sha256
    from ramp.measure.estimates import AUTO, ESTIMATES, choose_damage
    from ramp.measure.twin import DEFAULT_NOISE, DEFAULT_SEED, DEFAULT_SIGMA

    if imatrix_file and no_imatrix:
        raise RampError("--imatrix and --no-imatrix contradict each other; pass one")
    imatrix = "none" if no_imatrix else "file" if imatrix_file else "computed"
    if damage == AUTO and not sensitivity_file:  # the job records the measure chosen, not the rule
        damage, why = choose_damage(source, ladder, damage_tokens or SENSITIVITY.tokens)
        print(f"damage: {damage}, chosen by --damage auto ({why})")
    if sensitivity_file:
        damage, damage_calibration = "file", None
    elif damage in ("kld", *ESTIMATES):
        default = ESTIMATE if damage in ESTIMATES else SENSITIVITY
        n_tokens = damage_tokens or default.tokens
        damage_calibration = default.sized(n_tokens, min(default.window, n_tokens), text).as_dict()
    else:
        damage_calibration = None
    ramp_version, llama_cpp = versions()
    twin_settings = {"seed": DEFAULT_SEED, "sigma": DEFAULT_SIGMA, "noise": DEFAULT_NOISE} if twin else None
    return JobSettings(
        model=located(model), model_sha256=source.sha256, twin=twin_settings, text=text, fold=fold,
        fold_calibration=FOLD.as_dict() if fold is not None else None,  # folds are on the default text everywhere
        imatrix=imatrix, imatrix_file=located(imatrix_file), imatrix_sha256=file_sha256(imatrix_file) if imatrix_file else None,
        imatrix_calibration=IMATRIX.sized(text=text).as_dict() if imatrix == "computed" else None,
        embeddings_calibration=EMBEDDINGS.sized(text=text).as_dict(), damage=damage, damage_calibration=damage_calibration,
        sensitivity_file=located(sensitivity_file), sensitivity_sha256=file_sha256(sensitivity_file) if sensitivity_file else None,
        ladder=tuple(ladder), budgets=tuple(budgets), methods=tuple(methods),
        policy_file=located(policy_file), policy_sha256=file_sha256(policy_file) if policy_file else None, search=search, presets=tuple(presets),
        reference_dtype=reference_dtype, eval_ctx=eval_ctx,
        eval_max_windows=eval_max_windows, seed=0, ramp_version=ramp_version, llama_cpp_version=llama_cpp,
    )


def model_label(model: str | None) -> str:
    """The model as a short name for titles and folder names: a file's name without .gguf, a name from
    `ramp models` as it is (short names keep their dots), the default model's name."""
    return Path(model).name.removesuffix(".gguf") if model else "smollm2-135m"
