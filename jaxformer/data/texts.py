"""Raw text corpora: a file, a folder of text files, ``"pydoc"`` (the Python reference
documentation shipped with CPython) or ``"shakespeare"`` (Tiny Shakespeare, from a local
path or downloaded once into a cache folder)."""
from __future__ import annotations


import os
import pathlib
import urllib.request


from jaxformer.errors import DataError

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")


# ----------------------------------------------------------------------------- corpora
def cache_dir() -> pathlib.Path:
    """``$JAXFORMER_CACHE`` or ``~/.cache/jaxformer``."""
    return pathlib.Path(os.environ.get("JAXFORMER_CACHE", pathlib.Path.home() / ".cache" / "jaxformer"))


def pydoc_text() -> str:
    """The Python reference documentation shipped inside CPython (``pydoc_data.topics``)."""
    from pydoc_data.topics import topics
    return "\n\n".join(topics[k].strip() for k in sorted(topics)) + "\n"


#: Environment variable naming a local copy of Tiny Shakespeare (read instead of the cache).
SHAKESPEARE_ENV = "JAXFORMER_SHAKESPEARE"


def shakespeare_file() -> pathlib.Path:
    """``$JAXFORMER_SHAKESPEARE`` when set (it must then be a file), else the cache's copy."""
    env = os.environ.get(SHAKESPEARE_ENV)
    if env:
        path = pathlib.Path(env).expanduser()
        if not path.is_file():
            raise DataError(f"{SHAKESPEARE_ENV}={env!r} is not a file; point it at a copy of "
                            f"tinyshakespeare.txt or unset it")
        return path
    return cache_dir() / "tinyshakespeare.txt"


def shakespeare_text(download: bool = True) -> str:
    """Tiny Shakespeare: the file named by ``$JAXFORMER_SHAKESPEARE``, else the copy in
    :func:`cache_dir`, else (``download``) downloaded once into the cache. No other place is
    searched."""
    target = shakespeare_file()
    if target.is_file():
        return target.read_text(encoding="utf-8")
    offline = (f"put the file at {target}, set {SHAKESPEARE_ENV}=/path/to/tinyshakespeare.txt, or set "
               "data.path to a local text file")
    if not download:
        raise DataError(f"Tiny Shakespeare is not available locally; {offline}")
    try:
        with urllib.request.urlopen(SHAKESPEARE_URL, timeout=30) as r:
            raw = r.read()
    except OSError as e:
        raise DataError(f"cannot download Tiny Shakespeare from {SHAKESPEARE_URL} ({e}); when offline, "
                        f"{offline}") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(raw)
    os.replace(tmp, target)
    return raw.decode("utf-8")


def _read_text_file(p: pathlib.Path) -> str:
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"data file {str(p)!r} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise DataError(f"data file {str(p)!r} cannot be read: {e.strerror}") from None


def check_corpus_path(path: str) -> pathlib.Path:
    """``path`` as a Path when it names a file or folder (DataError otherwise); the names
    ``"pydoc"`` and ``"shakespeare"`` pass as they are."""
    p = pathlib.Path(path).expanduser()
    if path in ("pydoc", "shakespeare") or p.is_file() or p.is_dir():
        return p
    raise DataError(f"data.path={path!r} is not a file, a folder, 'pydoc' or 'shakespeare'")


def load_corpus(path: str) -> str:
    """The text of ``path``: ``"pydoc"``, ``"shakespeare"``, a file, or a folder (its text
    files, recursively, in sorted order, joined by blank lines)."""
    if path == "pydoc":
        return pydoc_text()
    if path == "shakespeare":
        return shakespeare_text()
    p = check_corpus_path(path)
    if p.is_file():
        text = _read_text_file(p)
    elif p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise DataError(f"data.path={path!r} is a folder without text files ({', '.join(TEXT_SUFFIXES)})")
        text = "\n\n".join(_read_text_file(f) for f in files)
    if not text.strip():
        raise DataError(f"data.path={path!r} holds no text")
    return text
