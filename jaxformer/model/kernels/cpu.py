"""Kernels for XLA:CPU: the textbook's functions with hand-written backward passes.

Each function here has the values of its textbook counterpart in
:mod:`jaxformer.functional` and the same gradient (``tests/test_kernels.py`` checks
both, in float64 where the kernel allows it); only the way XLA:CPU computes the gradient
differs. They are reverse-mode only (``custom_vjp``): the library uses them in the
train step and the decode loop, never in the inference entry points researchers
differentiate in forward mode.

Why each exists (measured on the Tiny Shakespeare recipe and the 25M config, 2-core x86):

- :func:`attention` backward uses the flash-attention identity ``sum_s dP * P = dO . O``
  and works on the transposed ``[.., S, T]`` scores, keeping only the log-normaliser (the
  probabilities are recomputed); XLA's own derivative reduced a ``[.., T, S]`` product
  over S, the slowest op of the CPU step.
- :func:`unembed_cross_entropy` forms ``d loss / d logits = w (softmax - onehot)`` in the
  forward pass, so the ``[N, V]`` logits are neither kept nor differentiated twice and the
  head's weight gradient is one matmul laid out as its parameter.
- :func:`layer_norm` uses the textbook layer-norm gradient (three row reductions)
  instead of autodiff's chain through mean and variance.
- :func:`gelu` computes its derivative in the forward pass: XLA:CPU fused autodiff's
  version into the transpose feeding the ``w_in`` weight gradient, re-reading four saved
  ``[B, T, F]`` intermediates (~8x ReLU's cost).
- :func:`dense` multiplies the transposed *input* (materialised) for the weight gradient,
  so XLA:CPU does not transpose the wider output gradient instead.
- :func:`residual` (a gradient fence) and :func:`_materialize`: XLA:CPU fuses
  elementwise producers into every consumer, including the transposing copies that feed
  weight-gradient matmuls; in an unrolled stack each layer's copy re-added every later
  layer's residual gradient (O(L^2) work). A conditional is a boundary XLA does not fuse
  across, so the gradient is computed once.
- :func:`cached_attention` (forward only): attends over the cache as read before the new
  entries are written, so a decode loop only reads the old cache and XLA updates it in
  place instead of copying every layer's cache at every step.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from jaxformer import functional as F
from jaxformer.model.kernels.base import Kernels

def _masked_exp(scores, mask):
    """``exp(scores - row max)`` where kept (0 elsewhere), its row sums (1 for rows with
    nothing kept) and the row max: softmax = e / denom, logsumexp = row_max + log(denom)."""
    scores = scores.astype(F.acc_dtype(scores.dtype))
    if mask is not None:
        scores = jnp.where(mask, scores, -jnp.inf)
    row_max = jnp.max(scores, axis=-1, keepdims=True)
    row_max = lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
    e = jnp.exp(scores - row_max)
    denom = jnp.sum(e, axis=-1, keepdims=True)
    return e, jnp.where(denom == 0.0, 1.0, denom), row_max


def _materialize(g):
    """``g`` computed into a buffer of its own (see the module docstring). The predicate
    (``g[0] == g[0]``) is false only if that entry is NaN; the gradient is then returned
    as all-NaN, which the non-finite-loss guard reports either way."""
    first = g.reshape(-1)[0]
    return lax.cond(first == first, lambda a: a, lambda a: jnp.full_like(a, jnp.nan), g)


# ----------------------------------------------------------------------------- attention
def _scores(q, k, scale):
    return jnp.einsum("bgrtk,bgsk->bgrts", q, k, preferred_element_type=F.acc_dtype(q.dtype)) * scale


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def attention_core(q_BGRTK, k_BGSK, v_BGSK, mask, scale: float):
    """``softmax(q k^T * scale) v`` for grouped heads: ``q [B, G, R, T, K]``, ``k, v
    [B, G, S, K]`` (shared by the R heads), ``mask`` broadcastable to ``[B, G, R, T, S]``
    or None -> ``out [B, G, R, T, K]``. Fully-masked rows give zeros."""
    return _attention_fwd(q_BGRTK, k_BGSK, v_BGSK, mask, scale)[0]


def _attention_fwd(q, k, v, mask, scale):
    e, denom, row_max = _masked_exp(_scores(q, k, scale), mask)
    out = jnp.einsum("bgrts,bgsk->bgrtk", (e / denom).astype(v.dtype), v)
    return out, (q, k, v, row_max + jnp.log(denom), out, mask)


def _attention_bwd(scale, res, d_out):
    q, k, v, lse, out, mask = res
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


attention_core.defvjp(_attention_fwd, _attention_bwd)


def attention(q_BGRTK, k_BGSK, v_BGSK, mask, scale: float, is_causal: bool = False):
    """The ``attention`` slot: :func:`attention_core` (``is_causal`` is implied by ``mask``)."""
    del is_causal
    return attention_core(q_BGRTK, k_BGSK, v_BGSK, mask, scale)


def cached_attention(q_BGRTK, k_cache, v_cache, k_new, v_new, mask, cache_index, scale: float):
    """Attention of T new tokens over a KV cache as it was *before* they are written.

    ``k_cache, v_cache [B, G, S, K]`` hold the earlier positions (slots at and after
    ``cache_index`` are ignored); ``k_new, v_new [B, G, T, K]`` go to slots
    ``cache_index ..`` (clamped as ``dynamic_update_slice`` clamps them); ``mask``,
    broadcastable to ``[B, G, R, T, S]``, says which slots each query may see. One softmax
    runs over both blocks: the same numbers as attending over the updated cache.
    """
    dt = q_BGRTK.dtype
    k_cache, v_cache, k_new, v_new = (a.astype(dt) for a in (k_cache, v_cache, k_new, v_new))
    S, T = k_cache.shape[-2], k_new.shape[-2]
    mask = jnp.broadcast_to(True if mask is None else mask, (*q_BGRTK.shape[:-1], S))
    start = jnp.clip(cache_index, 0, S - T)
    old = mask & (jnp.arange(S) < start)
    new = lax.dynamic_slice_in_dim(mask, start, T, axis=-1)
    scores = jnp.concatenate([_scores(q_BGRTK, k_cache, scale), _scores(q_BGRTK, k_new, scale)], axis=-1)
    e, denom, _ = _masked_exp(scores, jnp.concatenate([old, new], axis=-1))
    p = (e / denom).astype(dt)
    return (jnp.einsum("bgrts,bgsk->bgrtk", p[..., :S], v_cache)
            + jnp.einsum("bgrts,bgsk->bgrtk", p[..., S:], v_new))


# ----------------------------------------------------------------------------- dense, norm, gelu
@jax.custom_vjp
def _dense2d(x, w):
    return x @ w


def _dense_fwd(x, w):
    return x @ w, (x, w)


def _dense_bwd(res, g):
    x, w = res
    dw = _materialize(x.reshape(-1, x.shape[-1]).T) @ g.reshape(-1, g.shape[-1])
    return g @ w.T, dw.astype(w.dtype)


_dense2d.defvjp(_dense_fwd, _dense_bwd)


def dense(x, w):
    """:func:`functional.linear` ``x [..., D] @ w [D, *out]``. The hand-written weight
    gradient is used where the input is not wider than the output (attention projections,
    the MLP's input); a wider input keeps autodiff's (cheaper there)."""
    out = w.shape[1:]
    w2 = w.reshape(w.shape[0], -1)
    if w.ndim == 2 and x.shape[-1] > w2.shape[1]:
        return x @ w
    return _dense2d(x, w2).reshape(*x.shape[:-1], *out)


def _ln_stats(x, eps):
    xf = x.astype(F.acc_dtype(x.dtype))
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
    dx = rstd * (gs - jnp.mean(gs, axis=-1, keepdims=True) - xhat * jnp.mean(gs * xhat, axis=-1, keepdims=True))
    return dx.astype(x.dtype), d_scale, d_bias


_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


def layer_norm(x, scale, bias=None, eps: float = 1e-5):
    """:func:`functional.layer_norm` with the textbook gradient written out."""
    if bias is None:
        return _layer_norm(x, scale, jnp.zeros_like(scale), eps, False)
    return _layer_norm(x, scale, bias, eps, True)


_GELU_C = math.sqrt(2.0 / math.pi)


@jax.custom_vjp
def gelu(x):
    """:func:`functional.gelu_tanh`; the backward pass is one multiply."""
    return _gelu_fwd(x)[0]


def _gelu_fwd(x):
    t = jnp.tanh(_GELU_C * x * (1.0 + 0.044715 * x * x))
    dt = _GELU_C * (1.0 + 3 * 0.044715 * x * x) * (1.0 - t * t)
    return 0.5 * x * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * x * dt  # value, derivative


gelu.defvjp(_gelu_fwd, lambda dydx, g: (_materialize(g * dydx),))


@jax.custom_vjp
def residual(x):
    """Identity whose gradient is materialised (:func:`_materialize`)."""
    return x


residual.defvjp(lambda x: (x, None), lambda _, g: (_materialize(g),))


# ----------------------------------------------------------------------------- head + loss
def unembed_cross_entropy(params, x_BTD, targets_BT, config, mask_BT=None):
    """:func:`functional.unembed_cross_entropy` with one hand-written backward pass for the
    output projection and the loss."""
    if config.final_softcap is not None or config.mlm_head:  # capped logits, BERT's head: the textbook's autodiff
        return F.unembed_cross_entropy(params, x_BTD, targets_BT, config, mask_BT)
    x_BTD = F.final_norm(params, x_BTD, config, ln=layer_norm)
    B, T, D = x_BTD.shape
    acc = F.acc_dtype(x_BTD.dtype)
    if mask_BT is None:
        w_N = jnp.full((B * T,), 1.0 / (B * T), acc)
    else:
        m = mask_BT.reshape(B * T).astype(acc)
        w_N = m / jnp.maximum(jnp.sum(m), 1.0)
    tied = config.tie_embeddings
    w = (params["tok_emb"] if tied else params["lm_head"]).astype(x_BTD.dtype)
    return _head_loss(x_BTD.reshape(B * T, D), w, targets_BT.reshape(B * T), w_N, tied)


def _head_logits(x_ND, w, tied, acc):
    return jnp.einsum("nd,vd->nv" if tied else "nd,dv->nv", x_ND, w, preferred_element_type=acc)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _head_loss(x_ND, w, targets_N, w_N, tied: bool):
    """``sum_n w_n * nll_n`` of logits ``x @ W`` (``W = w.T`` when ``tied``: w is ``[V, D]``)."""
    return _head_loss_fwd(x_ND, w, targets_N, w_N, tied)[0]


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


CPU = Kernels("cpu", attention=attention, cached_attention=cached_attention, dense=dense,
              layer_norm=layer_norm, gelu=gelu, residual=residual,
              unembed_cross_entropy=unembed_cross_entropy)
