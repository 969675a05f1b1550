"""How far a cheap damage estimate (`ramp.measure.estimates`, or llama.cpp PR 15550's error) can stand
in for the measured KLD table: rank agreement, and above all what the allocation chosen with it costs when
the measured table judges it.

- Spearman rank correlation over the distinct (tensor, written format) cells (ladder columns that
  llama.cpp writes alike are one cell), within each tensor across its formats, and within each written
  format across tensors. A sweep still running gives agreement on the cells it has measured.
- Predicted-table regret: the ILP allocation for a budget chosen with the estimate, its damage summed from
  the measured table, over the measured damage of the ILP allocation chosen with the measured table itself
  (1.0: no loss). llama.cpp PR 15550's own allocator (`target-bpw`, with its own error) and uniform are
  judged the same way.

    python -m benchmarks.estimate_check --model M --measured TABLE.json --budgets 4.5bpw,5bpw [--estimate fisher ...]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ramp.models.model import Model
from ramp.measure.sensitivity_table import SensitivityTable


def distinct_cells(model: Model, table: SensitivityTable) -> dict[tuple[str, str], float]:
    """(tensor, written format) -> damage, one entry per format llama.cpp really writes for the tensor."""
    from ramp.kernels import resolve_format

    cells = {}
    for spec in model.quantizable:
        index = table.tensors.index(spec.name)
        for column, fmt in enumerate(table.formats):
            cells.setdefault((spec.name, resolve_format(fmt, spec.row_length).name), float(table.damage[index, column]))
    return cells


def _spearman(a: list[float], b: list[float]) -> float | None:
    from scipy.stats import spearmanr

    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None  # a constant side has no ranking to agree with
    return float(spearmanr(a, b).statistic)


def rank_agreement(model: Model, truth: dict[tuple[str, str], float], estimate: SensitivityTable) -> dict:
    """Spearman over the measured cells `truth` ((tensor, written format) -> damage, from `distinct_cells` or
    a sweep's partial file): overall, and the mean and minimum within each tensor across its formats and
    within each written format across tensors."""
    guess = distinct_cells(model, estimate)
    keys = [key for key in truth if key in guess]

    def grouped(position: int) -> dict[str, float | None]:
        groups = dict.fromkeys(key[position] for key in keys)
        return {group: _spearman([truth[k] for k in keys if k[position] == group], [guess[k] for k in keys if k[position] == group])
                for group in groups}

    def summary(values: dict[str, float | None]) -> dict:
        known = [v for v in values.values() if v is not None]
        return {"mean": float(np.mean(known)) if known else None, "min": float(np.min(known)) if known else None,
                "n": len(known)}

    per_format = grouped(1)
    return {"overall": _spearman([truth[k] for k in keys], [guess[k] for k in keys]), "n_cells": len(keys),
            "within_tensor": summary(grouped(0)), "within_format": summary(per_format),
            "per_format": per_format}


def partial_cells(path: str | Path) -> dict[tuple[str, str], float]:
    """The cells a sweep has measured so far, from its `.partial.json` (`tensor|format` -> KLD)."""
    return {tuple(key.split("|")): float(value) for key, value in json.loads(Path(path).read_text()).items()}


def regret(model: Model, measured: SensitivityTable, tables: dict[str, SensitivityTable], budgets: list[str]) -> list[dict]:
    """Per budget: the measured damage of the ILP allocation chosen with each table (name -> table; method
    `target-bpw` when the table is PR 15550's error), of uniform, and each over the measured-table ILP's."""
    from ramp.allocate import allocate, predicted_damage
    from ramp.allocate.target_bpw import MEASURE as TARGET_BPW

    ladder = tuple(measured.formats)
    rows = []
    for budget in budgets:
        best = allocate(model, "ilp", budget, measured, ladder=ladder)
        floor = predicted_damage(model, best.formats, measured)
        row = {"budget": budget, "bits_per_weight": best.extra["bits_per_weight"], "measured_ilp": floor}
        for name, table in tables.items():
            method = "target-bpw" if table.measure == TARGET_BPW else "ilp"
            chosen = allocate(model, method, budget, table, ladder=ladder)
            row[name] = predicted_damage(model, chosen.formats, measured)
            row[f"{name}_regret"] = row[name] / floor if floor > 0 else None
        try:
            uniform = allocate(model, "uniform", budget, measured, ladder=ladder)
            row["uniform"] = predicted_damage(model, uniform.formats, measured)
            row["uniform_regret"] = row["uniform"] / floor if floor > 0 else None
        except Exception as exc:  # a budget below the smallest uniform file: no uniform row
            row["uniform"] = f"n/a ({exc})"
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.estimate_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="GGUF file (default: the embedded SmolLM2)")
    parser.add_argument("--twin", action="store_true",
                        help="judge the estimate on the model's off-grid twin (`ramp twin`, cached), as a twin job's table was measured")
    parser.add_argument("--measured", required=True,
                        help="measured KLD table (SensitivityTable JSON) of this model, or a sweep's .partial.json")
    parser.add_argument("--estimate", action="append", choices=("imatrix-error", "fisher", "target-bpw"),
                        help="estimates to check (repeatable; default all three)")
    parser.add_argument("--tokens", type=int, default=None, help="calibration tokens of the estimates (default theirs)")
    parser.add_argument("--text", default="austen", help="calibration text (default austen)")
    parser.add_argument("--budgets", default="4.5bpw,5bpw,5.5bpw,6.5bpw", help="comma-separated budgets")
    parser.add_argument("--out", help="also write the numbers as JSON here")
    args = parser.parse_args(argv)

    import torch

    from ramp.allocate import target_bpw
    from ramp.measure.calibration import ESTIMATE, IMATRIX, recorded_spec
    from ramp.errors import RampError
    from ramp.measure.imatrix import cached_imatrix
    from ramp.measure.ladder import DEFAULT_LADDER
    from ramp.models import load_model
    from ramp.measure.estimates import estimate_sensitivity

    model = load_model(args.model)
    if args.twin:
        from ramp.evaluate.twin import cached_twin

        model = load_model(cached_twin(model))
    imatrix, _ = cached_imatrix(model, IMATRIX.sized(text=args.text), progress=False)
    measured = None
    if args.measured.endswith(".partial.json"):  # a sweep still running: agreement on its cells, no regret
        truth, formats = partial_cells(args.measured), list(DEFAULT_LADDER)  # the ladder ramp run sweeps
    else:
        measured = SensitivityTable.load(args.measured)
        if measured.model_sha256 != model.sha256:
            raise RampError(f"{args.measured} was measured on another model ({measured.model_sha256[:12]} vs {model.sha256[:12]})")
        if measured.extra.get("imatrix") not in (None, imatrix.content_sha256()):
            raise RampError("the measured table was quantized with another importance matrix than the default one")
        imatrix = imatrix if measured.extra.get("imatrix") else None
        truth, formats = distinct_cells(model, measured), measured.formats
    n_tokens = args.tokens or ESTIMATE.tokens
    calibration = ESTIMATE.sized(n_tokens, min(ESTIMATE.window, n_tokens), args.text)
    measured_spec = recorded_spec(measured.extra) if measured else None
    report: dict = {"model": str(model.source_path), "model_sha256": model.sha256, "measured": args.measured,
                    "measured_tokens": measured_spec.tokens if measured_spec else None, "measured_cells": len(truth),
                    "estimate_tokens": n_tokens,
                    "torch_threads": torch.get_num_threads(), "estimates": {}}
    tables = {}
    for name in args.estimate or ["imatrix-error", "fisher", "target-bpw"]:
        started, cpu = time.perf_counter(), time.process_time()
        if name == "target-bpw":
            table = target_bpw.error_table(model, formats, imatrix, progress=False)
        else:
            table = estimate_sensitivity(name, model, calibration, imatrix, formats, progress=False)
        tables[name] = table
        report["estimates"][name] = {"wall_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu,
                                     "measure": table.measure, "agreement": rank_agreement(model, truth, table)}
        print(f"{name}: {report['estimates'][name]['wall_s']:.0f} s wall (0 when cached), agreement "
              f"{json.dumps(report['estimates'][name]['agreement'])}", flush=True)
    report["regret"] = regret(model, measured, tables, [b.strip() for b in args.budgets.split(",")]) if measured else []
    for row in report["regret"]:
        print(json.dumps(row))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
