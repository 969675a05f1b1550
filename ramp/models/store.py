"""A model's float32 tensors, made when a stage asks for one instead of all at load time.

A 7B checkpoint is 4.7 GB as Q4_K_M and 28 GB as float32: no machine ramp is meant for holds the second. So a
model read from a GGUF keeps its file's bytes (memory-mapped, quantized as stored) and dequantizes a tensor
when it is indexed; tensors derived from others (an off-grid twin's rescaled weights, a Scale Folding) are
computed the same way, from their sources, on demand. The float32 tensors made recently stay in one
least-recently-used cache shared by every store, bounded in bytes (`RAMP_WEIGHT_CACHE_GB`, default 1.5): a
135M-300M model fits whole and is dequantized once, as before; of a larger one the cache keeps one block's
worth, and each pass dequantizes it tensor by tensor as it reaches them, which is why the stages walk the model
block by block; a tensor bigger than a block (a large vocabulary's embedding and output) is taken in row bands.

F32 tensors of a file are handed out as read-only views of the mapping (no copy, not cached): a twin or a
reference written as F32 streams for free. Every array a store gives out is shared: never modify it in place.
"""
from __future__ import annotations

import itertools
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Callable

import numpy as np

from ramp.errors import RampError

CACHE_ENV = "RAMP_WEIGHT_CACHE_GB"
DEFAULT_CACHE_GB = 1.5
Shape = tuple[int, ...]
BAND_ELEMENTS = 1 << 24  # 64 MB of float32: a band of a tensor too large to keep


def cache_limit_bytes() -> int:
    """The byte budget of the shared float32 cache, from RAMP_WEIGHT_CACHE_GB (0 turns the cache off)."""
    text = os.environ.get(CACHE_ENV, "")
    if not text:
        return int(DEFAULT_CACHE_GB * (1 << 30))
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise RampError(f"{CACHE_ENV}={text!r} is not a size in GB; set it to a number such as 1.5 (0: no cache)")
    return int(value * (1 << 30))


class _SharedCache:
    """Float32 tensors by (store, name), least recently used first out, within `cache_limit_bytes()` in all and
    each store's own limit."""

    def __init__(self) -> None:
        self._entries: OrderedDict[tuple[int, str], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._owned: dict[int, int] = {}
        self._lock = threading.Lock()  # the quantization-error stage reads tensors from two threads

    def get(self, key: tuple[int, str]) -> np.ndarray | None:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
            return found

    def put(self, key: tuple[int, str], array: np.ndarray, owner_limit: int) -> None:
        """Keep `array`, then drop the least recently used entries until all fit the cache and the owner's fit
        `owner_limit`."""
        limit = cache_limit_bytes()
        owner = key[0]
        with self._lock:
            if key in self._entries or array.nbytes > min(limit, owner_limit):
                return
            self._entries[key] = array
            self._bytes += array.nbytes
            self._owned[owner] = self._owned.get(owner, 0) + array.nbytes
            for old in list(self._entries):  # least recently used first
                over_all, over_owner = self._bytes > limit, self._owned[owner] > owner_limit
                if not (over_all or over_owner):
                    break
                if over_all or old[0] == owner:
                    self._remove(old)

    def drop(self, owner: int) -> None:
        with self._lock:
            for key in [key for key in self._entries if key[0] == owner]:
                self._remove(key)

    def _remove(self, key: tuple[int, str]) -> None:
        size = self._entries.pop(key).nbytes
        self._bytes -= size
        self._owned[key[0]] -= size


_CACHE = _SharedCache()
_OWNERS = itertools.count()  # never reused, unlike id(): a dead store's entries can never answer for a new one


class TensorStore(Mapping[str, np.ndarray]):
    """name -> float32 array, each made by `make(name)` when indexed and kept in the shared cache; `shape()` and
    membership need no array. Iteration follows `shapes`' order (the file's)."""

    def __init__(self, shapes: Mapping[str, Shape], make: Callable[[str], np.ndarray],
                 cached: Callable[[str], bool] = lambda name: True,
                 make_rows: Callable[[str, int, int], np.ndarray] | None = None) -> None:
        self._shapes = dict(shapes)
        self._make = make
        self._cached = cached
        self._make_rows = make_rows
        self._owner = next(_OWNERS)
        self._total_bytes = sum(4 * math.prod(shape) for shape in self._shapes.values())
        blocks: dict[str, int] = {}
        for tensor, shape in self._shapes.items():
            if tensor.startswith("blk."):
                block = tensor.split(".")[1]
                blocks[block] = blocks.get(block, 0) + 4 * math.prod(shape)
        self._largest_block = max(blocks.values(), default=0)

    def keep_limit(self) -> int:
        """What the cache keeps of this store: all of it where the model fits the cache, else one block's worth.
        Each pass walks a model larger than the cache in order, where the least recently used tensor is the
        next one needed, so only what a block's work reuses (its weights, for every batch) is worth keeping."""
        limit = cache_limit_bytes()
        return limit if self.fits_cache() else min(limit, max(self._largest_block, 1))

    def fits_cache(self) -> bool:
        return self._total_bytes <= cache_limit_bytes()

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._shapes:
            raise KeyError(name)
        key = (self._owner, name)
        if (found := _CACHE.get(key)) is not None:
            return found
        array = self._make(name)
        if self._cached(name):
            array.setflags(write=False)  # shared with every later reader
            _CACHE.put(key, array, self.keep_limit())
        return array

    def __contains__(self, name: object) -> bool:
        return name in self._shapes

    def __iter__(self) -> Iterator[str]:
        return iter(self._shapes)

    def __len__(self) -> int:
        return len(self._shapes)

    def shape(self, name: str) -> Shape:
        return self._shapes[name]

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows start..stop of a tensor, made alone where the store can (a file's rows are stored one after another),
        so that a tensor larger than the cache (a 7B's 2 GB embedding) is never whole in memory."""
        if (found := _CACHE.get((self._owner, name))) is not None or self._make_rows is None:
            return (found if found is not None else self[name])[start:stop]
        return self._make_rows(name, start, stop)

    def too_large_to_keep(self, name: str) -> bool:
        """Whether the tensor's float32 weights exceed what the cache keeps of this store (`keep_limit`): its users
        should take it in row bands (a large model's embedding and output)."""
        return 4 * math.prod(self._shapes[name]) > self.keep_limit()

    def __del__(self) -> None:
        _CACHE.drop(self._owner)


def tensor_shape(tensors: Mapping[str, np.ndarray], name: str) -> Shape:
    """A tensor's shape without making it where the mapping can tell (a store), else from the array."""
    if isinstance(tensors, TensorStore):
        return tensors.shape(name)
    return tuple(int(d) for d in tensors[name].shape)


def beyond_cache(tensors: Mapping[str, np.ndarray]) -> bool:
    """Whether a streamed model's float32 weights exceed the weight cache (it is read again on every pass)."""
    return isinstance(tensors, TensorStore) and not tensors.fits_cache()


def tensor_rows(tensors: Mapping[str, np.ndarray], name: str, start: int, stop: int) -> np.ndarray:
    """Rows start..stop of a tensor, made alone where the mapping can (a store)."""
    if isinstance(tensors, TensorStore):
        return tensors.rows(name, start, stop)
    return tensors[name][start:stop]


def row_bands(tensors: Mapping[str, np.ndarray], name: str, whole_if_kept: bool = True) -> list[tuple[int, int]]:
    """(start, stop) bands of a tensor's rows of about BAND_ELEMENTS weights; with `whole_if_kept`, the whole tensor
    where the cache keeps it anyway (one product instead of several for a forward)."""
    n_rows = tensor_shape(tensors, name)[0]
    if whole_if_kept and not (isinstance(tensors, TensorStore) and tensors.too_large_to_keep(name)):
        return [(0, n_rows)]
    step = max(1, BAND_ELEMENTS // max(1, math.prod(tensor_shape(tensors, name)[1:])))
    return [(start, min(start + step, n_rows)) for start in range(0, n_rows, step)]


def take_rows(tensors: Mapping[str, np.ndarray], name: str, indices: np.ndarray) -> np.ndarray:
    """The rows `indices` (ascending) of a tensor, read band by band where it is too large to make whole."""
    bands = row_bands(tensors, name)
    if len(bands) == 1:
        return tensors[name][indices]
    return np.concatenate([tensor_rows(tensors, name, start, stop)[indices[(indices >= start) & (indices < stop)] - start]
                           for start, stop in bands])


def derived(base: Mapping[str, np.ndarray], changes: Mapping[str, Callable[[], np.ndarray]]) -> TensorStore:
    """`base` with the named tensors replaced by what their functions return, computed when indexed (each from
    `base`'s tensors, itself streamed): a twin or a fold of a model no bigger in memory than the model's stream."""
    shapes = {name: tensor_shape(base, name) for name in base}

    def make(name: str) -> np.ndarray:
        if name in changes:
            array = np.ascontiguousarray(changes[name](), dtype=np.float32)
            if tuple(array.shape) != shapes[name]:
                raise RampError(f"derived tensor {name} has shape {array.shape}, not its source's {shapes[name]}")
            return array
        return base[name]

    return TensorStore(shapes, make, cached=lambda name: name in changes)  # the rest: the base's own cache
