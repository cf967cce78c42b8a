"""Every kernel equals the textbook function it replaces, in values and gradients.

The CPU kernels (hand-written backward passes: attention core, fused head + cross-entropy,
layer norm, GELU, projections, gradient fences; the cached decode attention) against
autodiff of the textbook in float64, against float64 finite differences of the NumPy
references, and against each other; the cuDNN kernel's XLA path against the textbook on
masks, grouped heads and fully-masked rows; and the choice of kernels per platform."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer_testing import reference as ref
from conftest import randomize
from jaxformer import ModelConfig
from jaxformer import functional as F
from jaxformer.model import kernels as Kn
from jaxformer.errors import ConfigError
from jaxformer.model.kernels import cpu, cudnn
from jaxformer.model.kernels.cpu import CPU
from jaxformer.model.modules import GPT
from jaxformer.model import stack
from jaxformer_testing.tolerances import BF16_VS_F32_LOSS_REL


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def tree_rel_err(a, b):
    return max(jax.tree.leaves(jax.tree.map(rel_err, a, b)))


def attn_inputs(rng, B=2, G=2, R=2, T=6, S=6, K=4, dtype=np.float64):
    q = rng.normal(size=(B, G, R, T, K)).astype(dtype)
    k = rng.normal(size=(B, G, S, K)).astype(dtype)
    v = rng.normal(size=(B, G, S, K)).astype(dtype)
    return q, k, v


def masks(B, T, S):
    causal = np.asarray(F.causal_mask(T, S, offset=S - T))[None, None, None]
    pad = np.arange(S)[None, :] >= np.array([0, 3])[:B, None]          # row 1: 3 padded keys
    both = causal & pad[:, None, None, None, :]                         # -> fully-masked rows
    return [None, causal, both]


@pytest.mark.parametrize("which", [0, 1, 2])
def test_attention_core_value_matches_reference(which):
    rng = np.random.default_rng(which)
    q, k, v = attn_inputs(rng, dtype=np.float32)
    mask = masks(2, 6, 6)[which]
    out = cpu.attention_core(q, k, v, mask, 1 / np.sqrt(q.shape[-1]))
    expected, _ = ref.attention(q, k[:, :, None], v[:, :, None], mask)
    assert rel_err(out, expected) < 1e-5
    assert np.all(np.isfinite(np.asarray(out)))


@pytest.mark.parametrize("T,index", [(1, 0), (1, 5), (3, 4), (2, 7)])   # S = 8; (2, 7) is clamped to 6
def test_cached_attention_equals_attention_over_the_written_cache(T, index):
    """The decode path reads the cache before the new entries are written: it must equal
    attention over the written cache (NumPy, float64), whatever stale values the unused
    slots hold, with grouped heads, left padding and a fully padded row."""
    rng = np.random.default_rng(T * 10 + index)
    B, G, R, S, K = 2, 2, 2, 8, 4
    q = rng.normal(size=(B, G, R, T, K)).astype(np.float32)
    k_cache, v_cache = (rng.normal(size=(B, G, S, K)).astype(np.float32) * 5 for _ in range(2))
    k_new, v_new = (rng.normal(size=(B, G, T, K)).astype(np.float32) for _ in range(2))
    pad = np.arange(S)[None, :] >= np.array([0, 2])[:, None]   # row 1: 2 padded keys (at T=1,
    #                                                            index 0 its query sees nothing)
    mask = np.asarray(F.causal_mask(T, S, offset=index))[None, None, None] & pad[:, None, None, None, :]
    got = jax.jit(lambda *a: cpu.cached_attention(*a, mask, index, 1 / np.sqrt(K)))(q, k_cache, v_cache, k_new, v_new)
    start = min(index, S - T)
    k_all, v_all = k_cache.copy(), v_cache.copy()
    k_all[:, :, start:start + T], v_all[:, :, start:start + T] = k_new, v_new
    expected, _ = ref.attention(q, k_all[:, :, None], v_all[:, :, None], mask)
    assert rel_err(got, expected) < 1e-5
    # and through multi_head_attention: cached decode step == the explicit path over the written cache
    D, H = 8, 4
    params = {"wq": rng.normal(size=(D, H, 2)), "wk": rng.normal(size=(D, 2, 2)),
              "wv": rng.normal(size=(D, 2, 2)), "wo": rng.normal(size=(H, 2, D))}
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    x = jnp.asarray(rng.normal(size=(B, T, D)), jnp.float32)
    cache = {"k": jnp.asarray(rng.normal(size=(B, 2, S, 2)), jnp.float32),
             "v": jnp.asarray(rng.normal(size=(B, 2, S, 2)), jnp.float32)}
    m4 = jnp.asarray(mask[:, :, 0])

    @jax.jit
    def both(params, x, cache, m4):
        w1, w2 = {}, {}
        fast, _ = F.multi_head_attention(params, x, mask=m4, dense=CPU.dense,
                                         attend=stack.attention_kernel(CPU, cache=cache, cache_index=index, written=w1))
        slow, _ = F.multi_head_attention(params, x, mask=m4,
                                         attend=stack.attention_kernel(None, cache=cache, cache_index=index, written=w2))
        return fast, slow, w1["cache"], w2["cache"]

    fast, slow, c1, c2 = both(params, x, cache, m4)
    assert rel_err(fast, slow) < 1e-5
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), c1, c2))


@pytest.mark.parametrize("which", [0, 1, 2])
def test_attention_core_gradient_float64(which):
    """Hand-written VJP == autodiff of the explicit softmax path (float64, 1e-12), and a
    directional derivative == the central difference of the NumPy reference."""
    rng = np.random.default_rng(10 + which)
    with jax.enable_x64(True):
        q, k, v = (jnp.asarray(a) for a in attn_inputs(rng))
        mask = masks(2, 6, 6)[which]
        c = jnp.asarray(rng.normal(size=q.shape))
        scale = 1 / np.sqrt(4)

        def fast(q, k, v):
            return jnp.sum(cpu.attention_core(q, k, v, mask, scale) * c)

        def plain(q, k, v):
            out, _ = F.scaled_dot_product_attention(q, k[:, :, None], v[:, :, None], mask=mask)
            return jnp.sum(out * c)

        g_fast, g_plain = jax.jit(lambda *a: (jax.grad(fast, (0, 1, 2))(*a), jax.grad(plain, (0, 1, 2))(*a)))(q, k, v)
        assert tree_rel_err(g_fast, g_plain) < 1e-12
        for g in g_fast:
            assert np.all(np.isfinite(np.asarray(g)))

        dirs = [rng.normal(size=a.shape) for a in (q, k, v)]
        eps = 1e-6

        def f_ref(sign):
            qq, kk, vv = (np.asarray(a) + sign * eps * d for a, d in zip((q, k, v), dirs))
            out, _ = ref.attention(qq, kk[:, :, None], vv[:, :, None], mask)
            return float(np.sum(out * np.asarray(c)))

        fd = (f_ref(1) - f_ref(-1)) / (2 * eps)
        analytic = sum(float(jnp.sum(g * d)) for g, d in zip(g_fast, dirs))
        assert abs(analytic - fd) < 1e-6 * max(1.0, abs(fd))


@pytest.mark.parametrize("H,G,rope", [(4, 4, False), (4, 2, True), (4, 1, False)])
def test_attention_layer_fast_path_equals_explicit_float64(H, G, rope):
    """Through multi_head_attention: the CPU kernels (hand-written backward) and the
    textbook (autodiff) give the same output and parameter/input gradients."""
    rng = np.random.default_rng(H * 10 + G)
    B, T, D = 3, 7, 16
    K = D // H
    with jax.enable_x64(True):
        p = {"wq": rng.normal(size=(D, H, K)), "wk": rng.normal(size=(D, G, K)),
             "wv": rng.normal(size=(D, G, K)), "wo": rng.normal(size=(H, K, D)),
             "bq": rng.normal(size=(H, K)), "bk": rng.normal(size=(G, K)),
             "bv": rng.normal(size=(G, K)), "bo": rng.normal(size=D)}
        p = {n: jnp.asarray(0.3 * a) for n, a in p.items()}
        x = jnp.asarray(rng.normal(size=(B, T, D)))
        pad = np.arange(T)[None, :] >= np.array([0, 2, 3])[:, None]
        mask = F.causal_mask(T)[None, None] & jnp.asarray(pad)[:, None, None, :]
        rf = F.rope_frequencies(jnp.broadcast_to(jnp.arange(T), (B, T)), K) if rope else None
        c = jnp.asarray(rng.normal(size=(B, T, D)))

        def loss(p, x, need):
            fast = {} if need else {"attend": stack.attention_kernel(CPU), "dense": CPU.dense}
            y, w = F.multi_head_attention(p, x, mask=mask, rope=rf, **fast)
            assert (w is None) == (not need)
            return jnp.sum(y * c)

        @jax.jit
        def values_and_grads(p, x):
            return [jax.value_and_grad(loss, (0, 1))(p, x, need) for need in (False, True)]

        (l_fast, g_fast), (l_plain, g_plain) = values_and_grads(p, x)
        assert abs(float(l_fast - l_plain)) < 1e-12 * abs(float(l_plain))
        g_fast[0].pop("bk"), g_plain[0].pop("bk")   # exactly zero in theory (softmax shift)
        assert tree_rel_err(g_fast, g_plain) < 1e-11


def small_config(**kw):
    base = dict(vocab_size=37, d_model=16, n_head=4, n_layer=3, d_ff=32, max_len=12)
    base.update(kw)
    return ModelConfig(**base)


def f64_params(cfg, seed=0, dtype=jnp.float64):
    params = randomize(GPT.abstract(cfg).params(), seed=seed)
    return jax.tree.map(lambda a: jnp.asarray(np.asarray(a, dtype)), params)


def as_f64(cfg):
    # The config validator only admits training dtypes; the math takes any float dtype.
    cfg = dataclasses.replace(cfg)
    object.__setattr__(cfg, "dtype", "float64")
    return cfg


@pytest.mark.parametrize("kw,masked", [({}, False), ({}, True), ({"tie_embeddings": False}, True),
                                       ({"norm_position": "post"}, False),
                                       ({"norm_position": "none", "bias": False}, True)])
def test_unembed_cross_entropy_equals_unfused_float64(kw, masked):
    """The fused head + loss (hand-written VJP) == cross_entropy(unembed(...)) in value and
    in every parameter gradient, float64, and the value == a NumPy reference."""
    cfg = small_config(**kw)
    rng = np.random.default_rng(3)
    B, T = 3, cfg.max_len
    tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (B, T + 1)))
    mask = jnp.asarray(rng.random((B, T)) > 0.4) if masked else None
    with jax.enable_x64(True):
        c64 = as_f64(cfg)
        params = f64_params(cfg)

        def unfused(p):
            logits, _ = F.decoder(p, tokens[:, :-1], c64)
            return F.cross_entropy(logits, tokens[:, 1:], mask), logits

        def fused(p):
            x, _ = stack.decoder_hidden(p, tokens[:, :-1], c64, kernels=CPU)
            return cpu.unembed_cross_entropy(p, x, tokens[:, 1:], c64, mask)

        @jax.jit
        def run(p):
            return jax.value_and_grad(unfused, has_aux=True)(p), jax.value_and_grad(fused)(p)

        ((l_u, logits), g_u), (l_f, g_f) = run(params)
        assert abs(float(l_u - l_f)) < 1e-13
        g_u["blocks"]["attn"].pop("bk", None), g_f["blocks"]["attn"].pop("bk", None)
        assert tree_rel_err(g_f, g_u) < 1e-11
        logits = np.asarray(logits)
        lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        nll = -np.take_along_axis(lp, np.asarray(tokens[:, 1:])[..., None], -1)[..., 0]
        m = np.ones_like(nll) if mask is None else np.asarray(mask, np.float64)
        assert abs(float(l_f) - (nll * m).sum() / m.sum()) < 1e-12


def test_unembed_cross_entropy_all_masked_is_zero_not_nan():
    cfg = small_config()
    params = f64_params(cfg, dtype=jnp.float32)
    x = jnp.ones((2, 5, cfg.d_model))
    tg = jnp.zeros((2, 5), jnp.int32)
    loss, g = jax.jit(jax.value_and_grad(lambda x: cpu.unembed_cross_entropy(params, x, tg, cfg, jnp.zeros((2, 5), bool))))(x)
    assert float(loss) == 0.0 and float(jnp.max(jnp.abs(g))) == 0.0


def test_unembed_cross_entropy_bfloat16_close_to_float32():
    cfg = small_config()
    rng = np.random.default_rng(5)
    params = f64_params(cfg, dtype=jnp.float32)
    tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (4, cfg.max_len + 1)))
    losses = {}
    for dt in ("float32", "bfloat16"):
        c = dataclasses.replace(cfg, dtype=dt)
        losses[dt] = jax.jit(lambda p: cpu.unembed_cross_entropy(
            p, stack.decoder_hidden(p, tokens[:, :-1], c)[0], tokens[:, 1:], c))(params)
        assert losses[dt].dtype == jnp.float32
    assert abs(float(losses["bfloat16"] - losses["float32"])) < BF16_VS_F32_LOSS_REL * float(losses["float32"])


@pytest.mark.parametrize("kw", [{}, {"tie_embeddings": False}, {"final_softcap": 3.0}])
def test_cudnn_head_and_loss_equals_textbook(kw):
    """The cuDNN set's head + loss (vocabulary padded to 128, logit gradient rounded to the
    compute dtype): float64 value and gradients == the textbook's; in bfloat16 the value is
    the textbook's (float32 logits either way) and the gradients agree to bfloat16 rounding."""
    cfg = small_config(**kw)
    rng = np.random.default_rng(11)
    tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (3, cfg.max_len + 1)))
    mask = jnp.asarray(rng.random((3, cfg.max_len)) > 0.3)

    @functools.partial(jax.jit, static_argnums=0)
    def both(c, params):
        x = stack.decoder_hidden(params, tokens[:, :-1], c)[0]
        book = lambda p, x: F.unembed_cross_entropy(p, x, tokens[:, 1:], c, mask)  # noqa: E731
        fast = lambda p, x: cudnn.unembed_cross_entropy(p, x, tokens[:, 1:], c, mask)  # noqa: E731
        return [jax.value_and_grad(f, (0, 1))(params, x) for f in (book, fast)]

    with jax.enable_x64(True):
        (l_b, g_b), (l_f, g_f) = both(as_f64(cfg), f64_params(cfg))
        assert abs(float(l_b - l_f)) < 1e-13 and tree_rel_err(g_f, g_b) < 1e-12
    c16 = dataclasses.replace(cfg, dtype="bfloat16")
    (l_b, g_b), (l_f, g_f) = both(c16, f64_params(cfg, dtype=jnp.float32))
    assert l_f.dtype == jnp.float32 and abs(float(l_b - l_f)) < 1e-5 * float(l_b)
    assert tree_rel_err(g_f, g_b) < 2e-2


def test_grad_fence_is_identity_and_keeps_nan():
    x = jnp.arange(12.0).reshape(3, 4)
    assert np.array_equal(np.asarray(cpu.residual(x)), np.asarray(x))
    g = jax.jit(jax.grad(lambda x: jnp.sum(cpu.residual(x) * x)))(x)
    np.testing.assert_array_equal(np.asarray(g), 2 * np.asarray(x))
    # a NaN gradient stays non-finite (the train step's guard must still see it)
    g_nan = jax.jit(jax.grad(lambda x: jnp.sum(cpu.residual(x) * jnp.where(x == 0, jnp.nan, 1.0))))(x)
    assert not np.all(np.isfinite(np.asarray(g_nan)))


@pytest.mark.parametrize("activation", ["gelu", "relu", "swiglu"])
def test_decoder_gradients_scan_equal_unrolled_float64(activation):
    """The whole training loss with the CPU kernels: scanned and unrolled layers (with their
    gradient fences) give the same gradients, and both equal jax.grad of the textbook."""
    cfg = small_config(activation=activation, dropout=0.0)
    rng = np.random.default_rng(8)
    tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (2, cfg.max_len + 1)))
    with jax.enable_x64(True):
        params = f64_params(cfg)

        def loss(p, scan, kernels=CPU):
            c = as_f64(dataclasses.replace(cfg, scan_layers=scan))
            return stack.next_token_loss(p, tokens, c, kernels=kernels)

        g_scan, g_loop, g_book = jax.jit(lambda p: (jax.grad(loss)(p, True), jax.grad(loss)(p, False),
                                                    jax.grad(loss)(p, True, None)))(params)
        for g in (g_scan, g_loop, g_book):
            g["blocks"]["attn"].pop("bk", None)
        assert tree_rel_err(g_scan, g_loop) < 1e-11
        assert tree_rel_err(g_scan, g_book) < 1e-11


@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_hand_written_gradient_float64(bias):
    """The layer_norm kernel's custom VJP == autodiff of the textbook formula (float64), and a
    directional derivative == the central difference of the NumPy reference."""
    rng = np.random.default_rng(4)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(size=(3, 5, 8)) * 2 + 1)
        scale = jnp.asarray(1 + 0.3 * rng.normal(size=8))
        b = jnp.asarray(rng.normal(size=8)) if bias else None
        c = jnp.asarray(rng.normal(size=x.shape))

        def plain(x, scale, b):
            mu = jnp.mean(x, -1, keepdims=True)
            y = (x - mu) / jnp.sqrt(jnp.mean((x - mu) ** 2, -1, keepdims=True) + 1e-5) * scale
            return jnp.sum((y if b is None else y + b) * c)

        def fast(x, scale, b):
            return jnp.sum(cpu.layer_norm(x, scale, b) * c)

        args = (0, 1, 2) if bias else (0, 1)

        @jax.jit
        def run(x, scale, b):
            return (cpu.layer_norm(x, scale, b), F.layer_norm(x, scale, b),
                    jax.grad(fast, args)(x, scale, b), jax.grad(plain, args)(x, scale, b))

        y_k, y_t, g_k, g_t = run(x, scale, b)
        assert rel_err(y_k, y_t) < 1e-14
        assert tree_rel_err(g_k, g_t) < 1e-12
        d = rng.normal(size=x.shape)
        eps = 1e-6
        fd = (np.sum(ref.layer_norm(np.asarray(x) + eps * d, scale, b) * np.asarray(c))
              - np.sum(ref.layer_norm(np.asarray(x) - eps * d, scale, b) * np.asarray(c))) / (2 * eps)
        analytic = float(np.sum(np.asarray(g_k[0]) * d))
        assert abs(analytic - fd) < 1e-6 * max(1.0, abs(fd))


@pytest.mark.parametrize("kw,kernels", [({}, "cpu"), ({}, "textbook"),
                                        ({"tie_embeddings": False, "bias": False}, "cpu"),
                                        ({"n_kv_head": 2, "positions": "rope", "activation": "relu"}, "cpu"),
                                        ({"n_kv_head": 2, "positions": "rope", "activation": "relu"}, "textbook"),
                                        ({"norm_position": "post", "remat": "dots"}, "cpu")])
def test_training_gradient_matches_numpy_finite_difference(kw, kernels):
    """Independent of JAX's autodiff: the training loss's gradient (textbook autodiff, and
    every hand-written VJP of the CPU kernels together: head + loss, attention, layer norm,
    GELU, projections, fences) along random directions == the float64 central difference
    of the NumPy reference decoder's loss."""
    cfg = small_config(n_layer=2, **kw)
    rng = np.random.default_rng(21)
    tokens = rng.integers(0, cfg.vocab_size, (2, 9))
    with jax.enable_x64(True):
        c64 = as_f64(cfg)
        params = f64_params(cfg, seed=2)

        def loss(p):
            return stack.next_token_loss(p, jnp.asarray(tokens), c64, kernels=Kn.get(kernels))

        def ref_loss(p):
            logits = ref.decoder(jax.tree.map(np.asarray, p), tokens[:, :-1], cfg)
            lp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
                - logits.max(-1, keepdims=True)
            return -np.mean(np.take_along_axis(lp, tokens[:, 1:, None], -1))

        tol = 1e-7 if cfg.positions == "rope" else 1e-12   # rope angles are float32 by design
        value, grads = jax.jit(jax.value_and_grad(loss))(params)
        assert abs(float(value) - ref_loss(params)) < tol
        for trial in range(3):
            d = jax.tree.map(lambda a: rng.normal(size=a.shape), params)
            eps = 1e-6
            plus = jax.tree.map(lambda a, b: np.asarray(a) + eps * b, params, d)
            minus = jax.tree.map(lambda a, b: np.asarray(a) - eps * b, params, d)
            fd = (ref_loss(plus) - ref_loss(minus)) / (2 * eps)
            analytic = sum(float(np.sum(np.asarray(g) * v))
                           for g, v in zip(jax.tree.leaves(grads), jax.tree.leaves(d)))
            assert abs(analytic - fd) < 1e-6 * max(1.0, abs(fd)), (trial, analytic, fd)


def test_gelu_kernel_equals_textbook_float64():
    rng = np.random.default_rng(6)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(size=(4, 9)) * 3)
        y_k, y_t, g_k, g_t = jax.jit(lambda x: (
            cpu.gelu(x), F.gelu_tanh(x),
            jax.grad(lambda x: jnp.sum(jnp.sin(cpu.gelu(x))))(x),
            jax.grad(lambda x: jnp.sum(jnp.sin(F.gelu_tanh(x))))(x)))(x)
        assert rel_err(y_k, y_t) < 1e-14
        assert rel_err(g_k, g_t) < 1e-13


@pytest.mark.parametrize("w_shape", [(8, 32), (32, 8), (8, 4, 2), (8, 8)])
def test_dense_kernel_equals_linear_float64(w_shape):
    """Both of the dense kernel's branches (hand-written weight gradient, or autodiff for a
    wider input) == the textbook linear, for 2-D and multi-axis weights."""
    rng = np.random.default_rng(sum(w_shape))
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(size=(3, 5, w_shape[0])))
        w = jnp.asarray(rng.normal(size=w_shape))
        c = jnp.asarray(rng.normal(size=(3, 5, *w_shape[1:])))
        y_k, y_t, g_k, g_t = jax.jit(lambda x, w: (
            cpu.dense(x, w), F.linear(x, w),
            jax.grad(lambda x, w: jnp.sum(cpu.dense(x, w) * c), (0, 1))(x, w),
            jax.grad(lambda x, w: jnp.sum(F.linear(x, w) * c), (0, 1))(x, w)))(x, w)
        assert rel_err(y_k, y_t) < 1e-14
        assert tree_rel_err(g_k, g_t) < 1e-13


@pytest.mark.parametrize("G,R", [(2, 2), (1, 4), (4, 1)])
@pytest.mark.parametrize("which", [0, 1, 2])
def test_cudnn_kernel_xla_path_equals_textbook(G, R, which):
    """The cuDNN kernel set's attention, on its XLA path (what runs where cuDNN does not
    take the call, and all that a CPU can run): values and gradients == the textbook
    softmax attention, with no mask, the causal mask, and padding that leaves rows empty."""
    rng = np.random.default_rng(G * 10 + R + which)
    q, k, v = attn_inputs(rng, G=G, R=R, dtype=np.float32)
    mask = masks(2, 6, 6)[which]
    scale = 1 / np.sqrt(q.shape[-1])
    c = rng.normal(size=q.shape).astype(np.float32)

    def fused(q, k, v):
        return cudnn.attention(q, k, v, mask, scale, False)

    def book(q, k, v):
        return F.scaled_dot_product_attention(q, k[:, :, None], v[:, :, None], mask=mask)[0]

    @jax.jit
    def run(q, k, v):
        return (fused(q, k, v), book(q, k, v),
                jax.grad(lambda *a: jnp.sum(fused(*a) * c), (0, 1, 2))(q, k, v),
                jax.grad(lambda *a: jnp.sum(book(*a) * c), (0, 1, 2))(q, k, v))

    y_f, y_b, g_f, g_b = run(q, k, v)
    assert rel_err(y_f, y_b) < 1e-5
    assert np.all(np.isfinite(np.asarray(y_f)))
    assert tree_rel_err(g_f, g_b) < 1e-4


ON_CUDA = Kn.platform_of() == "cuda"


@pytest.mark.skipif(not ON_CUDA, reason="cuDNN fused attention runs on NVIDIA GPUs only")
@pytest.mark.parametrize("G,R", [(4, 1), (2, 2)])
def test_cudnn_fused_attention_is_taken_and_equals_textbook_on_gpu(G, R):
    """On an NVIDIA GPU the bfloat16 causal call goes to cuDNN's fused kernel (the compiled
    HLO names it, forward and backward) and its values and gradients equal the textbook's
    float32 softmax attention of the same bfloat16 inputs to bfloat16 accuracy."""
    rng = np.random.default_rng(G + 10 * R)
    B, T, K = 2, 256, 64
    q, k, v = (jnp.asarray(a, jnp.bfloat16) for a in attn_inputs(rng, B=B, G=G, R=R, T=T, S=T, K=K))
    c = jnp.asarray(rng.normal(size=q.shape), jnp.float32)
    mask = F.causal_mask(T)[None, None, None]
    scale = 1 / np.sqrt(K)

    def fused(q, k, v):
        return cudnn.attention(q, k, v, mask, scale, True).astype(jnp.float32)

    def book(q, k, v):
        q, k, v = (a.astype(jnp.float32) for a in (q, k, v))
        return F.scaled_dot_product_attention(q, k[:, :, None], v[:, :, None], mask=mask, scale=scale)[0]

    grad = lambda f: jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) * c), (0, 1, 2)))  # noqa: E731
    hlo = grad(fused).lower(q, k, v).compile().as_text()
    assert hlo.count("__cudnn$fmha") >= 2, "cuDNN's fused attention (forward and backward) not in the HLO"
    assert rel_err(fused(q, k, v), book(q, k, v)) < 2e-2
    for g_f, g_b in zip(grad(fused)(q, k, v), grad(book)(q, k, v)):
        assert rel_err(g_f.astype(jnp.float32), g_b.astype(jnp.float32)) < 5e-2


def test_cudnn_supported_only_for_half_precision_causal_and_head_width():
    assert cudnn.cudnn_supported(jnp.bfloat16, 64, True)
    assert cudnn.cudnn_supported(jnp.float16, 128, True)
    assert not cudnn.cudnn_supported(jnp.float32, 64, True)      # cuDNN flash: 16-bit only
    assert not cudnn.cudnn_supported(jnp.bfloat16, 60, True)     # head width multiple of 8
    assert not cudnn.cudnn_supported(jnp.bfloat16, 256, True)
    assert not cudnn.cudnn_supported(jnp.bfloat16, 64, False)    # padding masks go to XLA


def test_kernels_resolved_by_platform_not_default_backend():
    assert Kn.resolve("auto", "cpu") is CPU
    assert Kn.resolve("auto", "cuda") is cudnn.CUDNN
    assert Kn.resolve("auto", "tpu") is Kn.TEXTBOOK
    assert Kn.resolve("auto", "rocm") is Kn.TEXTBOOK
    assert Kn.resolve("textbook", "cpu") is Kn.TEXTBOOK
    assert Kn.resolve("cpu", "tpu") is CPU
    with pytest.raises(ConfigError, match="model.kernels='cudnn' needs an NVIDIA GPU"):
        Kn.resolve("cudnn", "cpu")
    cpu_dev = jax.devices("cpu")[0]
    assert Kn.platform_of(cpu_dev) == "cpu"
    assert Kn.platform_of(jax.device_put(jnp.ones(3), cpu_dev)) == "cpu"
    assert Kn.platform_of({"a": jax.device_put(jnp.ones(2), cpu_dev)}) == "cpu"
    with jax.default_device(cpu_dev):
        assert Kn.platform_of() == "cpu"
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    assert Kn.platform_of(mesh) == Kn.platform_of(jax.devices()[0])


def test_attention_key_and_bad_kernels_name_are_errors():
    from jaxformer import load_config
    with pytest.raises(ConfigError, match="unknown config key model.attention"):
        load_config(None, ["model.attention=explicit"])
    with pytest.raises(ConfigError, match="model.kernels='fast' is not one of"):
        load_config(None, ["model.kernels=fast"])
