"""The FLOP accounting behind MFU, checked against XLA's own count of the compiled program."""
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jaxformer import GPT, ModelConfig
from jaxformer import functional as F
from jaxformer.training.bench import flops_per_token, matmul_params, measure_peak_flops


def xla_flops(fn, *args):
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["flops"]


@pytest.mark.parametrize("kw", [dict(), dict(activation="swiglu", n_kv_head=2), dict(n_layer=3, tie_embeddings=False)])
def test_flops_formula_matches_xla(kw):
    # unrolled layers: XLA's cost analysis counts a scan body once, not once per layer
    cfg = ModelConfig(**{**dict(vocab_size=512, d_model=256, n_head=4, n_layer=2, d_ff=1024,
                                max_len=128, scan_layers=False), **kw})
    params = GPT(cfg, rngs=nnx.Rngs(0)).params()
    tokens = jnp.zeros((2, 128), jnp.int32)
    n_tok = tokens.size
    fwd = xla_flops(lambda p, t: F.decoder(p, t, cfg)[0], params, tokens)
    grad = xla_flops(jax.grad(lambda p, t: F.cross_entropy(F.decoder(p, t, cfg)[0], t)), params, tokens)
    # matmuls dominate; XLA also counts elementwise work (softmax, gelu, norms): a few % more
    assert 1.0 <= fwd / (flops_per_token(cfg, 128, training=False) * n_tok) < 1.04
    assert 1.0 <= grad / (flops_per_token(cfg, 128, training=True) * n_tok) < 1.04


def test_matmul_params_gpt2_small():
    cfg = ModelConfig(vocab_size=50257, d_model=768, n_head=12, n_layer=12, d_ff=3072, max_len=1024)
    # 12 blocks x (4 * 768^2 + 2 * 768 * 3072) weights + the 768 x 50257 head
    assert matmul_params(cfg) == 12 * (4 * 768 ** 2 + 2 * 768 * 3072) + 768 * 50257


def test_peak_flops_is_positive_and_finite():
    peak = measure_peak_flops(n=256, iters=2)
    assert 1e6 < peak < 1e16


@pytest.mark.parametrize("kw", [dict(), dict(activation="swiglu", n_kv_head=2)])
def test_gemm_ceiling_lists_every_product_of_the_step(kw):
    # benchmarks/gemm_ceiling.py times the train step's matrix products one by one; its list
    # must add up to the FLOP formula plus the one q.k product the CPU attention kernel's backward
    # pass recomputes, or its "GEMM floor" would leave work out.
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).parents[1] / "benchmarks" / "gemm_ceiling.py"
    spec = importlib.util.spec_from_file_location("gemm_ceiling", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = ModelConfig(**{**dict(vocab_size=300, d_model=64, n_head=4, n_layer=3, d_ff=256, max_len=32), **kw})
    B = 5
    total = sum(count * mod.flops(eq, sa, sb) for _, eq, sa, sb, count in mod.products(cfg, B))
    recompute = cfg.n_layer * 2 * B * cfg.n_head * cfg.max_len ** 2 * cfg.head_dim
    assert total == flops_per_token(cfg, cfg.max_len) * B * cfg.max_len + recompute
