"""`ramp doctor`: what to quote in a bug report, and what is missing: versions, libllama and llama.cpp's
tools, the embedded models and texts, the cache and data folders, free disk. Every piece is probed on its
own and a missing or broken one is reported, never raised: the command is for machines where something is
wrong."""
from __future__ import annotations

import argparse

# A cache or data folder that cannot be used is one of the problems the report lists, not a reason to refuse it.
REPORTS_STORAGE = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the listing")


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def _libllama() -> str | None:
    """libllama inside the llama_cpp package (lib/), found without loading it."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return None
    found = sorted((Path(spec.origin).parent / "lib").glob("*llama.*"), key=lambda path: len(path.name))
    return str(found[0]) if found else None


def _tree_bytes(root) -> int:
    import os

    total = 0
    for folder, _, names in os.walk(root):
        for name in names:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:  # removed while we walk (another ramp cleaning a temporary file)
                pass
    return total


def _probe(problems: list[str], what: str, probe, fallback=None):
    """probe(), or `fallback` with a problem line: a broken piece (a library that does not load, a folder
    that cannot be created) must not hide the rest of the report."""
    try:
        return probe()
    except Exception as exc:
        problems.append(f"{what} failed: {exc}")
        return fallback


def _texts() -> tuple[list[str], list[str]]:
    """(installed, not installed) text names."""
    from ramp.models.text import TEXTS, installed_texts

    installed = installed_texts()
    return installed, [name for name in TEXTS if name not in installed]


def diagnose() -> dict:
    """Everything `ramp doctor` reports, with `problems`: one line per missing or broken piece and its fix."""
    import os
    import platform
    import shutil
    from dataclasses import asdict

    from ramp.models.embedded import embedded_models
    from ramp.files import cache_dir, data_dir
    from ramp.llama_tools import BUILD_FIX, TOOLS, find_tool, llama_cpp_version

    problems: list[str] = []
    versions = {"ramp": _version("ramp"), "python": platform.python_version()}
    for name, distribution in [("torch", "torch"), ("numpy", "numpy"), ("gguf", "gguf"), ("llama-cpp-python", "llama_cpp_python")]:
        versions[name] = _version(distribution)
        if versions[name] is None:
            problems.append(f"{name} is not installed; run `bash .ci/install`")
    versions["llama.cpp"] = _probe(problems, "reading llama.cpp's version", llama_cpp_version)
    tools = {name: _probe(problems, f"looking for {name}", lambda name=name: find_tool(name)) for name in TOOLS}
    if None in tools.values():
        missing = ", ".join(name for name, path in tools.items() if path is None)
        if os.environ.get("RAMP_LLAMA_BIN"):
            problems.append(f"{missing} not in $RAMP_LLAMA_BIN ({os.environ['RAMP_LLAMA_BIN']}); point it at llama.cpp's bin folder or unset it")
        else:
            problems.append(f"llama.cpp's {missing} not built; {BUILD_FIX}")
    models = _probe(problems, "listing the embedded models", embedded_models, [])
    problems += [f"model {m.name}: {m.note}" for m in models if not m.installed and not m.optional]
    texts, missing_texts = _probe(problems, "listing the texts", _texts, ([], []))
    problems += [f"text {name} is not installed; run `ramp texts install {name}`" for name in missing_texts]
    cache = _probe(problems, "creating the cache folder (set RAMP_CACHE to a writable folder)", cache_dir)
    data = _probe(problems, "creating the data folder (set RAMP_DATA to a writable folder)", data_dir)
    return {
        "versions": versions,
        "libllama": _probe(problems, "looking for libllama", _libllama),
        "llama_tools": {name: None if path is None else str(path) for name, path in tools.items()},
        "models": {m.name: {key: value for key, value in asdict(m).items() if key != "name"} for m in models},
        "texts": texts,
        "cache_dir": None if cache is None else str(cache),
        "cache_bytes": None if cache is None else _tree_bytes(cache),
        "data_dir": None if data is None else str(data),
        "free_disk_bytes": None if cache is None else shutil.disk_usage(cache).free,
        "problems": problems,
    }


def _size(n_bytes: int | None) -> str:
    if n_bytes is None:
        return "-"
    if n_bytes < 1000:
        return f"{n_bytes} B"
    value, unit = next((n_bytes / scale, unit) for scale, unit in [(1e9, "GB"), (1e6, "MB"), (1e3, "KB")] if n_bytes >= scale)
    return f"{value:,.1f} {unit}"


def format_report(report: dict) -> str:
    rows = [(name, version or "not installed") for name, version in report["versions"].items()]
    rows.append(("libllama", report["libllama"] or "not found"))
    rows += [(name, path or "not built") for name, path in report["llama_tools"].items()]
    for name, model in report["models"].items():
        state = model["path"] or ("installed" if model["installed"] else "not installed")
        rows.append((f"model {name}", state + (f" ({model['note']})" if model["note"] and model["path"] is None else "")))
    rows.append(("texts", ", ".join(report["texts"]) or "none installed"))
    rows.append(("cache", f"{report['cache_dir'] or 'unavailable'} ({_size(report['cache_bytes'])})"))
    rows.append(("data", report["data_dir"] or "unavailable"))
    rows.append(("free disk", _size(report["free_disk_bytes"])))
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    lines += [f"problem: {problem}" for problem in report["problems"]] or ["no problems found"]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import json

    report = diagnose()
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return 0
