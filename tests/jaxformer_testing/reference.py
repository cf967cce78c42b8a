"""Independent float64 NumPy reference implementations, written from the textbook formulas
(not from jaxformer's code), used only to check the library."""
import math

import numpy as np


def softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def attention(q, k, v, mask=None, scale=None, softcap=None):
    """q [..., T, K], k [..., S, K], v [..., S, K]; mask True = keep. Loops over rows explicitly.
    ``scale`` default 1/sqrt(K); ``softcap``: scores -> cap * tanh(scores / cap)."""
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
            s = np.array([q[idx + (t,)] @ k[idx + (j,)] for j in range(S)])
            s = s * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
            if softcap is not None:
                s = softcap * np.tanh(s / softcap)
            s = np.where(keep, s, -np.inf)
            e = np.exp(s - s[keep].max())
            w[idx + (t,)] = e / e.sum()
            out[idx + (t,)] = w[idx + (t,)] @ v[idx]
    return out, w


def layer_norm(x, g, b=None, eps=1e-5, offset=0.0):
    x = np.asarray(x, np.float64)
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    y = (x - mu) / np.sqrt(var + eps) * (offset + g)
    return y + b if b is not None else y


def rms_norm(x, g, eps=1e-5, offset=0.0):
    x = np.asarray(x, np.float64)
    return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * (offset + g)


def gelu_erf(x):
    return np.vectorize(lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))))(x)


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def silu(x):
    return x / (1 + np.exp(-x))


def ffn(p, x, act):
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    h = x @ p["w_in"] + p.get("b_in", 0.0)
    if act == "swiglu":
        h = silu(x @ p["w_gate"]) * h
    elif act == "geglu":
        h = gelu_tanh(x @ p["w_gate"]) * h
    elif act == "relu":
        h = np.maximum(h, 0)
    elif act == "gelu_exact":
        h = gelu_erf(h)
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


def rope_frequency(i, rot, theta, cfg=None):
    """Frequency i of ``rot`` rotary dims, with linear or Llama 3 scaling when ``cfg`` asks."""
    f = theta ** (-2 * i / rot)
    kind = getattr(cfg, "rope_scaling", "none")
    if kind == "linear":
        return f / cfg.rope_scaling_factor
    if kind == "llama3":
        wavelen, old = 2 * math.pi / f, cfg.rope_original_max_len
        lo, hi, factor = cfg.rope_low_freq_factor, cfg.rope_high_freq_factor, cfg.rope_scaling_factor
        if wavelen < old / hi:
            return f
        if wavelen > old / lo:
            return f / factor
        smooth = (old / wavelen - lo) / (hi - lo)
        return (1 - smooth) * f / factor + smooth * f
    return f


def rope(x_BTHK, positions_BT, theta=10000.0, rot=None, cfg=None):
    """Rotate-half RoPE over the first ``rot`` dims (default all), element by element."""
    x = np.asarray(x_BTHK, np.float64)
    out = x.copy()
    rot = x.shape[-1] if rot is None else rot
    half = rot // 2
    for b, t in np.ndindex(*positions_BT.shape):
        for i in range(half):
            ang = positions_BT[b, t] * rope_frequency(i, rot, theta, cfg)
            c, s = math.cos(ang), math.sin(ang)
            x1, x2 = x[b, t, :, i], x[b, t, :, i + half]
            out[b, t, :, i] = x1 * c - x2 * s
            out[b, t, :, i + half] = x2 * c + x1 * s
    return out


def mha(p, x, mask=None, positions=None, rope_theta=None, cfg=None):
    """Multi-head attention with per-head loops; grouped kv heads by integer division.
    ``cfg`` (optional) adds q/k norms, partial / scaled RoPE, score scale and soft-capping."""
    qk = {n: p[n] for n in ("q_norm", "k_norm") if n in p}
    p = {k: np.asarray(v, np.float64) for k, v in p.items() if k not in qk}
    x = np.asarray(x, np.float64)
    B, T, D = x.shape
    H, G = p["wq"].shape[1], p["wk"].shape[1]
    q = np.einsum("btd,dhk->bthk", x, p["wq"]) + p.get("bq", 0.0)
    k = np.einsum("btd,dgk->btgk", x, p["wk"]) + p.get("bk", 0.0)
    v = np.einsum("btd,dgk->btgk", x, p["wv"]) + p.get("bv", 0.0)
    if qk:
        q, k = norm(qk["q_norm"], q, cfg.norm, cfg.norm_eps, cfg), norm(qk["k_norm"], k, cfg.norm, cfg.norm_eps, cfg)
    if rope_theta is not None:
        rot = None if cfg is None else int(q.shape[-1] * cfg.rope_fraction)
        q, k = rope(q, positions, rope_theta, rot, cfg), rope(k, positions, rope_theta, rot, cfg)
    scale, cap = (None, None) if cfg is None else (cfg.attn_scale, cfg.attn_softcap)
    heads, weights = [], []
    for h in range(H):
        g = h // (H // G)
        o, w = attention(q[:, :, h], k[:, :, g], v[:, :, g], mask, scale, cap)
        heads.append(o)
        weights.append(w)
    out = np.stack(heads, axis=2)  # B T H K
    y = np.einsum("bthk,hkd->btd", out, p["wo"]) + p.get("bo", 0.0)
    return y, np.stack(weights, axis=1)


def norm(p, x, kind, eps=1e-5, cfg=None):
    offset = getattr(cfg, "norm_offset", 0.0)
    if kind == "rmsnorm":
        return rms_norm(x, np.asarray(p["scale"], np.float64), eps, offset)
    b = np.asarray(p["bias"], np.float64) if "bias" in p else None
    return layer_norm(x, np.asarray(p["scale"], np.float64), b, eps, offset)


def block(p, x, cfg, mask, positions):
    theta = cfg.rope_theta if cfg.positions == "rope" else None
    pos = cfg.norm_position
    n = lambda name, h: norm(p[name], h, cfg.norm, cfg.norm_eps, cfg)  # noqa: E731
    pre = pos in ("pre", "sandwich")
    a, _ = mha(p["attn"], n("ln1", x) if pre else x, mask, positions, theta, cfg)
    if pos == "sandwich":
        a = n("ln_attn_out", a)
    if getattr(cfg, "parallel_residual", False):
        return x + a + ffn(p["mlp"], n("ln2", x), cfg.activation)
    x = x + a
    if pos == "post":
        x = n("ln1", x)
    if getattr(cfg, "attn_only", False):
        return x
    m = ffn(p["mlp"], n("ln2", x) if pre else x, cfg.activation)
    if pos == "sandwich":
        m = n("ln_mlp_out", m)
    x = x + m
    if pos == "post":
        x = n("ln2", x)
    return x


def decoder(params, tokens, cfg):
    """Full decoder in float64, layer by layer."""
    B, T = tokens.shape
    emb = np.asarray(params["tok_emb"], np.float64)
    x = emb[tokens] * (math.sqrt(cfg.d_model) if getattr(cfg, "scale_embeddings", False) else 1.0)
    positions = np.broadcast_to(np.arange(T), (B, T))
    if cfg.positions == "learned":
        x = x + np.asarray(params["pos_emb"], np.float64)[:T]
    elif cfg.positions == "sinusoidal":
        x = x + sinusoidal(cfg.max_len, cfg.d_model)[:T]
    t, s = np.arange(T)[:, None], np.arange(T)[None, :]
    window = getattr(cfg, "sliding_window", None)
    for i in range(cfg.n_layer):
        p = _index(params["blocks"], i)
        types = getattr(cfg, "layer_types", None)
        slides = window is not None and (types is None or types[i] == "sliding")
        mask = (s <= t) & ((t - s < window) if slides else True)
        x = block(p, x, cfg, mask, positions)
    if cfg.norm_position in ("pre", "sandwich"):
        x = norm(params["ln_f"], x, cfg.norm, cfg.norm_eps, cfg)
    w = emb.T if cfg.tie_embeddings else np.asarray(params["lm_head"], np.float64)
    logits = x @ w
    cap = getattr(cfg, "final_softcap", None)
    return logits if cap is None else cap * np.tanh(logits / cap)


def _index(tree, i):
    if isinstance(tree, dict):
        return {k: _index(v, i) for k, v in tree.items()}
    return np.asarray(tree)[i]
