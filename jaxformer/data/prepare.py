"""Streaming corpus preparation: any size of text into sharded token files plus a manifest.

:func:`prepare` reads the sources of :mod:`jaxformer.data.corpus` in pieces, tokenizes them (a
BPE in ``workers`` processes, see :mod:`jaxformer.data.encode_pool`) and writes ``shard_00000.bin``, ... (flat little-endian ``uint16`` /
``uint32`` ids, ``shard_tokens`` each, the last one shorter), ``tokenizer.json`` and
``manifest.json`` into ``out``. :class:`jaxformer.data.shards.TokenShards` reads them back.

- Same tokens as the whole-corpus path. Documents are encoded without a BOS, as
  :func:`jaxformer.data.encode_corpus` encodes a corpus. ``separator="auto"``: when every
  source is a text file, their text is joined by a blank line, as
  :func:`jaxformer.data.load_corpus` joins a folder (so a file or folder gives exactly the
  tokens of ``jaxformer train --data PATH``); when there are records (JSONL, Parquet, Arrow),
  every document is encoded on its own and the tokenizer's end-of-text token goes between two
  (a blank line for tokenizers without one). ``"eos"`` / ``"blank_line"`` choose. The pieces a document is cut
  into (:func:`jaxformer.data.corpus.cut_pieces`) give the tokens of the whole text for char,
  byte and byte-level BPE tokenizers (GPT-2's, the ones trained here); for a tokenizer that
  looks across lines or marks the start of a text (SentencePiece-style), the manifest says
  ``"exact_cuts": false`` and a document longer than a piece is encoded piece by piece.
- Splits as :func:`encode_corpus` splits: the last ``round(n * val_fraction)`` of the ``n``
  tokens validate, the rest train (a view may start or end inside a shard). Changing
  ``val_fraction`` later rewrites only the manifest.
- Memory is bounded by ``chunk_chars`` (text handed to a worker at a time, at most two per
  worker in flight), not by the corpus. The tokenizer ``char`` takes its alphabet from a
  first pass over the data; ``bpe`` is trained on every k-th 100,000-character piece of the
  corpus, k chosen so that about ``bpe_sample_chars`` characters are read (the whole corpus,
  and then the tokenizer of ``build_tokenizer("bpe", load_corpus(...))``, when it is smaller).
- Restartable: each finished shard is renamed into place and recorded in the manifest with
  its sha256 and where the next shard starts (work item, token offset); the chunking is a
  pure function of the text, so a run started again with the same arguments checks the
  recorded shards and goes on after the last good one. A shard whose checksum does not
  match is rebuilt (from it on), never used. The manifest's ``fingerprint`` covers the input
  files (names, sizes, mtimes) and every setting that changes the tokens; another prepare
  into the same folder is refused.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Callable, Iterable, Iterator, Optional, Sequence, Tuple, Union

import numpy as np

from jaxformer.data.batches import token_dtype
from jaxformer.data.corpus import RECORD_KINDS, Source, cut_pieces, iter_documents, joined, list_sources
from jaxformer.data.encode_pool import Encoder, WorkerError, WorkerPool
from jaxformer.errors import DataError
from jaxformer.data.fit_tokenizer import (TOKENIZER_FILE, _PlainEncoder, build_from_corpus, encoder_spec,
                                          line_cuts_exact, resolve_tokenizer)
from jaxformer.data.tokenizers import CharTokenizer, load_tokenizer, save_tokenizer

__all__ = ["prepare", "resolve_tokenizer", "MANIFEST", "TOKENIZER_FILE", "shard_name", "file_sha256",
           "DEFAULT_SHARD_TOKENS", "DEFAULT_CHUNK_CHARS"]

FORMAT, VERSION = "jaxformer.tokens", 1
MANIFEST = "manifest.json"
DEFAULT_SHARD_TOKENS = 1 << 26          # 128 MiB of uint16 ids per shard
DEFAULT_CHUNK_CHARS = 1 << 21           # characters per work item
PIECE_CHARS = 1 << 16                   # characters per encode call
DEFAULT_BPE_SAMPLE_CHARS = 100_000_000
SEPARATORS = ("auto", "eos", "blank_line")


def shard_name(k: int) -> str:
    return f"shard_{k:05d}.bin"


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _write_json(path: pathlib.Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False))
    os.replace(tmp, path)


def _dtype(vocab_size: int) -> np.dtype:
    return np.dtype(token_dtype(vocab_size)).newbyteorder("<")


# ----------------------------------------------------------------------------- encoding
def _explain(item, spec: dict, message: str):
    """Raise the error the tokenizer itself gives for ``item`` (a char outside the
    alphabet), else a DataError with the worker's ``message``."""
    if spec["kind"] == "char":
        for text, _ in item:
            CharTokenizer(spec["chars"]).encode(text)
    raise DataError(f"tokenizing failed: {message}")


def encode_items(items: Iterable, spec: dict, workers: int, skip: int = 0,
                 tokenizer=None) -> Iterator[Tuple[int, np.ndarray]]:
    """``(index, ids)`` for each work item from index ``skip`` on, in order; items before
    ``skip`` are read but not encoded. ``workers > 1``: a :class:`WorkerPool` for a BPE (the
    byte and char encoders run at disk speed in this process, faster than sending the text
    through a pipe)."""
    todo = ((i, item) for i, item in enumerate(items) if i >= skip)
    if spec["kind"] == "other":
        enc = _PlainEncoder(tokenizer, np.dtype(spec["dtype"]), spec["eos"])
        for i, item in todo:
            yield i, enc(item)
        return
    if workers == 1 or spec["kind"] in ("byte", "char"):   # vectorized: faster than the pipes
        enc = Encoder(spec)
        for i, item in todo:
            try:
                ids = enc(item)
            except ValueError as e:
                _explain(item, spec, str(e))
            yield i, ids
        return
    pool, ok = WorkerPool(spec, workers), False
    try:
        for i, _, ids in pool.map(todo):
            yield i, ids
        ok = True
    except WorkerError as e:
        _explain(getattr(e, "item", ()), spec, str(e))
    finally:
        pool.close(kill=not ok)


# ----------------------------------------------------------------------------- work items
def _tagged_pieces(sources, text_field, separator, piece_chars, line_cuts, progress):
    """``(piece, eos_before)`` over the corpus (see the module docstring)."""
    docs = iter_documents(sources, text_field, progress)
    if separator == "blank_line":
        for piece in cut_pieces(joined(docs), piece_chars, line_cuts):
            yield piece, False
        return
    first = True
    for blocks in docs:
        started = False
        for piece in cut_pieces(blocks, piece_chars, line_cuts):
            yield piece, not (started or first)
            started = True
        first = first and not started


def work_items(sources, text_field, separator, chunk_chars, line_cuts, progress=None):
    """Lists of ``(piece, eos_before)`` of about ``chunk_chars`` characters each, in order."""
    item, n = [], 0
    for piece, sep in _tagged_pieces(sources, text_field, separator, min(PIECE_CHARS, chunk_chars),
                                     line_cuts, progress):
        item.append((piece, sep))
        n += len(piece)
        if n >= chunk_chars:
            yield item
            item, n = [], 0
    if item:
        yield item


# ----------------------------------------------------------------------------- prepare
def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise DataError(f"{name}={value!r} must be an int >= {low}")
    return int(value)


def _fingerprint(sources: Sequence[Source], settings: dict, tokenizer) -> str:
    files = [[s.name, s.kind, s.size()] + ([s.path.stat().st_mtime_ns] if s.path is not None else
                                           [hashlib.sha256(s.text.encode()).hexdigest()]) for s in sources]
    tok = tokenizer if isinstance(tokenizer, str) else json.dumps(tokenizer.to_dict(), sort_keys=True)
    blob = json.dumps({"files": files, "settings": settings, "tokenizer": tok, "version": VERSION})
    return hashlib.sha256(blob.encode()).hexdigest()


def read_manifest(path: pathlib.Path, unreadable: str = "{path} cannot be read: {error}") -> dict:
    """The JSON manifest at ``path``, checked to be a jaxformer token manifest; a
    :class:`DataError` (``unreadable`` formatted with ``path`` and ``error``) when it cannot be read."""
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(unreadable.format(path=repr(str(path)), error=e)) from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise DataError(f"{str(path)!r} is not a jaxformer token manifest")
    return m


def _read_manifest(out: pathlib.Path) -> Optional[dict]:
    path = out / MANIFEST
    if not path.is_file():
        return None
    return read_manifest(path, "{path} cannot be read ({error}); delete the folder to prepare it again")


def _good_shards(out: pathlib.Path, shards: list, log) -> list:
    """The recorded shards up to the first whose size or sha256 does not match."""
    good = []
    for s in shards:
        path = out / s["name"]
        if not path.is_file() or file_sha256(path) != s["sha256"]:
            log(f"shard {str(path)!r} is missing or does not match its sha256 in {MANIFEST}: rebuilding "
                f"from it ({len(good)} of {len(shards)} shards kept)")
            break
        good.append(s)
    return good


def _splits(total: int, val_fraction: float) -> dict:
    n_val = int(round(total * val_fraction))
    n_train = total - n_val
    if n_train < 2 or n_val < 2:
        raise DataError(f"corpus of {total} tokens is too short: train has {n_train} and val {n_val} "
                        "tokens, each needs at least 2")
    return {"train": [0, n_train], "val": [n_train, total]}


def _resolve_separator(separator: str, sources: Sequence[Source], has_eos: bool) -> str:
    if separator == "auto":
        records = any(s.kind in RECORD_KINDS for s in sources)
        return "eos" if records and has_eos else "blank_line"
    if separator == "eos" and not has_eos:
        raise DataError("separator='eos' needs a tokenizer with an end-of-text token; use 'blank_line'")
    return separator


def _settings(tokenizer, vocab_size, val_fraction, shard_tokens, text_field, chunk_chars, separator,
              bpe_sample_chars) -> dict:
    """The checked arguments of :func:`prepare` as its manifest's ``settings`` (``vocab_size``
    1024 by default for a BPE trained here, None for any other tokenizer)."""
    shard_tokens = _check_int("shard_tokens", shard_tokens, 1)
    chunk_chars = _check_int("chunk_chars", chunk_chars, 1)
    bpe_sample_chars = _check_int("bpe_sample_chars", bpe_sample_chars, 1)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) \
            or not 0.0 < val_fraction <= 0.5:
        raise DataError(f"val_fraction={val_fraction!r} must be a number in (0, 0.5]")
    if separator not in SEPARATORS:
        raise DataError(f"separator={separator!r} is not one of {', '.join(map(repr, SEPARATORS))}")
    if not isinstance(text_field, str) or not text_field:
        raise DataError(f"text_field={text_field!r} must be a non-empty string")
    if tokenizer == "bpe":
        vocab_size = _check_int("vocab_size", 1024 if vocab_size is None else vocab_size, 258)
    elif vocab_size is not None:
        raise DataError(f"vocab_size={vocab_size!r} applies to tokenizer='bpe' only, not {tokenizer!r}")
    return {"chunk_chars": chunk_chars, "piece_chars": min(PIECE_CHARS, chunk_chars),
            "shard_tokens": shard_tokens, "separator": separator, "text_field": text_field,
            "tokenizer": tokenizer if isinstance(tokenizer, str) else "object", "vocab_size": vocab_size,
            "bpe_sample_chars": bpe_sample_chars if tokenizer == "bpe" else None}


def _earlier_attempt(out: pathlib.Path, fingerprint: str) -> Optional[dict]:
    """The manifest of an earlier call into ``out`` with the same data and settings (None when
    there is none); DataError when ``out`` holds tokens of other data or settings."""
    old = _read_manifest(out)
    if old is not None and old.get("fingerprint") != fingerprint:
        raise DataError(f"{str(out)!r} already holds tokens prepared from other data or settings "
                        f"({MANIFEST}); choose another output folder or delete it")
    return old


def _open_tokenizer(out: pathlib.Path, old: Optional[dict], tokenizer, sources: Sequence[Source],
                    settings: dict, step, log) -> tuple:
    """``(tokenizer, old, shards)``: the tokenizer of ``old``'s (an earlier attempt's manifest)
    with its good shards to continue from, or a new tokenizer written to ``out`` (given, or
    built from the corpus: ``tokenizer`` is then its name) with no shards and no ``old``."""
    tok_path = out / TOKENIZER_FILE
    if old is not None and tok_path.is_file() and file_sha256(tok_path) == old["tokenizer"]["sha256"]:
        return load_tokenizer(tok_path), old, _good_shards(out, old["shards"], log)
    if isinstance(tokenizer, str):
        tokenizer = build_from_corpus(tokenizer, sources, settings["text_field"],
                                      _resolve_separator(settings["separator"], sources, True),
                                      settings["vocab_size"], settings["bpe_sample_chars"], step)
    save_tokenizer(tokenizer, tok_path)
    return tokenizer, None, []


def _source_entry(data, sources: Sequence[Source], separator: str, text_field: str) -> dict:
    """The manifest's ``source``: the inputs as given, how many files and bytes, how documents join."""
    return {"data": [os.fspath(d) for d in (data if isinstance(data, (list, tuple)) else [data])],
            "files": len(sources), "bytes": sum(s.size() for s in sources), "separator": separator,
            "text_field": text_field}


def prepare(data, tokenizer: Union[str, object], out, *, vocab_size: Optional[int] = None, workers: int = 1,
            val_fraction: float = 0.1, shard_tokens: int = DEFAULT_SHARD_TOKENS, text_field: str = "text",
            chunk_chars: int = DEFAULT_CHUNK_CHARS, separator: str = "auto",
            bpe_sample_chars: int = DEFAULT_BPE_SAMPLE_CHARS,
            progress: Optional[Callable[[str, int], None]] = None,
            on_shard: Optional[Callable[[dict], None]] = None,
            log: Optional[Callable[[str], None]] = None) -> dict:
    """Tokenize ``data`` (see :func:`jaxformer.data.corpus.list_sources`) into shards in folder
    ``out`` and return the manifest (also ``out/manifest.json``).

    ``tokenizer``: ``"char"``, ``"byte"``, ``"bpe"`` (trained, ``vocab_size`` default 1024),
    ``"gpt2"``, ``"hf:PATH"`` or a tokenizer object. ``progress(stage, n_bytes)`` is called as
    input bytes are read (stages ``"alphabet"``, ``"bpe sample"``, ``"tokenize"``);
    ``on_shard(entry)`` after each shard is committed (an exception there stops the run,
    which the next call resumes); ``log(line)`` gets notices (a shard rebuilt). See the
    module docstring for the guarantees."""
    workers = _check_int("workers", workers, 1)
    settings = _settings(tokenizer, vocab_size, val_fraction, shard_tokens, text_field, chunk_chars,
                         separator, bpe_sample_chars)
    log = log or (lambda line: None)
    step = (lambda stage: (lambda n: progress(stage, n))) if progress is not None else (lambda stage: None)

    sources = list_sources(data)
    fixed = resolve_tokenizer(tokenizer)
    # a resolved tokenizer counts by its content, not by how it was named (hf:./x vs hf:/abs/x)
    fingerprint = _fingerprint(sources, {**settings, "tokenizer": "resolved" if fixed is not None else tokenizer},
                               fixed if fixed is not None else tokenizer)
    out = pathlib.Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    tok_path = out / TOKENIZER_FILE
    tok, old, shards = _open_tokenizer(out, _earlier_attempt(out, fingerprint),
                                       fixed if fixed is not None else tokenizer, sources, settings, step, log)
    sep = _resolve_separator(separator, sources, tok.eos_id is not None)
    dtype = _dtype(tok.vocab_size)
    spec = encoder_spec(tok, dtype, tok.eos_id)
    manifest = {
        "format": FORMAT, "version": VERSION, "complete": False, "fingerprint": fingerprint,
        "dtype": dtype.name, "byteorder": "little",
        "tokenizer": {"spec": settings["tokenizer"], "type": tok.to_dict()["type"], "vocab_size": tok.vocab_size,
                      "eos_id": tok.eos_id, "file": TOKENIZER_FILE, "sha256": file_sha256(tok_path)},
        "source": _source_entry(data, sources, sep, text_field),
        "settings": settings, "exact_cuts": line_cuts_exact(spec, tok),
        "shards": shards, "total_tokens": None, "val_fraction": val_fraction, "splits": None,
    }
    if old is not None and old.get("complete") and len(shards) == len(old["shards"]):
        manifest.update(complete=True, total_tokens=old["total_tokens"],
                        splits=_splits(old["total_tokens"], val_fraction))
        if manifest != old:
            _write_json(out / MANIFEST, manifest)
        return manifest
    _write_json(out / MANIFEST, manifest)
    items = work_items(sources, text_field, sep, settings["chunk_chars"], spec["kind"] not in ("byte", "char"),
                       step("tokenize"))
    total = _write_shards(out, manifest, items, spec, workers, on_shard, tok)
    manifest.update(total_tokens=total, splits=_splits(total, val_fraction), complete=True)
    _write_json(out / MANIFEST, manifest)
    _remove_stray_shards(out, manifest)
    return manifest


def _remove_stray_shards(out: pathlib.Path, manifest: dict) -> None:
    """Delete the shards of an earlier, longer attempt (not in ``manifest``)."""
    for stray in out.glob("shard_*.bin*"):
        if stray.name not in {s["name"] for s in manifest["shards"]}:
            stray.unlink()


def _write_shards(out: pathlib.Path, manifest: dict, items, spec, workers, on_shard, tokenizer) -> int:
    """Encode ``items`` into shards after those already in ``manifest`` (updated as each is
    committed); the total number of tokens."""
    shards, size = manifest["shards"], manifest["settings"]["shard_tokens"]
    dtype = np.dtype(spec["dtype"])
    item0, offset0 = shards[-1]["end"] if shards else (0, 0)
    done = sum(s["tokens"] for s in shards)
    state = {"fh": None, "sha": None, "n": 0}

    def open_next():
        state.update(fh=open(out / (shard_name(len(shards)) + ".tmp"), "wb"), sha=hashlib.sha256(), n=0)

    def commit(end):
        name = shard_name(len(shards))
        state["fh"].close()
        os.replace(out / (name + ".tmp"), out / name)
        entry = {"name": name, "tokens": state["n"], "sha256": state["sha"].hexdigest(), "end": end}
        shards.append(entry)
        _write_json(out / MANIFEST, manifest)
        if on_shard is not None:
            on_shard(entry)

    open_next()
    last = item0
    encoded = encode_items(items, spec, workers, skip=item0, tokenizer=tokenizer)
    try:
        for i, ids in encoded:
            last = i + 1
            off = offset0 if i == item0 else 0
            if off > len(ids):
                raise DataError(f"work item {i} gave {len(ids)} tokens, fewer than the {off} recorded in "
                                f"{MANIFEST}: the input changed; delete {str(out)!r} and prepare again")
            while off < len(ids):
                take = min(size - state["n"], len(ids) - off)
                view = memoryview(np.ascontiguousarray(ids[off:off + take], dtype=dtype))
                state["fh"].write(view)
                state["sha"].update(view)
                off += take
                state["n"] += take
                done += take
                if state["n"] == size:
                    commit([i, off])
                    open_next()
        if state["n"]:
            commit([last, 0])
    finally:
        encoded.close()   # stops the worker processes now, not when garbage-collected
        fh = state["fh"]
        if fh is not None and not fh.closed:
            fh.close()
            tmp = pathlib.Path(fh.name)
            if tmp.exists():
                tmp.unlink()
    if done == 0:
        raise DataError("the data holds no text to tokenize")
    return done
