"""`ramp eval` against `llama-perplexity --kl-divergence` on the same files, windows and threads.

For each model: its F32 reference GGUF and a llama.cpp preset of it (both cached), the same windows of
held-out text, then, timed in this one process, the `ramp eval` command on the preset with an empty
reference-log-prob cache (so its reference pass is counted, as llama-perplexity's base pass is) and llama.cpp's
referee (`ramp.evaluate.referee.referee`: the base pass on the reference, then the `--kl-divergence` pass on the
preset). Both use every core. Prints the wall times, their ratio and the two mean KLDs (which must agree).

    python -m benchmarks.eval_speed [--models smollm2-135m gemma3-270m] [--preset Q4_K_M] [--windows 8]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from ramp.machine import usable_cores


def measure(model_name: str, preset: str, n_windows: int, n_ctx: int, text_name: str) -> dict:
    from ramp.cli import main as ramp_main
    from ramp.evaluate.llama_eval import make_windows
    from ramp.evaluate.presets import preset_path
    from ramp.evaluate.referee import referee
    from ramp.export.gguf_writer import cached_reference
    from ramp.models import load_model
    from ramp.models.text import evaluation_text

    reference = cached_reference(load_model(model_name))
    quantized = preset_path(reference, preset)
    text = evaluation_text(text_name)
    windows = make_windows(reference, text, n_ctx, n_windows)

    start = time.perf_counter()
    theirs = referee(reference, [quantized], text, windows)
    llama_seconds = time.perf_counter() - start

    cache = os.environ.get("RAMP_CACHE")
    with tempfile.TemporaryDirectory(prefix="eval-speed-", dir=cache) as scratch:
        os.environ["RAMP_CACHE"] = scratch  # an empty reference-log-prob cache: ramp's reference pass is timed
        json_path = Path(scratch) / "results.json"
        try:
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                code = ramp_main(["eval", str(quantized), "--reference", str(reference), "--ctx", str(n_ctx),
                                  "--max-windows", str(n_windows), "--text", text_name, "--json", str(json_path)])
            ramp_seconds = time.perf_counter() - start
        finally:
            if cache is None:
                os.environ.pop("RAMP_CACHE")
            else:
                os.environ["RAMP_CACHE"] = cache
        if code != 0:
            raise SystemExit(f"ramp eval failed on {quantized}")
        ours = json.loads(json_path.read_text())[-1]
    return {"model": model_name, "preset": preset, "windows": n_windows, "ctx": n_ctx, "threads": usable_cores(),
            "ramp_eval_s": ramp_seconds, "llama_perplexity_s": llama_seconds, "ratio": ramp_seconds / llama_seconds,
            "kld_ramp": ours["kld_mean"], "kld_llama": theirs[1].kld_mean}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--preset", default="Q4_K_M")
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--text", default="austen")
    args = parser.parse_args(argv)
    print(f"{'model':<14} {'preset':<7} {'windows':>7} {'threads':>7} {'ramp eval s':>11} {'llama-ppl s':>11} "
          f"{'ratio':>6} {'KLD ramp':>9} {'KLD llama':>9}")
    for name in args.models:
        row = measure(name, args.preset, args.windows, args.ctx, args.text)
        print(f"{row['model']:<14} {row['preset']:<7} {row['windows']:>7} {row['threads']:>7} {row['ramp_eval_s']:>11.1f} "
              f"{row['llama_perplexity_s']:>11.1f} {row['ratio']:>6.2f} {row['kld_ramp']:>9.5f} {row['kld_llama']:>9.5f}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
