"""The math of a GPT-style decoder as pure functions over arrays and parameter pytrees.

This module is the single source of truth: the Flax NNX modules, training, generation
and visualisation all call these functions. Nothing here knows about Flax; every
function is jit-, vmap- and grad-safe.

Shape legend (used in names such as ``x_BTD`` and ``weights_BHTS``):

    B  batch                     T  query time (tokens in this call)
    S  key time (= T without a cache; the cache length with one)
    D  model width (d_model)     H  query heads        G  kv heads (n_kv_head)
    K  head width (D // H)       F  feed-forward width V  vocabulary
    L  layers

Parameter pytrees are plain nested dicts of arrays:

    norm   {"scale": [D], "bias": [D]}            (rmsnorm / bias=False: no "bias")
    attn   {"wq": [D,H,K], "wk": [D,G,K], "wv": [D,G,K], "wo": [H,K,D],
            "bq": [H,K], "bk": [G,K], "bv": [G,K], "bo": [D]}   (biases optional)
    mlp    {"w_in": [D,F], "w_out": [F,D], "b_in": [F], "b_out": [D],
            "w_gate": [D,F] (swiglu only)}
    block  {"ln1": norm, "attn": attn, "ln2": norm, "mlp": mlp}   (no ln* when norm_position="none")
    model  {"tok_emb": [V,D], "pos_emb": [max_len,D] (learned positions only),
            "blocks": block with a leading [L] axis on every leaf,
            "ln_f": norm (pre-norm only), "lm_head": [D,V] (untied only)}

Functions that describe the architecture take ``config``: any object with the
attributes of :class:`jaxformer.ModelConfig` (this module never imports it).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
from jax import lax

Params = Mapping[str, Any]


def _acc(dtype):
    """The dtype softmax, norms and losses compute in: float32, or float64 for float64 inputs."""
    return jnp.promote_types(dtype, jnp.float32)

__all__ = [
    "causal_mask", "scaled_dot_product_attention", "split_heads", "merge_heads",
    "attention_projections", "multi_head_attention", "layer_norm", "rms_norm", "norm",
    "gelu_tanh", "activation", "feed_forward", "sinusoidal_positions", "learned_positions",
    "rope_frequencies", "apply_rope", "dropout", "decoder_block", "embed", "unembed",
    "decoder", "decoder_hidden", "init_cache", "cross_entropy", "unembed_cross_entropy",
    "attention_core", "cached_attention",
]


# ----------------------------------------------------------------------------- masks and attention
def causal_mask(T: int, S: Optional[int] = None, offset: int = 0) -> jax.Array:
    """Boolean lower-triangular mask ``[T, S]``: True where query t may attend key s.

    ``S`` defaults to ``T``. With ``offset`` (queries start at absolute position
    ``offset`` in a longer key sequence) query t may attend keys ``s <= t + offset``.
    """
    S = T if S is None else S
    return (jnp.arange(S)[None, :] <= jnp.arange(T)[:, None] + offset)


def scaled_dot_product_attention(q, k, v, *, mask=None, scale=None):
    """Softmax attention ``softmax(q k^T / sqrt(K)) v``.

    Shapes: ``q [..., T, K]``, ``k [..., S, K]``, ``v [..., S, Kv]`` (leading axes
    broadcast, so grouped K/V heads can share keys without copying);
    ``mask`` boolean, True = may attend, broadcastable to ``[..., T, S]``.
    Returns ``(out [..., T, Kv], weights [..., T, S])``. The softmax runs in float32
    whatever the input dtype. A fully-masked row gives zero weights and a zero
    output, never NaN.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = jnp.einsum("...tk,...sk->...ts", q, k, preferred_element_type=_acc(q.dtype)) * scale
    weights = masked_softmax(scores, mask)
    out = jnp.einsum("...ts,...sk->...tk", weights.astype(v.dtype), v)
    return out, weights


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def attention_core(q_BGRTK, k_BGSK, v_BGSK, mask, scale: float):
    """``softmax(q k^T * scale) v`` for grouped heads, with a hand-written backward pass.

    ``q [B, G, R, T, K]`` (R = query heads per kv head), ``k, v [B, G, S, K]`` (shared by
    the R heads without copying), ``mask`` boolean broadcastable to ``[B, G, R, T, S]`` or
    None. Returns ``out [B, G, R, T, K]``; the same function as
    :func:`scaled_dot_product_attention` (tested), used for training when the weights
    are not wanted.

    The backward pass uses the flash-attention identity ``sum_s dP * P = dO . O``: the
    softmax gradient needs a reduction over K-wide rows instead of S-wide ones, and
    only ``q, k, v``, the output and the log-normaliser are kept for it (the
    probabilities are recomputed). XLA's own derivative reduced the ``[.., T, S]``
    product over S, the slowest op of the CPU step.
    """
    return _attention_core_fwd(q_BGRTK, k_BGSK, v_BGSK, mask, scale)[0]


def _attention_scores(q, k, mask, scale):
    scores = jnp.einsum("bgrtk,bgsk->bgrts", q, k, preferred_element_type=_acc(q.dtype)) * scale
    return scores if mask is None else jnp.where(mask, scores, -jnp.inf)


def _attention_core_fwd(q, k, v, mask, scale):
    e, denom, row_max = _masked_exp(_attention_scores(q, k, None, scale), mask)
    out = jnp.einsum("bgrts,bgsk->bgrtk", (e / denom).astype(v.dtype), v)
    # Keep the log-normaliser, not the [.., T, S] probabilities: the backward pass
    # recomputes them with one more q k^T product (as flash attention does).
    return out, (q, k, v, row_max + jnp.log(denom), out, mask)


def _attention_core_bwd(scale, res, d_out):
    q, k, v, lse, out, mask = res
    # Work on the transposed [.., S, T] score matrix: two of the three gradient products
    # (dv = P^T dO, dk = dS^T q) then read it in its stored layout, so XLA does not
    # transpose the recomputed probabilities for each of them.
    acc = lse.dtype
    s_T = jnp.einsum("bgsk,bgrtk->bgrst", k, q, preferred_element_type=acc) * scale
    if mask is not None:
        s_T = jnp.where(jnp.swapaxes(mask, -1, -2), s_T, -jnp.inf)
    p_T = jnp.exp(s_T - jnp.swapaxes(lse, -1, -2))
    dv = jnp.einsum("bgrst,bgrtk->bgsk", p_T.astype(d_out.dtype), d_out)
    dp_T = jnp.einsum("bgsk,bgrtk->bgrst", v, d_out, preferred_element_type=acc)
    delta = jnp.sum(d_out.astype(acc) * out.astype(acc), axis=-1)[..., None, :]
    ds_T = (p_T * (dp_T - delta) * scale).astype(q.dtype)
    dk = jnp.einsum("bgrst,bgrtk->bgsk", ds_T, q)
    dq = jnp.einsum("bgrst,bgsk->bgrtk", ds_T, k)
    return dq, dk, dv, None


attention_core.defvjp(_attention_core_fwd, _attention_core_bwd)


def cached_attention(q_BGRTK, k_cache, v_cache, k_new, v_new, mask, cache_index, scale: float):
    """:func:`attention_core`'s function (forward only) for T new tokens against a KV cache
    as it was *before* they are written.

    ``k_cache, v_cache [B, G, S, K]`` hold the earlier positions (slots at and after
    ``cache_index`` are ignored); ``k_new, v_new [B, G, T, K]`` are the new tokens, which
    go to slots ``cache_index ..`` (clamped as ``dynamic_update_slice`` clamps them);
    ``mask``, broadcastable to ``[B, G, R, T, S]``, says which slots each query may see.
    One softmax runs over both blocks. The same numbers as attending over the updated
    cache (tested); written this way so that a decode loop only *reads* the old cache
    before it writes the new entries, which XLA can then do in place (see ``generation``).
    """
    S, T = k_cache.shape[-2], k_new.shape[-2]
    mask = jnp.broadcast_to(True if mask is None else mask, (*q_BGRTK.shape[:-1], S))
    start = jnp.clip(cache_index, 0, S - T)
    old = mask & (jnp.arange(S) < start)
    new = lax.dynamic_slice_in_dim(mask, start, T, axis=-1)
    scores = jnp.concatenate([_attention_scores(q_BGRTK, k_cache, None, scale),
                              _attention_scores(q_BGRTK, k_new, None, scale)], axis=-1)
    e, denom, _ = _masked_exp(scores, jnp.concatenate([old, new], axis=-1))
    p = (e / denom).astype(v_cache.dtype)
    return (jnp.einsum("bgrts,bgsk->bgrtk", p[..., :S], v_cache)
            + jnp.einsum("bgrts,bgsk->bgrtk", p[..., S:], v_new.astype(v_cache.dtype)))


def masked_softmax(scores, mask=None):
    """Softmax over the last axis in float32 where ``mask`` (True = keep) is True.

    Masked entries get exactly 0; a row with nothing kept is all zeros (not NaN).
    """
    e, denom, _ = _masked_exp(scores, mask)
    return e / denom


def _masked_exp(scores, mask):
    """``exp(scores - row max)`` where kept (0 elsewhere), its row sums (1 for rows with
    nothing kept) and the row max (0 for those rows): softmax = e / denom and
    logsumexp = row_max + log(denom)."""
    scores = scores.astype(_acc(scores.dtype))
    if mask is not None:
        scores = jnp.where(mask, scores, -jnp.inf)
    row_max = jnp.max(scores, axis=-1, keepdims=True)
    row_max = lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
    e = jnp.exp(scores - row_max)
    denom = jnp.sum(e, axis=-1, keepdims=True)
    return e, jnp.where(denom == 0.0, 1.0, denom), row_max


def split_heads(x_BTD, n_head: int):
    """``[B, T, H*K] -> [B, H, T, K]``."""
    B, T, D = x_BTD.shape
    return x_BTD.reshape(B, T, n_head, D // n_head).transpose(0, 2, 1, 3)


def merge_heads(x_BHTK):
    """``[B, H, T, K] -> [B, T, H*K]`` (inverse of :func:`split_heads`)."""
    B, H, T, K = x_BHTK.shape
    return x_BHTK.transpose(0, 2, 1, 3).reshape(B, T, H * K)


# ----------------------------------------------------------------------------- positions
def sinusoidal_positions(max_len: int, d_model: int, base: float = 10000.0):
    """The Transformer's fixed table ``[max_len, d_model]`` (float32).

    ``PE[pos, 2i] = sin(pos / base^(2i/d))``, ``PE[pos, 2i+1] = cos(pos / base^(2i/d))``.
    """
    pos = jnp.arange(max_len, dtype=jnp.float32)[:, None]
    two_i = jnp.arange(0, d_model, 2, dtype=jnp.float32)
    angle = pos / jnp.power(base, two_i / d_model)
    pe = jnp.zeros((max_len, d_model), jnp.float32)
    pe = pe.at[:, 0::2].set(jnp.sin(angle))
    return pe.at[:, 1::2].set(jnp.cos(angle[:, : d_model // 2]))


def learned_positions(pos_emb_PD, positions_BT):
    """Look up learned position vectors: ``[P, D]``, ``[B, T] -> [B, T, D]``."""
    return jnp.take(pos_emb_PD, positions_BT, axis=0)


def rope_frequencies(positions_BT, head_dim: int, theta: float = 10000.0):
    """Rotary angles ``(cos, sin)``, each ``[B, T, head_dim // 2]`` (float32)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angle = positions_BT.astype(jnp.float32)[..., None] * inv_freq
    return jnp.cos(angle), jnp.sin(angle)


def apply_rope(x_BTHK, cos_BTk, sin_BTk):
    """Rotate pairs ``(x[..., i], x[..., i + K/2])`` by the position's angle (GPT-NeoX / Llama
    "rotate half" layout). ``x [B, T, H, K]``, ``cos/sin [B, T, K/2]`` -> ``[B, T, H, K]``."""
    x1, x2 = jnp.split(x_BTHK.astype(jnp.float32), 2, axis=-1)
    c, s = cos_BTk[:, :, None, :], sin_BTk[:, :, None, :]
    return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(x_BTHK.dtype)


# ----------------------------------------------------------------------------- attention layer
def attention_projections(params: Params, x_BTD):
    """Project ``x [B, T, D]`` to ``q [B, T, H, K]``, ``k, v [B, T, G, K]``."""
    def proj(w):  # x @ w as [B, T, D] x [D, n, K] -> [B, T, n, K]
        return _dense(x_BTD, w.reshape(w.shape[0], -1)).reshape(*x_BTD.shape[:-1], *w.shape[1:])
    q, k, v = proj(params["wq"]), proj(params["wk"]), proj(params["wv"])
    if "bq" in params:
        q, k, v = q + params["bq"], k + params["bk"], v + params["bv"]
    return q, k, v


def multi_head_attention(params: Params, x_BTD, *, mask=None, rope=None, cache=None,
                         cache_index=None, dropout_rate: float = 0.0, key=None,
                         need_weights: bool = True, force_fused: bool = False):
    """Multi-head (optionally grouped-query) self-attention.

    ``x [B, T, D]``; ``mask`` boolean broadcastable to ``[B, 1, T, S]`` (True = may
    attend; pass :func:`causal_mask` for a decoder); ``rope`` optional ``(cos, sin)``
    from :func:`rope_frequencies` for the T query/key positions. With ``cache``
    ``{"k": [B, G, S, K], "v": [B, G, S, K]}`` the new keys/values are written at
    ``cache_index`` and queries attend over all S cache slots (``mask`` must then be
    ``[.., T, S]``). Dropout on the weights when ``key`` is given.

    Three paths compute the same function (tested):

    - ``need_weights=True`` (or attention dropout): the explicit softmax, differentiated
      by autodiff, returning the weights (visualisation, ``model.attention=explicit``);
    - ``need_weights=False`` on a GPU/TPU (or with ``force_fused``): the fused kernel
      ``jax.nn.dot_product_attention`` (cuDNN flash attention on GPU);
    - ``need_weights=False`` on CPU: :func:`attention_core`, the explicit math with a
      hand-written backward pass (faster than both others there); with a cache,
      :func:`cached_attention`, which reads the cache before the new entries are written.

    The last two return ``weights=None``.

    Returns ``(out [B, T, D], weights [B, H, T, S] or None, new_cache or None)``.
    """
    q, k, v = attention_projections(params, x_BTD)
    if rope is not None:
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    k_BGSK, v_BGSK = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    k_new, v_new, new_cache = k_BGSK, v_BGSK, None
    if cache is not None:
        idx = (0, 0, cache_index, 0)
        k_BGSK = lax.dynamic_update_slice(cache["k"], k_BGSK.astype(cache["k"].dtype), idx)
        v_BGSK = lax.dynamic_update_slice(cache["v"], v_BGSK.astype(cache["v"].dtype), idx)
        new_cache = {"k": k_BGSK, "v": v_BGSK}
        k_BGSK, v_BGSK = k_BGSK.astype(q.dtype), v_BGSK.astype(q.dtype)
    B, T, H, K = q.shape
    G = k_BGSK.shape[1]
    # The fused kernel pays off on accelerators (cuDNN flash attention); on XLA:CPU its
    # backward pass is slower than attention_core's, so CPU takes that one.
    if not need_weights and (key is None or dropout_rate == 0.0) and (
            force_fused or jax.default_backend() != "cpu"):
        if mask is not None:
            mask = jnp.broadcast_to(mask, (B, 1, T, k_BGSK.shape[2]))
        out_BTHK = jax.nn.dot_product_attention(
            q, k_BGSK.transpose(0, 2, 1, 3), v_BGSK.transpose(0, 2, 1, 3), mask=mask)
        if mask is not None:  # fully-masked rows: zeros, as on the explicit path
            out_BTHK = out_BTHK * jnp.any(mask, axis=-1)[:, 0, :, None, None].astype(out_BTHK.dtype)
        y = jnp.einsum("bthk,hkd->btd", out_BTHK.astype(x_BTD.dtype), params["wo"])
        return (y + params["bo"] if "bo" in params else y), None, new_cache
    # Group query heads under their shared kv head: [B, G, H/G, T, K]; keys broadcast.
    q_BGRTK = q.reshape(B, T, G, H // G, K).transpose(0, 2, 3, 1, 4)
    if mask is not None:
        mask = jnp.asarray(mask)
        mask = mask.reshape((1,) * (5 - mask.ndim) + mask.shape) if mask.ndim < 4 else mask[:, :, None]
    if not need_weights and (key is None or dropout_rate == 0.0):
        if cache is None:
            out = attention_core(q_BGRTK, k_BGSK, v_BGSK, mask, 1.0 / math.sqrt(K))
        else:
            out = cached_attention(q_BGRTK, cache["k"].astype(q.dtype), cache["v"].astype(q.dtype),
                                   k_new.astype(q.dtype), v_new.astype(q.dtype), mask,
                                   cache_index, 1.0 / math.sqrt(K))
        out_BTHK = out.reshape(B, H, T, K).transpose(0, 2, 1, 3)
        y = _dense(out_BTHK.reshape(B, T, H * K).astype(x_BTD.dtype), params["wo"].reshape(H * K, -1))
        return (y + params["bo"] if "bo" in params else y), None, new_cache
    out, w = scaled_dot_product_attention(q_BGRTK, k_BGSK[:, :, None], v_BGSK[:, :, None], mask=mask)
    weights_BHTS = w.reshape(B, H, T, -1)
    if key is not None and dropout_rate > 0.0:
        # Dropout on attention weights (as GPT-2): recompute the output from dropped weights.
        w = dropout(w, dropout_rate, key)
        out = jnp.einsum("...ts,...sk->...tk", w.astype(v_BGSK.dtype), v_BGSK[:, :, None])
    out_BTHK = out.reshape(B, H, T, K).transpose(0, 2, 1, 3)
    y = jnp.einsum("bthk,hkd->btd", out_BTHK.astype(x_BTD.dtype), params["wo"])
    if "bo" in params:
        y = y + params["bo"]
    return y, weights_BHTS, new_cache


# ----------------------------------------------------------------------------- norms, MLP
def layer_norm(x, scale, bias=None, eps: float = 1e-5):
    """``(x - mean) / sqrt(var + eps) * scale + bias`` over the last axis (statistics in float32).

    Differentiated by a hand-written rule (the textbook layer-norm gradient: three
    row reductions) rather than autodiff's chain through mean and variance."""
    if bias is None:
        return _layer_norm(x, scale, jnp.zeros_like(scale), eps, False)
    return _layer_norm(x, scale, bias, eps, True)


def _ln_stats(x, eps):
    xf = x.astype(_acc(x.dtype))
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    rstd = lax.rsqrt(jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True) + eps)
    return (xf - mean) * rstd, rstd


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _layer_norm(x, scale, bias, eps, has_bias):
    xhat, _ = _ln_stats(x, eps)
    return (xhat * scale + bias).astype(x.dtype)


def _layer_norm_fwd(x, scale, bias, eps, has_bias):
    xhat, rstd = _ln_stats(x, eps)
    return (xhat * scale + bias).astype(x.dtype), (x, scale, rstd)


def _layer_norm_bwd(eps, has_bias, res, g):
    x, scale, rstd = res
    xf = x.astype(rstd.dtype)
    xhat = (xf - jnp.mean(xf, axis=-1, keepdims=True)) * rstd
    g = g.astype(rstd.dtype)
    axes = tuple(range(g.ndim - 1))
    d_scale = jnp.sum(g * xhat, axis=axes).astype(scale.dtype)
    d_bias = jnp.sum(g, axis=axes).astype(scale.dtype) if has_bias else jnp.zeros_like(scale)
    gs = g * scale
    dx = rstd * (gs - jnp.mean(gs, axis=-1, keepdims=True)
                 - xhat * jnp.mean(gs * xhat, axis=-1, keepdims=True))
    return dx.astype(x.dtype), d_scale, d_bias


_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


def rms_norm(x, scale, eps: float = 1e-5):
    """``x / sqrt(mean(x^2) + eps) * scale`` over the last axis (statistics in float32)."""
    xf = x.astype(_acc(x.dtype))
    y = xf * lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + eps) * scale
    return y.astype(x.dtype)


def norm(params: Params, x, kind: str = "layernorm", eps: float = 1e-5):
    """Apply the norm named by ``kind`` (``layernorm`` | ``rmsnorm``) with its params."""
    if kind == "rmsnorm":
        return rms_norm(x, params["scale"], eps)
    return layer_norm(x, params["scale"], params.get("bias"), eps)


_GELU_C = math.sqrt(2.0 / math.pi)


def _materialize(g):
    """``g``, computed into a buffer of its own on XLA:CPU (identity elsewhere).

    XLA:CPU fuses elementwise producers into every consumer, including the transposing
    copies that feed weight-gradient matmuls: a gradient sum computed inside such a copy
    is re-evaluated there in transposed (strided) order, and in an unrolled stack each
    layer's copy re-adds every later layer's residual gradient (O(L^2) work). A
    conditional is a boundary XLA does not fuse across, so the gradient is computed once.
    The predicate (``g[0] == g[0]``) is false only if that entry is NaN; the gradient is
    then returned as all-NaN, which the non-finite-loss guard reports either way.
    """
    if jax.default_backend() != "cpu":
        return g
    first = g.reshape(-1)[0]
    return lax.cond(first == first, lambda a: a, lambda a: jnp.full_like(a, jnp.nan), g)


@jax.custom_vjp
def grad_fence(x):
    """Identity whose gradient is materialized (see :func:`_materialize`); a performance
    hint for XLA:CPU placed on the residual stream, with no effect on values."""
    return x


grad_fence.defvjp(lambda x: (x, None), lambda _, g: (_materialize(g),))


@jax.custom_vjp
def gelu_tanh(x):
    """GELU with GPT-2's tanh approximation: ``0.5 x (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3)))``.

    Its gradient is written out (custom VJP): the forward pass also computes the derivative
    and the backward pass is one multiply, as cheap as ReLU's. Why: XLA's CPU backend fuses the activation's
    backward into the transpose that feeds the ``w_in`` weight gradient, a scalar loop; with
    autodiff's version that loop re-read four saved ``[B, T, F]`` intermediates (strided) and
    was the single most expensive op of the train step (~8x ReLU's).
    """
    return _gelu_fwd(x)[0]


def _gelu_fwd(x):
    t = jnp.tanh(_GELU_C * x * (1.0 + 0.044715 * x * x))
    dt = _GELU_C * (1.0 + 3 * 0.044715 * x * x) * (1.0 - t * t)
    return 0.5 * x * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * x * dt  # value, derivative


def _gelu_bwd(dydx, g):
    return (_materialize(g * dydx),)


gelu_tanh.defvjp(_gelu_fwd, _gelu_bwd)


def activation(name: str) -> Callable:
    """The elementwise non-linearity for ``relu`` | ``gelu`` (tanh approx.) | ``swiglu`` (SiLU gate)."""
    return {"relu": jax.nn.relu, "gelu": gelu_tanh, "swiglu": jax.nn.silu}[name]


def feed_forward(params: Params, x_BTD, act: str = "gelu"):
    """Position-wise MLP ``[B, T, D] -> [B, T, D]``.

    ``relu`` / ``gelu``: ``act(x W_in + b_in) W_out + b_out``; ``swiglu``:
    ``(silu(x W_gate) * (x W_in)) W_out``.
    """
    h = _dense(x_BTD, params["w_in"])
    if "b_in" in params:
        h = h + params["b_in"]
    if act == "swiglu":
        h = jax.nn.silu(x_BTD @ params["w_gate"]) * h
    else:
        h = activation(act)(h)
    y = h @ params["w_out"]
    if "b_out" in params:
        y = y + params["b_out"]
    return y


@jax.custom_vjp
def _dense(x, w):
    """``x @ w`` whose weight gradient multiplies the transposed *input* (materialised),
    so XLA:CPU does not transpose the wider output gradient instead."""
    return x @ w


def _dense_fwd(x, w):
    return x @ w, (x, w)


def _dense_bwd(res, g):
    x, w = res
    x2 = x.reshape(-1, x.shape[-1])
    dw = _materialize(x2.T) @ g.reshape(-1, g.shape[-1])
    return g @ w.T, dw.astype(w.dtype)


_dense.defvjp(_dense_fwd, _dense_bwd)


def dropout(x, rate: float, key):
    """Inverted dropout: zero with probability ``rate``, scale the rest by ``1/(1-rate)``.
    Identity when ``key`` is None or ``rate == 0``."""
    if key is None or rate <= 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


# ----------------------------------------------------------------------------- block and decoder
def decoder_block(params: Params, x_BTD, config, *, mask=None, rope=None, cache=None,
                  cache_index=None, key=None, need_weights: bool = True):
    """One decoder block ``[B, T, D] -> [B, T, D]``.

    ``config.norm_position``: ``pre`` (GPT-2: ``x + attn(norm(x))``, ``x + mlp(norm(x))``),
    ``post`` (original Transformer: ``norm(x + attn(x))``, ``norm(x + mlp(x))``) or
    ``none`` (``x + attn(x)``, ``x + mlp(x)``). Dropout (``config.dropout``) on attention
    weights and on both residual branches when ``key`` is given. ``need_weights=False``
    lets attention take the fused path (``aux["weights"]`` is then None) unless
    ``config.attention == "explicit"``.

    Returns ``(y [B, T, D], aux)`` with ``aux = {"weights": [B, H, T, S],
    "attn_out": [B, T, D], "mlp_out": [B, T, D], "cache": new cache or None}``.
    """
    pos, rate, eps = config.norm_position, config.dropout, config.norm_eps
    keys = jax.random.split(key, 3) if key is not None else (None, None, None)
    nrm = lambda p, h: norm(p, h, config.norm, eps)  # noqa: E731

    x_BTD = grad_fence(x_BTD)
    h = nrm(params["ln1"], x_BTD) if pos == "pre" else x_BTD
    a, weights, new_cache = multi_head_attention(
        params["attn"], h, mask=mask, rope=rope, cache=cache, cache_index=cache_index,
        dropout_rate=rate, key=keys[0],
        need_weights=need_weights or getattr(config, "attention", "auto") == "explicit")
    a = dropout(a, rate, keys[1])
    x = x_BTD + a
    if pos == "post":
        x = nrm(params["ln1"], x)

    x = grad_fence(x)
    h = nrm(params["ln2"], x) if pos == "pre" else x
    m = dropout(feed_forward(params["mlp"], h, config.activation), rate, keys[2])
    x = x + m
    if pos == "post":
        x = nrm(params["ln2"], x)
    return x, {"weights": weights, "attn_out": a, "mlp_out": m, "cache": new_cache}


def embed(params: Params, tokens_BT, config, positions_BT):
    """Token embedding plus absolute positions (learned or sinusoidal) ``-> [B, T, D]``."""
    x = jnp.take(params["tok_emb"], tokens_BT, axis=0)
    if config.positions == "learned":
        x = x + learned_positions(params["pos_emb"], positions_BT)
    elif config.positions == "sinusoidal":
        x = x + sinusoidal_positions(config.max_len, config.d_model)[positions_BT].astype(x.dtype)
    return x


def unembed(params: Params, x_BTD, config):
    """Final norm (pre-norm models) and output projection ``-> logits [B, T, V]`` in float32."""
    if config.norm_position == "pre":
        x_BTD = norm(params["ln_f"], x_BTD, config.norm, config.norm_eps)
    # Tied: contract with the [V, D] table as stored (a transposed view made XLA:CPU copy
    # the whole table on every decode step).
    eq, w = ("btd,vd->btv", params["tok_emb"]) if config.tie_embeddings else ("btd,dv->btv", params["lm_head"])
    return jnp.einsum(eq, x_BTD, w.astype(x_BTD.dtype), preferred_element_type=_acc(x_BTD.dtype))


def init_cache(config, batch_size: int, max_len: Optional[int] = None, dtype=jnp.float32):
    """An empty KV cache ``{"k", "v": [L, B, G, S, K]}`` for :func:`decoder`."""
    S = config.max_len if max_len is None else max_len
    shape = (config.n_layer, batch_size, config.kv_heads, S, config.d_model // config.n_head)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def decoder(params: Params, tokens_BT, config, *, positions_BT=None, key_mask_BS=None,
            cache=None, cache_index=0, key=None, capture: bool = False):
    """The whole decoder: tokens ``[B, T]`` -> logits ``[B, T, V]`` (float32).

    :func:`decoder_hidden` (embedding and blocks) then :func:`unembed`; the arguments and
    ``aux`` are described there.
    """
    x, aux = decoder_hidden(params, tokens_BT, config, positions_BT=positions_BT,
                            key_mask_BS=key_mask_BS, cache=cache, cache_index=cache_index,
                            key=key, capture=capture)
    return unembed(params, x, config), aux


def decoder_hidden(params: Params, tokens_BT, config, *, positions_BT=None, key_mask_BS=None,
                   cache=None, cache_index=0, key=None, capture: bool = False):
    """Embedding and every block: tokens ``[B, T]`` -> the last block's output ``[B, T, D]``
    (before the final norm; :func:`unembed` or :func:`unembed_cross_entropy` finish).

    - ``positions_BT``: absolute positions (default ``cache_index + arange(T)``).
    - ``key_mask_BS``: optional boolean ``[B, S]``, False for padding keys.
    - ``cache``: from :func:`init_cache`; the T new tokens are written at
      ``cache_index`` and attend causally to everything before them.
    - ``key``: PRNG key enabling dropout (training); None = deterministic.
    - ``capture``: also return every intermediate (see below).
    - ``params["blocks"]`` may also be a list of per-layer trees (unstacked, no ``[L]``
      axis); ``cache`` is then a list of per-layer ``{"k", "v": [B, G, S, K]}`` and so is
      ``aux["cache"]`` (the layout the decode loop uses, see ``generation.py``).

    Returns ``(x [B, T, D], aux)``. ``aux["cache"]`` is the updated cache (or None).
    With ``capture=True`` aux also holds ``weights [L, B, H, T, S]``, ``resid [L+1, B, T, D]``
    (the residual stream entering each block, then the last block's output),
    ``attn_out`` and ``mlp_out`` ``[L, B, T, D]``.
    Layers run under ``lax.scan`` when ``config.scan_layers`` (compile time flat in
    depth) and are rematerialised per ``config.remat``.
    """
    B, T = tokens_BT.shape
    if positions_BT is None:
        positions_BT = jnp.broadcast_to(cache_index + jnp.arange(T), (B, T))
    dtype = jnp.dtype(config.dtype)
    params = jax.tree.map(lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p, params)
    keys = jax.random.split(key, config.n_layer + 1) if key is not None else None

    x = embed(params, tokens_BT, config, positions_BT)
    x = dropout(x, config.dropout, None if keys is None else keys[-1])
    per_layer = isinstance(params["blocks"], (list, tuple))
    S = T if cache is None else (cache[0] if per_layer else cache)["v"].shape[-2]
    mask = causal_mask(T, S, offset=cache_index if cache is not None else 0)[None, None]
    if key_mask_BS is not None:
        mask = mask & key_mask_BS[:, None, None, :]
    rope = (rope_frequencies(positions_BT, config.d_model // config.n_head, config.rope_theta)
            if config.positions == "rope" else None)

    def layer(x, xs):
        p, c, k = xs
        y, aux = decoder_block(p, x, config, mask=mask, rope=rope, cache=c,
                               cache_index=cache_index, key=k, need_weights=capture)
        keep = {"cache": aux["cache"]}
        if capture:
            keep.update(weights=aux["weights"], attn_out=aux["attn_out"],
                        mlp_out=aux["mlp_out"], resid=x)
        return y, keep

    if config.remat != "none":
        policy = (jax.checkpoint_policies.dots_with_no_batch_dims_saveable
                  if config.remat == "dots" else None)
        layer = jax.checkpoint(layer, policy=policy)
    xs = (params["blocks"], cache, None if keys is None else keys[:-1])
    if per_layer:
        # Unstacked layers (a list of per-layer trees, and a list of per-layer caches): no
        # slicing of stacked weights, which XLA copies on every step of a decode loop.
        outs = []
        for i, p in enumerate(params["blocks"]):
            x, y = layer(x, (p, None if cache is None else cache[i], None if keys is None else keys[i]))
            outs.append(y)
        ys = {k: [o[k] for o in outs] if k == "cache" else jnp.stack([o[k] for o in outs])
              for k in outs[0]}
        ys["cache"] = None if cache is None else ys["cache"]
    elif config.scan_layers:
        x, ys = lax.scan(layer, x, xs)
    else:
        outs = []
        for i in range(config.n_layer):
            x, y = layer(x, jax.tree.map(lambda a: a[i], xs))
            outs.append(y)
        ys = jax.tree.map(lambda *a: jnp.stack(a), *outs)
    aux = {"cache": ys["cache"]}
    if capture:
        aux.update(weights=ys["weights"], attn_out=ys["attn_out"], mlp_out=ys["mlp_out"],
                   resid=jnp.concatenate([ys["resid"], x[None]], axis=0))
    return x, aux


def unembed_cross_entropy(params: Params, x_BTD, targets_BT, config, mask_BT=None):
    """``cross_entropy(unembed(params, x, config), targets, mask)`` in one step, for training.

    Same value (tested), but the output projection and the loss share a hand-written
    backward pass: the forward already forms ``d loss / d logits = w (softmax - onehot)``
    (only a scalar from the incoming cotangent is missing), so the ``[N, V]`` logits are
    neither kept nor differentiated twice, and the head's weight gradient is one matmul
    laid out as its parameter (XLA's own derivative transposed the ``[N, V]`` gradient,
    the largest single op of the 25M model's CPU step).
    """
    if config.norm_position == "pre":
        x_BTD = norm(params["ln_f"], x_BTD, config.norm, config.norm_eps)
    B, T, D = x_BTD.shape
    acc = _acc(x_BTD.dtype)
    if mask_BT is None:
        w_N = jnp.full((B * T,), 1.0 / (B * T), acc)
    else:
        m = mask_BT.reshape(B * T).astype(acc)
        w_N = m / jnp.maximum(jnp.sum(m), 1.0)
    tied = config.tie_embeddings
    w = (params["tok_emb"] if tied else params["lm_head"]).astype(x_BTD.dtype)
    return _head_loss(x_BTD.reshape(B * T, D), w, targets_BT.reshape(B * T), w_N, tied)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _head_loss(x_ND, w, targets_N, w_N, tied: bool):
    """``sum_n w_n * nll_n`` of logits ``x @ W`` (``W = w.T`` when ``tied``: w is ``[V, D]``)."""
    logits = _head_logits(x_ND, w, tied, w_N.dtype)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets_N[:, None], axis=-1)[:, 0]
    return jnp.sum(w_N * (lse - picked))


def _head_logits(x_ND, w, tied, acc):
    return jnp.einsum("nd,vd->nv" if tied else "nd,dv->nv", x_ND, w, preferred_element_type=acc)


def _head_loss_fwd(x_ND, w, targets_N, w_N, tied):
    logits = _head_logits(x_ND, w, tied, w_N.dtype)
    row_max = jnp.max(logits, axis=-1, keepdims=True)
    e = jnp.exp(logits - row_max)
    denom = jnp.sum(e, axis=-1, keepdims=True)
    lse = row_max[:, 0] + jnp.log(denom[:, 0])
    picked = jnp.take_along_axis(logits, targets_N[:, None], axis=-1)[:, 0]
    loss = jnp.sum(w_N * (lse - picked))
    # d loss / d logits = w (softmax - onehot): a dense scale, then one scatter of N values.
    d_logits = e * (w_N[:, None] / denom)
    d_logits = d_logits.at[jnp.arange(targets_N.shape[0]), targets_N].add(-w_N)
    return loss, (x_ND, w, d_logits.astype(x_ND.dtype))


def _head_loss_bwd(tied, res, g):
    x_ND, w, d_logits = res
    g = g.astype(x_ND.dtype)
    dx = jnp.einsum("nv,vd->nd" if tied else "nv,dv->nd", d_logits, w) * g
    dw = jnp.einsum("nv,nd->vd" if tied else "nd,nv->dv", *((d_logits, x_ND) if tied else (x_ND, d_logits)))
    return dx, dw * g.astype(dw.dtype), None, None


_head_loss.defvjp(_head_loss_fwd, _head_loss_bwd)


def cross_entropy(logits_BTV, targets_BT, mask_BT=None):
    """Mean next-token cross-entropy (float32, stable for large logits). ``mask`` weights positions."""
    logp = jax.nn.log_softmax(logits_BTV.astype(_acc(logits_BTV.dtype)), axis=-1)
    nll = -jnp.take_along_axis(logp, targets_BT[..., None], axis=-1)[..., 0]
    if mask_BT is None:
        return jnp.mean(nll)
    mask_BT = mask_BT.astype(logp.dtype)
    return jnp.sum(nll * mask_BT) / jnp.maximum(jnp.sum(mask_BT), 1.0)
