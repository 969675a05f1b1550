"""The stages of a job, each writing its artifacts into the job folder, and the record that lets a rerun skip
them: `stages.json` keeps, per finished stage, a hash of its inputs (the job's settings and the bytes of the
artifacts it read) and the sha256 of every artifact it wrote. A stage whose record still matches is kept; any
other runs again, and with it every stage that read its artifacts, once their bytes change. An interrupted run
leaves finished stages recorded and the running one not, so the same command resumes where it stopped (the
sensitivity sweep even inside its stage, from its partial cache entry).

Every artifact is a file the stage commands read, so the stages can also be run by hand:
imatrix.gguf (`ramp imatrix`), presets.json (`ramp presets`), embeddings.json (`ramp profile`),
sensitivity.json (`ramp profile`), allocation.json (`ramp allocate`), ramp.gguf (`ramp export`),
results.json and pareto.png (`ramp eval`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ramp.errors import RampError
from ramp.job.settings import JOB_FILE, JobSettings

if TYPE_CHECKING:
    from ramp.measure.imatrix import ImportanceMatrix
    from ramp.evaluate.llama_eval import EvalResult
    from ramp.models.model import Model

STAGES = ("imatrix", "presets", "embeddings", "sensitivity", "allocation", "gguf", "results")
# The stages whose artifacts each stage reads: its record holds while their bytes stay the same.
READS = {
    "imatrix": (), "presets": ("imatrix",), "embeddings": (), "sensitivity": ("imatrix",),
    "allocation": ("presets", "sensitivity"), "gguf": ("imatrix", "allocation"), "results": ("presets", "gguf"),
}
STATE_FILE = "stages.json"
RAMP_GGUF = "ramp.gguf"
RESULTS = "results.json"


def artifact_names(fold: float | None) -> list[str]:
    """Every file a job may write into its folder (with the folded model's importance matrix for a --fold)."""
    names = [JOB_FILE, STATE_FILE, "imatrix.gguf"] + ([_folded_imatrix(fold)] if fold is not None else [])
    return names + ["presets.json", "embeddings.json", "embeddings.csv", "sensitivity.json", "allocation.json", RAMP_GGUF,
                    RESULTS, "pareto.png"]


def _folded_imatrix(alpha: float) -> str:
    return f"imatrix-fold{alpha}.gguf"


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
        return cached_reference(self.source)

    def importance(self, folded: bool) -> "tuple[ImportanceMatrix | None, Path | None]":
        """The job's importance matrix (artifact of the imatrix stage) for the source or the folded model."""
        from ramp.measure.imatrix import ImportanceMatrix

        if self.settings.imatrix == "none":
            return None, None
        name = "imatrix.gguf"
        if folded and self.settings.fold is not None and self.settings.imatrix == "computed":
            name = _folded_imatrix(self.settings.fold)  # a folded model's activations differ: its own matrix
        path = self.folder / name
        return ImportanceMatrix.load(path), path

    # --- the stages -----------------------------------------------------------------------------------

    def _stage_imatrix(self) -> list[str]:
        from ramp.measure.calibration import CalibrationSpec
        from ramp.files import atomic_path, file_sha256
        from ramp.measure.imatrix import ImportanceMatrix, cached_imatrix

        settings = self.settings
        if settings.imatrix == "none":
            print("imatrix: none, on both sides (--no-imatrix)")
            return []
        if settings.imatrix == "file":
            given = Path(settings.imatrix_file)
            if file_sha256(given) != settings.imatrix_sha256:
                raise RampError(f"the importance matrix {given} is not this job's (its sha256 differs from job.json's); "
                                "pass the job's file with --imatrix")
            ImportanceMatrix.load(given).importances(self.source)  # made for this model
            sources = {"imatrix.gguf": given}
        else:
            spec = CalibrationSpec.from_dict(settings.imatrix_calibration)
            sources = {"imatrix.gguf": cached_imatrix(self.source, spec)[1]}
            if settings.fold is not None:
                sources[_folded_imatrix(settings.fold)] = cached_imatrix(self.model, spec)[1]
        for name, source in sources.items():
            with atomic_path(self.folder / name) as tmp:
                shutil.copyfile(source, tmp)
        matrix, path = self.importance(folded=False)
        print(f"imatrix: {path} ({matrix.chunk_count} chunks of {matrix.chunk_size} tokens) for ramp and the presets")
        return list(sources)

    def _stage_presets(self) -> list[str]:
        from ramp.files import atomic_output, file_sha256
        from ramp.evaluate.presets import preset_path, quantizable_bytes

        _, imatrix_file = self.importance(folded=False)
        presets = {}
        for name in self._needed_presets():
            path = preset_path(self.reference, name, imatrix_file)
            presets[name] = {"file": str(path), "sha256": file_sha256(path), "file_bytes": path.stat().st_size,
                             "quantizable_bytes": quantizable_bytes(path, self.source)}
            print(f"preset {name}: {presets[name]['file_bytes']:,} bytes, by llama-quantize"
                  + (" --imatrix" if imatrix_file else ""))
        with atomic_output(self.folder / "presets.json", "w") as handle:
            json.dump(presets, handle, indent=1)
        return ["presets.json"]

    def _stage_embeddings(self) -> list[str]:
        from ramp.measure.calibration import CalibrationSpec
        from ramp.measure.profile import profile_model

        spec = CalibrationSpec.from_dict(self.settings.embeddings_calibration)
        profile = profile_model(self.model, spec, self.settings.seed)
        profile.save(self.folder / "embeddings.json", self.folder / "embeddings.csv")
        print(f"embeddings: {len(profile.tensors)} tensors x {profile.features.shape[1]} features on {spec}")
        return ["embeddings.json", "embeddings.csv"]

    def _stage_sensitivity(self) -> list[str]:
        from ramp.measure.calibration import CalibrationSpec
        from ramp.measure.estimates import ESTIMATES, STAND_IN, estimate_sensitivity, weight_error_table
        from ramp.measure.sensitivity_table import SensitivityTable

        settings = self.settings
        imatrix, _ = self.importance(folded=True)
        if settings.damage == "file":
            table = SensitivityTable.load(self._given_table())
            print(f"damage: the sensitivity table {settings.sensitivity_file} ({table.measure})")
        elif settings.damage == "weight-error":
            print(f"damage: {STAND_IN} (squared weight error after llama.cpp's quantization, not measured sensitivity)")
            table = weight_error_table(self.model, settings.ladder, imatrix)
        else:
            spec = CalibrationSpec.from_dict(settings.damage_calibration)
            if settings.damage in ESTIMATES:
                print(f"damage: {settings.damage} estimate on {spec} (cached for later runs)")
                table = estimate_sensitivity(settings.damage, self.model, spec, imatrix, settings.ladder, seed=settings.seed)
            else:
                from ramp.measure.sensitivity import measure_sensitivity

                print(f"damage: KLD sensitivity measured on {spec} (cached for later runs)", flush=True)
                table = measure_sensitivity(self.model, spec, settings.ladder, imatrix=imatrix)
        table.save(self.folder / "sensitivity.json")
        return ["sensitivity.json"]

    def _stage_allocation(self) -> list[str]:
        from ramp.allocate import allocate
        from ramp.allocate.budget import Budget
        from ramp.measure.sensitivity_table import SensitivityTable

        settings = self.settings
        if settings.budget in self._presets():
            budget = Budget.parse(f"{self._presets()[settings.budget]['quantizable_bytes']}B")
            print(f"budget: the {budget.text} {settings.budget} spends on the quantizable tensors")
        else:
            budget = Budget.parse(settings.budget)
        table = SensitivityTable.load(self.folder / "sensitivity.json")
        allocation = allocate(self.model, settings.method, budget, table, ladder=settings.ladder)
        allocation.extra["damage"] = table.measure
        allocation.save(self.folder / "allocation.json")
        return ["allocation.json"]

    def _stage_gguf(self) -> list[str]:
        from ramp.allocate.allocation import Allocation
        from ramp.export.gguf_writer import predict_file_size, write_allocation
        from ramp.files import check_output_path

        allocation = Allocation.load(self.folder / "allocation.json")
        out = self.folder / RAMP_GGUF
        check_output_path(out, needed_bytes=predict_file_size(self.model, allocation.formats))
        write_allocation(self.model, allocation, out, imatrix=self.importance(folded=True)[0])
        return [RAMP_GGUF]

    def _stage_results(self) -> list[str]:
        from ramp.evaluate.llama_eval import evaluate, make_windows, reference_logprobs, reference_result, report_results
        from ramp.evaluate.presets import preset_path
        from ramp.measure.estimates import STAND_IN
        from ramp.evaluate.source_grid import source_match_share
        from ramp.models.text import evaluation_text

        settings = self.settings
        windows = make_windows(self.reference, evaluation_text(settings.text), settings.eval_ctx, settings.eval_max_windows)
        reference_logits = reference_logprobs(self.reference, windows)
        _, imatrix_file = self.importance(folded=False)
        used = imatrix_file is not None
        suffix = " imatrix" if used else ""
        stand_in = json.loads((self.folder / "sensitivity.json").read_text())["measure"] == STAND_IN
        label = (f"ramp {settings.method}" + (" (stand-in)" if stand_in else "")
                 + (f" fold {settings.fold}" if settings.fold is not None else ""))
        reference = reference_result(self.reference, reference_logits, windows,
                                     "F32 twin (reference)" if settings.twin is not None else "F32 reference")
        presets = [evaluate(preset_path(self.reference, name, imatrix_file), reference_logits, windows, name + suffix)
                   for name in settings.presets]
        ours = evaluate(self.folder / RAMP_GGUF, reference_logits, windows, label + suffix)
        source_bytes = self.source.source_file_bytes

        def annotated(result: "EvalResult") -> "EvalResult":
            return result.annotate(settings.text, None if result is reference else used,
                                   source_match_share(result.path, self.source), source_bytes)

        reference, ours, presets = annotated(reference), annotated(ours), [annotated(result) for result in presets]
        report_results(sorted([reference, *presets, ours], key=lambda r: r.file_bytes), windows, str(self.folder / RESULTS))
        from ramp.evaluate.pareto import plot_pareto

        plot_pareto({ours.name: [(ours.file_bytes, ours.kld_mean)]},
                    [(result.name, result.file_bytes, result.kld_mean) for result in presets],
                    "llama.cpp presets" + suffix, self.folder / "pareto.png",
                    f"{settings.model or 'default model'}{' twin' if settings.twin else ''}: held-out {settings.text}",
                    source_bytes)
        return [RESULTS, "pareto.png"]

    # --- helpers --------------------------------------------------------------------------------------

    def _needed_presets(self) -> list[str]:
        from ramp.evaluate.presets import ftype_of

        budget = [self.settings.budget] if self.settings.budget[:1].isalpha() else []
        names = list(dict.fromkeys([*self.settings.presets, *budget]))
        for name in names:
            ftype_of(name)
        return names

    def _presets(self) -> dict:
        return json.loads((self.folder / "presets.json").read_text())

    def _given_table(self) -> Path:
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

    def _inputs(self, stage: str) -> str:
        reads = {name: self.state[name]["outputs"] for name in READS[stage]}
        text = json.dumps({"stage": stage, "settings": self.settings.determining(), "reads": reads}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def _kept(self, stage: str) -> bool:
        """Whether the stage's record matches its inputs now and its artifacts are the bytes it wrote."""
        from ramp.files import file_sha256

        record = self.state.get(stage)
        if record is None or record.get("inputs") != self._inputs(stage) or not isinstance(record.get("outputs"), dict):
            return False
        for name, digest in record["outputs"].items():
            path = self.folder / name
            if not path.is_file() or file_sha256(path) != digest:
                print(f"{stage}: {path} is not the file this stage wrote; making it again")
                return False
        return True

    def _remove_temporaries(self) -> None:
        """Hidden temporary files a killed run left beside its artifacts (`ramp.files.atomic_output`)."""
        for name in artifact_names(self.settings.fold):
            for stale in self.folder.glob(f".{name}.*.tmp"):
                with contextlib.suppress(OSError):
                    stale.unlink()

    def run(self, start: str | None = None) -> None:
        """Every stage in order, keeping those whose records match; from `start` on, every stage runs."""
        from ramp.files import file_sha256

        if start is not None:
            for stage in STAGES[STAGES.index(start):]:
                self.state.pop(stage, None)
        self._remove_temporaries()
        evaluated = False
        for index, stage in enumerate(STAGES, 1):
            step = f"[{index}/{len(STAGES)}] {stage}"
            if self._kept(stage):
                print(f"{step}: kept ({', '.join(self.state[stage]['outputs']) or 'nothing to write'})", flush=True)
                continue
            print(f"{step} ...", flush=True)
            self.state.pop(stage, None)
            run: Callable[[], list[str]] = getattr(self, f"_stage_{stage}")
            outputs = run()
            self.state[stage] = {"inputs": self._inputs(stage),
                                 "outputs": {name: file_sha256(self.folder / name) for name in outputs}}
            self._write_state()
            evaluated = evaluated or stage == "results"
        if not evaluated:
            self._print_kept_results()
        print(f"job {self.folder}: " + ", ".join(name for name in artifact_names(self.settings.fold)
                                                 if (self.folder / name).exists()))

    def _print_kept_results(self) -> None:
        """The table of a job whose evaluation was kept: a rerun ends with the same lines as the run."""
        from ramp.evaluate.llama_eval import EvalResult, format_table

        rows = [EvalResult(**row) for row in json.loads((self.folder / RESULTS).read_text())]
        print(format_table(rows))
