"""The textbook: a GPT-style decoder as pure ``jax.numpy`` functions, in reading order.

Each piece of the decoder is one small function, differentiated by JAX's own autodiff (so
``grad``, ``jvp``, ``jacfwd``, ``hessian`` and ``linearize`` all work), safe under ``jit``
and ``vmap``. Modules, training, generation and inspection call these functions; nothing
here knows about Flax or devices. Faster versions of a few pieces live beside this file in
:mod:`jaxformer.model.kernels`, each tested equal to its function here; functions that can use
them take ``kernels=None`` (None = the textbook).

Shape legend (used in names such as ``x_BTD`` and ``weights_BHTS``):

    B  batch                     T  query time (tokens in this call)
    S  key time (= T without a cache; the cache length with one)
    D  model width (d_model)     H  query heads        G  kv heads (n_kv_head)
    R  query heads per kv head   K  head width (head_dim, default D // H)
    F  feed-forward width        V  vocabulary         L  layers

Parameter pytrees are plain nested dicts of arrays:

    norm   {"scale": [D], "bias": [D]}            (rmsnorm / bias=False: no "bias")
    attn   {"wq": [D,H,K], "wk": [D,G,K], "wv": [D,G,K], "wo": [H,K,D],
            "bq": [H,K], "bk": [G,K], "bv": [G,K] (qkv_bias), "bo": [D] (bias),
            "q_norm", "k_norm": {"scale": [K]} (qk_norm)}
    mlp    {"w_in": [D,F], "w_out": [F,D], "b_in": [F], "b_out": [D],
            "w_gate": [D,F] (gated activations: swiglu, geglu)}
    block  {"ln1": norm, "attn": attn, "ln2": norm, "mlp": mlp,   (no ln* when norm_position="none";
                                                                    no ln2 / mlp when attn_only)
            "ln_attn_out", "ln_mlp_out": norm (norm_position="sandwich")}
    model  {"tok_emb": [V,D], "pos_emb": [max_len,D] (learned positions only),
            "blocks": block with a leading [L] axis on every leaf,
            "ln_f": norm (pre / sandwich), "lm_head": [D,V] (untied only)}

Functions that describe the architecture take ``config``: any object with the
attributes of :class:`jaxformer.ModelConfig` (this module never imports it).

Functions along the forward pass take ``hooks=None``: a mapping from TransformerLens's
hook-point names to ``fn(x) -> x`` (see :mod:`jaxformer.interp`); each hook point is one
``_hook(hooks, name, x)`` line, and ``hooks=None`` traces exactly the unhooked program.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
from jax import lax

Params = Mapping[str, Any]

__all__ = ["causal_mask", "masked_softmax", "soft_cap", "scaled_dot_product_attention",
           "split_heads", "merge_heads", "sinusoidal_positions", "learned_positions",
           "rope_inv_freq", "llama3_rope_scaling", "rope_frequencies", "rope_for", "apply_rope",
           "linear", "attention_projections", "multi_head_attention", "layer_norm", "rms_norm",
           "norm", "gelu_tanh", "gelu_exact", "activation", "feed_forward", "dropout",
           "decoder_block", "embed", "final_norm", "unembed", "init_cache", "attention_masks",
           "decoder_hidden", "decoder", "token_log_probs", "cross_entropy",
           "unembed_cross_entropy", "next_token_loss"]


def _acc(dtype):
    """The dtype softmax, norms and losses compute in: float32, or float64 for float64 inputs."""
    return jnp.promote_types(dtype, jnp.float32)


def _hook(hooks, name: str, x):
    """``hooks[name](x)`` when hook point ``name`` is hooked, else ``x`` itself (``hooks=None``:
    nothing to look up). The names and shapes are TransformerLens's; see :mod:`jaxformer.interp`."""
    return x if hooks is None or name not in hooks else hooks[name](x)


def _sub_hooks(hooks, prefix: str):
    """The hooks whose names start with ``prefix`` (``"attn."``, ``"blocks.3."``), with it
    stripped; None when there are none (so an unhooked part keeps its fast path)."""
    sub = {} if hooks is None else {n[len(prefix):]: f for n, f in hooks.items() if n.startswith(prefix)}
    return sub or None


def _kernel(kernels, name: str, textbook):
    """``kernels.<name>`` if that kernel set (see :mod:`jaxformer.model.kernels`) replaces this
    piece, else the textbook function itself."""
    fast = None if kernels is None else getattr(kernels, name, None)
    return textbook if fast is None else fast


# ----------------------------------------------------------------------------- attention
def causal_mask(T: int, S: Optional[int] = None, offset: int = 0,
                window: Optional[int] = None) -> jax.Array:
    """Boolean lower-triangular mask ``[T, S]``: True where query t may attend key s.

    ``S`` defaults to ``T``. With ``offset`` (queries start at absolute position
    ``offset`` in a longer key sequence) query t may attend keys ``s <= t + offset``.
    With a sliding ``window`` W (Mistral, Gemma 2) only the last W of those:
    ``t + offset - W < s <= t + offset``.
    """
    S = T if S is None else S
    t, s = jnp.arange(T)[:, None] + offset, jnp.arange(S)[None, :]
    keep = s <= t
    return keep if window is None else keep & (s > t - window)


def masked_softmax(scores, mask=None):
    """Softmax over the last axis (in float32 at least) where ``mask`` (True = keep) is True.

    Masked entries get exactly 0; a row with nothing kept is all zeros (not NaN).
    """
    scores = scores.astype(_acc(scores.dtype))
    if mask is not None:
        scores = jnp.where(mask, scores, -jnp.inf)
    row_max = jnp.max(scores, axis=-1, keepdims=True)
    # Subtracting the row max changes nothing mathematically; it keeps exp() in range.
    row_max = lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
    e = jnp.exp(scores - row_max)
    denom = jnp.sum(e, axis=-1, keepdims=True)
    return e / jnp.where(denom == 0.0, 1.0, denom)


def soft_cap(x, cap: Optional[float]):
    """``cap * tanh(x / cap)``: squashes ``x`` smoothly into ``(-cap, cap)`` (Gemma 2's
    attention-score and final-logit capping). Identity when ``cap`` is None."""
    return x if cap is None else cap * jnp.tanh(x / cap)


def scaled_dot_product_attention(q, k, v, *, mask=None, scale=None, softcap=None, hooks=None):
    """Softmax attention ``softmax(q k^T / sqrt(K)) v``.

    Shapes: ``q [..., T, K]``, ``k [..., S, K]``, ``v [..., S, Kv]`` (leading axes
    broadcast, so grouped K/V heads can share keys without copying);
    ``mask`` boolean, True = may attend, broadcastable to ``[..., T, S]``.
    ``scale`` replaces ``1/sqrt(K)``; ``softcap`` caps the scaled scores with
    :func:`soft_cap` before the mask.
    Returns ``(out [..., T, Kv], weights [..., T, S])``. The softmax runs in float32
    whatever the input dtype. A fully-masked row gives zero weights and a zero output.
    ``hooks``: ``hook_attn_scores`` (scaled, capped, masked entries -inf) and ``hook_pattern``.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = soft_cap(jnp.einsum("...tk,...sk->...ts", q, k, preferred_element_type=_acc(q.dtype)) * scale, softcap)
    if hooks is not None:  # TransformerLens shows masked scores as -inf
        scores = _hook(hooks, "hook_attn_scores", scores if mask is None else jnp.where(mask, scores, -jnp.inf))
    weights = _hook(hooks, "hook_pattern", masked_softmax(scores, mask))
    out = jnp.einsum("...ts,...sk->...tk", weights.astype(v.dtype), v)
    return out, weights


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
    return jnp.stack([jnp.sin(angle), jnp.cos(angle)], axis=-1).reshape(max_len, -1)[:, :d_model]


def learned_positions(pos_emb_PD, positions_BT):
    """Look up learned position vectors: ``[P, D]``, ``[B, T] -> [B, T, D]``."""
    return jnp.take(pos_emb_PD, positions_BT, axis=0)


def rope_inv_freq(rot_dim: int, theta: float = 10000.0):
    """RoPE's angular frequencies ``theta^(-2i / rot_dim)``, ``i < rot_dim / 2`` (float32)."""
    return 1.0 / (theta ** (jnp.arange(0, rot_dim, 2, dtype=jnp.float32) / rot_dim))


def llama3_rope_scaling(inv_freq, factor: float, low_freq_factor: float, high_freq_factor: float,
                        original_max_len: int):
    """Llama 3.1's context extension of RoPE frequencies: wavelengths longer than
    ``original_max_len / low_freq_factor`` are slowed by ``factor``, those shorter than
    ``original_max_len / high_freq_factor`` kept, and those between interpolated smoothly."""
    wavelen = 2 * math.pi / inv_freq
    smooth = (original_max_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    scaled = jnp.where(wavelen > original_max_len / low_freq_factor, inv_freq / factor, inv_freq)
    medium = (wavelen >= original_max_len / high_freq_factor) & (wavelen <= original_max_len / low_freq_factor)
    return jnp.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)


def rope_frequencies(positions_BT, head_dim: int, theta: float = 10000.0, inv_freq=None):
    """Rotary angles ``(cos, sin)``, each ``[B, T, head_dim // 2]`` (float32).
    ``inv_freq`` ``[head_dim // 2]`` replaces :func:`rope_inv_freq` (e.g. scaled ones)."""
    inv_freq = rope_inv_freq(head_dim, theta) if inv_freq is None else inv_freq
    angle = positions_BT.astype(jnp.float32)[..., None] * inv_freq
    return jnp.cos(angle), jnp.sin(angle)


def rope_for(config, positions_BT):
    """The ``(cos, sin)`` a model of ``config`` uses at ``positions [B, T]``: over
    ``config.rotary_dim`` dims, base ``rope_theta``, scaled per ``rope_scaling``."""
    inv_freq = rope_inv_freq(config.rotary_dim, config.rope_theta)
    if config.rope_scaling == "linear":
        inv_freq = inv_freq / config.rope_scaling_factor
    elif config.rope_scaling == "llama3":
        inv_freq = llama3_rope_scaling(inv_freq, config.rope_scaling_factor, config.rope_low_freq_factor,
                                       config.rope_high_freq_factor, config.rope_original_max_len)
    return rope_frequencies(positions_BT, config.rotary_dim, inv_freq=inv_freq)


def apply_rope(x_BTHK, cos_BTk, sin_BTk):
    """Rotate pairs ``(x[..., i], x[..., i + r/2])`` by the position's angle (GPT-NeoX / Llama
    "rotate half" layout) over the first ``r = 2 * cos.shape[-1]`` dims; the rest pass
    unchanged (partial rotary, GPT-NeoX). ``x [B, T, H, K]``, ``cos/sin [B, T, r/2]``."""
    r = 2 * cos_BTk.shape[-1]
    x_rot, x_pass = x_BTHK[..., :r], x_BTHK[..., r:]
    x1, x2 = jnp.split(x_rot.astype(_acc(x_BTHK.dtype)), 2, axis=-1)
    c, s = cos_BTk[:, :, None, :], sin_BTk[:, :, None, :]
    rotated = jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(x_BTHK.dtype)
    return rotated if r == x_BTHK.shape[-1] else jnp.concatenate([rotated, x_pass], axis=-1)


# ----------------------------------------------------------------------------- attention layer
def linear(x, w):
    """``x [..., D] @ w [D, *out] -> [..., *out]`` (a weight may have several output axes)."""
    return jnp.tensordot(x, w, axes=1)


def attention_projections(params: Params, x_BTD, kernels=None):
    """Project ``x [B, T, D]`` to ``q [B, T, H, K]``, ``k, v [B, T, G, K]``."""
    dense = _kernel(kernels, "dense", linear)
    q, k, v = (dense(x_BTD, params[w]) for w in ("wq", "wk", "wv"))
    if "bq" in params:
        q, k, v = q + params["bq"], k + params["bk"], v + params["bv"]
    return q, k, v


def multi_head_attention(params: Params, x_BTD, *, mask=None, rope=None, cache=None,
                         cache_index=None, dropout_rate: float = 0.0, key=None,
                         kernels=None, is_causal: bool = False, scale=None, softcap=None,
                         qk_norm=None, hooks=None):
    """Multi-head (optionally grouped-query) self-attention.

    ``x [B, T, D]``; ``mask`` boolean broadcastable to ``[B, 1, T, S]`` (True = may
    attend; pass :func:`causal_mask` for a decoder); ``rope`` optional ``(cos, sin)``
    from :func:`rope_frequencies` for the T query/key positions. With ``cache``
    ``{"k": [B, G, S, K], "v": [B, G, S, K]}`` the new keys/values are written at
    ``cache_index`` and queries attend over all S cache slots (``mask`` must then be
    ``[.., T, S]``). Dropout on the weights when ``key`` is given. ``kernels`` may replace
    the softmax by a fused kernel that returns no weights (``is_causal``: the mask is causal).
    ``scale`` (default ``1/sqrt(K)``) and ``softcap`` as in :func:`scaled_dot_product_attention`;
    ``qk_norm(norm_params, x)`` normalises each head's q and k with ``params["q_norm"]`` /
    ``params["k_norm"]`` before RoPE (Qwen3), when those are present.
    ``hooks`` (hooked calls take the textbook): ``hook_q [B, T, H, K]``, ``hook_k``,
    ``hook_v [B, T, G, K]`` (after any q/k norm), ``hook_rot_q``, ``hook_rot_k`` (after RoPE),
    ``hook_attn_scores``, ``hook_pattern [B, H, T, S]``, ``hook_z [B, T, H, K]``.
    Returns ``(out [B, T, D], weights [B, H, T, S] or None, new_cache or None)``.
    """
    q, k, v = attention_projections(params, x_BTD, kernels)
    if "q_norm" in params:
        q, k = qk_norm(params["q_norm"], q), qk_norm(params["k_norm"], k)
    q, k, v = _hook(hooks, "hook_q", q), _hook(hooks, "hook_k", k), _hook(hooks, "hook_v", v)
    if rope is not None:
        q, k = _hook(hooks, "hook_rot_q", apply_rope(q, *rope)), _hook(hooks, "hook_rot_k", apply_rope(k, *rope))
    B, T, H, K = q.shape
    G = k.shape[2]
    # Group the query heads under their shared kv head, [B, G, R, T, K]; keys broadcast over R.
    q_BGRTK = q.reshape(B, T, G, H // G, K).transpose(0, 2, 3, 1, 4)
    k_BGSK, v_BGSK = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    if mask is not None:  # [B, 1, T, S] -> [B, 1, 1, T, S]
        mask = jnp.asarray(mask)
        mask = mask.reshape((1,) * (5 - mask.ndim) + mask.shape) if mask.ndim < 4 else mask[:, :, None]
    scale = 1.0 / math.sqrt(K) if scale is None else scale
    weights_BHTS, new_cache = None, None
    # Fused kernels neither cap scores nor drop weights: those calls take the textbook.
    plain = softcap is None and not (key is not None and dropout_rate > 0.0) and hooks is None
    fused = _kernel(kernels, "attention", None) if plain else None
    cached = _kernel(kernels, "cached_attention", None)
    if cache is not None:  # write the new keys/values into their slots
        new_cache = {n: lax.dynamic_update_slice(cache[n], a.astype(cache[n].dtype), (0, 0, cache_index, 0))
                     for n, a in (("k", k_BGSK), ("v", v_BGSK))}
    if cache is not None and fused is not None and cached is not None:
        # A kernel that reads the cache as it was before the write (XLA then updates it in place).
        out = cached(q_BGRTK, cache["k"], cache["v"], k_BGSK, v_BGSK, mask, cache_index, scale)
    else:
        if cache is not None:  # attend over every slot of the written cache
            k_BGSK, v_BGSK = new_cache["k"].astype(q.dtype), new_cache["v"].astype(q.dtype)
        if fused is not None:
            out = fused(q_BGRTK, k_BGSK, v_BGSK, mask, scale, is_causal and cache is None)
        else:
            out, w = scaled_dot_product_attention(q_BGRTK, k_BGSK[:, :, None], v_BGSK[:, :, None], mask=mask,
                                                  scale=scale, softcap=softcap, hooks=_grouped(hooks, G))
            weights_BHTS = w.reshape(B, H, T, -1)
            if key is not None and dropout_rate > 0.0:  # dropout on the weights (as GPT-2)
                w = dropout(w, dropout_rate, key)
                out = jnp.einsum("...ts,...sk->...tk", w.astype(v_BGSK.dtype), v_BGSK[:, :, None])
    z_BTHK = _hook(hooks, "hook_z", out.reshape(B, H, T, K).transpose(0, 2, 1, 3))
    out_BTD = z_BTHK.reshape(B, T, H * K).astype(x_BTD.dtype)
    y = _kernel(kernels, "dense", linear)(out_BTD, params["wo"].reshape(H * K, -1))
    return (y + params["bo"] if "bo" in params else y), weights_BHTS, new_cache


def _grouped(hooks, G: int):
    """Score and pattern hooks (on ``[B, H, T, S]``) for the grouped ``[B, G, R, T, S]`` layout."""
    if hooks is None:
        return None
    wrap = lambda f: lambda a: f(a.reshape(a.shape[0], -1, *a.shape[-2:])).reshape(a.shape)  # noqa: E731
    return {n: wrap(f) for n, f in hooks.items() if n in ("hook_attn_scores", "hook_pattern")}


# ----------------------------------------------------------------------------- norms, MLP
def layer_norm(x, scale, bias=None, eps: float = 1e-5, offset: float = 0.0):
    """``(x - mean) / sqrt(var + eps) * (offset + scale) + bias`` over the last axis
    (statistics in float32)."""
    xf = x.astype(_acc(x.dtype))
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    y = (xf - mean) * lax.rsqrt(var + eps) * (offset + scale.astype(xf.dtype))
    return (y if bias is None else y + bias).astype(x.dtype)


def rms_norm(x, scale, eps: float = 1e-5, offset: float = 0.0):
    """``x / sqrt(mean(x^2) + eps) * (offset + scale)`` over the last axis (in float32 at
    least). Gemma stores ``scale - 1`` and uses ``offset=1``."""
    xf = x.astype(_acc(x.dtype))
    y = xf * lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + eps)
    return (y * (offset + scale.astype(xf.dtype))).astype(x.dtype)


def norm(params: Params, x, kind: str = "layernorm", eps: float = 1e-5, kernels=None,
         offset: float = 0.0):
    """Apply the norm named by ``kind`` (``layernorm`` | ``rmsnorm``) with its params."""
    if kind == "rmsnorm":
        return rms_norm(x, params["scale"], eps, offset)
    if offset:
        return layer_norm(x, params["scale"], params.get("bias"), eps, offset)
    return _kernel(kernels, "layer_norm", layer_norm)(x, params["scale"], params.get("bias"), eps)


def gelu_tanh(x):
    """GELU with GPT-2's tanh approximation: ``0.5 x (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3)))``."""
    return 0.5 * x * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def gelu_exact(x):
    """GELU as defined, ``x * Phi(x) = 0.5 x (1 + erf(x / sqrt(2)))`` (GPT-NeoX / Pythia)."""
    return 0.5 * x * (1.0 + lax.erf(x / math.sqrt(2.0)))


GATED = ("swiglu", "geglu")  # activations that multiply a gate branch into the up projection


def activation(name: str, kernels=None):
    """The elementwise non-linearity for ``relu`` | ``gelu`` (tanh approx.) | ``gelu_exact``
    (erf) | ``swiglu`` (its SiLU gate) | ``geglu`` (its tanh-GELU gate, Gemma)."""
    if name in ("gelu", "geglu"):
        return _kernel(kernels, "gelu", gelu_tanh)
    return {"relu": jax.nn.relu, "swiglu": jax.nn.silu, "gelu_exact": gelu_exact}[name]


def feed_forward(params: Params, x_BTD, act: str = "gelu", kernels=None, hooks=None):
    """Position-wise MLP ``[B, T, D] -> [B, T, D]``.

    ``relu`` / ``gelu`` / ``gelu_exact``: ``act(x W_in + b_in) W_out + b_out``; gated
    ``swiglu`` / ``geglu``: ``(act(x W_gate) * (x W_in)) W_out`` (SiLU / tanh-GELU gate).
    ``hooks``: ``hook_pre`` (what the activation reads: the gate's input when gated),
    ``hook_pre_linear`` (gated only: ``x W_in``), ``hook_post`` (all ``[B, T, F]``).
    """
    dense = _kernel(kernels, "dense", linear)
    h = dense(x_BTD, params["w_in"])
    if "b_in" in params:
        h = h + params["b_in"]
    if act in GATED:
        h = activation(act, kernels)(_hook(hooks, "hook_pre", dense(x_BTD, params["w_gate"]))) * \
            _hook(hooks, "hook_pre_linear", h)
    else:
        h = activation(act, kernels)(_hook(hooks, "hook_pre", h))
    y = dense(_hook(hooks, "hook_post", h), params["w_out"])
    return y + params["b_out"] if "b_out" in params else y


def dropout(x, rate: float, key):
    """Inverted dropout: zero with probability ``rate``, scale the rest by ``1/(1-rate)``.
    Identity when ``key`` is None or ``rate == 0``."""
    if key is None or rate <= 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


# ----------------------------------------------------------------------------- block and decoder
def decoder_block(params: Params, x_BTD, config, *, mask=None, rope=None, cache=None,
                  cache_index=None, key=None, kernels=None, is_causal: bool = False, hooks=None):
    """One decoder block ``[B, T, D] -> [B, T, D]``.

    ``config.norm_position``: ``pre`` (GPT-2: ``x + attn(norm(x))``, ``x + mlp(norm(x))``),
    ``post`` (original Transformer: ``norm(x + attn(x))``, ``norm(x + mlp(x))``),
    ``none`` (``x + attn(x)``, ``x + mlp(x)``) or ``sandwich`` (Gemma 2: pre-norm, and each
    branch's output normed again before it is added: ``x + norm(attn(norm(x)))``).
    ``config.parallel_residual`` (GPT-NeoX): ``x + attn(norm1(x)) + mlp(norm2(x))``.
    Dropout (``config.dropout``) on attention weights and on both residual branches when
    ``key`` is given.

    Returns ``(y [B, T, D], aux)`` with ``aux = {"weights": [B, H, T, S] (None when a
    kernel attended), "attn_out": [B, T, D], "mlp_out": [B, T, D], "cache": new cache or None}``
    (``attn_out`` / ``mlp_out``: what each branch adds to the residual stream).
    ``hooks`` maps this block's hook-point names (``hook_resid_pre``, ``ln1.hook_normalized``,
    ``attn.hook_z``, ``mlp.hook_post``, ...; see :mod:`jaxformer.interp`) to ``fn(x) -> x``.
    """
    pos, rate = config.norm_position, config.dropout
    pre = pos in ("pre", "sandwich")
    keys = jax.random.split(key, 3) if key is not None else (None, None, None)
    nrm = lambda p, h: norm(p, h, config.norm, config.norm_eps, kernels, config.norm_offset)  # noqa: E731
    # A kernel set may mark the residual stream (XLA:CPU gradient fences); the textbook does not.
    mark = _kernel(kernels, "residual", lambda x: x)

    x_BTD = _hook(hooks, "hook_resid_pre", mark(x_BTD))
    h = _hook(hooks, "ln1.hook_normalized", nrm(params["ln1"], x_BTD)) if pre else x_BTD
    a, weights, new_cache = multi_head_attention(
        params["attn"], h, mask=mask, rope=rope, cache=cache, cache_index=cache_index,
        dropout_rate=rate, key=keys[0], kernels=kernels, is_causal=is_causal,
        scale=config.attn_scale, softcap=config.attn_softcap, qk_norm=nrm, hooks=_sub_hooks(hooks, "attn."))
    if pos == "sandwich":
        a = nrm(params["ln_attn_out"], a)
    a = _hook(hooks, "hook_attn_out", dropout(a, rate, keys[1]))
    if config.parallel_residual:  # both branches read the block's input
        h = _hook(hooks, "ln2.hook_normalized", nrm(params["ln2"], x_BTD))
        m = dropout(feed_forward(params["mlp"], h, config.activation, kernels, _sub_hooks(hooks, "mlp.")),
                    rate, keys[2])
        m = _hook(hooks, "hook_mlp_out", m)
        x = _hook(hooks, "hook_resid_post", x_BTD + a + m)
        return x, {"weights": weights, "attn_out": a, "mlp_out": m, "cache": new_cache}
    x = x_BTD + a
    if pos == "post":
        x = nrm(params["ln1"], x)
    if config.attn_only:  # no MLP (TransformerLens's attention-only models)
        x = _hook(hooks, "hook_resid_post", x)
        return x, {"weights": weights, "attn_out": a, "mlp_out": jnp.zeros_like(a), "cache": new_cache}

    x = _hook(hooks, "hook_resid_mid", mark(x))
    h = _hook(hooks, "ln2.hook_normalized", nrm(params["ln2"], x)) if pre else x
    m = feed_forward(params["mlp"], h, config.activation, kernels, _sub_hooks(hooks, "mlp."))
    if pos == "sandwich":
        m = nrm(params["ln_mlp_out"], m)
    m = _hook(hooks, "hook_mlp_out", dropout(m, rate, keys[2]))
    x = x + m
    if pos == "post":
        x = nrm(params["ln2"], x)
    x = _hook(hooks, "hook_resid_post", x)
    return x, {"weights": weights, "attn_out": a, "mlp_out": m, "cache": new_cache}


def embed(params: Params, tokens_BT, config, positions_BT, hooks=None):
    """Token embedding (times ``sqrt(D)`` when ``config.scale_embeddings``, Gemma) plus
    absolute positions (learned or sinusoidal) ``-> [B, T, D]``.
    ``hooks``: ``hook_embed``, ``hook_pos_embed`` (absolute positions only)."""
    x = jnp.take(params["tok_emb"], tokens_BT, axis=0)
    if config.scale_embeddings:  # the factor is rounded to the compute dtype, as Gemma does
        x = x * jnp.asarray(math.sqrt(config.d_model), x.dtype)
    x = _hook(hooks, "hook_embed", x)
    if config.positions == "learned":
        x = x + _hook(hooks, "hook_pos_embed", learned_positions(params["pos_emb"], positions_BT))
    elif config.positions == "sinusoidal":
        x = x + _hook(hooks, "hook_pos_embed",
                      sinusoidal_positions(config.max_len, config.d_model)[positions_BT].astype(x.dtype))
    return x


def final_norm(params: Params, x_BTD, config, kernels=None, hooks=None):
    """The norm after the last block (``ln_f``; pre-norm and sandwich models only).
    ``hooks``: ``ln_final.hook_normalized``."""
    if config.norm_position in ("pre", "sandwich"):
        x = norm(params["ln_f"], x_BTD, config.norm, config.norm_eps, kernels, config.norm_offset)
        return _hook(hooks, "ln_final.hook_normalized", x)
    return x_BTD


def unembed(params: Params, x_BTD, config, hooks=None):
    """:func:`final_norm` and the output projection ``-> logits [B, T, V]`` in float32
    (soft-capped when ``config.final_softcap``, Gemma 2)."""
    x_BTD = final_norm(params, x_BTD, config, hooks=hooks)
    # Tied: contract with the [V, D] table as stored (a transposed view made XLA:CPU copy
    # the whole table on every decode step).
    eq, w = ("btd,vd->btv", params["tok_emb"]) if config.tie_embeddings else ("btd,dv->btv", params["lm_head"])
    logits = jnp.einsum(eq, x_BTD, w.astype(x_BTD.dtype), preferred_element_type=_acc(x_BTD.dtype))
    return soft_cap(logits, config.final_softcap)


def init_cache(config, batch_size: int, max_len: Optional[int] = None, dtype=jnp.float32):
    """An empty KV cache ``{"k", "v": [L, B, G, S, K]}`` for :func:`decoder`."""
    S = config.max_len if max_len is None else max_len
    shape = (config.n_layer, batch_size, config.kv_heads, S, config.head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def attention_masks(config, T: int, S: int, offset=0, key_mask_BS=None):
    """The boolean masks ``[B or 1, 1, T, S]`` of a model's layers: ``(full, sliding)``,
    causal (queries start at ``offset``) and, for ``sliding``, limited to the last
    ``config.sliding_window`` keys (None when no layer slides). ``key_mask_BS`` (False =
    padding) is applied to both."""
    full = causal_mask(T, S, offset)[None, None]
    sliding = causal_mask(T, S, offset, config.sliding_window)[None, None] if any(config.sliding_layers) else None
    if key_mask_BS is not None:
        pad = key_mask_BS[:, None, None, :]
        full, sliding = full & pad, None if sliding is None else sliding & pad
    return full, sliding


def decoder_hidden(params: Params, tokens_BT, config, *, positions_BT=None, key_mask_BS=None,
                   cache=None, cache_index=0, key=None, capture: bool = False, kernels=None,
                   hooks=None):
    """Embedding and every block: tokens ``[B, T]`` -> the last block's output ``[B, T, D]``
    (before the final norm; :func:`unembed` finishes).

    - ``positions_BT``: absolute positions (default ``cache_index + arange(T)``).
    - ``key_mask_BS``: optional boolean ``[B, S]``, False for padding keys.
    - ``cache``: from :func:`init_cache`; the T new tokens are written at
      ``cache_index`` and attend causally to everything before them.
    - ``key``: PRNG key enabling dropout (training); None = deterministic.
    - ``capture``: also return every intermediate (see below); always the textbook math.
    - ``kernels``: a :mod:`jaxformer.model.kernels` set (None = the textbook).
    - ``hooks``: a mapping from hook-point names (TransformerLens's: ``hook_embed``,
      ``blocks.{l}.attn.hook_z``, ...; see :mod:`jaxformer.interp`) to ``fn(x) -> x``, which
      may read or replace that activation. Hooked calls run the textbook with the layers
      unrolled (the layer in a name is a Python int) and not rematerialised, so a hook may
      keep what it sees in a Python dict for the caller's trace.
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
    kernels = None if capture or hooks is not None else kernels
    if positions_BT is None:
        positions_BT = jnp.broadcast_to(cache_index + jnp.arange(T), (B, T))
    dtype = jnp.dtype(config.dtype)
    params = jax.tree.map(lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p, params)
    keys = jax.random.split(key, config.n_layer + 1) if key is not None else None

    x = dropout(embed(params, tokens_BT, config, positions_BT, hooks), config.dropout,
                None if keys is None else keys[-1])
    per_layer = isinstance(params["blocks"], (list, tuple))
    S = T if cache is None else (cache[0] if per_layer else cache)["v"].shape[-2]
    full, sliding = attention_masks(config, T, S, cache_index if cache is not None else 0, key_mask_BS)
    slides = config.sliding_layers  # per layer: does it use the sliding-window mask?
    rope = rope_for(config, positions_BT) if config.positions == "rope" else None

    def layer(x, xs):
        p, c, k, i = xs
        if all(slides) or not any(slides):
            mask = sliding if any(slides) else full
        else:  # a traced layer index under scan: pick this layer's mask
            mask = jnp.where(jnp.asarray(slides)[i], sliding, full)
        y, aux = decoder_block(p, x, config, mask=mask, rope=rope, cache=c, cache_index=cache_index,
                               key=k, kernels=kernels, is_causal=key_mask_BS is None and not any(slides),
                               hooks=None if hooks is None else _sub_hooks(hooks, f"blocks.{i}."))
        keep = {"cache": aux["cache"]}
        if capture:
            keep.update(weights=aux["weights"], attn_out=aux["attn_out"], mlp_out=aux["mlp_out"], resid=x)
        return y, keep

    if config.remat != "none" and hooks is None:
        policy = jax.checkpoint_policies.dots_with_no_batch_dims_saveable if config.remat == "dots" else None
        layer = jax.checkpoint(layer, policy=policy)
    if per_layer or not config.scan_layers or hooks is not None:
        # One Python step per layer (a list of per-layer trees is not sliced at all: slicing
        # stacked weights inside a decode loop would copy them on every step).
        take = lambda tree, i: None if tree is None else (tree[i] if per_layer else jax.tree.map(lambda a: a[i], tree))  # noqa: E731
        outs = []
        for i in range(config.n_layer):
            x, y = layer(x, (take(params["blocks"], i), take(cache, i), None if keys is None else keys[i], i))
            outs.append(y)
        ys = {k: jnp.stack([o[k] for o in outs]) for k in outs[0] if k != "cache"}
        caches = [o["cache"] for o in outs]
        ys["cache"] = None if cache is None else caches if per_layer else jax.tree.map(lambda *a: jnp.stack(a), *caches)
    else:
        x, ys = lax.scan(layer, x, (params["blocks"], cache, None if keys is None else keys[:-1],
                                    jnp.arange(config.n_layer)))
    aux = {"cache": ys["cache"]}
    if capture:
        aux.update(weights=ys["weights"], attn_out=ys["attn_out"], mlp_out=ys["mlp_out"],
                   resid=jnp.concatenate([ys["resid"], x[None]], axis=0))
    return x, aux


def decoder(params: Params, tokens_BT, config, *, hooks=None, **kwargs):
    """The whole decoder: tokens ``[B, T]`` -> ``(logits [B, T, V] float32, aux)``:
    :func:`decoder_hidden` (its keyword arguments and ``aux``) then :func:`unembed`
    (``hooks`` reach both)."""
    x, aux = decoder_hidden(params, tokens_BT, config, hooks=hooks, **kwargs)
    return unembed(params, x, config, hooks=hooks), aux


# ----------------------------------------------------------------------------- the loss
def token_log_probs(logits_BTV, targets_BT):
    """``log softmax(logits)[target]`` at every position ``-> [B, T]`` (float32 at least)."""
    logp = jax.nn.log_softmax(logits_BTV.astype(_acc(logits_BTV.dtype)), axis=-1)
    return jnp.take_along_axis(logp, targets_BT[..., None], axis=-1)[..., 0]


def cross_entropy(logits_BTV, targets_BT, mask_BT=None):
    """Mean next-token cross-entropy (stable for large logits). ``mask`` weights positions."""
    nll = -token_log_probs(logits_BTV, targets_BT)
    if mask_BT is None:
        return jnp.mean(nll)
    return jnp.sum(nll * mask_BT) / jnp.maximum(jnp.sum(mask_BT.astype(nll.dtype)), 1.0)


def unembed_cross_entropy(params: Params, x_BTD, targets_BT, config, mask_BT=None):
    """``cross_entropy(unembed(params, x, config), targets, mask)``: the head and the loss."""
    return cross_entropy(unembed(params, x_BTD, config), targets_BT, mask_BT)


def next_token_loss(params: Params, tokens_BT1, config, *, key=None, kernels=None):
    """The training objective: mean cross-entropy of predicting ``tokens[:, 1:]`` from
    ``tokens[:, :-1]`` (``tokens [B, T+1]``). ``key`` enables dropout."""
    x_BTD, _ = decoder_hidden(params, tokens_BT1[:, :-1], config, key=key, kernels=kernels)
    head_loss = _kernel(kernels, "unembed_cross_entropy", unembed_cross_entropy)
    return head_loss(params, x_BTD, tokens_BT1[:, 1:], config)
