"""The suite's one precision mechanism (conftest.py): every test, and every fixture, runs
with float32 matmuls at ``highest`` precision unless marked ``default_precision``."""
import os

import jax
import jax.numpy as jnp
import pytest

from conftest import TEST_MATMUL_PRECISION


def dot_precision() -> str:
    """The precision a jitted float32 matmul is lowered with (``HIGHEST`` or ``DEFAULT``)."""
    x = jnp.ones((4, 4), jnp.float32)
    text = jax.jit(jnp.dot).lower(x, x).as_text()
    return text.split("precision = [")[1].split(",")[0]


@pytest.fixture(scope="module")
def module_precision():
    return dot_precision()


def test_tests_and_fixtures_run_at_highest_precision(module_precision):
    assert TEST_MATMUL_PRECISION == "highest"
    assert jax.config.jax_default_matmul_precision == "highest"
    assert dot_precision() == "HIGHEST"
    assert module_precision == "HIGHEST"          # module-scoped fixtures are set up before any test fixture
    assert os.environ["JAX_DEFAULT_MATMUL_PRECISION"] == "highest"   # inherited by subprocesses


@pytest.mark.default_precision
def test_marked_test_runs_at_the_platform_default():
    assert jax.config.jax_default_matmul_precision is None
    assert dot_precision() == "DEFAULT"
    assert "JAX_DEFAULT_MATMUL_PRECISION" not in os.environ


def test_precision_is_restored_after_a_marked_test():
    assert dot_precision() == "HIGHEST"
    assert os.environ["JAX_DEFAULT_MATMUL_PRECISION"] == "highest"
