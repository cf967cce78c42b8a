"""The seed material's hand-computed layer ("the cat sleeps"), reproduced to 1e-6."""
import dataclasses

import jax.numpy as jnp
import numpy as np

from jaxformer import ModelConfig
from jaxformer import functional as F

X = np.array([[0.2, 0.1, 0.0, 0.3], [0.9, 0.7, 0.1, 0.0], [0.8, 0.2, 0.6, 0.4]])
POS = np.zeros((3, 4))
POS[np.arange(3), np.arange(3)] = 0.05
W_Q = np.array([[0.5, 0.1, 0.0, 0.2], [0.0, 0.6, 0.1, 0.0], [0.3, 0.0, 0.7, 0.1], [0.0, 0.2, 0.0, 0.5]])
W_K = np.array([[0.4, 0.0, 0.1, 0.2], [0.1, 0.5, 0.0, 0.1], [0.2, 0.1, 0.6, 0.0], [0.0, 0.2, 0.1, 0.4]])
W_V = np.array([[0.3, 0.2, 0.1, 0.0], [0.0, 0.4, 0.2, 0.1], [0.1, 0.0, 0.5, 0.2], [0.2, 0.1, 0.0, 0.6]])
# The MLP's weights (4 -> 8 -> 4, no bias): a fixed pattern with mixed signs so ReLU matters.
W1 = (np.arange(32).reshape(4, 8) % 7 - 3) / 10.0
W2 = (np.arange(32).reshape(8, 4) % 5 - 2) / 10.0


def by_hand():
    """The seed's computation in float64, step by step."""
    x = X + POS
    q, k, v = x @ W_Q, x @ W_K, x @ W_V
    scores = q @ k.T / np.sqrt(4)
    w = np.exp(scores - scores.max(1, keepdims=True))
    w = w / w.sum(1, keepdims=True)
    attn = w @ v
    h1 = x + attn
    mlp = np.maximum(h1 @ W1, 0) @ W2
    return dict(x=x, q=q, k=k, v=v, scores=scores, weights=w, attn=attn, h1=h1, mlp=mlp, out=h1 + mlp)


def block_params():
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    attn = {"wq": f32(W_Q[:, None, :]), "wk": f32(W_K[:, None, :]), "wv": f32(W_V[:, None, :]),
            "wo": f32(np.eye(4)[None])}  # single head, no output projection in the seed
    return {"attn": attn, "mlp": {"w_in": f32(W1), "w_out": f32(W2)}}


def test_hand_values_of_first_query():
    # x0 = [0.25, 0.1, 0.0, 0.3]; Q0 = x0 W_Q worked out on paper
    np.testing.assert_allclose(by_hand()["q"][0], [0.125, 0.145, 0.01, 0.2], atol=1e-12)


def test_each_intermediate_matches():
    ref = by_hand()
    x = jnp.asarray(ref["x"], jnp.float32)[None]
    p = block_params()
    q, k, v = F.attention_projections(p["attn"], x)
    for name, got in (("q", q), ("k", k), ("v", v)):
        np.testing.assert_allclose(np.asarray(got)[0, :, 0], ref[name], atol=1e-6, err_msg=name)
    out, w = F.scaled_dot_product_attention(q[0, :, 0], k[0, :, 0], v[0, :, 0])
    np.testing.assert_allclose(np.asarray(w), ref["weights"], atol=1e-6)
    np.testing.assert_allclose(np.asarray(w).sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out), ref["attn"], atol=1e-6)
    np.testing.assert_allclose(np.asarray(F.feed_forward(p["mlp"], jnp.asarray(ref["h1"], jnp.float32), "relu")),
                               ref["mlp"], atol=1e-6)


def test_whole_block_no_norm_no_mask():
    ref = by_hand()
    cfg = ModelConfig(vocab_size=3, d_model=4, n_head=1, n_layer=1, d_ff=8, max_len=3,
                      norm_position="none", activation="relu", bias=False, positions="none")
    x = jnp.asarray(ref["x"], jnp.float32)[None]
    y, aux = F.decoder_block(block_params(), x, cfg, mask=None)
    np.testing.assert_allclose(np.asarray(aux["weights"])[0, 0], ref["weights"], atol=1e-6)
    np.testing.assert_allclose(np.asarray(aux["attn_out"])[0], ref["attn"], atol=1e-6)
    np.testing.assert_allclose(np.asarray(aux["mlp_out"])[0], ref["mlp"], atol=1e-6)
    np.testing.assert_allclose(np.asarray(y)[0], ref["out"], atol=1e-6)
    # with a causal mask the first token can only attend to itself
    _, aux = F.decoder_block(block_params(), x, dataclasses.replace(cfg), mask=F.causal_mask(3))
    np.testing.assert_allclose(np.asarray(aux["weights"])[0, 0, 0], [1.0, 0.0, 0.0], atol=1e-7)
