"""NNX modules against the functional core, against Flax's own attention, and the decoder's
invariants: causality (by perturbation and by gradients), jit / vmap / grad, scan == loop."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import random_model, randomize
from jaxformer_testing import reference as ref
from jaxformer_testing.tolerances import F32_VS_F64
from jaxformer import GPT, ModelConfig
from jaxformer.model.modules import DecoderBlock, FeedForward, LayerNorm, MultiHeadAttention, StackedLayersError
from jaxformer import functional as F
from jaxformer.model import stack

CFG = ModelConfig(vocab_size=37, d_model=16, n_head=4, n_layer=2, d_ff=32, max_len=16)


def randomized_model(cfg=CFG, seed=0):
    return random_model(cfg, seed=seed + 1, scale=0.2)


def test_gpt_forward_shape_and_params_tree():
    model = GPT(CFG, rngs=nnx.Rngs(0))
    tokens = jnp.zeros((3, 10), jnp.int32)
    assert model(tokens).shape == (3, 10, 37)
    p = model.params()
    assert set(p) == {"tok_emb", "pos_emb", "blocks", "ln_f"}
    assert p["blocks"]["attn"]["wq"].shape == (2, 16, 4, 4)
    assert model.num_params() == sum(x.size for x in jax.tree.leaves(p))


def test_module_equals_the_float64_reference():
    """``GPT.__call__`` against the independent float64 NumPy decoder (not against
    ``F.decoder``, which is what the module calls)."""
    model = randomized_model()
    tokens = np.random.default_rng(0).integers(0, 37, (2, 12))
    logits_mod = model(jnp.asarray(tokens))
    want = ref.decoder(jax.tree.map(np.asarray, model.params()), tokens, CFG)
    np.testing.assert_allclose(np.asarray(logits_mod), want, **F32_VS_F64)


def test_submodules_equal_functional():
    rngs = nnx.Rngs(0)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 16)), jnp.float32)
    ln = LayerNorm(16)
    ln.load_params(randomize(ln.params(), seed=2))
    p = ln.params()
    # each side compiled on its own (one program per call instead of one per primitive)
    call = nnx.jit(lambda m, x: m(x))
    np.testing.assert_array_equal(np.asarray(call(ln, x)), np.asarray(jax.jit(F.layer_norm)(x, p["scale"], p["bias"])))
    # built in one compiled program (the random init eagerly is one compile per op and shape)
    ff, blk = nnx.jit(lambda rngs: (FeedForward(16, 24, activation="swiglu", rngs=rngs),
                                    DecoderBlock(CFG, rngs=rngs)))(rngs)
    np.testing.assert_array_equal(np.asarray(call(ff, x)),
                                  np.asarray(jax.jit(F.feed_forward, static_argnums=2)(ff.params(), x, "swiglu")))
    y, aux = nnx.jit(lambda m, x: m(x, causal=True))(blk, x)
    y2, _ = jax.jit(lambda p, x: F.decoder_block(p, x, CFG, mask=F.causal_mask(5)))(blk.params(), x)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y2))
    assert aux["weights"].shape == (2, 4, 5, 5)


def test_gpt_layer_is_a_callable_block_and_stacked_modules_only_hold_parameters():
    """``GPT.layer(i)`` is layer i as a block of its own (its output is the textbook block's on
    that layer's parameters); ``GPT.blocks`` and its sub-modules hold all L layers stacked and
    say so when called, instead of computing something else."""
    model = randomized_model()
    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 5, 16)), jnp.float32)
    layer1 = jax.tree.map(lambda a: np.asarray(a)[1], model.params()["blocks"])
    y, _ = nnx.jit(lambda m, x: m(x, causal=True))(model.layer(1), x)
    want, _ = jax.jit(lambda p, x: F.decoder_block(p, x, CFG, mask=F.causal_mask(5)))(layer1, x)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(want))
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), model.layer(1).params(), layer1))
    for stacked in (model.blocks, model.blocks.attn, model.blocks.mlp, model.blocks.ln1):
        with pytest.raises(StackedLayersError, match=r"gpt\.layer\(i\)"):
            stacked(x)
    ln_f = model.params()["ln_f"]                     # a real single norm: callable
    np.testing.assert_array_equal(np.asarray(nnx.jit(lambda m, x: m(x))(model.ln_f, x)),
                                  np.asarray(jax.jit(F.layer_norm)(x, ln_f["scale"], ln_f["bias"])))


@pytest.mark.parametrize("masked", [False, True])
def test_mha_matches_flax_multihead_attention(masked):
    D, H = 16, 4
    ours, theirs = nnx.jit(lambda: (   # both built in one compiled program
        MultiHeadAttention(D, H, rngs=nnx.Rngs(0)),
        nnx.MultiHeadAttention(num_heads=H, in_features=D, qkv_features=D, out_features=D, decode=False,
                               rngs=nnx.Rngs(1))))()
    ours.load_params(randomize(ours.params(), seed=3))
    p = ours.params()
    state = nnx.state(theirs, nnx.Param)
    nnx.replace_by_pure_dict(state, {
        "query": {"kernel": p["wq"], "bias": p["bq"]}, "key": {"kernel": p["wk"], "bias": p["bk"]},
        "value": {"kernel": p["wv"], "bias": p["bv"]}, "out": {"kernel": p["wo"], "bias": p["bo"]}})
    nnx.update(theirs, state)
    x = jnp.asarray(np.random.default_rng(4).normal(size=(3, 7, D)), jnp.float32)
    mask = F.causal_mask(7)[None, None] if masked else None
    out, _ = nnx.jit(lambda m, x, mask: m(x, mask=mask))(ours, x, mask)
    expected = nnx.jit(lambda m, x, mask: m(x, mask=mask, deterministic=True))(theirs, x, mask)
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw", [dict(), dict(norm_position="post", positions="rope", n_kv_head=2),
                                dict(norm_position="none", positions="sinusoidal", activation="relu")])
def test_causality_by_perturbation(kw):
    cfg = dataclasses.replace(CFG, **kw)
    model = randomized_model(cfg)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 37, (1, 12))
    base = np.asarray(model(jnp.asarray(tokens)))
    for t in (0, 5, 11):
        changed = tokens.copy()
        changed[0, t] = (changed[0, t] + 1) % 37
        out = np.asarray(model(jnp.asarray(changed)))
        np.testing.assert_array_equal(out[0, :t], base[0, :t])
        assert not np.allclose(out[0, t], base[0, t])


@pytest.mark.parametrize("use_jit", [False, True])
def test_causality_by_gradient(use_jit):
    """d loss_t / d embedding_s is exactly zero for s > t."""
    # untied, so the token table is only an input (with tied weights it is also the output head)
    model = randomized_model(dataclasses.replace(CFG, positions="rope", tie_embeddings=False))
    params = model.params()
    cfg = model.config
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 37, (1, 8)))
    t = 4

    def loss_at_t(x_emb):
        # token s of the input is row s of x_emb: the lookup of tokens 0..7 reads the rows back
        logits, _ = F.decoder(dict(params, tok_emb=x_emb), jnp.arange(8)[None], cfg)
        return logits[0, t].sum()

    emb = params["tok_emb"][tokens[0]]  # [8, D], one row per position
    fn = jax.jit(jax.grad(loss_at_t)) if use_jit else jax.grad(loss_at_t)
    g = np.asarray(fn(jnp.concatenate([emb, params["tok_emb"][8:]])))
    assert np.all(g[t + 1:8] == 0.0)
    assert np.abs(g[: t + 1]).sum() > 0


def test_scan_and_loop_give_same_logits():
    model = randomized_model()
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, 37, (2, 9)))
    run_stack, run_textbook = jax.jit(stack.decoder, static_argnums=2), jax.jit(F.decoder, static_argnums=2)
    a, _ = run_stack(model.params(), tokens, CFG)
    b, _ = run_stack(model.params(), tokens, dataclasses.replace(CFG, scan_layers=False))
    c, _ = run_textbook(model.params(), tokens, CFG)       # the textbook: one block after another
    np.testing.assert_allclose(np.asarray(a), np.asarray(c), atol=1e-6)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def _remat_loss(p, tokens, cfg):
    logits, _ = stack.decoder(p, tokens[:, :-1], cfg)
    return F.cross_entropy(logits, tokens[:, 1:])


_remat_grad = jax.jit(jax.grad(_remat_loss), static_argnums=2)   # module level: both cases share g0's program


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_same_values_and_grads(remat):
    model = randomized_model()
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, 37, (2, 9)))
    g0 = _remat_grad(model.params(), tokens, CFG)
    g1 = _remat_grad(model.params(), tokens, dataclasses.replace(CFG, remat=remat))
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_jit_vmap_grad_on_public_functions():
    rng = np.random.default_rng(5)
    q = jnp.asarray(rng.normal(size=(6, 5, 8)), jnp.float32)
    mask = F.causal_mask(5)
    f = lambda q: F.scaled_dot_product_attention(q, q, q, mask=mask)[0]  # noqa: E731
    batched = jax.vmap(f)(q)                  # vmap applied eagerly, and under jit below
    f_jit = jax.jit(f)
    looped = jnp.stack([f_jit(q[i]) for i in range(6)])
    np.testing.assert_allclose(np.asarray(jax.jit(jax.vmap(f))(q)), np.asarray(looped), atol=1e-6)
    np.testing.assert_allclose(np.asarray(batched), np.asarray(looped), atol=1e-6)
    # gradient of a scalar through attention matches a central finite difference (float64 on host)
    g = np.asarray(jax.jit(jax.grad(lambda q: f(q).sum()))(q[0]))
    eps, i = 1e-2, (2, 3)
    q0 = np.asarray(q[0])
    qp, qm = q0.copy(), q0.copy()
    qp[i] += eps
    qm[i] -= eps
    fd = (float(f_jit(qp).sum()) - float(f_jit(qm).sum())) / (2 * eps)
    np.testing.assert_allclose(float(g[i]), fd, rtol=2e-2, atol=1e-3)
    # the whole decoder: vmap over examples == batch call
    model = randomized_model()
    tokens = jnp.asarray(rng.integers(0, 37, (3, 6)))
    one = lambda t: F.decoder(model.params(), t[None], CFG)[0][0]  # noqa: E731
    np.testing.assert_allclose(np.asarray(jax.jit(jax.vmap(one))(tokens)), np.asarray(model(tokens)), atol=1e-5)
    for fn in (F.layer_norm, F.rms_norm):
        args = (q, jnp.ones(8)) if fn is F.rms_norm else (q, jnp.ones(8), jnp.zeros(8))
        assert jax.jit(fn)(*args).shape == q.shape


def test_dropout_is_keyed_and_inverted():
    cfg = dataclasses.replace(CFG, dropout=0.5)
    model = randomized_model(cfg)
    tokens = jnp.zeros((2, 8), jnp.int32)
    a = model(tokens, key=jax.random.key(0))
    b = model(tokens, key=jax.random.key(0))
    c = model(tokens, key=jax.random.key(1))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(c))
    # without a key dropout is off: same as a dropout-free config (both compiled: the model's call is)
    np.testing.assert_array_equal(np.asarray(model(tokens)),
                                  np.asarray(jax.jit(stack.decoder, static_argnums=2)(model.params(), tokens, CFG)[0]))
    x = jnp.ones((1000,))
    y = np.asarray(F.dropout(x, 0.25, jax.random.key(0)))
    np.testing.assert_allclose(np.unique(y), [0.0, 1 / 0.75], rtol=1e-6)
    assert abs(y.mean() - 1.0) < 0.1


def test_bf16_compute_close_to_float32():
    model = randomized_model()
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, 37, (2, 9)))
    run = jax.jit(F.decoder, static_argnums=2)
    a, _ = run(model.params(), tokens, CFG)
    b, _ = run(model.params(), tokens, dataclasses.replace(CFG, dtype="bfloat16"))
    assert b.dtype == jnp.float32
    assert np.max(np.abs(np.asarray(a) - np.asarray(b))) < 0.1 * np.max(np.abs(np.asarray(a)))


def test_capture_returns_named_intermediates():
    model = randomized_model()
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, 37, (2, 9)))
    logits, aux = jax.jit(lambda p, t: stack.decoder(p, t, CFG, capture=True))(model.params(), tokens)
    assert aux["weights"].shape == (2, 2, 4, 9, 9)
    assert aux["resid"].shape == (3, 2, 9, 16)
    np.testing.assert_allclose(np.asarray(aux["weights"]).sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(np.asarray(aux["weights"]), k=1) == 0.0)
    # resid[l+1] = resid[l] + attn_out[l] + mlp_out[l] for a pre-norm model
    r = np.asarray(aux["resid"])
    np.testing.assert_allclose(r[1], r[0] + np.asarray(aux["attn_out"][0] + aux["mlp_out"][0]), atol=1e-5)
