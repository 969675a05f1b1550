"""Real text for calibration and evaluation, by name, each split into two disjoint halves so no passage is
both calibrated on and scored.

- `austen` (default): Jane Austen's six novels (public domain), from Debian's package `r-cran-janeaustenr`
  (MIT). Split by novel: four novels calibrate, two others evaluate, so a scored sentence never shares a
  book with calibration. Installed once by `ramp texts install austen` (`.ci/install` does it).
- `python-docs`: the Python Language Reference topics in every CPython's `pydoc_data.topics` (PSF License
  2.0), technical prose and code, kept as a second domain for cross-domain checks. Split by a hash of each
  topic's title, so the split does not move when topics are added or removed.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from ramp.errors import RampError

TEXTS = ("austen", "python-docs")
DEFAULT_TEXT = "austen"

# The novels as the R package names them, in publication order within each half.
AUSTEN_CALIBRATION = ("sensesensibility", "mansfieldpark", "emma", "northangerabbey")
AUSTEN_EVALUATION = ("prideprejudice", "persuasion")
AUSTEN_PACKAGE = "r-cran-janeaustenr"


def austen_dir() -> Path:
    from ramp.files import data_dir

    return data_dir() / "texts" / "austen"


def installed_texts() -> list[str]:
    """Names of the texts this machine can use now."""
    austen = all((austen_dir() / f"{novel}.txt").is_file() for novel in AUSTEN_CALIBRATION + AUSTEN_EVALUATION)
    return [name for name in TEXTS if name != "austen" or austen]


def check_text(name: str) -> str:
    """`name` if it is a known, installed text; otherwise one error line saying how to get it."""
    if name not in TEXTS:
        raise RampError(f"unknown text {name!r}; choose one of {', '.join(TEXTS)}")
    if name not in installed_texts():
        raise RampError(f"text {name!r} is not installed; run `ramp texts install {name}` (or `bash .ci/install`)")
    return name


def calibration_text(name: str = DEFAULT_TEXT) -> str:
    """Text that profiling, importance matrices, sensitivity measurement and the RL environment may look at."""
    return _half(check_text(name), evaluation=False)


def evaluation_text(name: str = DEFAULT_TEXT) -> str:
    """Held-out text that only final perplexity/KLD measurements use."""
    return _half(check_text(name), evaluation=True)


def _half(name: str, evaluation: bool) -> str:
    if name == "austen":
        novels = AUSTEN_EVALUATION if evaluation else AUSTEN_CALIBRATION
        return "\n\n".join((austen_dir() / f"{novel}.txt").read_text(encoding="utf-8") for novel in novels)
    from pydoc_data.topics import topics

    return "\n\n".join(body for title, body in sorted(topics.items()) if _is_evaluation_topic(title) == evaluation)


def _is_evaluation_topic(title: str) -> bool:
    return hashlib.sha256(title.encode("utf-8")).digest()[0] % 2 == 1


def install_austen(deb: str | Path | None = None) -> Path:
    """Unpack the six novels from Debian's `r-cran-janeaustenr` (downloaded with `apt-get download` unless
    `deb` is given) into plain UTF-8 files, one per novel, lines as the package keeps them."""
    import shutil
    import subprocess
    import tempfile

    from ramp.files import atomic_output
    from ramp.models.r_lazyload import read_lazyload

    with tempfile.TemporaryDirectory(prefix="ramp-austen-") as scratch:
        work = Path(scratch)
        if deb is None:
            if shutil.which("apt-get") is None:
                raise RampError(f"apt-get is not available to download {AUSTEN_PACKAGE}; download its .deb from "
                                "packages.debian.org and pass it with `ramp texts install austen --deb FILE`")
            done = subprocess.run(["apt-get", "download", AUSTEN_PACKAGE], cwd=work, capture_output=True, text=True)
            debs = sorted(work.glob(f"{AUSTEN_PACKAGE}_*.deb"))
            if done.returncode != 0 or not debs:
                reason = (done.stderr.strip().splitlines() or ["no .deb written"])[-1]
                raise RampError(f"`apt-get download {AUSTEN_PACKAGE}` failed ({reason}); run `apt-get update` first, "
                                "or pass a downloaded .deb with --deb FILE")
            deb = debs[0]
        deb = Path(deb)
        if not deb.is_file():
            raise RampError(f"{deb} does not exist; pass the path of the downloaded {AUSTEN_PACKAGE} .deb")
        unpacked = subprocess.run(["dpkg-deb", "-x", str(deb), str(work / "root")], capture_output=True, text=True)
        if unpacked.returncode != 0:
            raise RampError(f"dpkg-deb cannot unpack {deb} ({unpacked.stderr.strip()[:200]}); re-download it")
        data = next((work / "root").glob("usr/lib/R/site-library/janeaustenr/data"), None)
        if data is None:
            raise RampError(f"{deb} has no janeaustenr data folder; is it the {AUSTEN_PACKAGE} package?")
        novels = read_lazyload(data)
        missing = [n for n in AUSTEN_CALIBRATION + AUSTEN_EVALUATION if not isinstance(novels.get(n), list)]
        if missing:
            raise RampError(f"{deb} lacks the novels {', '.join(missing)}; is it the {AUSTEN_PACKAGE} package?")
        target = austen_dir()
        target.mkdir(parents=True, exist_ok=True)
        for novel in AUSTEN_CALIBRATION + AUSTEN_EVALUATION:
            with atomic_output(target / f"{novel}.txt", "w") as handle:
                handle.write("\n".join(line or "" for line in novels[novel]) + "\n")
    return target
