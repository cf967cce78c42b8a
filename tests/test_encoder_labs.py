"""The three unmasked labs through the model API, within 1e-6 (float64 where the cells allow):
(a) a single-head block with post-norm, (b) ``torch.nn.MultiheadAttention`` and the labs'
``MiniTransformerLayer`` (post-norm, ReLU MLP: ``torch.nn.TransformerEncoderLayer``), (c) the
hand-computed "the cat sleeps" layer as a whole model (``causal=False``, ``norm_position=none``)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxformer import ModelConfig, interp
from jaxformer.model.modules import DecoderBlock, Encoder, MultiHeadAttention
from test_seed_layer import POS, W1, W2, W_K, W_Q, W_V, X, by_hand


def _ln(x, g, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * g + b


def _softmax(s):
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _f64(tree):
    return jax.tree.map(lambda a: jax.device_put(np.asarray(a, np.float64)), tree)   # (under enable_x64)


def test_a_single_head_post_norm_block_without_a_mask():
    """The lab's cell in NumPy: ``x1 = LN(x + softmax(q k^T / sqrt(d)) v W_o)``,
    ``out = LN(x1 + relu(x1 W_1 + b_1) W_2 + b_2)``; the block module called with no mask."""
    D, Fw, T = 6, 12, 5
    cfg = ModelConfig(vocab_size=8, d_model=D, n_head=1, n_layer=1, d_ff=Fw, max_len=T, norm_position="post",
                      activation="relu", causal=False)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, T, D))
    with jax.enable_x64(True):
        block = nnx.jit(lambda: DecoderBlock(cfg, rngs=nnx.Rngs(0)))()   # the init as one program
        p = jax.tree.map(lambda a: rng.normal(0, 0.4, a.shape), block.params())
        block.load_params(_f64(p))
        # compiled (a block eagerly is one compile per op); causal is a static choice
        call = nnx.jit(lambda m, x, causal: m(x, causal=causal), static_argnums=2)
        y, aux = call(block, jnp.asarray(x), False)
        a = p["attn"]
        q, k, v = (x[0] @ a[w][:, 0] + a["b" + w[1]][0] for w in ("wq", "wk", "wv"))
        w = _softmax(q @ k.T / np.sqrt(D))
        x1 = _ln(x[0] + (w @ v) @ a["wo"][0] + a["bo"], p["ln1"]["scale"], p["ln1"]["bias"])
        m = p["mlp"]
        h = np.maximum(x1 @ m["w_in"] + m["b_in"], 0) @ m["w_out"] + m["b_out"]
        want = _ln(x1 + h, p["ln2"]["scale"], p["ln2"]["bias"])
        np.testing.assert_allclose(np.asarray(aux["weights"])[0, 0], w, atol=1e-12)
        np.testing.assert_allclose(np.asarray(y)[0], want, atol=1e-12)
        causal, _ = call(block, jnp.asarray(x), True)     # asked for, the mask is there
        assert np.abs(np.asarray(causal) - np.asarray(y)).max() > 1e-3


def _torch_layer(D, H, Fw, seed=0):
    torch = pytest.importorskip("torch")
    torch.manual_seed(seed)
    layer = torch.nn.TransformerEncoderLayer(D, H, dim_feedforward=Fw, dropout=0.0, activation="relu",
                                             batch_first=True, norm_first=False).double().eval()
    with torch.no_grad():
        for prm in layer.parameters():
            prm.copy_(torch.randn_like(prm) * 0.4)
    return torch, layer


def _ours_from_torch(layer, D, H):
    """torch's ``[out, in]`` weights as our ``{"attn", "mlp", "ln1", "ln2"}`` block tree."""
    g = lambda t: t.detach().numpy()   # noqa: E731
    Wq, Wk, Wv = np.split(g(layer.self_attn.in_proj_weight), 3)
    bq, bk, bv = np.split(g(layer.self_attn.in_proj_bias), 3)
    K = D // H
    attn = {"wq": Wq.T.reshape(D, H, K), "wk": Wk.T.reshape(D, H, K), "wv": Wv.T.reshape(D, H, K),
            "bq": bq.reshape(H, K), "bk": bk.reshape(H, K), "bv": bv.reshape(H, K),
            "wo": g(layer.self_attn.out_proj.weight).T.reshape(H, K, D), "bo": g(layer.self_attn.out_proj.bias)}
    mlp = {"w_in": g(layer.linear1.weight).T, "b_in": g(layer.linear1.bias),
           "w_out": g(layer.linear2.weight).T, "b_out": g(layer.linear2.bias)}
    ln = lambda n: {"scale": g(n.weight), "bias": g(n.bias)}   # noqa: E731
    return {"attn": attn, "mlp": mlp, "ln1": ln(layer.norm1), "ln2": ln(layer.norm2)}


def test_b_torch_multihead_attention_and_mini_transformer_layer():
    D, H, Fw, T = 16, 4, 32, 7
    torch, layer = _torch_layer(D, H, Fw)
    x = np.random.default_rng(1).normal(size=(2, T, D))
    p = _ours_from_torch(layer, D, H)
    cfg = ModelConfig(vocab_size=8, d_model=D, n_head=H, n_layer=1, d_ff=Fw, max_len=T, norm_position="post",
                      activation="relu", causal=False)
    with torch.no_grad():
        xt = torch.from_numpy(x)
        attn_t, w_t = layer.self_attn(xt, xt, xt, need_weights=True, average_attn_weights=False)
        out_t = layer(xt)
    with jax.enable_x64(True):
        # both built in one compiled program (eagerly the init compiles every op on its own)
        mha, block = nnx.jit(lambda: (MultiHeadAttention(D, H, rngs=nnx.Rngs(0)),
                                      DecoderBlock(cfg, rngs=nnx.Rngs(0))))()
        mha.load_params(_f64(p["attn"]))
        call = nnx.jit(lambda m, x: m(x))   # compiled: eagerly it is one compile per op
        attn, w = call(mha, jnp.asarray(x))
        np.testing.assert_allclose(np.asarray(attn), attn_t.numpy(), atol=1e-12)
        np.testing.assert_allclose(np.asarray(w), w_t.numpy(), atol=1e-12)
        block.load_params(_f64(p))
        y, _ = call(block, jnp.asarray(x))
        np.testing.assert_allclose(np.asarray(y), out_t.numpy(), atol=1e-10)
    # the whole model (float32): one such layer, its output read at blocks.0.hook_resid_post
    model = Encoder(cfg, rngs=nnx.Rngs(0))
    params = model.params()
    params["blocks"] = jax.tree.map(lambda a: jax.device_put(np.asarray(a, np.float32)[None]), p)
    model.load_params(params)
    emb = np.asarray(params["tok_emb"])[np.zeros((2, T), np.int64)] + np.asarray(params["pos_emb"])[:T]
    # run_with_cache with hooks is pure: compiled here (eagerly it compiles every op on its own)
    _, cache = jax.jit(lambda prm: interp.run_with_cache(
        (prm, cfg), np.zeros((2, T), np.int64), "blocks.0.hook_resid_post",
        hooks={"hook_embed": lambda e: jnp.asarray(x, jnp.float32) - emb + e}))(model.params())
    np.testing.assert_allclose(np.asarray(cache["blocks.0.hook_resid_post"]), out_t.numpy(), atol=1e-6)


def test_c_the_cat_sleeps_as_a_whole_model():
    """Three tokens whose embeddings are the lab's rows, its position offsets as the learned
    position table, one single-head no-norm layer with the lab's weights: the model's stream
    and logits are the hand computation (logits = out @ embeddings^T, tied)."""
    ref = by_hand()
    cfg = lambda: ModelConfig(vocab_size=3, d_model=4, n_head=1, n_layer=1, d_ff=8, max_len=3,  # noqa: E731
                              norm_position="none", activation="relu", bias=False, positions="learned", causal=False)
    blocks = {"attn": {"wq": W_Q[None, :, None, :], "wk": W_K[None, :, None, :], "wv": W_V[None, :, None, :],
                       "wo": np.eye(4)[None, None]},
              "mlp": {"w_in": W1[None], "w_out": W2[None]}}
    tokens = np.array([[0, 1, 2]])                        # "the", "cat", "sleeps"
    names = ["blocks.0.attn.hook_pattern", "blocks.0.hook_resid_post"]
    for x64, atol in ((False, 1e-6), (True, 1e-12)):     # the model in float32, then in float64
        with jax.enable_x64(x64):
            model = Encoder(cfg(), rngs=nnx.Rngs(0))
            model.load_params(jax.tree.map(
                lambda a: jax.device_put(np.asarray(a, np.float64 if x64 else np.float32)),   # host cast
                {"tok_emb": X, "pos_emb": POS, "blocks": blocks}))
            if x64:
                object.__setattr__(model.config, "dtype", "float64")   # compute dtype (configs allow 32-bit)
            logits, cache = interp.run_with_cache(model, tokens, names)
            np.testing.assert_allclose(np.asarray(cache[names[0]])[0, 0], ref["weights"], atol=atol)
            np.testing.assert_allclose(np.asarray(cache[names[1]])[0], ref["out"], atol=atol)
            np.testing.assert_allclose(np.asarray(logits)[0], ref["out"] @ X.T, atol=atol)
            np.testing.assert_allclose(np.asarray(model(jnp.asarray(tokens)))[0], ref["out"] @ X.T, atol=atol)
