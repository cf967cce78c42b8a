"""Encoding work items for :mod:`jaxformer.data.prepare`, in this process or in worker processes.

A work item is a list of ``(text, eos_before)``; :class:`Encoder` turns it into one id array:
each text as :func:`jaxformer.data.tokenizers.encode_plain` encodes it (vectorized for the byte
and char tokenizers, ``tokenizers``' batch encoding for a BPE, without BOS), the end-of-text
id before the texts marked so. It is built from a small JSON-safe spec
(:func:`jaxformer.data.prepare.encoder_spec`).

:class:`WorkerPool` runs this file as a script in ``n`` worker processes (``python -c`` that
runs it by path), so a worker imports only NumPy and ``tokenizers``, not the ``jaxformer``
package and JAX (about 40 MB and a fraction of a second each, where a ``multiprocessing``
worker would import JAX through the package). Items go to the workers round-robin, at most two
per worker in flight, over pipes (a length-prefixed JSON item; raw ids or an error message
back); results come back in order. ``TOKENIZERS_PARALLELISM=false`` in the workers: the
processes are the parallelism.

Keep this module's top-level imports to the standard library and NumPy: workers run it
outside the package.
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
from collections import deque
from typing import Iterable, Iterator, List, Sequence, Tuple

import numpy as np

_LEN = struct.Struct("<Q")


class Encoder:
    """Encodes work items like the tokenizer described by ``spec`` (``kind`` byte | char |
    bpe, ``dtype``, ``eos``)."""

    def __init__(self, spec: dict):
        self.kind, self.dtype, self.eos = spec["kind"], np.dtype(spec["dtype"]), spec["eos"]
        if self.kind == "char":
            self.chars = spec["chars"]
            cps = np.array([ord(c) for c in self.chars], dtype=np.int64)
            self.table = np.full(int(cps.max()) + 1, -1, dtype=np.int64)
            self.table[cps] = np.arange(len(cps))
        elif self.kind == "bpe":
            from tokenizers import Tokenizer
            self.tk = Tokenizer.from_str(spec["tokenizer"])
        elif self.kind != "byte":
            raise ValueError(f"encoder kind {self.kind!r} is not byte, char or bpe")

    def _ids(self, texts: List[str]) -> List[np.ndarray]:
        if self.kind == "byte":
            return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts]
        if self.kind == "char":
            out = []
            for t in texts:
                cps = np.frombuffer(t.encode("utf-32-le"), dtype="<u4")
                ids = self.table[np.minimum(cps, len(self.table) - 1)]
                if len(cps) and (cps.max() >= len(self.table) or ids.min() < 0):
                    bad = t[int(np.argmax((cps >= len(self.table)) | (ids < 0)))]
                    raise ValueError(f"character {bad!r} is not in the char vocabulary")
                out.append(ids)
            return out
        return [np.asarray(e.ids, dtype=np.int64) for e in self.tk.encode_batch(texts, add_special_tokens=False)]

    def __call__(self, item: Sequence[Tuple[str, bool]]) -> np.ndarray:
        parts = []
        for (_, sep), ids in zip(item, self._ids([t for t, _ in item])):
            if sep:
                parts.append(np.array([self.eos], dtype=self.dtype))
            parts.append(ids.astype(self.dtype, copy=False))
        return np.concatenate(parts) if parts else np.empty(0, dtype=self.dtype)


# ----------------------------------------------------------------------------- pipes
def _write_frame(fh, payload: bytes) -> None:
    fh.write(_LEN.pack(len(payload)))
    fh.write(payload)
    fh.flush()


def _read_frame(fh) -> bytes:
    head = fh.read(_LEN.size)
    if len(head) < _LEN.size:
        raise EOFError
    n = _LEN.unpack(head)[0]
    data = fh.read(n)
    if len(data) < n:
        raise EOFError
    return data


def _pack_item(item) -> bytes:
    return json.dumps(item, ensure_ascii=False).encode("utf-8", "surrogatepass")


def worker_main() -> None:
    """A worker: the spec, then items until end of input; answers ``b"\\0" + ids`` or
    ``b"\\1" + message``."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C reaches the whole group: the parent stops us
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    rd, wr = sys.stdin.buffer, sys.stdout.buffer
    encoder = Encoder(json.loads(_read_frame(rd)))
    while True:
        try:
            item = json.loads(_read_frame(rd).decode("utf-8", "surrogatepass"))
        except EOFError:
            return
        try:
            _write_frame(wr, b"\0" + encoder(item).tobytes())
        except Exception as e:  # reported to the parent, which re-encodes the item to raise it
            _write_frame(wr, b"\1" + f"{type(e).__name__}: {e}".encode("utf-8", "replace"))


_BOOT = ("import sys, runpy; sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "
         "runpy.run_path(sys.argv[1], run_name='__jaxformer_encode_worker__')['worker_main']()")


class WorkerError(RuntimeError):
    """A worker could not encode an item (``message``) or exited."""


class WorkerPool:
    """``n`` worker processes encoding items in order (see the module docstring)."""

    def __init__(self, spec: dict, n: int):
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
        self.procs, self.queues, self.threads = [], [], []
        try:
            for _ in range(n):
                p = subprocess.Popen([sys.executable, "-c", _BOOT, os.path.abspath(__file__)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
                q: deque = deque()
                cv = threading.Condition()
                t = threading.Thread(target=self._feed, args=(p, q, cv), daemon=True,
                                     name="jaxformer-encode-feed")
                self.procs.append(p)
                self.queues.append((q, cv))
                self.threads.append(t)
                t.start()
                self._put(len(self.procs) - 1, json.dumps(spec).encode())
        except BaseException:
            self.close(kill=True)
            raise
        self.dtype = np.dtype(spec["dtype"])

    @staticmethod
    def _feed(proc, q: deque, cv: threading.Condition) -> None:
        while True:
            with cv:
                while not q:
                    cv.wait()
                payload = q.popleft()
            if payload is None:
                break
            try:
                _write_frame(proc.stdin, payload)
            except (BrokenPipeError, OSError, ValueError):
                return    # the worker died; the reader reports it
        try:
            proc.stdin.close()
        except OSError:
            pass

    def _put(self, w: int, payload) -> None:
        q, cv = self.queues[w]
        with cv:
            q.append(payload)
            cv.notify()

    def _result(self, w: int) -> np.ndarray:
        p = self.procs[w]
        try:
            data = _read_frame(p.stdout)
        except EOFError:
            raise WorkerError(f"a tokenizer worker process exited unexpectedly (exit code {p.wait()})") from None
        if data[:1] == b"\1":
            raise WorkerError(data[1:].decode("utf-8", "replace"))
        return np.frombuffer(data, dtype=self.dtype, offset=1)

    def map(self, items: Iterable[Tuple[int, list]]) -> Iterator[Tuple[int, list, np.ndarray]]:
        """``(index, item, ids)`` for ``(index, item)`` pairs, in order."""
        n = len(self.procs)
        pending: deque = deque()
        for k, (i, item) in enumerate(items):
            if len(pending) == 2 * n:
                yield self._next(pending)
            self._put(k % n, _pack_item(item))
            pending.append((i, k % n, item))
        while pending:
            yield self._next(pending)

    def _next(self, pending: deque):
        j, w, item = pending.popleft()
        try:
            return j, item, self._result(w)
        except WorkerError as e:
            e.item = item
            raise

    def close(self, kill: bool = False) -> None:
        for w in range(len(self.queues)):
            self._put(w, None)
        for p in self.procs:
            if kill:
                p.kill()
        for p, t in zip(self.procs, self.threads):
            t.join(timeout=5)
            try:
                p.wait(timeout=None if not kill else 5)
            except subprocess.TimeoutExpired:
                p.kill()
            for fh in (p.stdout, p.stdin):
                try:
                    fh.close()
                except OSError:
                    pass
