"""Encoded corpora as flat ``uint16``/``uint32`` memmaps split into train and val, and
deterministic batches: :func:`get_batch` draws ``[B, T+1]`` windows from a generator seeded
by ``(seed, split, step)``, so the data order is a pure function of the step (exact resume)."""
from __future__ import annotations


import hashlib
import json
import os
import pathlib
import queue
import threading
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np

from jaxformer.data.tokenizers import encode_plain
from jaxformer.errors import DataError


# ----------------------------------------------------------------------------- token memmaps
def token_dtype(vocab_size: int):
    """``uint16`` when every id fits, else ``uint32``."""
    return np.uint16 if vocab_size <= 2 ** 16 else np.uint32


@dataclass
class TokenData:
    """Train and val token ids (flat 1-D arrays, usually memmaps)."""

    train: np.ndarray
    val: np.ndarray

    def split(self, name: str) -> np.ndarray:
        if name not in ("train", "val"):
            raise DataError(f"split {name!r} is not 'train' or 'val'")
        return self.train if name == "train" else self.val


def _write_memmap(path: pathlib.Path, ids: np.ndarray) -> np.ndarray:
    # A process-unique temporary name: the hosts of a multi-host job that share the run
    # folder write the same bytes, each renamed atomically into place.
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    mm = np.memmap(tmp, dtype=ids.dtype, mode="w+", shape=ids.shape)
    mm[:] = ids
    mm.flush()
    del mm
    os.replace(tmp, path)
    return np.memmap(path, dtype=ids.dtype, mode="r", shape=ids.shape)


def encode_corpus(text: str, tokenizer, *, val_fraction: float = 0.1,
                  folder: Optional[str | os.PathLike] = None, min_tokens: int = 2) -> TokenData:
    """Encode ``text`` and split it: the first ``1 - val_fraction`` of the tokens train, the
    rest validate. With ``folder`` the ids are stored as ``train.bin``/``val.bin`` memmaps
    (reused when the text and tokenizer are unchanged)."""
    dt = token_dtype(tokenizer.vocab_size)
    key = hashlib.sha256(text.encode("utf-8") + json.dumps(tokenizer.to_dict()).encode()
                         + repr(val_fraction).encode()).hexdigest()[:16]
    if folder is not None:
        folder = pathlib.Path(folder)
        meta = folder / "tokens.json"
        if meta.is_file():
            try:
                m = json.loads(meta.read_text())
                if m.get("key") == key:
                    return TokenData(*(np.memmap(folder / f"{s}.bin", dtype=m["dtype"], mode="r",
                                                 shape=(m[s],)) for s in ("train", "val")))
            except (OSError, ValueError, KeyError):
                pass
    ids = np.asarray(encode_plain(tokenizer, text), dtype=dt)   # no BOS: windows start anywhere
    n_val = int(round(len(ids) * val_fraction))
    train, val = ids[:len(ids) - n_val], ids[len(ids) - n_val:]
    if len(train) < min_tokens or len(val) < min_tokens:
        raise DataError(f"corpus of {len(ids)} tokens is too short: train has {len(train)} and val "
                        f"{len(val)} tokens, each needs at least {min_tokens}")
    if folder is None:
        return TokenData(train, val)
    folder.mkdir(parents=True, exist_ok=True)
    out = TokenData(_write_memmap(folder / "train.bin", train), _write_memmap(folder / "val.bin", val))
    tmp = folder / f"tokens.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"key": key, "dtype": np.dtype(dt).name, "train": len(train), "val": len(val)}))
    os.replace(tmp, folder / "tokens.json")
    return out


# ----------------------------------------------------------------------------- batches
SPLIT_IDS = {"train": 0, "val": 1}


def batch_rng(seed: int, step: int, split: str = "train") -> np.random.Generator:
    """The generator for one batch: a pure function of ``(seed, split, step)``."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), SPLIT_IDS[split], int(step)]))


def get_batch(ids: np.ndarray, batch_size: int, seq_len: int, *, seed: int, step: int,
              split: str = "train", rows=None) -> np.ndarray:
    """``[B, T+1]`` int32 windows of ``ids`` at random offsets drawn from ``(seed, split, step)``.

    Inputs are ``batch[:, :-1]`` and next-token targets ``batch[:, 1:]``. ``rows``: indices
    of the rows to build (``[len(rows), T+1]``), each the same window as in the whole batch;
    the other rows' tokens are never read (a host of a multi-host run builds only its own).
    """
    n = len(ids)
    if n < seq_len + 1:
        raise DataError(f"the {split} split has {n} tokens, fewer than the context "
                        f"model.max_len={seq_len} + 1; use more text or a shorter context")
    starts_B = batch_rng(seed, step, split).integers(0, n - seq_len, size=batch_size)
    if rows is not None:
        starts_B = starts_B[np.asarray(rows, dtype=np.int64)]
    return np.asarray(ids[starts_B[:, None] + np.arange(seq_len + 1)], dtype=np.int32)


def host_rows(batch_size: int, grad_accum: int, process_index: int, process_count: int) -> np.ndarray:
    """The rows of every ``[B, T+1]`` global batch that host ``process_index`` (of
    ``process_count``) feeds: its contiguous ``1/process_count`` of each micro-batch (``B/K``
    consecutive rows), micro-batch by micro-batch. This is the layout of a mesh whose devices
    are ordered process by process (``jax.make_mesh`` on GPUs and CPUs); the train loop reads
    the layout of its own mesh (:func:`jaxformer.training.parallel.process_rows`)."""
    if batch_size % grad_accum or (batch_size // grad_accum) % process_count:
        raise DataError(f"train.batch_size={batch_size} is not divisible into train.grad_accum={grad_accum} "
                        f"micro-batches of {process_count} equal per-host parts")
    if not 0 <= process_index < process_count:
        raise DataError(f"process_index={process_index} is not in [0, {process_count})")
    micro = batch_size // grad_accum
    per = micro // process_count
    return (np.arange(grad_accum)[:, None] * micro + process_index * per + np.arange(per)).ravel()


def host_batch(ids: np.ndarray, batch_size: int, seq_len: int, *, seed: int, step: int,
               process_index: int, process_count: int, grad_accum: int = 1,
               split: str = "train") -> np.ndarray:
    """Host ``process_index``'s rows (:func:`host_rows`) of the global batch of ``(seed,
    step)``, ``[B/process_count, T+1]``, computed without the other hosts' rows:
    ``micro_batches(host_batch(...), K)`` for hosts ``0..n-1``, concatenated along axis 1,
    is ``micro_batches(get_batch(...), K)``."""
    return get_batch(ids, batch_size, seq_len, seed=seed, step=step, split=split,
                     rows=host_rows(batch_size, grad_accum, process_index, process_count))


def sequential_windows(ids: np.ndarray, seq_len: int) -> Sequence[np.ndarray]:
    """Non-overlapping ``[T+1]`` windows covering ``ids`` (for exhaustive evaluation)."""
    n = (len(ids) - 1) // seq_len
    return [np.asarray(ids[i * seq_len:(i + 1) * seq_len + 1], dtype=np.int32) for i in range(n)]


def prefetch(items: Iterable, size: int = 2):
    """Yield ``items`` in order while a background thread produces up to ``size`` ahead.

    The train loop passes batches already put on the device, so building the next batch
    (random windows, host-to-device copy) overlaps the running step and the step never
    waits on Python. An exception raised while producing an item is re-raised here, at
    that item; closing the generator (``break``, an error in the loop) stops the thread.
    """
    if size < 1:
        raise ValueError(f"prefetch size={size!r} must be >= 1")
    q: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()
    done = object()

    def produce():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((True, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((True, done))
        except BaseException as e:  # handed to the consumer
            q.put((False, e))

    thread = threading.Thread(target=produce, name="jaxformer-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
