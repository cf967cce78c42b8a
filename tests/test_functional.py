"""Each functional piece against the independent float64 NumPy references in jaxformer_testing/reference.py."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer_testing import reference as ref
from conftest import randomize
from jaxformer import GPT, ModelConfig
from jaxformer import functional as F
from jaxformer.model import stack
from jaxformer_testing.tolerances import F32_VS_F64

RTOL = F32_VS_F64["rtol"]


def close(actual, expected, rtol=RTOL):
    """Relative error measured against the scale of the expected values."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    err = np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-12)
    assert err < rtol, f"relative error {err:.2e} >= {rtol}"


@pytest.mark.parametrize("shape", [(1, 4, 8), (2, 3, 7, 16), (2, 2, 5, 9, 4)])
@pytest.mark.parametrize("masked", [False, True])
def test_attention_matches_reference(shape, masked):
    rng = np.random.default_rng(sum(shape))
    *lead, T, K = shape
    q = rng.normal(size=shape).astype(np.float32)
    k = rng.normal(size=(*lead, T + 2, K)).astype(np.float32)
    v = rng.normal(size=(*lead, T + 2, K)).astype(np.float32)
    mask = rng.random((T, T + 2)) > 0.3 if masked else None
    out, w = jax.jit(F.scaled_dot_product_attention)(q, k, v, mask=mask)
    ref_out, ref_w = ref.attention(q, k, v, mask)
    close(out, ref_out)
    close(w, ref_w)
    np.testing.assert_allclose(np.asarray(w).sum(-1)[ref_w.sum(-1) > 0], 1.0, atol=1e-6)


def test_causal_mask_values():
    m = np.asarray(F.causal_mask(4))
    np.testing.assert_array_equal(m, np.tril(np.ones((4, 4), bool)))
    m = np.asarray(F.causal_mask(2, 5, offset=3))
    np.testing.assert_array_equal(m, [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])


def test_fully_masked_rows_are_zero_not_nan():
    q = np.ones((2, 3, 4), np.float32)
    mask = np.array([[True, False, False], [False, False, False], [True, True, True]])
    out, w = jax.jit(F.scaled_dot_product_attention)(q, q, q, mask=mask)
    assert np.isfinite(np.asarray(out)).all() and np.isfinite(np.asarray(w)).all()
    np.testing.assert_array_equal(np.asarray(w)[:, 1], 0.0)
    np.testing.assert_array_equal(np.asarray(out)[:, 1], 0.0)
    g = jax.jit(jax.grad(lambda q: F.scaled_dot_product_attention(q, q, q, mask=mask)[0].sum()))(q)
    assert np.isfinite(np.asarray(g)).all()


def test_large_scores_do_not_overflow():
    q = np.full((1, 3, 4), 1e4, np.float32)
    out, w = jax.jit(lambda q: F.scaled_dot_product_attention(q, q, q, mask=F.causal_mask(3)))(q)
    assert np.isfinite(np.asarray(w)).all()
    np.testing.assert_allclose(np.asarray(w).sum(-1), 1.0, atol=1e-6)


def test_split_merge_heads_roundtrip():
    x = jnp.arange(2 * 3 * 12, dtype=jnp.float32).reshape(2, 3, 12)
    h = F.split_heads(x, 4)
    assert h.shape == (2, 4, 3, 3)
    np.testing.assert_array_equal(np.asarray(h[1, 2, 0]), np.asarray(x[1, 0, 6:9]))
    np.testing.assert_array_equal(np.asarray(F.merge_heads(h)), np.asarray(x))


@pytest.mark.parametrize("D", [8, 33])
def test_norms(D):
    rng = np.random.default_rng(D)
    x = rng.normal(2.0, 3.0, (3, 5, D)).astype(np.float32)
    g, b = rng.normal(size=D).astype(np.float32), rng.normal(size=D).astype(np.float32)
    ln, ln_eps, rms = jax.jit(lambda x, g, b: (F.layer_norm(x, g, b), F.layer_norm(x, g, b, eps=1e-2),
                                               F.rms_norm(x, g)))(x, g, b)
    close(ln, ref.layer_norm(x, g, b))
    close(ln_eps, ref.layer_norm(x, g, b, eps=1e-2))
    close(rms, ref.rms_norm(x, g))


@pytest.mark.parametrize("act", ["relu", "gelu", "swiglu"])
@pytest.mark.parametrize("bias", [True, False])
def test_feed_forward(act, bias):
    rng = np.random.default_rng(1)
    D, Fw = 8, 20
    p = {"w_in": rng.normal(size=(D, Fw)), "w_out": rng.normal(size=(Fw, D))}
    if act == "swiglu":
        p["w_gate"] = rng.normal(size=(D, Fw))
    if bias:
        p.update(b_in=rng.normal(size=Fw), b_out=rng.normal(size=D))
    p = {k: v.astype(np.float32) for k, v in p.items()}
    x = rng.normal(size=(2, 6, D)).astype(np.float32)
    close(F.feed_forward(p, x, act), ref.ffn(p, x, act))


def test_gelu_is_the_tanh_approximation():
    x = np.linspace(-6, 6, 101).astype(np.float32)
    close(F.gelu_tanh(x), ref.gelu_tanh(x.astype(np.float64)))
    close(F.gelu_tanh(x), jax.nn.gelu(x, approximate=True))


def test_gelu_hand_written_gradient():
    """The custom VJP equals the float64 central difference and autodiff of jax.nn.gelu."""
    x = np.linspace(-6, 6, 201)
    h = 1e-6
    fd = (ref.gelu_tanh(x + h) - ref.gelu_tanh(x - h)) / (2 * h)
    g, g_ref = jax.jit(lambda x: (jax.vmap(jax.grad(F.gelu_tanh))(x),
                                  jax.vmap(jax.grad(lambda v: jax.nn.gelu(v, approximate=True)))(x)))(
        np.asarray(x, np.float32))
    np.testing.assert_allclose(np.asarray(g), fd, atol=1e-5)  # float32 tanh saturates near |x|=4.5
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), atol=5e-6)
    # second order (e.g. for Hessian-vector products) still works through the custom rule
    assert np.isfinite(float(jax.jit(jax.grad(jax.grad(lambda v: F.gelu_tanh(v).sum())))(1.0)))


@pytest.mark.parametrize("max_len,d", [(10, 8), (50, 64), (7, 6)])
def test_sinusoidal_positions(max_len, d):
    pe = np.asarray(jax.jit(F.sinusoidal_positions, static_argnums=(0, 1))(max_len, d))
    close(pe, ref.sinusoidal(max_len, d))
    # the textbook spot values
    assert pe[0, 0] == 0.0 and pe[0, 1] == 1.0
    np.testing.assert_allclose(pe[1, 0], np.sin(1.0), rtol=1e-6)


def test_rope_matches_reference_and_is_relative():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 5, 3, 8)).astype(np.float32)
    pos = np.array([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]])
    rotate = jax.jit(lambda x, pos: F.apply_rope(x, *F.rope_frequencies(pos, 8)))
    close(rotate(x, pos), ref.rope(x, pos))
    # q.k after rotation depends only on the distance between positions
    q, k = rng.normal(size=(1, 1, 1, 8)).astype(np.float32), rng.normal(size=(1, 1, 1, 8)).astype(np.float32)

    def dot(pq, pk):
        return float(np.sum(np.asarray(rotate(q, np.array([[pq]])), np.float64)
                            * np.asarray(rotate(k, np.array([[pk]])), np.float64)))
    np.testing.assert_allclose(dot(3, 1), dot(13, 11), rtol=1e-4)


@pytest.mark.parametrize("H,G", [(4, 4), (4, 2), (4, 1), (1, 1)])
@pytest.mark.parametrize("use_rope", [False, True])
def test_multi_head_attention(H, G, use_rope):
    rng = np.random.default_rng(H * 10 + G)
    B, T, D = 2, 6, 16
    K = D // H
    p = {"wq": rng.normal(size=(D, H, K)), "wk": rng.normal(size=(D, G, K)),
         "wv": rng.normal(size=(D, G, K)), "wo": rng.normal(size=(H, K, D)),
         "bq": rng.normal(size=(H, K)), "bk": rng.normal(size=(G, K)),
         "bv": rng.normal(size=(G, K)), "bo": rng.normal(size=D)}
    p = {k: (0.3 * v).astype(np.float32) for k, v in p.items()}
    x = rng.normal(size=(B, T, D)).astype(np.float32)
    mask = np.tril(np.ones((T, T), bool))
    pos = np.broadcast_to(np.arange(T), (B, T))
    out, w = jax.jit(lambda p, x, pos: F.multi_head_attention(
        p, x, mask=mask, rope=F.rope_frequencies(pos, K) if use_rope else None))(p, x, pos)
    ref_out, ref_w = ref.mha(p, x, mask, pos, 10000.0 if use_rope else None)
    close(out, ref_out)
    close(w, ref_w)


CONFIGS = [
    dict(norm_position="pre", positions="learned", activation="gelu"),
    dict(norm_position="post", positions="sinusoidal", activation="relu", tie_embeddings=False),
    dict(norm_position="none", positions="none", activation="relu", bias=False),
    dict(norm_position="pre", norm="rmsnorm", positions="rope", activation="swiglu", n_kv_head=2, bias=False),
]


@pytest.mark.parametrize("kw", CONFIGS, ids=lambda kw: "-".join(str(v) for v in kw.values()))
@pytest.mark.parametrize("scan", [True, False])
def test_decoder_matches_reference(kw, scan):
    cfg = ModelConfig(vocab_size=50, d_model=16, n_head=4, n_layer=3, d_ff=24, max_len=12,
                      scan_layers=scan, **kw)
    params = randomize(GPT.abstract(cfg).params(), seed=7, scale=0.2)
    tokens = np.random.default_rng(0).integers(0, 50, (2, 9))
    for decoder in (F.decoder, stack.decoder):   # the textbook, and the engine (scan or not)
        logits, _ = decoder(params, jnp.asarray(tokens), cfg)
        close(logits, ref.decoder(params, tokens, cfg))


def test_block_norm_positions_differ():
    """pre, post and none must really be three different computations."""
    base = ModelConfig(vocab_size=10, d_model=8, n_head=2, n_layer=1, d_ff=16, max_len=4)
    params = randomize(GPT.abstract(base).params()["blocks"], seed=1)
    params = jax.tree.map(lambda a: a[0], params)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 4, 8)), jnp.float32)
    outs = [np.asarray(F.decoder_block(params, x, dataclasses.replace(base, norm_position=p),
                                       mask=F.causal_mask(4))[0]) for p in ("pre", "post", "none")]
    assert not np.allclose(outs[0], outs[1]) and not np.allclose(outs[0], outs[2])
    # post-norm output rows are normalised: undo ln2's affine part, get mean 0 and variance 1
    z = (outs[1] - np.asarray(params["ln2"]["bias"])) / np.asarray(params["ln2"]["scale"])
    np.testing.assert_allclose(z.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.var(-1), 1.0, rtol=1e-3)


def test_cross_entropy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 7)).astype(np.float32) * 3
    targets = rng.integers(0, 7, (2, 3))
    lp = logits - np.log(np.exp(logits.astype(np.float64)).sum(-1, keepdims=True))
    expected = -np.take_along_axis(lp, targets[..., None], -1).mean()
    np.testing.assert_allclose(float(F.cross_entropy(logits, targets)), expected, rtol=1e-6)
    big = jnp.asarray(logits) * 1e4
    assert np.isfinite(float(F.cross_entropy(big, targets)))


@pytest.mark.parametrize("H,G", [(4, 4), (4, 2), (4, 1)])
def test_fused_attention_path_equals_explicit(H, G):
    """Through multi_head_attention: the cuDNN kernel set (jax.nn.dot_product_attention, on
    its XLA path here) and the CPU kernels == the textbook softmax path."""
    from jaxformer.model.kernels import get
    rng = np.random.default_rng(11)
    B, T, D = 3, 7, 16
    K = D // H
    p = {"wq": rng.normal(size=(D, H, K)), "wk": rng.normal(size=(D, G, K)),
         "wv": rng.normal(size=(D, G, K)), "wo": rng.normal(size=(H, K, D)), "bo": rng.normal(size=D)}
    p = {k: (0.3 * v).astype(np.float32) for k, v in p.items()}
    x = rng.normal(size=(B, T, D)).astype(np.float32)
    pad = np.arange(T)[None, :] >= np.array([0, 2, 3])[:, None]  # left padding
    causal = np.tril(np.ones((T, T), bool))
    mask = causal[None, None] & pad[:, None, None, :]

    @jax.jit
    def explicit_and_fused(p, x, m):
        rope = F.rope_frequencies(jnp.broadcast_to(jnp.arange(T), (B, T)), K)
        explicit = F.multi_head_attention(p, x, mask=m, rope=rope)
        fused = {name: F.multi_head_attention(p, x, mask=m, rope=rope, dense=stack.block_kernels(get(name))["dense"],
                                              attend=stack.attention_kernel(get(name), is_causal=m.ndim == 2))
                 for name in ("cudnn", "cpu")}
        return explicit, fused

    for m in (mask, causal):
        (explicit, w), fused_by_name = explicit_and_fused(p, x, m)
        for name in ("cudnn", "cpu"):
            fused, none = fused_by_name[name]
            assert none is None and w is not None
            np.testing.assert_allclose(np.asarray(fused), np.asarray(explicit), atol=1e-5, rtol=1e-5)
