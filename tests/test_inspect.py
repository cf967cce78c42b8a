"""jaxformer.interp.activations (attention maps, capture, logit lens) and head statistics."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer_testing import reference as ref
from conftest import random_model
from jaxformer import ModelConfig, attention_maps
from jaxformer.interp import activations as I
from jaxformer.interp import heads
from jaxformer.interp.activations import capture
from jaxformer.viz.text import token_labels
from jaxformer.errors import DataError

CFG = ModelConfig(vocab_size=29, d_model=16, n_head=4, n_layer=2, d_ff=32, max_len=16)
VARIANTS = [dict(), dict(norm_position="post", positions="rope", n_kv_head=2),
            dict(norm_position="none", positions="sinusoidal", activation="relu", scan_layers=False),
            dict(norm="rmsnorm", bias=False, tie_embeddings=False, dropout=0.1)]


def reference_forward(m, t):
    """The float64 NumPy decoder of ``jaxformer_testing.reference``, layer by layer (pre-, post-
    and no-norm blocks): ``(resid [B, L+1, T, D], attn_out, mlp_out [B, L, T, D],
    weights [B, L, H, T, T])``."""
    c = m.config
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), m.params())
    B, T = t.shape
    x = p["tok_emb"][t]
    if c.positions == "learned":
        x = x + p["pos_emb"][:T]
    elif c.positions == "sinusoidal":
        x = x + ref.sinusoidal(c.max_len, c.d_model)[:T]
    positions, mask = np.broadcast_to(np.arange(T), (B, T)), np.tril(np.ones((T, T), bool))
    theta = c.rope_theta if c.positions == "rope" else None
    resid, attn, mlp, weights = [x], [], [], []
    for layer in range(c.n_layer):
        b = jax.tree.map(lambda a: a[layer], p["blocks"])
        n = lambda name, h: ref.norm(b[name], h, c.norm, c.norm_eps, c)  # noqa: E731
        a, w = ref.mha(b["attn"], n("ln1", x) if c.norm_position == "pre" else x, mask, positions, theta, c)
        h = x + a if c.norm_position != "post" else n("ln1", x + a)
        f = ref.ffn(b["mlp"], n("ln2", h) if c.norm_position == "pre" else h, c.activation)
        x = h + f if c.norm_position != "post" else n("ln2", h + f)
        resid.append(x), attn.append(a), mlp.append(f), weights.append(w)
    return tuple(np.stack(xs, 1) for xs in (resid, attn, mlp, weights))


def model_for(**kw):
    return _model(tuple(sorted(kw.items())))


@functools.lru_cache(maxsize=None)
def _model(items):
    cfg = dataclasses.replace(CFG, **dict(items))
    return random_model(cfg, seed=3, scale=0.4)


def tokens(B=3, T=11, seed=0):
    return np.random.default_rng(seed).integers(0, CFG.vocab_size, (B, T))


@pytest.mark.parametrize("kw", VARIANTS)
def test_attention_maps_equal_functional_weights_for_every_layer(kw):
    m = model_for(**kw)
    t = tokens()
    w = np.asarray(attention_maps(m, t))
    assert w.shape == (3, CFG.n_layer, CFG.n_head, 11, 11) and w.dtype == np.float32
    if m.config.norm in ("layernorm", "rmsnorm") and m.config.norm_position in ("pre", "post", "none"):
        np.testing.assert_allclose(w, reference_forward(m, t)[3], atol=5e-5)   # float64, layer by layer


@pytest.mark.parametrize("kw", VARIANTS[:2])
def test_rows_sum_to_one_and_future_is_exactly_zero(kw):
    w = np.asarray(attention_maps(model_for(**kw), tokens(T=16)))
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
    upper = np.triu(np.ones((16, 16), bool), 1)
    assert np.all(w[..., upper] == 0.0)
    assert np.all(w[..., ~upper] > 0.0)
    np.testing.assert_array_equal(w[..., 0, 0], 1.0)                  # the first token sees itself only


def test_first_layer_matches_float64_reference():
    m = model_for()
    t = tokens(B=2, T=9)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), m.params())
    x = p["tok_emb"][t] + p["pos_emb"][np.arange(9)]
    b = jax.tree.map(lambda a: a[0], p["blocks"])
    h = ref.layer_norm(x, b["ln1"]["scale"], b["ln1"]["bias"])
    a = b["attn"]
    q = np.einsum("btd,dhk->bhtk", h, a["wq"]) + a["bq"][None, :, None]
    k = np.einsum("btd,dhk->bhtk", h, a["wk"]) + a["bk"][None, :, None]
    v = np.einsum("btd,dhk->bhtk", h, a["wv"]) + a["bv"][None, :, None]
    _, w_ref = ref.attention(q, k, v, mask=np.tril(np.ones((9, 9), bool)))
    w = np.asarray(attention_maps(m, t))[:, 0]
    np.testing.assert_allclose(w, w_ref, rtol=1e-5, atol=1e-6)


def test_vmap_equals_a_loop_over_examples():
    m = model_for(norm_position="post", n_kv_head=2)
    t = tokens(B=5, T=10, seed=4)
    batched = np.asarray(attention_maps(m, t))
    for b in range(5):
        one = np.asarray(attention_maps(m, t[b:b + 1]))[0]
        np.testing.assert_allclose(batched[b], one, atol=1e-5)   # float32 matmul blocking differs
        np.testing.assert_allclose(batched[b], reference_forward(m, t[b:b + 1])[3][0], atol=5e-5)


def test_attention_maps_is_one_compiled_call_with_vmap():
    m = model_for()
    jaxpr = jax.make_jaxpr(lambda p, t: I.attention_maps_fn(p, t, m.config))(m.params(), jnp.asarray(tokens()))
    text = str(jaxpr)
    assert text.count("pjit") == 1 or "jit" in text
    # a batch of 7 and a batch of 3 are traced once each, not once per example
    I.attention_maps_fn._clear_cache()
    attention_maps(m, tokens(B=7))
    attention_maps(m, tokens(B=3))
    assert I.attention_maps_fn._cache_size() == 2


def test_tuple_model_and_errors():
    m = model_for()
    t = tokens(B=1, T=5)
    np.testing.assert_array_equal(np.asarray(attention_maps((m.params(), m.config), t)),
                                  np.asarray(attention_maps(m, t)))
    with pytest.raises(DataError, match=r"\[B, T\]"):
        attention_maps(m, t[0])
    with pytest.raises(DataError, match="outside the vocabulary"):
        attention_maps(m, [[1, 2, 29]])
    with pytest.raises(DataError, match="max_len=16"):
        attention_maps(m, np.zeros((1, 17), int))
    with pytest.raises(DataError, match="integer"):
        attention_maps(m, np.zeros((1, 3), np.float32))


# ----------------------------------------------------------------------------- capture
@pytest.mark.parametrize("kw", VARIANTS[:3])
def test_capture_residual_stream_matches_manual_forward(kw):
    m = model_for(**kw)
    t = tokens(B=2, T=12, seed=1)
    acts = capture(m, t)
    L, D, V = CFG.n_layer, CFG.d_model, CFG.vocab_size
    assert {k: tuple(v.shape) for k, v in acts.items()} == {
        "embed": (2, 12, D), "resid": (2, L + 1, 12, D), "attn_out": (2, L, 12, D),
        "mlp_out": (2, L, 12, D), "weights": (2, L, CFG.n_head, 12, 12), "logits": (2, 12, V),
        "logit_lens": (2, L + 1, 12, V)}
    resid, attn, mlp, _ = reference_forward(m, t)
    tol = dict(atol=1e-4, rtol=1e-4)     # float32; no-norm activations grow to ~10
    np.testing.assert_allclose(np.asarray(acts["resid"]), resid, **tol)
    np.testing.assert_allclose(np.asarray(acts["attn_out"]), attn, **tol)
    np.testing.assert_allclose(np.asarray(acts["mlp_out"]), mlp, **tol)
    np.testing.assert_array_equal(np.asarray(acts["embed"]), np.asarray(acts["resid"])[:, 0])
    np.testing.assert_allclose(np.asarray(acts["logits"]), np.asarray(m(jnp.asarray(t))), **tol)
    np.testing.assert_allclose(np.asarray(acts["weights"]), np.asarray(attention_maps(m, t)), atol=1e-6)
    if m.config.norm_position != "post":   # residual additivity: x_{i+1} = x_i + attn_i + mlp_i
        r = np.asarray(acts["resid"])
        np.testing.assert_allclose(r[:, 1:], r[:, :-1] + np.asarray(acts["attn_out"]) + np.asarray(acts["mlp_out"]), **tol)


@pytest.mark.parametrize("kw", [dict(), dict(tie_embeddings=False, norm="rmsnorm")])
def test_logit_lens_last_layer_is_the_model_output(kw):
    m = model_for(**kw)
    t = tokens(B=2, T=8)
    acts = capture(m, t)
    np.testing.assert_allclose(np.asarray(acts["logit_lens"][:, -1]), np.asarray(acts["logits"]), atol=1e-5)
    # and every depth by hand in float64: final layer norm, then the unembedding
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), m.params())
    r = np.asarray(acts["resid"], np.float64)
    h = (ref.layer_norm(r, p["ln_f"]["scale"], p["ln_f"]["bias"]) if m.config.norm == "layernorm"
         else ref.rms_norm(r, p["ln_f"]["scale"]))
    w = p["tok_emb"].T if m.config.tie_embeddings else p["lm_head"]
    np.testing.assert_allclose(np.asarray(acts["logit_lens"]), h @ w, rtol=1e-4, atol=1e-4)
    assert "logit_lens" not in capture(m, t, with_logit_lens=False)


# ----------------------------------------------------------------------------- analysis helpers
def test_layer_cosine_similarity_known_answers():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 8))
    resid = np.stack([a, 2.0 * a, -a])                      # same direction, scaled, opposite
    s = I.layer_cosine_similarity(resid)
    np.testing.assert_allclose(s, [[1, 1, -1], [1, 1, -1], [-1, -1, 1]], atol=1e-12)
    e = np.eye(4)
    np.testing.assert_allclose(I.token_cosine_similarity(e * 3), np.eye(4), atol=1e-12)


def causal_pattern(kind, T=8):
    w = np.zeros((T, T))
    for t in range(T):
        if kind == "prev":
            w[t, max(t - 1, 0)] = 1
        elif kind == "first":
            w[t, 0] = 1
        elif kind == "self":
            w[t, t] = 1
        else:
            w[t, :t + 1] = 1 / (t + 1)
    return w


def test_head_statistics_and_descriptions():
    w = np.stack([causal_pattern(k) for k in ("prev", "first", "self", "uniform")])[None]  # [1, 4, T, T]
    s = heads.head_statistics(w)
    np.testing.assert_allclose(s["prev"][0], [1, 1 / 7, 0, np.mean([1 / (t + 1) for t in range(1, 8)])], atol=1e-12)
    np.testing.assert_allclose(s["mean_offset"][0, :3], [1.0, np.mean(np.arange(1, 8)), 0.0], atol=1e-12)
    np.testing.assert_allclose(s["entropy"][0, :3], 0.0, atol=1e-12)
    np.testing.assert_allclose(s["norm_entropy"][0, 3], 1.0, atol=1e-12)
    labels = [d.split(" ")[0] for d in heads.describe_heads(s)[0]]
    assert labels == ["previous-token", "first-token", "self", "diffuse"]
    mixed = 0.5 * causal_pattern("prev") + 0.5 * causal_pattern("first")
    mixed[1] = causal_pattern("prev")[1]
    assert heads.describe_heads(heads.head_statistics(mixed[None, None]), threshold=0.6)[0][0].startswith("mixed")


def test_token_labels_show_the_split():
    from jaxformer.data import ByteTokenizer, CharTokenizer

    bt = ByteTokenizer()
    assert token_labels(bt, bt.encode("a b\nä\t\x01")) == ["a", "\u2423", "b", "\u21b5", "<c3>", "<a4>",
                                                             "\u21e5", "<01>"]
    ct = CharTokenizer.from_text("hello world")
    assert token_labels(ct, ct.encode("hello world")) == list("hello") + ["\u2423"] + list("world")


def test_next_token_distribution_filters():
    logits = jnp.asarray([2.0, 1.0, 0.5, -1.0, 3.0])
    p1 = I.next_token_distribution(logits)
    np.testing.assert_allclose(p1, ref.softmax(np.asarray(logits, np.float64)), atol=1e-6)
    np.testing.assert_array_equal(I.next_token_distribution(logits, temperature=0), [0, 0, 0, 0, 1])
    pk = I.next_token_distribution(logits, top_k=2)
    assert (pk > 0).sum() == 2 and pk[4] > pk[0] > 0
    hot = I.next_token_distribution(logits, temperature=2.0)
    assert hot.max() < p1.max()                            # higher temperature flattens
    assert (I.next_token_distribution(logits, top_p=0.5) > 0).sum() == 1   # the top token has 0.62
    pp = I.next_token_distribution(logits, top_p=0.8)
    assert (pp > 0).sum() == 2                              # 0.62 + 0.23 reaches 0.8
    for p in (pk, hot, pp):
        np.testing.assert_allclose(p.sum(), 1.0, atol=1e-6)
