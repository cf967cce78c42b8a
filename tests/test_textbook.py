"""The textbook stays a textbook: ``jaxformer/functional.py`` reads in one sitting (at most 350
lines of at most 120 characters, no function over 40, for GPT-2 to Gemma 2 and BERT to ModernBERT),
none of the engine's concerns (caches, scan, remat, kernels, devices) creeps into it or into its extras file, its block layouts cover every config value,
and the hook-point table of :mod:`jaxformer.interp.hooks` is exactly the list of taps the
textbook reaches, for every combination of the architecture knobs."""
import ast
import dataclasses
import io
import itertools
import pathlib
import tokenize

import jax
import jax.numpy as jnp
import pytest

from jaxformer import ModelConfig
from jaxformer import functional as F
from jaxformer.interp import hooks as H
from jaxformer.model.modules import GPT

PACKAGE = pathlib.Path(F.__file__).parent
TEXTBOOK = [PACKAGE / "functional.py", PACKAGE / "functional_extras.py"]

# names that belong to the engine (jaxformer.model.stack, jaxformer.model.kernels), not the textbook
ENGINE_NAMES = {"scan", "fori_loop", "while_loop", "cond", "checkpoint", "remat", "checkpoint_policies",
                "dynamic_update_slice", "dynamic_slice", "custom_vjp", "custom_jvp", "devices", "device",
                "platform", "default_backend", "Kernels", "kernels", "kernel", "is_causal"}
ENGINE_WORDS = ("cache", "kernel", "platform", "remat")


def functions(path):
    tree = ast.parse(path.read_text())
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def code_names(path):
    """Every identifier of the code (strings, docstrings and comments left out)."""
    toks = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    return {t.string for t in toks if t.type == tokenize.NAME}


def test_reading_path_fits_one_sitting():
    lines = (PACKAGE / "functional.py").read_text().splitlines()
    assert len(lines) <= 350, f"functional.py has {len(lines)} lines (at most 350)"
    wide = [i + 1 for i, line in enumerate(lines) if len(line) > 120]
    assert not wide, f"functional.py lines over 120 characters: {wide}"
    for path in TEXTBOOK:
        long = {f.name: f.end_lineno - f.lineno + 1 for f in functions(path) if f.end_lineno - f.lineno + 1 > 40}
        assert not long, f"{path.name}: functions over 40 lines: {long}"


@pytest.mark.parametrize("path", TEXTBOOK, ids=lambda p: p.name)
def test_no_engine_concern_in_the_textbook(path):
    names = code_names(path)
    assert not names & ENGINE_NAMES, f"{path.name} uses engine names {sorted(names & ENGINE_NAMES)}"
    words = sorted(n for n in names if any(w in n.lower() for w in ENGINE_WORDS))
    assert not words, f"{path.name} uses engine names {words}"
    imports = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom)]
    ours = {n.module for n in imports if (n.module or "").startswith("jaxformer")}
    assert ours <= {"jaxformer.functional_extras"}, f"{path.name} imports {ours}"


def test_the_checks_catch_an_engine_concern(tmp_path):
    """The checks above fail on a textbook that writes a cache or scans its layers."""
    bad = tmp_path / "bad.py"
    bad.write_text("from jax import lax\n\ndef f(c, x):\n    '''scan and cache in a docstring are fine'''\n"
                   "    return lax.dynamic_update_slice(c, x, (0,)), lax.scan(f, x, None)\n")
    assert {"dynamic_update_slice", "scan"} <= code_names(bad) & ENGINE_NAMES
    assert not {"cache"} & code_names(bad)


def test_layouts_cover_every_config_value():
    assert set(F.NORM_PLACEMENTS) == {"pre", "post", "none", "sandwich"}
    assert set(F.BLOCK_LAYOUTS) == {"sequential", "parallel", "attn_only"}
    with pytest.raises(Exception, match="norm_position"):
        ModelConfig(vocab_size=11, d_model=8, n_head=2, n_layer=1, d_ff=16, max_len=8, norm_position="middle")


# ----------------------------------------------------------------------------- hook names, traced
def knob_configs():
    """Every combination of the knobs that change which hook points exist."""
    base = ModelConfig(vocab_size=11, d_model=8, n_head=2, n_layer=2, d_ff=12, max_len=8)
    for norm_position, layout, positions, activation in itertools.product(
            ("pre", "post", "none", "sandwich"), ("sequential", "parallel", "attn_only"),
            ("learned", "sinusoidal", "rope", "none"), ("gelu", "swiglu")):
        if layout == "parallel" and norm_position != "pre":
            continue   # the config refuses it
        yield dataclasses.replace(base, norm_position=norm_position, positions=positions, activation=activation,
                                  parallel_residual=layout == "parallel", attn_only=layout == "attn_only")
    yield dataclasses.replace(base, norm="rmsnorm", qk_norm=True, n_kv_head=1, positions="rope", sliding_window=4)


def traced_hook_names(config, monkeypatch):
    """The full name of every tap the textbook reaches in one forward pass, in order (traced
    abstractly). Each tap is recorded whether or not it is hooked: the hooks passed in only
    tell which prefix (``blocks.1.attn.``) the stripped names inside a block carry."""
    reached = []
    real_tap = F.tap

    def recording_tap(hooks, name, x):
        prefixes = {f.full_name[:-len(n)] for n, f in (hooks or {}).items()}
        assert len(prefixes) <= 1, prefixes
        reached.append((prefixes.pop() if prefixes else "") + name)
        return real_tap(hooks, name, x)

    real_grouped = F.grouped_hooks

    def named_grouped_hooks(hooks, G):   # the grouped-layout wrappers keep the name they wrap
        out = real_grouped(hooks, G)
        for n, f in (out or {}).items():
            f.full_name = hooks[n].full_name
        return out

    table = {}
    for name in H.hook_names(config):
        fn = lambda x: x  # noqa: E731
        fn.full_name = name
        table[name] = fn
    monkeypatch.setattr(F, "tap", recording_tap)
    monkeypatch.setattr(F, "grouped_hooks", named_grouped_hooks)
    params = GPT.abstract(config).params()
    tokens = jax.ShapeDtypeStruct((2, 5), jnp.int32)
    jax.eval_shape(lambda p, t: F.decoder(p, t, config, hooks=table)[0], params, tokens)
    return reached


@pytest.mark.parametrize("config", list(knob_configs()),
                         ids=lambda c: "-".join(map(str, (c.norm_position, c.parallel_residual, c.attn_only,
                                                          c.positions, c.activation, c.norm))))
def test_hook_table_is_what_the_textbook_taps(config, monkeypatch):
    assert traced_hook_names(config, monkeypatch) == list(H.hook_names(config))
