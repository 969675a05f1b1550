"""`ramp texts`: the real texts ramp calibrates and evaluates on, whether each is installed, and
`ramp texts install NAME` to fetch one."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=("list", "install"), default="list",
                        help="list the texts (default) or install one")
    parser.add_argument("name", nargs="?", help="text to install (austen)")
    parser.add_argument("--deb", metavar="FILE", help="an already downloaded r-cran-janeaustenr .deb (default: apt-get download)")


def paths(args: argparse.Namespace) -> tuple[dict, dict]:
    """Inputs, checked by `ramp.cli` before the command runs (a FIFO as --deb would block)."""
    return {"--deb": args.deb}, {}


def run(args: argparse.Namespace) -> int:
    from ramp.errors import RampError
    from ramp.models.text import TEXTS, install_austen, installed_texts

    if args.action == "install":
        if args.name != "austen":
            raise RampError(f"cannot install {args.name!r}: `austen` is the text to install; python-docs ships with Python")
        print(f"installed austen into {install_austen(args.deb)}")
        return 0
    installed = installed_texts()
    for name in TEXTS:
        print(f"{name:<12} {'installed' if name in installed else 'missing: ramp texts install ' + name}")
    return 0
