"""`ramp run` as a job folder on the tiny model: a run killed in the sensitivity sweep and again in the
evaluation resumes with the same command to the results of a run never interrupted; a rerun keeps every stage
and refuses other settings; `--from` redoes a stage and those after it; job.json alone reruns the job; the
stage commands read the job's artifacts."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ramp.allocate.allocation import Allocation
from ramp.cli import main

# Long enough a sweep (3 formats x 15 tensors) to be killed inside it.
SETTINGS = ["--budget", "5.5bpw", "--formats", "Q4_0,Q5_0,Q8_0", "--calibration-tokens", "256", "--preset", "Q8_0",
            "--ctx", "64", "--max-windows", "2", "--no-imatrix"]


def run_command(reference: Path, out_dir: Path, *extra: str) -> list[str]:
    return ["run", "--model", str(reference), *SETTINGS, "--out-dir", str(out_dir), *extra]


def results_without_paths(folder: Path) -> list[dict]:
    """results.json but where each file lies (another job folder, another cache)."""
    return [{key: value for key, value in row.items() if key != "path"} for row in json.loads((folder / "results.json").read_text())]


def recorded_stages(folder: Path) -> list[str]:
    return list(json.loads((folder / "stages.json").read_text())) if (folder / "stages.json").is_file() else []


@pytest.fixture(scope="module")
def finished(tiny_reference, ramp_cache, tmp_path_factory) -> Path:
    """A job run to its end without interruption, in the session's cache (the interrupted one has its own)."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    done = subprocess.run([sys.executable, "-m", "ramp.cli", *run_command(tiny_reference, folder)],
                          env={**os.environ, "RAMP_CACHE": str(ramp_cache)}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return folder


def run_until(command: list[str], cache: Path, marker: str, ready=lambda: True) -> list[str]:
    """Start `ramp` with `command`, SIGKILL it once a line starting with `marker` is printed and `ready()`
    holds; the lines it printed."""
    process = subprocess.Popen([sys.executable, "-m", "ramp.cli", *command], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True,
                               env={**os.environ, "RAMP_CACHE": str(cache), "PYTHONUNBUFFERED": "1"})
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if line.startswith(marker):
                deadline = time.monotonic() + 120
                while not ready() and process.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.05)
                break
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
        process.stdout.close()
    assert process.returncode == -signal.SIGKILL, f"ramp ended on its own before it was killed: {''.join(lines)[-2000:]}"
    return lines


def test_a_killed_run_resumes_to_the_results_of_an_uninterrupted_one(finished, tiny_reference, tmp_path):
    folder, cache = tmp_path / "job", tmp_path / "cache"
    command = run_command(tiny_reference, folder)
    # killed inside the sweep, after its first measurements reached the partial cache entry
    run_until(command, cache, "[4/7] sensitivity", lambda: any((cache / "sensitivity").glob("*.partial.json")))
    assert recorded_stages(folder) == ["imatrix", "presets", "embeddings"]
    # killed in the evaluation: every stage before it stays recorded, no results are written
    lines = run_until(command, cache, "[7/7] results")
    assert "[3/7] embeddings: kept (embeddings.json, embeddings.csv)\n" in lines
    assert recorded_stages(folder) == ["imatrix", "presets", "embeddings", "sensitivity", "allocation", "gguf"]
    assert not (folder / "results.json").exists()

    done = subprocess.run([sys.executable, "-m", "ramp.cli", *command], capture_output=True, text=True,
                          env={**os.environ, "RAMP_CACHE": str(cache)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "[6/7] gguf: kept (ramp.gguf)" in done.stdout and "[7/7] results ..." in done.stdout
    assert results_without_paths(folder) == results_without_paths(finished)
    assert (folder / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(folder.glob(".*.tmp"))  # what the kills left half-written is gone


def test_a_rerun_keeps_every_stage_and_other_settings_are_refused(finished, tiny_reference, tmp_path, capsys):
    folder = tmp_path / "job"
    # the same job in another folder: every stage made again (from the cache the finished one filled), then kept
    assert main(run_command(tiny_reference, folder)) == 0
    written = {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}
    capsys.readouterr()
    assert main(run_command(tiny_reference, folder)) == 0
    printed = capsys.readouterr().out
    assert printed.count(": kept (") == 7 and "ramp ilp" in printed  # the table again, from results.json
    assert {path.name: path.stat().st_mtime_ns for path in folder.iterdir()} == written  # nothing rewritten
    assert results_without_paths(folder) == results_without_paths(finished)

    code = main(run_command(tiny_reference, folder, "--method", "greedy"))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert 'was made with methods = ["ilp"], this run asks for ["greedy"]' in err and "--job" in err

    # --from redoes that stage and every later one; the earlier stay
    assert main(run_command(tiny_reference, folder, "--from", "allocation")) == 0
    printed = capsys.readouterr().out
    assert "[4/7] sensitivity: kept" in printed and "[5/7] allocation ...\n" in printed and "[7/7] results ...\n" in printed
    assert results_without_paths(folder) == results_without_paths(finished)


def test_job_json_alone_reruns_the_job(finished, tmp_path, capsys):
    # no option but the job file and a new folder: the model, text, ladder, budget... all come from job.json
    assert main(["run", "--job", str(finished / "job.json"), "--out-dir", str(tmp_path)]) == 0
    assert results_without_paths(tmp_path) == results_without_paths(finished)
    assert json.loads((tmp_path / "job.json").read_text()) == json.loads((finished / "job.json").read_text())

    capsys.readouterr()
    code = main(["run", "--job", str(finished / "job.json"), "--budget", "5bpw", "--out-dir", str(tmp_path / "b")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--job takes the settings from" in err and "drop --budget" in err


def test_stage_commands_read_the_jobs_artifacts(finished, tiny_reference, tmp_path):
    # `ramp allocate` on the job's sensitivity.json allocates as the job's allocation stage did, and `ramp export`
    # of that allocation writes the job's ramp.gguf byte for byte
    settings = json.loads((finished / "job.json").read_text())
    assert main(["allocate", "--model", str(tiny_reference), "--sensitivity", str(finished / "sensitivity.json"),
                 "--budget", settings["budgets"][0], "--formats", ",".join(settings["ladder"]),
                 "--out", str(tmp_path / "allocation.json")]) == 0
    assert Allocation.load(tmp_path / "allocation.json").formats == Allocation.load(finished / "allocation.json").formats
    assert main(["export", "--model", str(tiny_reference), "--allocation", str(finished / "allocation.json"),
                 "--out", str(tmp_path / "ramp.gguf")]) == 0
    assert (tmp_path / "ramp.gguf").read_bytes() == (finished / "ramp.gguf").read_bytes()


def test_a_job_of_many_rows_measures_each_file_once(finished, tiny_reference, tmp_path, capsys):
    # two methods at three budgets: six rows in one table. Uniform fits neither below Q4_0's 6.43 bpw (its row
    # says why, the others go on) and is Q5_0 at both 7 and 7.2 bpw: one GGUF and one measurement for the two.
    folder = tmp_path / "rows"
    command = ["run", "--model", str(tiny_reference), *SETTINGS[2:], "--method", "ilp,uniform",
               "--budget", "5.5bpw,7bpw,7.2bpw", "--out-dir", str(folder)]
    assert main(command) == 0
    printed = capsys.readouterr().out
    rows = json.loads((folder / "rows.json").read_text())
    assert [(row["method"], row["budget"]) for row in rows] == [
        (method, budget) for method in ("ilp", "uniform") for budget in ("5.5bpw", "7bpw", "7.2bpw")]
    assert "below the smallest uniform allocation" in rows[3]["infeasible"] and rows[3]["gguf"] is None
    assert Allocation.load(folder / rows[4]["allocation"]).formats == Allocation.load(folder / rows[5]["allocation"]).formats
    assert rows[4]["gguf"] == rows[5]["gguf"] == "ramp-uniform-7bpw.gguf" and not (folder / "ramp-uniform-7.2bpw.gguf").exists()
    by_name = {row["name"]: row for row in json.loads((folder / "results.json").read_text())}
    assert {"ramp ilp 5.5bpw", "ramp ilp 7bpw", "ramp ilp 7.2bpw", "ramp uniform 7bpw", "ramp uniform 7.2bpw"} <= set(by_name)
    assert by_name["ramp uniform 7bpw"]["kld_mean"] == by_name["ramp uniform 7.2bpw"]["kld_mean"]
    # the one-row job measured ilp at 5.5bpw and the preset already (same reference, formats, windows): not again
    assert "ramp ilp 5.5bpw: measured before" in printed and "Q8_0: measured before" in printed
    assert "ramp uniform 7.2bpw: measured before" in printed and "ramp uniform 7bpw: measured before" not in printed
    single = {row["name"]: row for row in json.loads((finished / "results.json").read_text())}
    assert by_name["ramp ilp 5.5bpw"]["kld_mean"] == single["ramp ilp"]["kld_mean"]
    # stages.json records what each stage cost
    for record in json.loads((folder / "stages.json").read_text()).values():
        assert record["wall_s"] >= 0 and record["cpu_s"] >= 0 and record["peak_rss_mb"] > 10
    assert (folder / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a rerun keeps every stage
    assert main(command) == 0
    assert capsys.readouterr().out.count(": kept (") == 7


def test_run_without_out_dir_writes_its_job_under_a_folder_of_its_own(tiny_reference, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--model", str(tiny_reference), *SETTINGS]) == 0
    folder = tmp_path / "ramp-jobs" / f"{tiny_reference.name.removesuffix('.gguf')}-5.5bpw"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ramp-jobs"]
    assert (folder / "job.json").is_file() and (folder / "ramp.gguf").is_file() and (folder / "results.json").is_file()
