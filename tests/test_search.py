"""`ramp allocate --method search` on the tiny llama with real text: within the budget, the same allocation
for the same seed, an interrupted search (killed in a subprocess) ends where an uninterrupted one does, and on a
table that lies about one tensor it finds an allocation the whole model, on held-out text, likes better."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ramp.allocate import SearchSettings, allocate, ilp, search
from ramp.allocate.budget import Budget
from ramp.allocate.problem import build_problem, item_damage
from ramp.measure.calibration import CalibrationSpec
from ramp.measure.sensitivity import measure_sensitivity
from ramp.measure.sensitivity_table import SensitivityTable


LADDER = ("Q2_K", "Q4_K", "Q6_K", "Q8_0")
TABLE_CALIBRATION = CalibrationSpec("austen", 256, 128)
# Scaled down so a generation costs seconds: 4 windows (rungs of 1, 1 and 4), 4 offspring halved to 2 then 1.
SEARCH_CALIBRATION = CalibrationSpec("austen", 64, 16)
SURVIVORS = (4, 2, 1)
BUDGET = "4.0bpw"
TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def table(tiny_model):
    return measure_sensitivity(tiny_model, TABLE_CALIBRATION, LADDER, progress=False)


def small_search(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(search, "SEARCH", SEARCH_CALIBRATION)
    monkeypatch.setattr(search, "SURVIVORS", SURVIVORS)


def copied(table: SensitivityTable) -> SensitivityTable:
    return SensitivityTable(table.tensors, table.formats, table.damage.copy(), table.measure, table.model_sha256,
                            table.calibration_sha256, dict(table.extra))


def searched(model, table, seed, generations, state_path=None, budget=BUDGET):
    return allocate(model, "search", budget, table, ladder=LADDER,
                    search=SearchSettings(seed=seed, minutes=60.0, generations=generations, state=state_path))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_level_switches_never_leave_the_budget(tiny_model, table, seed):
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    for budget in ("3.0bpw", "4.0bpw", "6.0bpw"):
        problem = build_problem(tiny_model, Budget.parse(budget).bytes_for(tiny_model), LADDER)
        picks, _ = ilp.solve(problem, item_damage(tiny_model, problem.items, table))
        moved = 0
        for _ in range(200):
            child = search.level_switch(picks, problem, rng, int(rng.integers(1, 6)))
            assert problem.picks_bytes(child) <= problem.budget_bytes
            moved += child != picks
            picks = child
        assert moved > 100  # the moves really move


def test_search_keeps_the_budget_and_never_ends_worse_than_the_ilp(tiny_model, table, monkeypatch):
    small_search(monkeypatch)
    for budget in ("3.2bpw", "5.0bpw"):
        allocation = allocate(tiny_model, "search", budget, table, ladder=LADDER,
                              search=SearchSettings(minutes=60.0, generations=3))
        facts = allocation.extra
        assert facts["data_bytes"] <= Budget.parse(budget).bytes_for(tiny_model)
        assert facts["generations"] == 3 and facts["kld"] <= facts["ilp_kld"]
        assert facts["history"] == sorted(facts["history"], reverse=True)  # the best so far never gets worse
        assert facts["scorings"] == 1 + 3 * sum(search.SURVIVORS)


def test_same_seed_same_allocation(tiny_model, table, monkeypatch, tmp_path):
    small_search(monkeypatch)
    first = searched(tiny_model, table, 7, 4, tmp_path / "a.json")
    second = searched(tiny_model, table, 7, 4, tmp_path / "b.json")
    assert first.formats == second.formats and first.extra["history"] == second.extra["history"]
    problem = build_problem(tiny_model, Budget.parse(BUDGET).bytes_for(tiny_model), LADDER)
    start = [0] * len(problem.items)
    assert (search.offspring(start, problem, np.random.default_rng([7, 0]), 16)
            != search.offspring(start, problem, np.random.default_rng([8, 0]), 16))  # the seed matters


_CHILD = """
import sys, time
sys.path.insert(0, {tests!r})
from tiny_gguf import tiny_llama
from ramp.allocate import SearchSettings, allocate, search
from ramp.measure.calibration import CalibrationSpec
from ramp.measure.sensitivity_table import SensitivityTable
search.SEARCH = CalibrationSpec("austen", 64, 16)
search.SURVIVORS = {survivors!r}
allocate(tiny_llama(), "search", {budget!r}, SensitivityTable.load({table!r}), ladder={ladder!r},
         search=SearchSettings(seed=3, minutes=60.0, generations={generations}, state={state!r}))
"""


def test_killed_search_resumes_to_the_uninterrupted_result(tiny_model, table, monkeypatch, tmp_path, ramp_cache):
    small_search(monkeypatch)
    generations = 8
    table_path, state = tmp_path / "table.json", tmp_path / "state.json"
    table.save(table_path)
    script = _CHILD.format(tests=str(TESTS), budget=BUDGET, table=str(table_path), ladder=LADDER,
                           generations=generations, state=str(state), survivors=SURVIVORS)
    child = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "RAMP_CACHE": str(ramp_cache)})
    deadline = time.monotonic() + 900
    while child.poll() is None and time.monotonic() < deadline:
        if state.exists() and json.loads(state.read_text())["generation"] >= 2:
            child.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    assert child.wait() == -signal.SIGKILL, "the search ended before it could be interrupted"
    killed_at = json.loads(state.read_text())["generation"]
    assert 2 <= killed_at < generations

    resumed = searched(tiny_model, table, 3, generations, state)
    uninterrupted = searched(tiny_model, table, 3, generations, tmp_path / "whole.json")
    assert resumed.extra["resumed"] and not uninterrupted.extra["resumed"]
    assert resumed.formats == uninterrupted.formats
    assert resumed.extra["history"] == uninterrupted.extra["history"]
    assert resumed.extra["generations"] == generations


def test_stopped_search_continues_with_more_generations(tiny_model, table, monkeypatch, tmp_path):
    small_search(monkeypatch)
    searched(tiny_model, table, 5, 1, tmp_path / "state.json")
    continued = searched(tiny_model, table, 5, 4, tmp_path / "state.json")
    whole = searched(tiny_model, table, 5, 4, tmp_path / "whole.json")
    assert continued.extra["resumed"] and continued.formats == whole.formats
    assert continued.extra["history"] == whole.extra["history"]


def test_search_corrects_a_table_that_lies_about_one_tensor(tiny_model, table, monkeypatch):
    """The table claims token_embd (tied to the output) suffers least in its smallest format: the ILP over it
    starves the tensor that matters most and leaves bytes unspent. The search, which trusts only the whole
    model's KLD, finds a better allocation, better also on the held-out half of the text, which it never saw."""
    from ramp.measure.oracle import KLDOracle
    from ramp.models.text import evaluation_text
    from ramp.models.tokenizer import token_windows, vocabulary_file
    import torch

    small_search(monkeypatch)
    budget = "4.5bpw"
    lied = table.tensors.index("token_embd.weight")
    wrong = copied(table)
    wrong.damage[lied] = table.damage[lied][::-1]
    starved = allocate(tiny_model, "ilp", budget, wrong, ladder=LADDER)
    assert starved.formats["token_embd.weight"] == LADDER[0]  # the lie starves it
    found = allocate(tiny_model, "search", budget, wrong, ladder=LADDER, search=SearchSettings(minutes=60.0, generations=10))
    assert found.extra["kld"] < found.extra["ilp_kld"]
    assert found.extra["data_bytes"] <= found.extra["budget_bytes"]

    held_out = torch.from_numpy(token_windows(vocabulary_file(tiny_model), evaluation_text("austen"), 128, 8).astype("int64"))
    oracle = KLDOracle(tiny_model, held_out, checkpoint_blocks=False)
    ilp_kld, found_kld = oracle(starved.formats), oracle(found.formats)
    print(f"held-out KLD: ILP over the wrong table {ilp_kld:.5f}, search {found_kld:.5f}")
    assert found_kld < 0.95 * ilp_kld


def test_cli_search_writes_an_allocation_within_budget(tiny_model, table, tiny_reference, tmp_path, capsys, monkeypatch):
    from ramp.allocate.allocation import Allocation
    from ramp.cli import main
    from ramp.models import load_model

    small_search(monkeypatch)
    model = load_model(tiny_reference)
    own = copied(table)
    own.model_sha256 = model.sha256
    own.save(tmp_path / "table.json")
    out = tmp_path / "alloc.json"
    code = main(["allocate", "--model", str(tiny_reference), "--method", "search", "--budget", BUDGET, "--formats",
                 ",".join(LADDER), "--sensitivity", str(tmp_path / "table.json"), "--search-generations", "2",
                 "--seed", "1", "--out", str(out)])
    assert code == 0
    allocation = Allocation.load(out)
    assert allocation.method == "search" and allocation.extra["generations"] == 2
    assert allocation.data_bytes(model) <= Budget.parse(BUDGET).bytes_for(model)
    assert "search" in capsys.readouterr().out

    code = main(["allocate", "--model", str(tiny_reference), "--method", "search", "--budget", BUDGET,
                 "--sensitivity", str(tmp_path / "table.json"), "--search-minutes", "0", "--out", str(out)])
    assert code == 2 and "--search-minutes must be positive" in capsys.readouterr().err


def test_a_job_runs_search_rows_next_to_the_ilp(tiny_reference, tmp_path, capsys, monkeypatch):
    from ramp.allocate.allocation import Allocation
    from ramp.cli import main
    from ramp.models import load_model

    small_search(monkeypatch)
    folder = tmp_path / "job"
    command = ["run", "--model", str(tiny_reference), "--method", "ilp,search", "--budget", BUDGET, "--formats",
               ",".join(LADDER), "--calibration-tokens", "256", "--preset", "Q8_0", "--ctx", "64", "--max-windows", "2",
               "--no-imatrix", "--search-generations", "2", "--out-dir", str(folder)]
    assert main(command) == 0
    settings = json.loads((folder / "job.json").read_text())
    assert settings["search"] == {"minutes": SearchSettings.minutes, "generations": 2}
    rows = {row["method"]: row for row in json.loads((folder / "rows.json").read_text())}
    found = Allocation.load(folder / rows["search"]["allocation"])
    assert found.method == "search" and found.extra["generations"] == 2
    assert found.data_bytes(load_model(tiny_reference)) <= Budget.parse(BUDGET).bytes_for(load_model(tiny_reference))
    # the search's state lives in the job folder; the table's ILP is where it started
    state = json.loads((folder / f"search-search-{BUDGET}.json").read_text())
    ilp_formats = Allocation.load(folder / rows["ilp"]["allocation"]).formats
    assert state["generation"] == 2 and state["start_picks"] is not None and ilp_formats
    names = {row["name"] for row in json.loads((folder / "results.json").read_text())}
    assert {f"ramp ilp {BUDGET}", f"ramp search {BUDGET}"} <= names or rows["ilp"]["gguf"] == rows["search"]["gguf"]
    capsys.readouterr()

    code = main(["run", "--model", str(tiny_reference), "--budget", BUDGET, "--search-minutes", "5",
                 "--out-dir", str(tmp_path / "other")])
    assert code == 2 and "bound a `search` row; add search to --method" in capsys.readouterr().err
    code = main([*command[:-2], "--search-minutes", "-1", "--out-dir", str(tmp_path / "third")])
    assert code == 2 and "minutes must be a positive number" in capsys.readouterr().err
