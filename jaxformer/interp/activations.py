"""Views of :func:`jaxformer.interp.run_with_cache`: attention maps, the residual stream and its
logit lens, and the similarities between representations.

Everything here is read from the hook points of :mod:`jaxformer.functional` (the very math the
model runs), never computed by a second copy of it. Results are batch-first
(``weights_BLHTT``, ``resid_BLTD``) so that ``out[b]`` is one example.

Shape legend as in :mod:`jaxformer.functional` (B batch, L layers, H heads, T time,
D width, V vocabulary).

    >>> w = attention_maps(model, tokens_BT)        # [B, L, H, T, T], rows sum to 1
    >>> acts = capture(model, tokens_BT)            # dict of named intermediates
    >>> acts["resid"].shape                         # [B, L+1, T, D]

``model`` is a :class:`jaxformer.GPT` or a ``(params, config)`` pair everywhere.
"""
from __future__ import annotations

import functools
from typing import Dict

import jax
import jax.numpy as jnp
import numpy as np

from jaxformer import functional as F
from jaxformer.infer.sampling import check_sampling, filter_logits, greedy
from jaxformer.interp.hooks import run_hooked, run_with_cache_fn, stack_layers
from jaxformer.interp.inputs import check_tokens, model_parts

__all__ = ["attention_maps", "attention_maps_fn", "capture", "capture_fn", "logit_lens",
           "layer_cosine_similarity", "token_cosine_similarity", "next_token_distribution", "CAPTURE_SHAPES"]

CAPTURE_SHAPES = {
    "embed": "[B, T, D]  token (+ absolute position) embedding entering block 0",
    "resid": "[B, L+1, T, D]  residual stream entering each block, then the last block's output",
    "attn_out": "[B, L, T, D]  what each block's attention adds to the residual stream",
    "mlp_out": "[B, L, T, D]  what each block's MLP adds to the residual stream",
    "weights": "[B, L, H, T, T]  attention weights (query t, key s)",
    "logits": "[B, T, V]  final next-token logits (float32)",
    "logit_lens": "[B, L+1, T, V]  each resid entry through the final norm and unembedding",
}


# ----------------------------------------------------------------------------- attention maps
def _weights_one(params, tokens_T, config):
    """One example: ids ``[T]`` -> attention weights ``[L, H, T, T]`` (its ``hook_pattern``s)."""
    names = tuple(f"blocks.{l}.attn.hook_pattern" for l in range(config.n_layer))
    _, cache = run_hooked(params, tokens_T[None], config, None, names)
    return stack_layers(cache, "attn.hook_pattern", config.n_layer)[0]


@functools.partial(jax.jit, static_argnames=("config",))
def attention_maps_fn(params, tokens_BT, config):
    """Pure, jitted: ``tokens [B, T]`` -> ``weights [B, L, H, T, T]`` (float32).

    ``jax.vmap`` over the examples of a single-example forward pass, so one compiled
    call serves the whole batch (and each example is computed exactly as it would be
    alone). Right-padding is harmless to a decoder (no real token sees it); an encoder's
    tokens see every position, padding included (run padded texts one by one).
    """
    return jax.vmap(lambda t: _weights_one(params, t, config))(tokens_BT)


def attention_maps(model, tokens_BT) -> jax.Array:
    """Attention weights of every layer and head: ``tokens [B, T]`` -> ``[B, L, H, T, T]``.

    Rows sum to 1; for a decoder, entries above the diagonal (future keys) are exactly 0; an
    encoder's (``config.causal`` false) maps are full.
    Raises :class:`DataError` for tokens of the wrong shape, out-of-vocabulary ids or
    more than ``max_len`` tokens.
    """
    params, config = model_parts(model)
    return attention_maps_fn(params, check_tokens(tokens_BT, config), config)


# ----------------------------------------------------------------------------- capture
def logit_lens(params, resid_BLTD, config) -> jax.Array:
    """Project residual streams through the final norm and the unembedding.

    ``resid [B, L, T, D]`` (any number L of stream snapshots) -> ``logits [B, L, T, V]``
    (float32). For the last snapshot of a pre-norm model this *is* the model's output.
    """
    B, L, T, D = resid_BLTD.shape
    dtype = jnp.dtype(config.dtype)
    params = jax.tree.map(lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p,
                          params)
    logits = F.unembed(params, resid_BLTD.reshape(B * L, T, D).astype(dtype), config)
    return logits.reshape(B, L, T, -1)


@functools.partial(jax.jit, static_argnames=("config", "with_logit_lens"))
def capture_fn(params, tokens_BT, config, with_logit_lens: bool = True) -> Dict[str, jax.Array]:
    """Pure, jitted version of :func:`capture` over a parameter pytree: a view of
    :func:`jaxformer.interp.run_with_cache_fn` (the hook points, stacked over layers)."""
    L = config.n_layer
    per_layer = ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "attn.hook_pattern")
    names = tuple(f"blocks.{l}.{n}" for l in range(L) for n in per_layer) + (f"blocks.{L - 1}.hook_resid_post",)
    logits, cache = run_with_cache_fn(params, tokens_BT, config, names)
    resid = jnp.concatenate([stack_layers(cache, "hook_resid_pre", L), cache[names[-1]][:, None]], axis=1)
    out = {
        "embed": resid[:, 0],
        "resid": resid,
        "attn_out": stack_layers(cache, "hook_attn_out", L),
        "mlp_out": stack_layers(cache, "hook_mlp_out", L),
        "weights": stack_layers(cache, "attn.hook_pattern", L),
        "logits": logits,
    }
    if with_logit_lens:
        out["logit_lens"] = logit_lens(params, out["resid"], config)
    return out


def capture(model, tokens_BT, *, with_logit_lens: bool = True) -> Dict[str, jax.Array]:
    """Run the model once and return its named intermediates (see ``CAPTURE_SHAPES``).

    Keys: ``embed [B, T, D]``, ``resid [B, L+1, T, D]`` (``resid[:, i]`` enters block i,
    ``resid[:, L]`` leaves the last block, before the final norm), ``attn_out`` and
    ``mlp_out [B, L, T, D]`` (the two branches added by each block, after dropout, so
    for a pre-/no-norm model ``resid[:, i+1] = resid[:, i] + attn_out[:, i] + mlp_out[:, i]``),
    ``weights [B, L, H, T, T]``, ``logits [B, T, V]`` and, unless ``with_logit_lens=False``,
    ``logit_lens [B, L+1, T, V]`` (memory: ``B (L+1) T V`` floats).
    """
    params, config = model_parts(model)
    return capture_fn(params, check_tokens(tokens_BT, config), config, with_logit_lens)


# ----------------------------------------------------------------------------- analysis (NumPy)
def _unit(x, axis=-1):
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def layer_cosine_similarity(resid_LTD) -> np.ndarray:
    """Mean over tokens of the cosine similarity between the representations of the same
    token at two depths: ``resid [L, T, D]`` -> ``[L, L]`` (float64, symmetric, unit diagonal)."""
    u = _unit(resid_LTD)
    return np.einsum("itd,jtd->ij", u, u) / u.shape[1]


def token_cosine_similarity(x_TD) -> np.ndarray:
    """Cosine similarity between the tokens of one layer: ``[T, D]`` -> ``[T, T]``."""
    u = _unit(x_TD)
    return u @ u.T


def next_token_distribution(logits_V, *, temperature: float = 1.0, top_k=None, top_p=None) -> np.ndarray:
    """The distribution a sampler with these settings draws from: ``logits [V]`` -> probs ``[V]``
    (float64): the softmax of :func:`jaxformer.infer.sampling.filter_logits` (temperature, then
    top-k, then top-p), the very filters :func:`jaxformer.generate` samples through;
    ``temperature=0`` is greedy (one-hot on the arg-max). Raises
    :class:`~jaxformer.errors.GenerationError` for invalid settings."""
    check_sampling(temperature=temperature, top_k=top_k, top_p=top_p)
    if temperature == 0:
        x_1V = jnp.asarray(logits_V, jnp.float32)[None]
        p = np.zeros(x_1V.shape[-1])
        p[int(greedy(x_1V)[0])] = 1.0
        return p
    return np.asarray(_filtered_probs(logits_V, temperature=temperature, top_k=top_k, top_p=top_p), np.float64)


@functools.partial(jax.jit, static_argnames=("temperature", "top_k", "top_p"))
def _filtered_probs(logits_V, *, temperature, top_k, top_p):
    """softmax of :func:`filter_logits` of ``logits [V]``, one compiled program per setting."""
    x_1V = jnp.asarray(logits_V, jnp.float32)[None]
    return jax.nn.softmax(filter_logits(x_1V, temperature=temperature, top_k=top_k, top_p=top_p), axis=-1)[0]
