"""The persistent compilation cache the CLI switches on: where it lives (environment, XDG,
switched off, a cache the user configured in JAX), one line and no cache when the folder cannot
be made, and end to end: a cold run fills the folder, a warm run prints bit-identical output,
``off`` writes nothing. Subprocesses get their whole cache environment from the test, never
from the session's."""
import json
import os
import pathlib
import subprocess
import sys

import jax
import matplotlib
import pytest

from jaxformer import compile_cache
from jaxformer_testing.runs import tiny_run
from jaxformer.cli import build_parser

FLAGS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
         "jax_persistent_cache_min_entry_size_bytes")


@pytest.fixture
def jax_flags():
    """The cache flags cleared for the test and put back afterwards (nothing compiles in
    between, so JAX never opens a cache in a folder of ours)."""
    saved = {f: getattr(jax.config, f) for f in FLAGS}
    jax.config.update("jax_compilation_cache_dir", None)
    yield
    for f, v in saved.items():
        jax.config.update(f, v)


# ----------------------------------------------------------------------------- where it lives
def test_default_is_under_the_home_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert compile_cache.cache_dir({}) == tmp_path / ".cache" / "jaxformer" / "xla"
    # XDG_CACHE_HOME must be absolute to count (the XDG rule); empty counts as unset.
    assert compile_cache.cache_dir({"XDG_CACHE_HOME": "/x/cache"}) == pathlib.Path("/x/cache/jaxformer/xla")
    assert compile_cache.cache_dir({"XDG_CACHE_HOME": "rel"}) == tmp_path / ".cache" / "jaxformer" / "xla"


def test_the_environment_variable_moves_it_or_switches_it_off(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    env = {"XDG_CACHE_HOME": "/x/cache"}
    assert compile_cache.cache_dir({**env, "JAXFORMER_CACHE_DIR": "/elsewhere"}) == pathlib.Path("/elsewhere")
    assert compile_cache.cache_dir({**env, "JAXFORMER_CACHE_DIR": "~/c"}) == tmp_path / "c"
    for off in ("off", "OFF", "0", "none", "false", "no", " off "):
        assert compile_cache.cache_dir({**env, "JAXFORMER_CACHE_DIR": off}) is None, off
    assert compile_cache.cache_dir({**env, "JAXFORMER_CACHE_DIR": ""}) == pathlib.Path("/x/cache/jaxformer/xla")


def test_enable_sets_the_jax_flags(jax_flags, monkeypatch, tmp_path):
    monkeypatch.setenv("JAXFORMER_CACHE_DIR", str(tmp_path / "c"))
    assert compile_cache.enable() == tmp_path / "c" and (tmp_path / "c").is_dir()
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "c")
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0
    assert jax.config.jax_persistent_cache_min_entry_size_bytes == -1


def test_enable_leaves_a_cache_configured_in_jax_alone(jax_flags, monkeypatch, tmp_path):
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))
    monkeypatch.setenv("JAXFORMER_CACHE_DIR", str(tmp_path / "ours"))
    before = {f: getattr(jax.config, f) for f in FLAGS}
    assert compile_cache.enable() == tmp_path / "mine"
    assert {f: getattr(jax.config, f) for f in FLAGS} == before and not (tmp_path / "ours").exists()


def test_off_changes_nothing(jax_flags, monkeypatch, tmp_path):
    monkeypatch.setenv("JAXFORMER_CACHE_DIR", "off")
    assert compile_cache.enable() is None and jax.config.jax_compilation_cache_dir is None


def test_a_folder_that_cannot_be_made_is_one_line_and_no_cache(jax_flags, monkeypatch, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("JAXFORMER_CACHE_DIR", str(blocker / "xla"))
    monkeypatch.setattr(compile_cache, "_warned", set())
    assert compile_cache.enable() is None and compile_cache.enable() is None
    assert jax.config.jax_compilation_cache_dir is None
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"jaxformer: compilation cache off: cannot use {blocker / 'xla'} (")


def test_the_option_goes_before_or_after_the_command():
    parse = build_parser().parse_args
    assert parse(["info"]).no_compile_cache is False
    assert parse(["--no-compile-cache", "info"]).no_compile_cache is True
    assert parse(["info", "--no-compile-cache"]).no_compile_cache is True


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("run"))


def _sample(run_dir, home, cache, warning=None):
    """``jaxformer sample --json --logprobs`` in a fresh process (in ``home``) whose cache
    settings are only these: HOME and XDG_CACHE_HOME under ``home``, and
    ``JAXFORMER_CACHE_DIR=cache`` (matplotlib's font cache stays where it was: building it anew
    costs seconds). Its stdout; stderr holds ``warning`` if given, else no cache warning."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE",
                                                                    "JAXFORMER_CACHE", "XDG_CACHE"))}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / "xdg"), JAXFORMER_CACHE_DIR=str(cache),
               MPLCONFIGDIR=matplotlib.get_cachedir())
    r = subprocess.run([sys.executable, "-m", "jaxformer", "sample", "--run", str(run_dir), "--prompt", "the c",
                        "--max-new-tokens", "12", "--chunk", "4", "--json", "--logprobs", "--top-n", "2"],
                       capture_output=True, text=True, env=env, cwd=home, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (warning in r.stderr) if warning else ("compilation cache" not in r.stderr), r.stderr
    return r.stdout


def _files(folder):
    return sorted(p for p in pathlib.Path(folder).rglob("*") if p.is_file()) if pathlib.Path(folder).exists() else []


def test_a_warm_run_prints_exactly_what_the_cold_run_printed(run_dir, tmp_path):
    cache = tmp_path / "cache"
    cold = _sample(run_dir, tmp_path, cache)
    entries = _files(cache)
    assert len([p for p in entries if p.name.endswith("-cache")]) >= 3      # JAX's entry names
    warm = _sample(run_dir, tmp_path, cache)
    assert warm == cold and json.loads(warm)["samples"][0]["logprobs"]
    assert _files(cache) == entries                    # every program was found, none compiled anew
    assert not _files(tmp_path / "xdg" / "jaxformer") and not _files(tmp_path / ".cache" / "jaxformer")
    # What another process would see while JAX writes an entry (it writes in place): a warning,
    # a fresh compile, the same output.
    for p in entries:
        p.write_bytes(p.read_bytes()[:p.stat().st_size // 2])
    assert _sample(run_dir, tmp_path, cache, "Error reading persistent compilation cache entry") == cold


def test_off_writes_nothing(run_dir, tmp_path):
    out = _sample(run_dir, tmp_path, "off")
    assert json.loads(out)["samples"][0]["logprobs"]
    assert not _files(tmp_path / "xdg" / "jaxformer") and not _files(tmp_path / ".cache" / "jaxformer")
    assert not (tmp_path / "off").exists()
