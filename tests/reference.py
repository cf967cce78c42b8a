"""Independent float64 NumPy reference implementations, written from the textbook formulas
(not from jaxformer's code), used only to check the library."""
import math

import numpy as np


def softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def attention(q, k, v, mask=None):
    """q [..., T, K], k [..., S, K], v [..., S, K]; mask True = keep. Loops over rows explicitly."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    lead = np.broadcast_shapes(q.shape[:-2], k.shape[:-2])
    T, S = q.shape[-2], k.shape[-2]
    q = np.broadcast_to(q, lead + q.shape[-2:])
    k = np.broadcast_to(k, lead + k.shape[-2:])
    v = np.broadcast_to(v, lead + v.shape[-2:])
    m = np.ones(lead + (T, S), bool) if mask is None else np.broadcast_to(np.asarray(mask), lead + (T, S))
    out = np.zeros(lead + (T, v.shape[-1]))
    w = np.zeros(lead + (T, S))
    for idx in np.ndindex(*lead):
        for t in range(T):
            keep = m[idx + (t,)]
            if not keep.any():
                continue
            s = np.array([q[idx + (t,)] @ k[idx + (j,)] for j in range(S)]) / math.sqrt(q.shape[-1])
            s = np.where(keep, s, -np.inf)
            e = np.exp(s - s[keep].max())
            w[idx + (t,)] = e / e.sum()
            out[idx + (t,)] = w[idx + (t,)] @ v[idx]
    return out, w


def layer_norm(x, g, b=None, eps=1e-5):
    x = np.asarray(x, np.float64)
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    y = (x - mu) / np.sqrt(var + eps) * g
    return y + b if b is not None else y


def rms_norm(x, g, eps=1e-5):
    x = np.asarray(x, np.float64)
    return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * g


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def silu(x):
    return x / (1 + np.exp(-x))


def ffn(p, x, act):
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    h = x @ p["w_in"] + p.get("b_in", 0.0)
    if act == "swiglu":
        h = silu(x @ p["w_gate"]) * h
    elif act == "relu":
        h = np.maximum(h, 0)
    else:
        h = gelu_tanh(h)
    return h @ p["w_out"] + p.get("b_out", 0.0)


def sinusoidal(max_len, d):
    pe = np.zeros((max_len, d))
    for pos in range(max_len):
        for i in range(0, d, 2):
            angle = pos / 10000 ** (i / d)
            pe[pos, i] = math.sin(angle)
            if i + 1 < d:
                pe[pos, i + 1] = math.cos(angle)
    return pe


def rope(x_BTHK, positions_BT, theta=10000.0):
    """Rotate-half RoPE, element by element."""
    x = np.asarray(x_BTHK, np.float64)
    out = np.empty_like(x)
    half = x.shape[-1] // 2
    for b, t in np.ndindex(*positions_BT.shape):
        for i in range(half):
            ang = positions_BT[b, t] * theta ** (-2 * i / x.shape[-1])
            c, s = math.cos(ang), math.sin(ang)
            x1, x2 = x[b, t, :, i], x[b, t, :, i + half]
            out[b, t, :, i] = x1 * c - x2 * s
            out[b, t, :, i + half] = x2 * c + x1 * s
    return out


def mha(p, x, mask=None, positions=None, rope_theta=None):
    """Multi-head attention with per-head loops; grouped kv heads by integer division."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    x = np.asarray(x, np.float64)
    B, T, D = x.shape
    H, G = p["wq"].shape[1], p["wk"].shape[1]
    q = np.einsum("btd,dhk->bthk", x, p["wq"]) + p.get("bq", 0.0)
    k = np.einsum("btd,dgk->btgk", x, p["wk"]) + p.get("bk", 0.0)
    v = np.einsum("btd,dgk->btgk", x, p["wv"]) + p.get("bv", 0.0)
    if rope_theta is not None:
        q, k = rope(q, positions, rope_theta), rope(k, positions, rope_theta)
    heads, weights = [], []
    for h in range(H):
        g = h // (H // G)
        o, w = attention(q[:, :, h], k[:, :, g], v[:, :, g], mask)
        heads.append(o)
        weights.append(w)
    out = np.stack(heads, axis=2)  # B T H K
    y = np.einsum("bthk,hkd->btd", out, p["wo"]) + p.get("bo", 0.0)
    return y, np.stack(weights, axis=1)


def norm(p, x, kind, eps=1e-5):
    if kind == "rmsnorm":
        return rms_norm(x, np.asarray(p["scale"], np.float64), eps)
    b = np.asarray(p["bias"], np.float64) if "bias" in p else None
    return layer_norm(x, np.asarray(p["scale"], np.float64), b, eps)


def block(p, x, cfg, mask, positions):
    theta = cfg.rope_theta if cfg.positions == "rope" else None
    pos = cfg.norm_position
    h = norm(p["ln1"], x, cfg.norm, cfg.norm_eps) if pos == "pre" else x
    a, _ = mha(p["attn"], h, mask, positions, theta)
    x = x + a
    if pos == "post":
        x = norm(p["ln1"], x, cfg.norm, cfg.norm_eps)
    h = norm(p["ln2"], x, cfg.norm, cfg.norm_eps) if pos == "pre" else x
    x = x + ffn(p["mlp"], h, cfg.activation)
    if pos == "post":
        x = norm(p["ln2"], x, cfg.norm, cfg.norm_eps)
    return x


def decoder(params, tokens, cfg):
    """Full decoder in float64, layer by layer."""
    B, T = tokens.shape
    emb = np.asarray(params["tok_emb"], np.float64)
    x = emb[tokens]
    positions = np.broadcast_to(np.arange(T), (B, T))
    if cfg.positions == "learned":
        x = x + np.asarray(params["pos_emb"], np.float64)[:T]
    elif cfg.positions == "sinusoidal":
        x = x + sinusoidal(cfg.max_len, cfg.d_model)[:T]
    mask = np.tril(np.ones((T, T), bool))
    for i in range(cfg.n_layer):
        p = _index(params["blocks"], i)
        x = block(p, x, cfg, mask, positions)
    if cfg.norm_position == "pre":
        x = norm(params["ln_f"], x, cfg.norm, cfg.norm_eps)
    w = emb.T if cfg.tie_embeddings else np.asarray(params["lm_head"], np.float64)
    return x @ w


def _index(tree, i):
    if isinstance(tree, dict):
        return {k: _index(v, i) for k, v in tree.items()}
    return np.asarray(tree)[i]
