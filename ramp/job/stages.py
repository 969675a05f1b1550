"""The stages of a job, each writing its artifacts into the job folder, and the record that lets a rerun skip
them. `STAGES` is the table: per stage its name, the stages whose artifacts it reads, the files it may write
and the function that runs it. `stages.json` keeps, per finished stage, a hash of its inputs (the job's
settings and the bytes of the artifacts it read), the sha256 of every artifact it wrote, and what it cost
(wall and CPU seconds, the peak RSS by its end). A stage whose record still matches is kept; any other runs
again, and with it every stage that read its artifacts, once their bytes change. An interrupted run leaves
finished stages recorded and the running one not, so the same command resumes where it stopped (the
sensitivity sweep even inside its stage, from its partial cache entry).

A job has one or more rows, each an allocation method at a budget (`JobSettings.rows`). Every row gets its
allocation file; rows whose allocations have the same formats share one GGUF, and each distinct file is
measured once: the measurement is cached by what determines the file's bytes and the windows it is scored
on (`ramp.job.measured`), so another job asking for the same formats on the same reference reuses it.

Every artifact is a file the stage commands read, so the stages can also be run by hand:
imatrix.gguf (`ramp imatrix`), presets.json (`ramp presets`), embeddings.json (`ramp profile`),
sensitivity.json (`ramp profile`), allocation.json (`ramp allocate`), ramp.gguf (`ramp export`),
results.json and pareto.png (`ramp eval`).
"""
from __future__ import annotations

import hashlib
import json
import resource
import shutil
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ramp.errors import RampError
from ramp.machine import release_memory
from ramp.job.settings import JOB_FILE, JobSettings, JobShape, Row, check_inputs, job_lock, model_label

if TYPE_CHECKING:
    from ramp.agent.policy import TrainedPolicy
    from ramp.measure.imatrix import ImportanceMatrix
    from ramp.evaluate.llama_eval import EvalResult
    from ramp.models.model import Model

STATE_FILE = "stages.json"
IMATRIX = "imatrix.gguf"
PRESETS = "presets.json"
EMBEDDINGS = "embeddings.json"
EMBEDDINGS_CSV = "embeddings.csv"
SENSITIVITY = "sensitivity.json"
ROWS = "rows.json"  # per row: its allocation file, its GGUF, or why no allocation fits
RESULTS = "results.json"
PARETO = "pareto.png"


def folded_imatrix(alpha: float) -> str:
    """The folded model's own importance matrix (its activations differ from the source's)."""
    return f"imatrix-fold{alpha}.gguf"


def row_key(row: Row) -> str:
    """The row's part of its file names: `ilp-Q3_K_M`, `target-bpw-5bpw`."""
    return f"{row.method}-{row.budget}"


def allocation_file(shape: JobShape, row: Row) -> str:
    """A one-row job keeps the names the stage commands write by default; rows of a larger job are named."""
    return "allocation.json" if len(shape.rows) == 1 else f"allocation-{row_key(row)}.json"


def gguf_file(shape: JobShape, row: Row) -> str:
    return "ramp.gguf" if len(shape.rows) == 1 else f"ramp-{row_key(row)}.gguf"


@dataclass(frozen=True)
class Stage:
    """One step of the job: the stages whose artifacts it reads (its record holds while their bytes stay the
    same), the files it may write for a job's settings, and what runs it (returning the files it wrote)."""

    name: str
    reads: tuple[str, ...]
    writes: Callable[[JobShape], list[str]]
    run: Callable[["Job"], list[str]]


def artifact_names(shape: JobShape) -> list[str]:
    """Every file a job of this shape may write into its folder."""
    return [JOB_FILE, STATE_FILE] + [name for stage in STAGES for name in stage.writes(shape)]


class Job:
    """One job folder: its settings (job.json, written first) and its stages, run in order."""

    def __init__(self, folder: Path, settings: JobSettings, source: "Model | None" = None) -> None:
        """`source`: the job's model when the caller has loaded it already."""
        self.folder = folder
        self.settings = settings
        self.state: dict[str, dict] = self._read_state()
        if source is not None:
            self._check_source(source)
            self.__dict__["source"] = self._working_model(source)  # what `source` would give, checked the same way

    # --- what the stages share, made on first use -------------------------------------------------------

    @cached_property
    def source(self) -> "Model":
        """The model the job works on: the model as given, checked against the job's sha256, or its twin."""
        from ramp.models import load_model

        model = load_model(self.settings.model)
        self._check_source(model)
        return self._working_model(model)

    def _working_model(self, given: "Model") -> "Model":
        """`given`, or its off-grid twin (cached, made once) when the job runs on the twin."""
        if self.settings.twin is None:
            return given
        from ramp.evaluate.twin import cached_twin, twin_record
        from ramp.models import load_model

        path = cached_twin(given, **self.settings.twin)
        print(f"model: the off-grid {twin_record(path).describe()}, its own reference ({path})")
        return load_model(path)

    def _check_source(self, model: "Model") -> None:
        if model.sha256 != self.settings.model_sha256:
            raise RampError(f"the model {self.settings.model or '(default)'} is not this job's (sha256 {model.sha256[:12]}, "
                            f"{self.folder / JOB_FILE} has {self.settings.model_sha256[:12]}); pass the job's model with --model")

    @cached_property
    def model(self) -> "Model":
        """The model ramp's own file is made from: the source, Scale-Folded with --fold."""
        if self.settings.fold is None:
            return self.source
        from ramp.measure.calibration import CalibrationSpec
        from ramp.measure.folding import fold_with_calibration

        return fold_with_calibration(self.source, self.settings.fold, CalibrationSpec.from_dict(self.settings.fold_calibration))

    @cached_property
    def reference(self) -> Path:
        from ramp.export.gguf_writer import cached_reference

        if self.settings.twin is not None:  # an F32 file already: the twin is its own reference
            return self.source.source_path
        return cached_reference(self.source, self.settings.reference_dtype)

    def importance(self, folded: bool) -> "tuple[ImportanceMatrix | None, Path | None]":
        """The job's importance matrix (artifact of the imatrix stage) for the source or the folded model."""
        from ramp.measure.imatrix import ImportanceMatrix

        if self.settings.imatrix == "none":
            return None, None
        name = IMATRIX
        if folded and self.settings.fold is not None and self.settings.imatrix == "computed":
            name = folded_imatrix(self.settings.fold)
        path = self.folder / name
        return ImportanceMatrix.load(path), path

    def presets(self) -> dict:
        """The presets stage's record: per preset its file, sha256, file bytes and quantizable bytes."""
        return json.loads((self.folder / PRESETS).read_text())

    def rows(self) -> list[dict]:
        """The allocation stage's record, one entry per row (`rows.json`)."""
        return json.loads((self.folder / ROWS).read_text())

    def needed_presets(self) -> list[str]:
        """The presets compared against, and those whose bytes a row's budget names."""
        from ramp.evaluate.presets import ftype_of

        budgets = [row.budget for row in self.settings.rows if row.budget[:1].isalpha()]
        names = list(dict.fromkeys([*self.settings.presets, *budgets]))
        for name in names:
            ftype_of(name)
        return names

    def policy(self) -> "TrainedPolicy":
        """The job's trained policy, reading the embeddings stage's profile and the export's importance matrix."""
        from ramp.agent.policy import TrainedPolicy
        from ramp.files import file_sha256
        from ramp.measure.profile import Profile

        given = Path(self.settings.policy_file)
        if file_sha256(given) != self.settings.policy_sha256:
            raise RampError(f"the policy {given} is not this job's (its sha256 differs from job.json's); pass the job's "
                            "policy with --policy")
        return TrainedPolicy(given, Profile.load(self.folder / EMBEDDINGS), self.importance(folded=True)[0])

    def given_table(self) -> Path:
        from ramp.files import file_sha256

        given = Path(self.settings.sensitivity_file)
        if file_sha256(given) != self.settings.sensitivity_sha256:
            raise RampError(f"the sensitivity table {given} is not this job's (its sha256 differs from job.json's); pass "
                            "the job's table with --sensitivity")
        return given

    # --- the record -----------------------------------------------------------------------------------

    def _read_state(self) -> dict[str, dict]:
        """stages.json, or nothing to keep when it is missing or unreadable (every stage then runs)."""
        try:
            state = json.loads((self.folder / STATE_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) and all(isinstance(v, dict) for v in state.values()) else {}

    def _write_state(self) -> None:
        from ramp.files import atomic_output

        with atomic_output(self.folder / STATE_FILE, "w") as handle:
            json.dump(self.state, handle, indent=1)

    def _inputs(self, stage: Stage) -> str:
        reads = {name: self.state[name]["outputs"] for name in stage.reads}
        text = json.dumps({"stage": stage.name, "settings": self.settings.determining(), "reads": reads}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def _kept(self, stage: Stage) -> bool:
        """Whether the stage's record matches its inputs now and its artifacts are the bytes it wrote."""
        from ramp.files import file_sha256

        record = self.state.get(stage.name)
        if record is None or record.get("inputs") != self._inputs(stage) or not isinstance(record.get("outputs"), dict):
            return False
        # A record of files the stage does not write, or of none where it writes some, was not written by it: a
        # stage kept without its files would leave every later stage failing on them. (Rows that share a GGUF,
        # or fit no allocation, write fewer files than the stage may.)
        written, writes = set(record["outputs"]), set(stage.writes(self.settings.shape))
        if not written <= writes or (writes and not written):
            print(f"{stage.name}: {self.folder / STATE_FILE} does not record the files this stage writes; making them again")
            return False
        for name, digest in record["outputs"].items():
            path = self.folder / name
            if not path.is_file() or file_sha256(path) != digest:
                print(f"{stage.name}: {path} is not the file this stage wrote; making it again")
                return False
        return True

    def _remove_temporaries(self) -> None:
        """Hidden temporary files a killed run left beside its artifacts (`ramp.files.atomic_output`)."""
        from ramp.files import remove_stale_temporaries

        for name in artifact_names(self.settings.shape):
            remove_stale_temporaries(self.folder / name)

    def run(self, start: str | None = None) -> None:
        """Every stage in order, keeping those whose records match; from `start` on, every stage runs. The
        folder is locked for the run, and the model and given inputs checked before stage 1 (even when every
        stage would be kept)."""
        with job_lock(self.folder):
            check_inputs(self.settings, self.source)
            self._run(start)

    def _run(self, start: str | None) -> None:
        from ramp.files import file_sha256

        if start is not None:
            for stage in STAGES[STAGE_NAMES.index(start):]:
                self.state.pop(stage.name, None)
        self._remove_temporaries()
        evaluated = False
        for index, stage in enumerate(STAGES, 1):
            step = f"[{index}/{len(STAGES)}] {stage.name}"
            if self._kept(stage):
                print(f"{step}: kept ({', '.join(self.state[stage.name]['outputs']) or 'nothing to write'})", flush=True)
                continue
            print(f"{step} ...", flush=True)
            self.state.pop(stage.name, None)
            with StageCost() as cost:
                outputs = stage.run(self)
            self.state[stage.name] = {"inputs": self._inputs(stage),
                                      "outputs": {name: file_sha256(self.folder / name) for name in outputs},
                                      **cost.record}
            self._write_state()
            evaluated = evaluated or stage.name == "results"
        if not evaluated:
            self._print_kept_results()
        print(f"job {self.folder}: " + ", ".join(name for name in artifact_names(self.settings.shape)
                                                 if (self.folder / name).exists()))

    def _print_kept_results(self) -> None:
        """The table of a job whose evaluation was kept: a rerun ends with the same lines as the run."""
        from ramp.evaluate.llama_eval import EvalResult, format_table

        rows = [EvalResult(**row) for row in json.loads((self.folder / RESULTS).read_text())]
        print(format_table(rows))


class StageCost:
    """What one stage cost: wall seconds, CPU seconds of this process and of the children it waited for
    (llama-quantize, say), and this process's peak RSS during the stage (Linux resets the high-water mark per
    stage; elsewhere it is the process's peak so far). Not the children's peak: the kernel's figure for a child
    starts from this process's RSS when it was spawned, so it says nothing of the child."""

    def __enter__(self) -> "StageCost":
        release_memory()  # what the last stage freed: this stage's peak is its own
        self.wall, self.cpu, self.children = time.perf_counter(), time.process_time(), _children_cpu()
        self.own_peak_reset = _reset_peak_rss()
        return self

    def __exit__(self, *exc: object) -> None:
        own = _peak_rss_kb() if self.own_peak_reset else None
        self.record = {"wall_s": round(time.perf_counter() - self.wall, 3),
                       "cpu_s": round(time.process_time() - self.cpu + _children_cpu() - self.children, 3),
                       "peak_rss_mb": round((own or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024, 1)}


def _reset_peak_rss() -> bool:
    """Start this process's RSS high-water mark afresh (Linux: `5` to /proc/self/clear_refs); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return _peak_rss_kb() is not None
    except OSError:
        return False


def _peak_rss_kb() -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- the stages -------------------------------------------------------------------------------------------

def make_imatrix(job: Job) -> list[str]:
    from ramp.measure.calibration import CalibrationSpec
    from ramp.files import atomic_path, file_sha256
    from ramp.measure.imatrix import ImportanceMatrix, cached_imatrix

    settings = job.settings
    if settings.imatrix == "none":
        print("imatrix: none, on both sides (--no-imatrix)")
        return []
    if settings.imatrix == "file":
        given = Path(settings.imatrix_file)
        if file_sha256(given) != settings.imatrix_sha256:
            raise RampError(f"the importance matrix {given} is not this job's (its sha256 differs from job.json's); "
                            "pass the job's file with --imatrix")
        ImportanceMatrix.load(given).importances(job.source)  # made for this model
        sources = {IMATRIX: given}
    else:
        spec = CalibrationSpec.from_dict(settings.imatrix_calibration)
        sources = {IMATRIX: cached_imatrix(job.source, spec)[1]}
        if settings.fold is not None:
            sources[folded_imatrix(settings.fold)] = cached_imatrix(job.model, spec)[1]
    for name, source in sources.items():
        with atomic_path(job.folder / name) as tmp:
            shutil.copyfile(source, tmp)
    matrix, path = job.importance(folded=False)
    print(f"imatrix: {path} ({matrix.chunk_count} chunks of {matrix.chunk_size} tokens) for ramp and the presets")
    return list(sources)


def make_presets(job: Job) -> list[str]:
    from ramp.files import atomic_output, file_sha256
    from ramp.evaluate.presets import preset_path, quantizable_bytes

    _, imatrix_file = job.importance(folded=False)
    presets = {}
    for name in job.needed_presets():
        path = preset_path(job.reference, name, imatrix_file)
        presets[name] = {"file": str(path), "sha256": file_sha256(path), "file_bytes": path.stat().st_size,
                         "quantizable_bytes": quantizable_bytes(path, job.source)}
        print(f"preset {name}: {presets[name]['file_bytes']:,} bytes, by llama-quantize"
              + (" --imatrix" if imatrix_file else ""))
    with atomic_output(job.folder / PRESETS, "w") as handle:
        json.dump(presets, handle, indent=1)
    return [PRESETS]


def make_embeddings(job: Job) -> list[str]:
    from ramp.measure.calibration import CalibrationSpec
    from ramp.measure.profile import profile_model

    spec = CalibrationSpec.from_dict(job.settings.embeddings_calibration)
    profile = profile_model(job.model, spec, job.settings.seed)
    profile.save(job.folder / EMBEDDINGS, job.folder / EMBEDDINGS_CSV)
    print(f"embeddings: {len(profile.tensors)} tensors x {profile.features.shape[1]} features on {spec}")
    return [EMBEDDINGS, EMBEDDINGS_CSV]


def make_sensitivity(job: Job) -> list[str]:
    from ramp.measure.calibration import CalibrationSpec
    from ramp.measure.estimates import ESTIMATES, STAND_IN, estimate_sensitivity, weight_error_table
    from ramp.measure.sensitivity_table import SensitivityTable

    settings = job.settings
    imatrix, _ = job.importance(folded=True)
    if settings.damage == "file":
        table = SensitivityTable.load(job.given_table())
        print(f"damage: the sensitivity table {settings.sensitivity_file} ({table.measure})")
    elif settings.damage == "weight-error":
        print(f"damage: {STAND_IN} (squared weight error after llama.cpp's quantization, not measured sensitivity)")
        table = weight_error_table(job.model, settings.ladder, imatrix)
    else:
        spec = CalibrationSpec.from_dict(settings.damage_calibration)
        if settings.damage in ESTIMATES:
            print(f"damage: {settings.damage} estimate on {spec} (cached for later runs)")
            table = estimate_sensitivity(settings.damage, job.model, spec, imatrix, settings.ladder, seed=settings.seed)
        else:
            from ramp.measure.sensitivity import measure_sensitivity

            print(f"damage: KLD sensitivity measured on {spec} (cached for later runs)", flush=True)
            table = measure_sensitivity(job.model, spec, settings.ladder, imatrix=imatrix)
    table.save(job.folder / SENSITIVITY)
    return [SENSITIVITY]


def make_allocations(job: Job) -> list[str]:
    """One allocation per row. In a job of several rows a row no allocation of its method fits is recorded
    with the reason and the others go on; a one-row job fails on it."""
    from ramp.allocate import SearchSettings, allocate
    from ramp.allocate.budget import Budget
    from ramp.files import atomic_output
    from ramp.measure.sensitivity_table import SensitivityTable

    settings = job.settings
    table = SensitivityTable.load(job.folder / SENSITIVITY)
    presets = job.presets()
    policy = job.policy() if "policy" in settings.methods else None
    matrix = job.importance(folded=True)[0] if "search" in settings.methods else None  # the table's own
    records, written, gguf_of_formats = [], [], {}
    for row in settings.rows:
        if row.budget in presets:
            budget = Budget.parse(f"{presets[row.budget]['quantizable_bytes']}B")
            print(f"budget: the {budget.text} {row.budget} spends on the quantizable tensors")
        else:
            budget = Budget.parse(row.budget)
        record = {"method": row.method, "budget": row.budget, "allocation": None, "gguf": None, "infeasible": None}
        try:
            # a policy acts on the ladder it was trained on
            # a search keeps its state in the folder, so an interrupted job's search continues where it stopped
            search = (SearchSettings(matrix, settings.seed, settings.search["minutes"], settings.search["generations"],
                                     str(job.folder / f"search-{row_key(row)}.json")) if row.method == "search" else None)
            allocation = allocate(job.model, row.method, budget, table, ladder=None if row.method == "policy" else settings.ladder,
                                  policy=policy, search=search)
        except RampError as exc:
            if len(settings.rows) == 1:
                raise
            print(f"{row.method} at {row.budget}: {exc}")
            records.append({**record, "infeasible": str(exc)})
            continue
        allocation.extra["damage"] = table.measure
        name = allocation_file(settings.shape, row)
        allocation.save(job.folder / name)
        written.append(name)
        formats = json.dumps(allocation.formats, sort_keys=True)
        gguf = gguf_of_formats.setdefault(formats, gguf_file(settings.shape, row))  # same formats, same file: one GGUF
        records.append({**record, "allocation": name, "gguf": gguf, "predicted_damage": allocation.extra["predicted_damage"],
                        "data_bytes": allocation.extra["data_bytes"]})
    with atomic_output(job.folder / ROWS, "w") as handle:
        json.dump(records, handle, indent=1)
    return [ROWS, *written]


def make_ggufs(job: Job) -> list[str]:
    from ramp.allocate.allocation import Allocation
    from ramp.export.gguf_writer import predict_file_size, write_allocation
    from ramp.files import check_output_path

    written = []
    imatrix = job.importance(folded=True)[0]
    for record in job.rows():
        if record["gguf"] is None or record["gguf"] in written:
            continue
        allocation = Allocation.load(job.folder / record["allocation"])
        out = job.folder / record["gguf"]
        check_output_path(out, needed_bytes=predict_file_size(job.model, allocation.formats))
        write_allocation(job.model, allocation, out, imatrix=imatrix)
        written.append(record["gguf"])
    return written


def reference_name(settings: JobSettings) -> str:
    """The reference's row name in the results: the twin's F32 file when the job works on a twin."""
    return "F32 twin (reference)" if settings.twin is not None else f"{settings.reference_dtype} reference"


def make_results(job: Job) -> list[str]:
    from ramp.allocate.allocation import Allocation
    from ramp.evaluate.llama_eval import make_windows, reference_logprobs, reference_result, report_results
    from ramp.evaluate.presets import preset_path
    from ramp.measure.estimates import STAND_IN
    from ramp.evaluate.source_grid import source_match_share
    from ramp.job.measured import measured
    from ramp.models.text import evaluation_text

    settings = job.settings
    windows = make_windows(job.reference, evaluation_text(settings.text), settings.eval_ctx, settings.eval_max_windows)
    reference_logits = reference_logprobs(job.reference, windows)
    matrix, imatrix_file = job.importance(folded=False)
    used = imatrix_file is not None
    suffix = " imatrix" if used else ""
    stand_in = json.loads((job.folder / SENSITIVITY).read_text())["measure"] == STAND_IN
    source_bytes = job.source.source_file_bytes
    what = {"source_sha256": job.source.sha256, "imatrix": matrix.content_sha256() if matrix else None,
            "text": settings.text, "eval_ctx": settings.eval_ctx, "eval_max_windows": settings.eval_max_windows,
            "llama_cpp_version": settings.llama_cpp_version}

    def annotated(result: "EvalResult", imatrix: bool | None) -> "EvalResult":
        return result.annotate(settings.text, imatrix, source_match_share(result.path, job.source), source_bytes)

    reference_row = reference_result(job.reference, reference_logits, windows, reference_name(settings))
    # the reference is what the others are measured against, no claim of its own: never starred
    reference = reference_row.annotate(settings.text, None, source_match_share(reference_row.path, job.source), None)
    presets = [annotated(measured({**what, "preset": name}, preset_path(job.reference, name, imatrix_file), name + suffix,
                                  reference_logits, windows), used)
               for name in settings.presets]
    ours, lines = [], {}
    for record in job.rows():
        if record["gguf"] is None:
            continue
        label = (f"ramp {record['method']}" + (f" {record['budget']}" if len(settings.rows) > 1 else "")
                 + (" (stand-in)" if stand_in else "") + (f" fold {settings.fold}" if settings.fold is not None else ""))
        formats = Allocation.load(job.folder / record["allocation"]).formats
        result = annotated(measured({**what, "fold": settings.fold, "formats": formats}, job.folder / record["gguf"],
                                    label + suffix, reference_logits, windows), used)
        ours.append(result)
        lines.setdefault(f"ramp {record['method']}", []).append((result.file_bytes, result.kld_mean))
    report_results(sorted([reference, *presets, *ours], key=lambda r: r.file_bytes), windows, str(job.folder / RESULTS))
    from ramp.evaluate.pareto import plot_pareto

    plot_pareto(lines, [(result.name, result.file_bytes, result.kld_mean) for result in presets],
                "llama.cpp presets" + suffix, job.folder / PARETO,
                f"{model_label(settings.model)}{' twin' if settings.twin else ''}: held-out {settings.text}",
                None if settings.twin else source_bytes)  # a twin is on no grid: every size makes a claim
    return [RESULTS, PARETO]


def _imatrix_files(shape: JobShape) -> list[str]:
    if shape.imatrix == "none":
        return []
    folded = shape.fold is not None and shape.imatrix == "computed"  # a given matrix is the source's alone
    return [IMATRIX] + ([folded_imatrix(shape.fold)] if folded else [])


STAGES: tuple[Stage, ...] = (
    Stage("imatrix", (), _imatrix_files, make_imatrix),
    Stage("presets", ("imatrix",), lambda shape: [PRESETS], make_presets),
    Stage("embeddings", (), lambda shape: [EMBEDDINGS, EMBEDDINGS_CSV], make_embeddings),
    Stage("sensitivity", ("imatrix",), lambda shape: [SENSITIVITY], make_sensitivity),
    Stage("allocation", ("presets", "embeddings", "sensitivity"),
          lambda shape: [ROWS, *(allocation_file(shape, row) for row in shape.rows)], make_allocations),
    Stage("gguf", ("imatrix", "allocation"), lambda shape: [gguf_file(shape, row) for row in shape.rows], make_ggufs),
    Stage("results", ("presets", "allocation", "gguf"), lambda shape: [RESULTS, PARETO], make_results),
)
STAGE_NAMES = tuple(stage.name for stage in STAGES)
