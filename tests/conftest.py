import os
import pathlib
import sys

#: One persistent XLA compilation cache for the whole test run: every pytest worker and every
#: subprocess a test starts (CLI runs, scripts) reuse the programs another one compiled.
#: ``$JAXFORMER_TEST_CACHE_DIR`` (``.ci/run`` points it at a fresh folder, so CI measures a
#: cold start), else ``~/.cache/jaxformer/xla-tests``; ``off`` compiles everything afresh.
#: Set before JAX is imported, through JAX's own environment variables, which subprocesses inherit.
TEST_CACHE = os.environ.get("JAXFORMER_TEST_CACHE_DIR") or str(
    pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "jaxformer" / "xla-tests")
if TEST_CACHE.lower() == "off":
    os.environ["JAXFORMER_CACHE_DIR"] = "off"     # nor the CLI's own cache in subprocesses
else:
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", TEST_CACHE)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

#: XLA:CPU compiled for speed of compilation, not of the program: the LLVM backend without its
#: optimisation passes (a third less compile time) and the classic elemental emitters instead of
#: the MLIR fusion emitters (half of what is left). The suite's thousands of tiny programs run no
#: slower to matter; values stay within every tolerance (bit-identity tests compare two runs
#: under the same flags). XLA aborts on a flag it does not know, so the emitter switch is only
#: passed to the jaxlib releases that have it. ``JAXFORMER_TEST_XLA_OPT=1`` keeps the defaults.
if os.environ.get("JAXFORMER_TEST_XLA_OPT") != "1" and "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    from importlib.metadata import version as _version
    _flags = " --xla_backend_optimization_level=0"
    if tuple(int(p) for p in _version("jaxlib").split(".")[:2] if p.isdigit()) < (0, 12):
        _flags += " --xla_cpu_use_fusion_emitters=false"
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + _flags).strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).parent))

#: Where the tests look for Tiny Shakespeare: $JAXFORMER_SHAKESPEARE (the variable the library
#: reads too), else the sibling folder ../shared/data/ of this repository. Only the
#: ``shakespeare_path`` fixture below uses it; tests without the file are skipped.
SHAKESPEARE = pathlib.Path(os.environ.get("JAXFORMER_SHAKESPEARE") or
                           pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare.txt")

#: The matmul precision every test runs at (see tests/jaxformer_testing/tolerances.py): float32 matmuls really in
#: float32 on GPUs (no TF32) and TPUs (no bf16 passes), so the float32-vs-float64 parity tests
#: hold on every backend. Set for the whole session, module- and session-scoped fixtures
#: included, and exported so that subprocesses a test starts (CLI runs, the 8-device check)
#: inherit it. A test marked ``@pytest.mark.default_precision`` runs at the platform default.
TEST_MATMUL_PRECISION = "highest"
_PRECISION_ENV = "JAX_DEFAULT_MATMUL_PRECISION"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "default_precision: run at the platform's default matmul precision (TF32 on "
        "NVIDIA GPUs, bf16 passes on TPUs) instead of the suite's 'highest'")
    os.environ[_PRECISION_ENV] = TEST_MATMUL_PRECISION
    jax.config.update("jax_default_matmul_precision", TEST_MATMUL_PRECISION)


@pytest.fixture(autouse=True)
def _matmul_precision(request, monkeypatch):
    """``highest`` everywhere (set in :func:`pytest_configure`); the platform default for a
    test marked ``default_precision``, in this process and in the subprocesses it starts."""
    if request.node.get_closest_marker("default_precision") is None:
        yield
        return
    monkeypatch.delenv(_PRECISION_ENV, raising=False)
    with jax.default_matmul_precision(None):
        yield


def randomize(params, seed=0, scale=0.3):
    """Replace every leaf with random values (norm scales around 1), so that zero biases and
    unit scales cannot hide a bug."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    rng = np.random.default_rng(seed)
    out = []
    for path, leaf in leaves:
        name = str(path[-1])
        vals = rng.normal(0.0, scale, leaf.shape).astype(np.float32)
        if "scale" in name:
            vals = 1.0 + vals
        out.append(jax.numpy.asarray(vals))
    return jax.tree_util.tree_unflatten(treedef, out)


def random_model(config, seed=0, scale=0.3):
    """A ``GPT`` (or ``Encoder``, for a bidirectional ``config``) holding :func:`randomize`'d
    parameters. Built from the model's shapes, without its own random init: those values would
    be overwritten, and drawing them compiles a program for every config."""
    from jaxformer.model.modules import model_class
    cls = model_class(config)
    return cls.from_params(config, randomize(cls.abstract(config).params(), seed=seed, scale=scale))


@pytest.fixture
def shakespeare_path():
    """The Tiny Shakespeare text file (see ``SHAKESPEARE``); skips the test when it is absent."""
    if not SHAKESPEARE.is_file():
        pytest.skip(f"Tiny Shakespeare not found at {SHAKESPEARE} (set JAXFORMER_SHAKESPEARE)")
    return SHAKESPEARE
