"""Read character vectors out of an R package's lazy-load database (`data/Rdata.rdx` + `Rdata.rdb`) without R.

`Rdata.rdx` is a gzip-compressed R serialization of a list whose `variables` element maps each dataset name
to an (offset, length) pair into `Rdata.rdb`; each `.rdb` entry is a 4-byte big-endian length followed by
zlib data that inflates to another serialization. Only what R packages of text need is decoded: lists,
integer and logical vectors, character vectors, symbols, pairlists (attributes) and references to earlier
symbols. Anything else is refused by name, so a package that changed format fails loudly instead of
producing garbage.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

from ramp.errors import RampError

_NILVALUE, _SYMSXP, _LISTSXP, _CHARSXP, _LGLSXP, _INTSXP, _STRSXP, _VECSXP, _REFSXP = 254, 1, 2, 9, 10, 13, 16, 19, 255
_NA_INTEGER = -(2**31)


class _Reader:
    """R's XDR serialization format (versions 2 and 3), read front to back."""

    def __init__(self, data: bytes, origin: str) -> None:
        if data[:2] != b"X\n":
            raise RampError(f"{origin} is not an R XDR serialization; re-download the package")
        self.data, self.origin, self.pos = data, origin, 2
        version = self._int()
        self.pos += 8  # R version that wrote it, oldest R that reads it
        if version == 3:
            encoding_length = self._int()
            self.pos += encoding_length  # the writer's native encoding name
        elif version != 2:
            raise RampError(f"{origin} uses R serialization version {version}; ramp reads versions 2 and 3")
        self.symbols: list[str] = []

    def _int(self) -> int:
        (value,) = struct.unpack_from(">i", self.data, self.pos)
        self.pos += 4
        return value

    def _string(self) -> str | None:
        self._int()  # CHARSXP flags: the encoding bits do not matter for UTF-8 and ASCII text
        length = self._int()
        if length == -1:
            return None  # NA_character_
        text = self.data[self.pos : self.pos + length].decode("utf-8", errors="replace")
        self.pos += length
        return text

    def read(self) -> object:
        flags = self._int()
        kind, has_attributes, has_tag = flags & 0xFF, bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if kind == _NILVALUE:
            return None
        if kind == _REFSXP:
            return self.symbols[(flags >> 8) - 1]
        if kind == _SYMSXP:
            name = self._string()
            self.symbols.append(name)
            return name
        if kind == _LISTSXP:  # a pairlist: attributes, as {tag: value}
            pairs = {}
            while kind == _LISTSXP:
                if has_attributes:
                    self.read()
                tag = self.read() if has_tag else None
                pairs[tag] = self.read()
                flags = self._int()
                kind, has_attributes, has_tag = flags & 0xFF, bool(flags & (1 << 9)), bool(flags & (1 << 10))
            if kind != _NILVALUE:
                raise RampError(f"{self.origin}: a pairlist ends in R type {kind}; the file is not plain data")
            return pairs
        length = self._int()
        if kind in (_INTSXP, _LGLSXP):
            value: object = [None if v == _NA_INTEGER else v for v in struct.unpack_from(f">{length}i", self.data, self.pos)]
            self.pos += 4 * length
        elif kind == _STRSXP:
            value = [self._string() for _ in range(length)]
        elif kind == _VECSXP:
            value = [self.read() for _ in range(length)]
        else:
            raise RampError(f"{self.origin} holds R type {kind}, which ramp's reader does not decode; use the `rdata` package")
        if has_attributes:
            names = self.read().get("names")
            if names is not None and isinstance(value, list):
                value = dict(zip(names, value))
        return value


def read_lazyload(folder: str | Path) -> dict[str, object]:
    """Every dataset of the lazy-load database in `folder` (holding Rdata.rdx and Rdata.rdb), by name."""
    folder = Path(folder)
    index_path, data_path = folder / "Rdata.rdx", folder / "Rdata.rdb"
    for path in (index_path, data_path):
        if not path.is_file():
            raise RampError(f"{path} is missing; extract the R package's data folder again")
    index = _Reader(gzip.decompress(index_path.read_bytes()), str(index_path)).read()
    if not isinstance(index, dict) or not isinstance(index.get("variables"), dict):
        raise RampError(f"{index_path} has no `variables` table; it is not an R lazy-load index")
    blob = data_path.read_bytes()
    datasets = {}
    for name, (offset, length) in index["variables"].items():
        entry = blob[offset : offset + length]
        datasets[name] = _Reader(zlib.decompress(entry[4:]), f"{data_path}:{name}").read()
    return datasets
