"""A finished job read back as one record: its settings, the measured reference, presets and rows, and what
each stage cost. Benchmarks read their jobs through this, not through the files' layout."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ramp.errors import RampError
from ramp.job.settings import JOB_FILE, JobSettings
from ramp.job.stages import PRESETS, RESULTS, ROWS, SENSITIVITY, STATE_FILE, reference_name


@dataclass(frozen=True)
class JobRecord:
    folder: Path
    settings: JobSettings
    reference: dict  # the F32 reference's row of results.json
    presets: list[dict]  # per preset compared against: presets.json's entry and its measured row, as "preset" and "result"
    rows: list[dict]  # rows.json's entries, each with its measured row as "result" (None where no allocation fits)
    damage_measure: str  # the sensitivity table's measure
    stages: dict[str, dict]  # stages.json: per stage its inputs, outputs, wall_s, cpu_s, peak_rss_mb

    def row(self, method: str, budget: str) -> dict:
        for row in self.rows:
            if (row["method"], row["budget"]) == (method, budget):
                return row
        raise KeyError((method, budget))


def read_job(folder: str | Path) -> JobRecord:
    """The record of the finished job in `folder` (refused when its results are missing: run the job first)."""
    folder = Path(folder)
    if not (folder / RESULTS).is_file():
        raise RampError(f"{folder} holds no finished job (no {RESULTS}); run `ramp run --out-dir {folder}` to its end")
    settings = JobSettings.load(folder / JOB_FILE)
    results = json.loads((folder / RESULTS).read_text())
    by_path = {row["path"]: row for row in results}
    in_folder = {Path(row["path"]).name: row for row in results if Path(row["path"]).parent.resolve() == folder.resolve()}
    presets_made = json.loads((folder / PRESETS).read_text())
    presets = [{"preset": name, **presets_made[name], "result": by_path[presets_made[name]["file"]]} for name in settings.presets]
    rows = [{**row, "result": None if row["gguf"] is None else in_folder[row["gguf"]]}
            for row in json.loads((folder / ROWS).read_text())]
    reference = next(row for row in results if row["name"] == reference_name(settings))
    return JobRecord(folder, settings, reference, presets, rows, json.loads((folder / SENSITIVITY).read_text())["measure"],
                     json.loads((folder / STATE_FILE).read_text()))
