"""The layout shows the pipeline: every module belongs to one stage of the flow, no import runs from an earlier
stage into a later one, the import graph has no cycle, and each package says in its first sentence what it
holds. Imports are read from the source (inside functions and under TYPE_CHECKING too: they are dependencies
all the same)."""
from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The flow, earliest first: a module may import from its own stage and the ones before it.
FLOW = (
    ("foundation", ("ramp", "ramp.errors", "ramp.files", "ramp.cache_entries", "ramp.llama_tools", "ramp.machine")),
    ("models", ("ramp.models",)),
    ("kernels", ("ramp.kernels",)),
    ("measure", ("ramp.measure",)),
    ("allocate", ("ramp.allocate",)),
    ("agent", ("ramp.agent", "ramp.envs")),
    ("export", ("ramp.export",)),
    ("evaluate", ("ramp.evaluate",)),
    ("job", ("ramp.job",)),
    ("command line", ("ramp.cli", "ramp.command_paths", "ramp.commands")),
)


def modules() -> dict[str, Path]:
    """Every module of the installed packages (pyproject's package-dir), by dotted name."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {}
    for package in config["packages"]:
        folder = ROOT / config["package-dir"].get(package, package.replace(".", "/"))
        for path in folder.glob("*.py"):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules `path` imports: `from P import name` is P.name when that is a module, else P."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in known:
            found.update(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                         for alias in node.names)
    return found


def stage(module: str) -> int:
    matches = [(len(prefix), index) for index, (_, prefixes) in enumerate(FLOW) for prefix in prefixes
               if module == prefix or (prefix != "ramp" and module.startswith(prefix + "."))]
    assert matches, f"{module} belongs to no stage of the flow: add it to FLOW"
    return max(matches)[1]


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) - {name} for name, path in known.items()}


def test_no_import_runs_back_up_the_flow():
    backwards = [f"{module} ({FLOW[stage(module)][0]}) imports {target} ({FLOW[stage(target)][0]})"
                 for module, targets in graph().items() for target in targets if stage(target) > stage(module)]
    assert backwards == []


def test_the_import_graph_has_no_cycle():
    edges = graph()
    done: set[str] = set()

    def cycle_from(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        for target in sorted(edges[module]):
            if found := cycle_from(target, path + [module]):
                return found
        done.add(module)
        return None

    cycles = [found for module in sorted(edges) if (found := cycle_from(module, []))]
    assert cycles == []


def test_every_package_opens_with_what_it_holds():
    for path in modules().values():
        if path.name == "__init__.py":
            docstring = ast.get_docstring(ast.parse(path.read_text()))
            assert docstring and docstring.split(".")[0].strip(), f"{path} has no opening sentence"
