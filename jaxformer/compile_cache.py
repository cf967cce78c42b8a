"""JAX's persistent compilation cache, switched on by the ``jaxformer`` commands and the
experiment scripts so that a second run loads its compiled programs instead of compiling them.

Where it lives (:func:`cache_dir`): ``$JAXFORMER_CACHE_DIR`` if set, else
``$XDG_CACHE_HOME/jaxformer/xla``, else ``~/.cache/jaxformer/xla``. ``JAXFORMER_CACHE_DIR``
set to ``off``, ``0``, ``none``, ``false`` or ``no`` (any case) switches it off; set but empty
counts as unset (the XDG convention). A cache configured through JAX itself
(``JAX_COMPILATION_CACHE_DIR`` or ``jax.config``) is left exactly as it is.

Entries are keyed by JAX on the program, the jax/jaxlib version, the device and the compile
options, so one folder serves every model, version and machine kind, and a hit runs the very
executable a fresh compile would have produced (results are bit-identical; a test checks it).
Nothing evicts entries (JAX's default ``jax_compilation_cache_max_size=-1``): delete the
folder to reclaim the space.

Several processes at once (parallel runs, pytest-xdist) are safe, though JAX 0.10's writes are
not atomic: ``LRUCache.put`` (``jax/_src/lru_cache.py``) checks that the entry file does not
exist and then writes it with a plain ``open(path, "wb")`` through ``etils.epath`` or
``pathlib`` (no temporary file and rename; no file lock unless a maximum size is set). A reader
that meets a half-written entry fails to decompress it (zlib and zstd frames are
length-checked), and ``jax/_src/compiler.py`` (``_cache_read``) turns any read error into a
``UserWarning`` and compiles afresh, so the worst case is one warning and one recompile, never
a wrong program. Write errors are warnings too, so a full disk never fails a command.

The cache is trusted code: anyone who can write to the folder can make your JAX processes run
what they like, so a folder this module creates is private to you (mode 0700).
"""
from __future__ import annotations

import os
import pathlib
import sys
from typing import Mapping, Optional, Union


#: The environment variable that moves the cache, or switches it off.
ENV = "JAXFORMER_CACHE_DIR"
#: Values of ``ENV`` that switch the cache off (compared lower-case, stripped).
OFF = ("off", "0", "none", "false", "no")

_warned: set = set()


def cache_dir(environ: Mapping[str, str] = os.environ) -> Optional[pathlib.Path]:
    """The cache folder ``environ`` asks for (see the module docstring), or None when it is
    switched off. Pure: reads ``environ`` and the home folder, creates nothing."""
    value = environ.get(ENV, "").strip()
    if value.lower() in OFF:
        return None
    if value:
        return pathlib.Path(value).expanduser()
    xdg = environ.get("XDG_CACHE_HOME", "").strip()
    base = pathlib.Path(xdg) if os.path.isabs(xdg) else pathlib.Path.home() / ".cache"
    return base / "jaxformer" / "xla"


def _usable(path: pathlib.Path) -> Optional[str]:
    """None when ``path`` is (now) a folder this process can write to, else why not."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        return e.strerror or str(e)
    if not os.access(path, os.W_OK | os.X_OK):
        return "not writable"
    return None


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        print(message, file=sys.stderr, flush=True)


_JAX_FLAG = {"dir": "jax_compilation_cache_dir",
             "min_compile_time_secs": "jax_persistent_cache_min_compile_time_secs",
             "min_entry_size_bytes": "jax_persistent_cache_min_entry_size_bytes"}
_JAX_ENV = {key: flag.upper() for key, flag in _JAX_FLAG.items()}


def enable(path: Union[str, os.PathLike, None] = None) -> Optional[pathlib.Path]:
    """Switch on JAX's persistent compilation cache in ``path`` (default: :func:`cache_dir`),
    keeping every program however small or quick to compile. Returns the folder in use, or None
    when the cache is off.

    - A cache directory already configured in JAX (``JAX_COMPILATION_CACHE_DIR``,
      ``jax.config.update``, or an earlier call) wins: nothing is changed and its folder is
      returned.
    - A folder that cannot be created or written to prints one line on stderr (once per
      process) and leaves the cache off; it never raises.
    - Call it before the first compilation: JAX opens the cache once, at its first compile
      after a directory is set, and keeps it for the life of the process.
    """
    jax = sys.modules.get("jax")  # not imported here: the command line checks its input first
    configured = jax.config.jax_compilation_cache_dir if jax else os.environ.get(_JAX_ENV["dir"])
    if configured:
        return pathlib.Path(configured)
    try:
        target = cache_dir() if path is None else pathlib.Path(path).expanduser()
    except RuntimeError as e:                        # no home folder to put ~/.cache in
        _warn_once(f"jaxformer: compilation cache off: {e}; set {ENV}=DIR to switch it on")
        return None
    if target is None:
        return None
    problem = _usable(target)
    if problem:
        _warn_once(f"jaxformer: compilation cache off: cannot use {target} ({problem}); "
                   f"set {ENV} to a writable folder, or to 'off' to silence this")
        return None
    # Every program is worth keeping: most of a small model's compiles take well under JAX's
    # default one second, and on CPU they are most of a command's wall time. Entry size -1: no
    # size floor. Before JAX starts, its environment variables say the same (read at import).
    settings = {"dir": str(target), "min_compile_time_secs": 0.0, "min_entry_size_bytes": -1}
    for key, value in settings.items():
        if jax:
            jax.config.update(_JAX_FLAG[key], value)
        else:
            os.environ[_JAX_ENV[key]] = str(value)
    return target
