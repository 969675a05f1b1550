"""What determines a job's result, as `JOB/job.json` records it: the model (by its sha256) and whether the job
runs on its off-grid twin, the text and every calibration spec, the importance matrix, the damage measure, the
ladder, the budget, the method, the presets compared against, the evaluation windows, the seed, and the versions
of ramp and llama.cpp.

A few entries only say where an input was found (`LOCATIONS`: the model as given, a given importance matrix
or sensitivity table); the file's sha256 beside each is what the result depends on, so a job moves to another
machine, or another path, and still compares equal. Everything else must match for two runs to share a folder.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from ramp.errors import RampError

if TYPE_CHECKING:
    from ramp.models.model import Model

JOB_FILE = "job.json"
LOCATIONS = ("model", "imatrix_file", "sensitivity_file")
VERSIONS = ("ramp_version", "llama_cpp_version")


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
    budget: str  # bits per weight, bytes, or a preset's name: the bytes it spends on the quantizable tensors
    method: str
    presets: tuple[str, ...]
    eval_ctx: int
    eval_max_windows: int | None
    seed: int  # the embeddings' row sampling and the Fisher's label draws
    ramp_version: str
    llama_cpp_version: str

    def as_dict(self) -> dict:
        data = asdict(self)
        data["ladder"], data["presets"] = list(self.ladder), list(self.presets)
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
        try:
            data["ladder"], data["presets"] = tuple(data["ladder"]), tuple(data["presets"])
        except TypeError:
            raise RampError(f"{path}: `ladder` and `presets` must be lists of names; rerun `ramp run` with its settings") from None
        return cls(**data)

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
    budget: str,
    method: str,
    presets: tuple[str, ...],
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
        ladder=tuple(ladder), budget=budget, method=method, presets=tuple(presets), eval_ctx=eval_ctx,
        eval_max_windows=eval_max_windows, seed=0, ramp_version=ramp_version, llama_cpp_version=llama_cpp,
    )
