"""Reading a folder written by :func:`jaxformer.data.prepare.prepare`: :class:`TokenShards`.

``TokenShards(folder).split("train")`` is a :class:`TokenView`: the split's ids in corpus
order as one 1-D array-like over the memory-mapped shards, a drop-in for the arrays of
:class:`jaxformer.data.TokenData` (``len``, integer, slice and integer-array indexing, which
is how :func:`jaxformer.data.get_batch` draws its ``[B, T+1]`` windows, and ``np.asarray``).
Only the pages of the rows read are touched, so a host reads only its own rows.
"""
from __future__ import annotations

import functools
import os
import pathlib
from typing import List, Optional

import numpy as np

from jaxformer.errors import DataError
from jaxformer.data.prepare import MANIFEST, file_sha256, read_manifest
from jaxformer.data.tokenizers import load_tokenizer

__all__ = ["TokenShards", "TokenView", "is_prepared"]


def is_prepared(path) -> bool:
    """Whether ``path`` is a folder holding a token ``manifest.json``."""
    p = pathlib.Path(os.fspath(path)).expanduser()
    return p.is_dir() and (p / MANIFEST).is_file()


class TokenView:
    """Ids ``[start, stop)`` of the concatenation of ``maps`` (1-D arrays), read lazily.

    ``view[i]`` is one id, ``view[a:b]`` and ``view[idx]`` (an integer array of any shape)
    new arrays of the shards' dtype; ``np.asarray(view)`` reads the whole range."""

    ndim = 1

    def __init__(self, maps: List[np.ndarray], start: int, stop: int):
        # plain ndarray views of the memmaps: slicing a np.memmap makes a memmap object each time
        self._maps = [m.view(np.ndarray) if isinstance(m, np.memmap) else m for m in maps]
        self._offsets = np.cumsum([0] + [len(m) for m in maps])
        self.start, self.stop = int(start), int(stop)
        self.dtype = maps[0].dtype if maps else np.dtype(np.uint16)

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def shape(self):
        return (len(self),)

    @property
    def size(self) -> int:
        return len(self)

    def __repr__(self) -> str:
        return (f"TokenView({len(self)} tokens [{self.start}, {self.stop}) over {len(self._maps)} shards, "
                f"{self.dtype})")

    def _range(self, a: int, b: int, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Global ids ``[a, b)`` copied into ``out`` (a new array by default)."""
        out = np.empty(b - a, dtype=self.dtype) if out is None else out
        k = int(np.searchsorted(self._offsets, a, side="right")) - 1
        pos = 0
        while a < b:
            lo, hi = int(self._offsets[k]), int(self._offsets[k + 1])
            take = min(b, hi) - a
            out[pos:pos + take] = self._maps[k][a - lo:a - lo + take]
            a, pos, k = a + take, pos + take, k + 1
        return out

    def _rows(self, idx: np.ndarray) -> Optional[np.ndarray]:
        """``idx`` ``[B, W]`` of windows ``start_b + arange(W)`` (what get_batch asks for), read
        as ``B`` contiguous ranges; None for any other index array."""
        if idx.ndim != 2 or idx.shape[1] < 2 or idx.size > (1 << 24):
            return None
        starts = idx[:, 0].astype(np.int64)
        if not np.array_equal(idx, starts[:, None] + np.arange(idx.shape[1])):
            return None
        n = len(self)
        if len(starts) and (starts.min() < 0 or starts.max() + idx.shape[1] > n):
            return None                       # negative or out of range: the general path decides
        W = idx.shape[1]
        g = starts + self.start
        k0 = np.searchsorted(self._offsets, g, side="right") - 1
        k1 = np.searchsorted(self._offsets, g + W - 1, side="right") - 1
        out = np.empty(idx.shape, dtype=self.dtype)
        for b, (a, k, k_end) in enumerate(zip(g.tolist(), k0.tolist(), k1.tolist())):
            if k == k_end:                    # the usual case: the window lies in one shard
                lo = a - int(self._offsets[k])
                out[b] = self._maps[k][lo:lo + W]
            else:
                self._range(a, a + W, out[b])
        return out

    def _gather(self, idx: np.ndarray) -> np.ndarray:
        rows = self._rows(idx)
        if rows is not None:
            return rows
        flat = idx.reshape(-1).astype(np.int64, copy=False)
        n = len(self)
        if flat.size and (flat.min() < -n or flat.max() >= n):
            bad = flat[(flat < -n) | (flat >= n)][0]
            raise IndexError(f"index {int(bad)} is out of bounds for a split of {n} tokens")
        g = np.where(flat < 0, flat + n, flat) + self.start
        shard = np.searchsorted(self._offsets, g, side="right") - 1
        out = np.empty(flat.shape, dtype=self.dtype)
        first, last = (int(shard.min()), int(shard.max())) if flat.size else (0, -1)
        if first == last:                       # the usual case: one shard
            out[:] = self._maps[first][g - self._offsets[first]]
        else:
            for k in range(first, last + 1):
                m = shard == k
                if m.any():
                    out[m] = self._maps[k][g[m] - self._offsets[k]]
        return out.reshape(idx.shape)

    def __getitem__(self, key):
        n = len(self)
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            i = int(key) + n if key < 0 else int(key)
            if not 0 <= i < n:
                raise IndexError(f"index {int(key)} is out of bounds for a split of {n} tokens")
            return self._gather(np.array([i]))[0]
        if isinstance(key, slice):
            a, b, step = key.indices(n)
            if step == 1:
                return self._range(self.start + a, self.start + max(a, b))
            return self._gather(np.arange(a, b, step))
        idx = np.asarray(key)
        if idx.dtype.kind not in "iu":
            raise IndexError(f"a token view is indexed by ints, slices or integer arrays, not {idx.dtype}")
        return self._gather(idx)

    def __array__(self, dtype=None, copy=None):
        a = self[:]
        return a if dtype is None else a.astype(dtype)

    def __iter__(self):
        step = 1 << 20
        for a in range(0, len(self), step):
            yield from self[a:a + step]


class TokenShards:
    """A prepared token folder: ``manifest``, ``tokenizer``, ``split(name)``, ``tokens()``.

    ``verify=True`` checks every shard's size and sha256 against the manifest on opening
    (reading each shard once); a mismatch is a :class:`DataError` naming the shard."""

    def __init__(self, folder, *, verify: bool = True):
        self.folder = pathlib.Path(os.fspath(folder)).expanduser()
        path = self.folder / MANIFEST
        if not path.is_file():
            raise DataError(f"{str(self.folder)!r} is not a prepared token folder (no {MANIFEST}); "
                            "run `jaxformer prepare` first")
        m = read_manifest(path)
        if not m.get("complete"):
            raise DataError(f"the prepare of {str(self.folder)!r} did not finish ({len(m.get('shards', []))} "
                            "shards written); run the same `jaxformer prepare` again to resume it")
        self.manifest = m
        self.dtype = np.dtype(m["dtype"]).newbyteorder("<")
        self._maps = []
        for s in m["shards"]:
            p = self.folder / s["name"]
            want = s["tokens"] * self.dtype.itemsize
            got = p.stat().st_size if p.is_file() else None
            if got != want:
                raise DataError(f"shard {str(p)!r} is {'missing' if got is None else f'{got} bytes'}, "
                                f"{MANIFEST} says {want} bytes; run `jaxformer prepare` again to rebuild it")
            if verify and file_sha256(p) != s["sha256"]:
                raise DataError(f"shard {str(p)!r} does not match its sha256 in {MANIFEST} (corrupted or "
                                "changed); run `jaxformer prepare` again to rebuild it")
            self._maps.append(np.memmap(p, dtype=self.dtype, mode="r", shape=(s["tokens"],)))

    def __len__(self) -> int:
        return int(self.manifest["total_tokens"])

    @property
    def val_fraction(self) -> float:
        return float(self.manifest["val_fraction"])

    @functools.cached_property
    def tokenizer(self):
        return load_tokenizer(self.folder / self.manifest["tokenizer"]["file"])

    def tokens(self) -> TokenView:
        """All ids in corpus order."""
        return TokenView(self._maps, 0, len(self))

    def split(self, name: str) -> TokenView:
        """The ``"train"`` or ``"val"`` ids (as :meth:`jaxformer.data.TokenData.split`)."""
        if name not in ("train", "val"):
            raise DataError(f"split {name!r} is not 'train' or 'val'")
        start, stop = self.manifest["splits"][name]
        return TokenView(self._maps, start, stop)

    @property
    def train(self) -> TokenView:
        return self.split("train")

    @property
    def val(self) -> TokenView:
        return self.split("val")

    def __repr__(self) -> str:
        return (f"TokenShards({str(self.folder)!r}: {len(self)} tokens in {len(self._maps)} shards, "
                f"{self.manifest['tokenizer']['type']} tokenizer)")


def open_tokens(folder, *, verify: bool = True) -> Optional["TokenShards"]:
    """``TokenShards(folder)`` when ``folder`` is prepared, else None."""
    return TokenShards(folder, verify=verify) if is_prepared(folder) else None
