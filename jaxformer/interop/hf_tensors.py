"""Tensor files of a Hugging Face folder, read one tensor at a time: :class:`TensorSource`.

A folder's weights are ``model.safetensors``, shards listed in ``model.safetensors.index.json``,
or ``pytorch_model.bin`` (read with ``torch.load(weights_only=True)``, never plain pickle).
:func:`open_tensors` lists every tensor's name, shape and dtype from the file headers without
reading any data; :meth:`TensorSource.read` then reads one tensor (or a range of its rows)
into a fresh NumPy array in the file's own dtype (``bfloat16`` through ``ml_dtypes``).

The safetensors reader parses the format itself (an 8-byte header length, a JSON header,
then raw little-endian bytes) and reads with ``readinto`` instead of mapping the file: a
memory-mapped file's touched pages count towards the process's resident memory until it is
unmapped, which would double the peak of a streaming load. :func:`write_safetensors` writes
tensors one at a time in the same format (``safetensors`` and ``transformers`` read it).
"""
from __future__ import annotations

import json
import os
import pathlib
import struct
from typing import Callable, Dict, Iterable, Optional, Tuple

import numpy as np

from jaxformer.errors import CheckpointError

__all__ = ["TensorSource", "open_tensors", "write_safetensors", "SAFETENSORS", "SAFETENSORS_INDEX",
           "TORCH_BIN"]

SAFETENSORS, SAFETENSORS_INDEX, TORCH_BIN = "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"


def _dtypes() -> Dict[str, np.dtype]:
    import ml_dtypes
    table = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
             "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
             "BOOL": np.bool_, "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2}
    return {k: np.dtype(v) for k, v in table.items()}


class TensorSource:
    """Read-only access to the tensors of one checkpoint, by name.

    ``shapes`` maps every name to its shape and ``dtypes`` to its NumPy dtype (from the
    headers alone); :meth:`read` returns one tensor as a new NumPy array.
    """

    def __init__(self, shapes: Dict[str, Tuple[int, ...]], dtypes: Dict[str, np.dtype],
                 reader: Callable[[str, Optional[slice]], np.ndarray], where: str):
        self.shapes, self.dtypes, self._reader, self.where = shapes, dtypes, reader, where

    def names(self) -> Iterable[str]:
        return self.shapes.keys()

    def read(self, name: str, rows: Optional[slice] = None) -> np.ndarray:
        """Tensor ``name`` (optionally only ``rows``, a slice of its first axis)."""
        return self._reader(name, rows)

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------- safetensors
def _safetensors_header(path: pathlib.Path):
    """``(entries, data_start)``: name -> (dtype, shape, begin, end) relative to data_start."""
    table = _dtypes()
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) != 8:
                raise ValueError("shorter than 8 bytes")
            n = struct.unpack("<Q", raw)[0]
            if n > min(size - 8, 100 * 2**20):
                raise ValueError(f"header length {n} exceeds the file")
            header = json.loads(fh.read(n).decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{str(path)!r} is not a readable safetensors file: {e}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{str(path)!r} is not a readable safetensors file: header is not an object")
    header.pop("__metadata__", None)
    data_start, data_size = 8 + n, size - 8 - n
    entries = {}
    for name, info in header.items():
        try:
            dtype = table[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{str(path)!r}: tensor {name!r} has an unreadable header entry "
                                  f"{info!r} (dtypes allowed: {', '.join(table)})") from None
        if not (0 <= begin <= end <= data_size and end - begin == int(np.prod(shape)) * dtype.itemsize):
            raise CheckpointError(f"{str(path)!r}: tensor {name!r} has data_offsets {[begin, end]} that do "
                                  f"not fit its shape {shape} and dtype {info['dtype']}")
        entries[name] = (dtype, shape, begin, end)
    return entries, data_start


def _read_entry(path: pathlib.Path, entry, data_start: int, name: str, rows: Optional[slice]) -> np.ndarray:
    dtype, shape, begin, end = entry
    if rows is not None:
        start, stop, step = rows.indices(shape[0] if shape else 1)
        if step != 1 or not shape:
            raise ValueError("rows must be a contiguous slice of a tensor with at least one axis")
        row_bytes = int(np.prod(shape[1:])) * dtype.itemsize
        begin, end, shape = begin + start * row_bytes, begin + stop * row_bytes, (max(stop - start, 0),) + shape[1:]
    out = np.empty(shape, dtype)
    try:
        with open(path, "rb", buffering=0) as fh:
            fh.seek(data_start + begin)
            view, got = memoryview(out.reshape(-1).view(np.uint8)), 0
            while got < end - begin:
                n = fh.readinto(view[got:])
                if not n:
                    raise OSError("unexpected end of file")
                got += n
    except OSError as e:
        raise CheckpointError(f"{str(path)!r}: tensor {name!r} cannot be read: {e}") from None
    return out


def _safetensors_source(files) -> TensorSource:
    shapes, dtypes, where = {}, {}, {}
    for path in files:
        entries, data_start = _safetensors_header(path)
        for name, entry in entries.items():
            if name in where:
                raise CheckpointError(f"tensor {name!r} appears in both {where[name][0].name!r} and {path.name!r}")
            shapes[name], dtypes[name] = entry[1], entry[0]
            where[name] = (path, entry, data_start)

    def read(name, rows=None):
        path, entry, data_start = where[name]
        return _read_entry(path, entry, data_start, name, rows)

    return TensorSource(shapes, dtypes, read, str(files[0].parent))


def _shards(folder: pathlib.Path):
    index = folder / SAFETENSORS_INDEX
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{str(index)!r} is not a valid index: {e}") from None
    missing = [s for s in shards if not (folder / pathlib.Path(s).name).is_file()]
    if missing:
        raise CheckpointError(f"{str(index)!r} lists shard(s) that are not in the folder: {', '.join(missing)}")
    return [folder / pathlib.Path(s).name for s in shards]


# ----------------------------------------------------------------------------- pytorch_model.bin
def _torch_source(path: pathlib.Path) -> TensorSource:
    try:
        import torch
    except ImportError:
        raise CheckpointError(f"{str(path)!r} needs PyTorch to read (pip install -e \".[hf]\"), "
                              "or convert it to model.safetensors") from None
    try:
        try:   # mapped: tensors are read when converted, one at a time
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:   # files from before torch 1.6's zip format cannot be mapped
            if "mmap" not in str(e):
                raise
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for anything but plain tensors
        raise CheckpointError(f"{str(path)!r} cannot be loaded with weights_only=True: "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{str(path)!r} does not hold a state dict of tensors")
    import ml_dtypes

    def to_numpy(t):
        t = t.detach().contiguous()
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
        return t.numpy().copy()

    dtypes = {k: (np.dtype(ml_dtypes.bfloat16) if v.dtype == torch.bfloat16 else
                  np.dtype(str(v.dtype).removeprefix("torch."))) for k, v in state.items()}
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    return TensorSource(shapes, dtypes, lambda name, rows=None: to_numpy(state[name] if rows is None else
                                                                        state[name][rows]), str(path))


def open_tensors(folder: str | os.PathLike) -> TensorSource:
    """The tensors of a HF folder: ``model.safetensors``, else the shards of
    ``model.safetensors.index.json``, else ``pytorch_model.bin`` (weights only)."""
    folder = pathlib.Path(folder)
    if (folder / SAFETENSORS).is_file():
        return _safetensors_source([folder / SAFETENSORS])
    if (folder / SAFETENSORS_INDEX).is_file():
        return _safetensors_source(_shards(folder))
    if (folder / TORCH_BIN).is_file():
        return _torch_source(folder / TORCH_BIN)
    raise CheckpointError(f"{str(folder)!r} holds no weights (expected {SAFETENSORS}, "
                          f"{SAFETENSORS_INDEX} or {TORCH_BIN})")


# ----------------------------------------------------------------------------- writing
def write_safetensors(path: str | os.PathLike, specs: Dict[str, Tuple[Tuple[int, ...], np.dtype]],
                      tensors: Iterable[Tuple[str, np.ndarray]], metadata: Optional[dict] = None) -> None:
    """Write a safetensors file tensor by tensor.

    ``specs``: name -> (shape, dtype) of every tensor, in file order (the header is written
    first); ``tensors`` yields ``(name, array)`` in any order, each array cast to its dtype.
    Only one tensor is held at a time, so a model is exported without a second copy.
    """
    inverse = {v: k for k, v in _dtypes().items()}
    header, offset, order = {}, 0, {}
    for name, (shape, dtype) in specs.items():
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        header[name] = {"dtype": inverse[np.dtype(dtype)], "shape": list(shape),
                        "data_offsets": [offset, offset + size]}
        order[name] = offset
        offset += size
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    written = set()
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        start = fh.tell()
        fh.truncate(start + offset)
        for name, array in tensors:
            shape, dtype = specs[name]
            a = np.ascontiguousarray(np.asarray(array).astype(dtype, copy=False))
            if a.shape != tuple(shape):
                raise ValueError(f"tensor {name!r} has shape {a.shape}, expected {tuple(shape)}")
            fh.seek(start + order[name])
            fh.write(memoryview(a.reshape(-1).view(np.uint8)))
            written.add(name)
    missing = set(specs) - written
    if missing:
        tmp.unlink()
        raise ValueError(f"tensors never written: {', '.join(sorted(missing))}")
    os.replace(tmp, path)
