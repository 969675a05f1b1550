"""Kill `ramp run --out-dir JOB` with SIGKILL inside its sensitivity sweep and again inside its evaluation, resume
it with the same command, and compare its results.json with a run never interrupted (issue 13's check on a real
model; tests/test_job.py makes the same check on the tiny model).

    python -m benchmarks.resume                           # SmolLM2-135M, ramp run's defaults
    python -m benchmarks.resume --model gemma3-270m --sweep-seconds 120

Each job gets its own empty cache, so the interrupted sweep really measures when it is killed and nothing either
job computes comes from the other or from an earlier ramp (llama-quantize names the importance matrix by its
content, so the two jobs' presets are the same bytes). Prints each phase's wall time and exits 1 when the results
differ.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def ramp_run(folder: Path, model: str, cache: Path, options: list[str], kill_at: str | None = None, after: float = 0.0) -> int:
    """`ramp run` into `folder`; with `kill_at`, SIGKILL it `after` seconds past the first line starting with it.
    Returns the exit status (-9 when killed)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAMP_CACHE": str(cache)}
    process = subprocess.Popen([sys.executable, "-m", "ramp.cli", "run", "--model", model, "--out-dir", str(folder), *options],
                               stdout=subprocess.PIPE, text=True, env=env)
    started = time.monotonic()
    try:
        for line in process.stdout:
            print(f"  {time.monotonic() - started:6.0f} s | {line.rstrip()}", flush=True)
            if kill_at and line.startswith(kill_at):
                time.sleep(after)
                if process.poll() is not None:
                    raise SystemExit(f"ramp run ended within {after:g} s of {kill_at!r}: give a shorter wait")
                process.send_signal(signal.SIGKILL)
                print(f"  {time.monotonic() - started:6.0f} s | killed (SIGKILL) {after:g} s into {kill_at!r}", flush=True)
                break
    finally:
        process.wait()
        process.stdout.close()
    return process.returncode


def results(folder: Path) -> list[dict]:
    """results.json without where each file lies (the two jobs differ in folder and cache)."""
    return [{key: value for key, value in row.items() if key != "path"} for row in json.loads((folder / "results.json").read_text())]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sweep-seconds", type=float, default=60.0, help="how long into the sweep the first kill comes")
    parser.add_argument("--eval-seconds", type=float, default=5.0, help="how long into the evaluation the second kill comes")
    parser.add_argument("--work", default=None, help="folder for both jobs and their caches (default: a temporary one)")
    parser.add_argument("run_options", nargs=argparse.REMAINDER,
                        help="after --: options for both `ramp run`s (e.g. -- --formats Q4_0,Q8_0 --max-windows 1)")
    args = parser.parse_args(argv)
    options = args.run_options[1:] if args.run_options[:1] == ["--"] else args.run_options

    work = Path(args.work or tempfile.mkdtemp(prefix="ramp-resume-"))
    interrupted, uninterrupted = work / "interrupted", work / "uninterrupted"
    cache, own_cache = work / "cache-interrupted", work / "cache-uninterrupted"
    phases = [("killed in the sweep", interrupted, cache, "[4/7] sensitivity", args.sweep_seconds),
              ("killed in the evaluation", interrupted, cache, "[7/7] results", args.eval_seconds),
              ("resumed to the end", interrupted, cache, None, 0.0),
              ("never interrupted", uninterrupted, own_cache, None, 0.0)]
    for label, folder, phase_cache, kill_at, after in phases:
        print(f"{label}:", flush=True)
        started = time.monotonic()
        code = ramp_run(folder, args.model, phase_cache, options, kill_at, after)
        print(f"{label}: exit {code}, {time.monotonic() - started:.0f} s", flush=True)
        if code != (-signal.SIGKILL if kill_at else 0):
            return 1
    same = results(interrupted) == results(uninterrupted)
    print(json.dumps(results(interrupted), indent=1))
    print("results.json: " + ("identical to the uninterrupted run" if same else "DIFFERENT from the uninterrupted run"))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
