"""Corpus sources read in bounded pieces (the reading half of :mod:`jaxformer.data.prepare`).

- Sources (:func:`list_sources`): a file, a folder (its text, JSONL, Parquet and Arrow files,
  recursively, in the order :func:`jaxformer.data.load_corpus` sorts a folder), a glob
  pattern, a list of those, or ``"pydoc"`` / ``"shakespeare"``. A file's kind is its suffix:
  ``.jsonl`` / ``.ndjson`` (also ``.gz``, and ``.json`` for a file named on its own),
  ``.parquet``, ``.arrow`` / ``.feather``, anything else is UTF-8 text (``.gz`` is
  decompressed); a folder takes text files only with a text suffix (``.txt``, ``.md``,
  ``.rst``, ``.text``, optionally ``.gz``), and no ``.json`` (a dataset folder's metadata).
- Documents (:func:`iter_documents`): a text file is one document, read in blocks with the
  universal newlines of ``Path.read_text``; every record of a JSONL / Parquet / Arrow file is
  one (its ``text_field``, a string; null and empty records are skipped).
- Pieces (:func:`cut_pieces`): a document's text cut into pieces of about ``piece_chars``
  characters. ``line_cuts=False`` cuts exactly every ``piece_chars`` characters (char and
  byte tokenizers, for which any cut is exact); ``line_cuts=True`` cuts only right after a
  newline that has a non-whitespace character on each side, where a byte-level BPE's
  pre-tokenizer (GPT-2's regex) always splits: encoding the pieces one by one gives the
  tokens of the whole text. A run of ``HARD_FACTOR * piece_chars`` characters without such a
  place is cut there anyway. Cuts depend on the text only, never on read sizes, so a
  restarted pass yields the same pieces.
"""
from __future__ import annotations

import codecs
import glob
import gzip
import json
import os
import pathlib
from typing import Callable, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Union

from jaxformer.data.texts import TEXT_SUFFIXES, pydoc_text, shakespeare_file, shakespeare_text
from jaxformer.errors import DataError

#: A piece is cut at most this many times ``piece_chars`` characters long.
HARD_FACTOR = 4
#: Bytes read from a text file at a time.
BLOCK_BYTES = 1 << 20
RECORD_KINDS = ("jsonl", "parquet", "arrow")
Progress = Optional[Callable[[int], None]]


class Source(NamedTuple):
    """One input: a file of ``kind`` text | jsonl | parquet | arrow, or in-memory ``text``."""
    path: Optional[pathlib.Path]
    kind: str
    text: Optional[str] = None

    @property
    def name(self) -> str:
        return str(self.path) if self.path is not None else "<memory>"

    def size(self) -> int:
        """Bytes on disk (compressed size for .gz / Parquet), the text's length in memory."""
        return self.path.stat().st_size if self.path is not None else len(self.text)


def file_kind(p: pathlib.Path, named: bool = True) -> str:
    """``text``, ``jsonl``, ``parquet`` or ``arrow`` by suffix; a ``.json`` file named on its
    own (``named``) is JSON lines, as ``datasets``' ``to_json`` writes them."""
    name = p.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith((".jsonl", ".ndjson")) or (named and name.endswith(".json")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".arrow", ".feather")):
        return "arrow"
    return "text"


def _in_folder(p: pathlib.Path) -> bool:
    name = p.name.lower()
    inner = pathlib.Path(name[:-3] if name.endswith(".gz") else name)
    return file_kind(p, named=False) != "text" or inner.suffix in TEXT_SUFFIXES


def list_sources(data: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]) -> List[Source]:
    """The inputs named by ``data`` in reading order (see the module docstring)."""
    if isinstance(data, (list, tuple)):
        if not data:
            raise DataError("data=[] names no input; pass a file, a folder or a glob pattern")
        return [s for d in data for s in list_sources(d)]
    name = os.fspath(data)
    if name == "pydoc":
        return [Source(None, "text", pydoc_text())]
    if name == "shakespeare":
        shakespeare_text()   # makes sure the local copy exists (downloads once, as train does)
        return [Source(shakespeare_file(), "text")]
    p = pathlib.Path(name).expanduser()
    if any(c in name for c in "*?[") and not p.exists():
        found = sorted(pathlib.Path(f) for f in glob.glob(str(p), recursive=True))
        out = []
        for f in found:
            out += list_sources(f) if f.is_dir() else [Source(f, file_kind(f))] if f.is_file() else []
        if not out:
            raise DataError(f"data={name!r}: the glob pattern matches no file")
        return out
    if p.is_file():
        return [Source(p, file_kind(p))]
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and _in_folder(f))
        if not files:
            raise DataError(f"data={name!r} is a folder without text, JSONL, Parquet or Arrow files")
        return [Source(f, file_kind(f, named=False)) for f in files]
    raise DataError(f"data={name!r} is not a file, a folder, a glob pattern, 'pydoc' or 'shakespeare'")


# ----------------------------------------------------------------------------- documents
def _open_binary(path: pathlib.Path):
    try:
        return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")
    except OSError as e:
        raise DataError(f"data file {str(path)!r} cannot be read: {e.strerror or e}") from None


def text_blocks(path: pathlib.Path, progress: Progress = None, block_bytes: Optional[int] = None) -> Iterator[str]:
    """The text of a UTF-8 file in blocks of ``block_bytes`` (default :data:`BLOCK_BYTES`), newlines
    translated as ``Path.read_text`` does (``\\r\\n`` and ``\\r`` become ``\\n``)."""
    block_bytes = block_bytes or BLOCK_BYTES
    decoder = codecs.getincrementaldecoder("utf-8")()
    consumed, carry = 0, ""
    with _open_binary(path) as fh:
        while True:
            try:
                raw = fh.read(block_bytes)
            except (OSError, EOFError) as e:
                raise DataError(f"data file {str(path)!r} cannot be read: {e}") from None
            final = not raw
            held = len(decoder.getstate()[0])
            try:
                s = decoder.decode(raw, final)
            except UnicodeDecodeError as e:
                raise DataError(f"data file {str(path)!r} is not UTF-8 text ({e.reason} at byte "
                                f"{consumed - held + e.start})") from None
            consumed += len(raw)
            s, carry = carry + s, ""
            if not final and s.endswith("\r"):   # may be the first half of \r\n
                s, carry = s[:-1], "\r"
            if "\r" in s:
                s = s.replace("\r\n", "\n").replace("\r", "\n")
            if s:
                yield s
            if progress is not None and raw:
                progress(len(raw))
            if final:
                return


def _record_text(value, where: str, text_field: str) -> Optional[str]:
    if value is None or isinstance(value, str):
        return value
    raise DataError(f"{where}: field {text_field!r} is a {type(value).__name__}, not a string")


def jsonl_records(path: pathlib.Path, text_field: str, progress: Progress = None) -> Iterator[Optional[str]]:
    """The ``text_field`` of each JSON line of ``path`` (blank lines are skipped)."""
    with _open_binary(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if progress is not None:
                progress(len(line))
            if not line.strip():
                continue
            where = f"data file {str(path)!r} line {lineno}"
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise DataError(f"{where} is not JSON ({getattr(e, 'msg', e)})") from None
            if not isinstance(obj, dict) or text_field not in obj:
                fields = ", ".join(map(repr, obj)) if isinstance(obj, dict) else f"a {type(obj).__name__}"
                raise DataError(f"{where} has no {text_field!r} field (it has {fields or 'none'}); "
                                "set the text field")
            yield _record_text(obj[text_field], where, text_field)


def _pyarrow(what: str):
    try:
        import pyarrow
        import pyarrow.ipc  # noqa: F401
        import pyarrow.parquet  # noqa: F401
        return pyarrow
    except ImportError:
        raise DataError(f"reading {what} needs pyarrow: pip install pyarrow") from None


def _column_texts(batches, names, path, text_field, progress, size, n_rows) -> Iterator[Optional[str]]:
    if text_field not in names:
        raise DataError(f"data file {str(path)!r} has no column {text_field!r} (columns: "
                        f"{', '.join(map(repr, names)) or 'none'}); set the text field")
    import pyarrow as pa
    done = 0
    for batch in batches:
        col = batch.column(batch.schema.get_field_index(text_field))
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            raise DataError(f"data file {str(path)!r} column {text_field!r} holds {col.type}, not strings")
        yield from col.to_pylist()
        if progress is not None and n_rows:
            step = size * (done + len(batch)) // n_rows - size * done // n_rows
            progress(step)
        done += len(batch)


def parquet_records(path: pathlib.Path, text_field: str, progress: Progress = None,
                    batch_rows: int = 1024) -> Iterator[Optional[str]]:
    """The ``text_field`` column of a Parquet file, row group by row group."""
    pa = _pyarrow(f"{str(path)!r}")
    try:
        pf = pa.parquet.ParquetFile(str(path))
    except Exception as e:   # pyarrow raises ArrowInvalid, OSError, ...
        raise DataError(f"data file {str(path)!r} cannot be read as Parquet: {e}") from None
    names = pf.schema_arrow.names
    batches = pf.iter_batches(batch_size=batch_rows, columns=[text_field]) if text_field in names else ()
    yield from _column_texts(batches, names, path, text_field, progress, path.stat().st_size,
                             pf.metadata.num_rows)


def arrow_records(path: pathlib.Path, text_field: str, progress: Progress = None) -> Iterator[Optional[str]]:
    """The ``text_field`` column of an Arrow IPC file (file or stream format, memory-mapped)."""
    pa = _pyarrow(f"{str(path)!r}")
    try:
        source = pa.memory_map(str(path))
        try:
            reader = pa.ipc.open_file(source)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            n_rows = sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
        except pa.ArrowInvalid:
            source.seek(0)
            reader = pa.ipc.open_stream(source)
            batches, n_rows = iter(reader), 0
        names = reader.schema.names
    except Exception as e:
        raise DataError(f"data file {str(path)!r} cannot be read as Arrow: {e}") from None
    yield from _column_texts(batches, names, path, text_field, progress, path.stat().st_size, n_rows)


def iter_documents(sources: Sequence[Source], text_field: str = "text",
                   progress: Progress = None) -> Iterator[Iterator[str]]:
    """Each document of ``sources`` as an iterator over its text in blocks (consume one
    before asking for the next). Null and empty records are skipped; an empty text file is an
    empty document (as in :func:`jaxformer.data.load_corpus`)."""
    for src in sources:
        if src.text is not None:
            if progress is not None:
                progress(len(src.text))
            yield iter((src.text,))
        elif src.kind == "text":
            yield text_blocks(src.path, progress)
        else:
            read = {"jsonl": jsonl_records, "parquet": parquet_records, "arrow": arrow_records}[src.kind]
            for text in read(src.path, text_field, progress):
                if text:
                    yield iter((text,))


def joined(documents: Iterable[Iterator[str]], separator: str = "\n\n") -> Iterator[str]:
    """The blocks of all documents with ``separator`` between two documents (as
    :func:`jaxformer.data.load_corpus` joins the files of a folder)."""
    for k, blocks in enumerate(documents):
        if k:
            yield separator
        yield from blocks


# ----------------------------------------------------------------------------- pieces
def _safe(buf: str, i: int) -> bool:
    """Whether a cut right after the newline ``buf[i]`` is exact for a byte-level BPE."""
    return not buf[i - 1].isspace() and not buf[i + 1].isspace()


def _find_cut(buf: str, pos: int, piece: int, line_cuts: bool, final: bool) -> Optional[int]:
    """Where the piece starting at ``buf[pos]`` ends, or None when more text is needed."""
    avail = len(buf) - pos
    if final and avail <= piece:
        return len(buf)
    if not line_cuts:
        return pos + piece if avail >= piece else None
    if avail < piece + 1 and not final:
        return None
    i = buf.rfind("\n", pos + 1, pos + piece)       # backward: a cut at most piece long
    while i > pos:
        if _safe(buf, i):
            return i + 1
        i = buf.rfind("\n", pos + 1, i)
    hard = HARD_FACTOR * piece
    start = pos + piece
    while True:                                      # forward: the first cut after that
        i = buf.find("\n", start, pos + hard)
        if i < 0:
            break
        if i + 1 >= len(buf):
            if final:
                return len(buf)
            return None
        if _safe(buf, i):
            return i + 1
        start = i + 1
    if avail < hard + 1 and not final:
        return None
    return pos + min(hard, avail)


def cut_pieces(blocks: Iterable[str], piece_chars: int, line_cuts: bool) -> Iterator[str]:
    """The text of ``blocks`` cut into pieces (see the module docstring); a pure function of
    the text, whatever the block sizes."""
    it = iter(blocks)
    buf, pos, pending, n_pending = "", 0, [], 0
    need, done = piece_chars + 1, False
    while True:
        while not done and len(buf) - pos + n_pending < need:
            block = next(it, None)
            if block is None:
                done = True
            elif block:
                pending.append(block)
                n_pending += len(block)
        if pending:
            buf, pos = buf[pos:] + "".join(pending), 0
            pending, n_pending = [], 0
        if pos >= len(buf):
            return
        cut = _find_cut(buf, pos, piece_chars, line_cuts, done)
        if cut is None:
            need = len(buf) - pos + piece_chars
            continue
        yield buf[pos:cut]
        pos, need = cut, piece_chars + 1
