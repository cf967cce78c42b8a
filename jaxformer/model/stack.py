"""The engine beside the textbook: runs :func:`jaxformer.functional.decoder_block` over a
model's layers, fast.

What the textbook (:mod:`jaxformer.functional`) leaves out lives here: the layers under
``lax.scan`` (compile time flat in depth) or unrolled, rematerialised per ``config.remat``;
the masks of each layer (causal, sliding-window, padding) when queries start part-way into
a KV cache; the caches themselves (one ``{"k", "v"}`` per layer, written as tokens arrive);
the per-layer parameter lists the decode loop uses; and the kernel set chosen once per
device (:func:`jaxformer.model.kernels.resolve`), handed to the textbook as the functions it
calls (``attend=``, ``dense=``, ``ln=``, ``gelu=``, ``residual=``). With ``kernels=None`` and
no cache every block is the textbook's math itself; the tests check each kernel against it.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax

from jaxformer import functional as F
from jaxformer.model.kernels import TEXTBOOK, Kernels

Params = F.Params


def init_cache(config, batch_size: int, max_len: Optional[int] = None, dtype=jnp.float32):
    """An empty KV cache ``{"k", "v": [L, B, G, S, K]}`` for :func:`decoder`."""
    S = config.max_len if max_len is None else max_len
    shape = (config.n_layer, batch_size, config.kv_heads, S, config.head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def attention_masks(config, T: int, S: int, offset=0, key_mask_BS=None):
    """The boolean masks ``[B or 1, 1, T, S]`` of a model's layers: ``(full, sliding)``,
    causal (queries start at ``offset``) and, for ``sliding``, limited to the last
    ``config.sliding_window`` keys (None when no layer slides). ``key_mask_BS`` (False =
    padding) is applied to both. An encoder (``config.causal`` false) masks padding only
    (``full`` is ``key_mask_BS`` as ``[B, 1, 1, S]``, or None: attend everywhere), and its
    sliding layers see the keys less than ``sliding_window`` away on either side (ModernBERT)."""
    sliding = F.causal_mask(T, S, offset, config.sliding_window, config.causal)[None, None] \
        if any(config.sliding_layers) else None
    if not config.causal:
        pad = None if key_mask_BS is None else key_mask_BS[:, None, None, :]
        return pad, sliding if pad is None or sliding is None else sliding & pad
    full = F.causal_mask(T, S, offset)[None, None]
    if key_mask_BS is not None:
        pad = key_mask_BS[:, None, None, :]
        full, sliding = full & pad, None if sliding is None else sliding & pad
    return full, sliding


def layer_mask(config, full, sliding, i):
    """Layer ``i``'s mask: ``sliding`` or ``full`` (``i`` may be a traced index under scan)."""
    slides = config.sliding_layers
    if all(slides) or not any(slides):
        return sliding if any(slides) else full
    return jnp.where(jnp.asarray(slides)[i], sliding, True if full is None else full)   # None: attend everywhere


def layer_rope(config, ropes, i):
    """Layer ``i``'s ``(cos, sin)`` from ``ropes`` = (full layers', sliding layers'): they differ
    only with ``config.rope_local_theta`` (ModernBERT); ``i`` may be traced under scan."""
    if ropes is None or config.rope_local_theta is None or not any(config.sliding_layers):
        return None if ropes is None else ropes[0]
    slides = config.sliding_layers
    if all(slides):
        return ropes[1]
    return tuple(jnp.where(jnp.asarray(slides)[i], s, f) for f, s in zip(*ropes))


def block_kernels(kernels: Optional[Kernels]) -> dict:
    """The textbook functions a kernel set replaces, as :func:`functional.decoder_block`'s
    keyword arguments (``attend`` apart: see :func:`attention_kernel`)."""
    k = TEXTBOOK if kernels is None else kernels
    return {"dense": k.dense or F.linear, "ln": k.layer_norm or F.layer_norm, "gelu": k.gelu or F.gelu_tanh,
            "residual": k.residual or (lambda x: x)}


def attention_kernel(kernels: Optional[Kernels], *, cache=None, cache_index=None, is_causal: bool = False,
                     written: Optional[dict] = None) -> Callable:
    """The ``attend`` function of one layer (the signature of :func:`functional.grouped_attention`).

    With a ``cache`` ``{"k", "v": [B, G, S, K]}`` the new keys and values are written at
    ``cache_index`` (the written cache is left in ``written["cache"]``) and the queries attend
    over all S slots. A fused kernel of the set attends when the call needs neither a score
    cap, nor dropout, nor hooks (it returns no weights); otherwise the textbook does.
    ``is_causal``: the mask is the plain causal one (cuDNN's fast path)."""
    k = TEXTBOOK if kernels is None else kernels

    def attend(q_BGRTK, k_BGSK, v_BGSK, mask=None, *, scale, softcap=None, dropout_rate=0.0, key=None,
               hooks=None):
        plain = softcap is None and not (key is not None and dropout_rate > 0.0) and hooks is None
        fused = k.attention if plain else None
        if cache is not None:
            written["cache"] = new = {n: lax.dynamic_update_slice(cache[n], a.astype(cache[n].dtype),
                                                                 (0, 0, cache_index, 0))
                                      for n, a in (("k", k_BGSK), ("v", v_BGSK))}
            if fused is not None and k.cached_attention is not None:
                # reads the cache as it was before the write, so XLA updates it in place
                return k.cached_attention(q_BGRTK, cache["k"], cache["v"], k_BGSK, v_BGSK, mask,
                                          cache_index, scale), None
            k_BGSK, v_BGSK = new["k"].astype(q_BGRTK.dtype), new["v"].astype(q_BGRTK.dtype)
        if fused is not None:
            return fused(q_BGRTK, k_BGSK, v_BGSK, mask, scale, is_causal and cache is None), None
        return F.grouped_attention(q_BGRTK, k_BGSK, v_BGSK, mask, scale=scale, softcap=softcap,
                                   dropout_rate=dropout_rate, key=key, hooks=hooks)

    return attend


def _layer_fn(config, *, full, sliding, rope, cache_index, kernels, is_causal: bool, capture: bool):
    """``layer(x, (block params, cache, key, i)) -> (y, keep)``: one block as the stack runs it,
    rematerialised per ``config.remat``."""
    fns = block_kernels(kernels)

    def layer(x, xs):
        p, c, k, i = xs
        written = {"cache": None}
        attend = attention_kernel(kernels, cache=c, cache_index=cache_index, is_causal=is_causal, written=written)
        y, aux = F.decoder_block(p, x, config, mask=layer_mask(config, full, sliding, i), rope=layer_rope(config, rope, i),
                                 key=k, attend=attend, first=i == 0, **fns)
        keep = {"cache": written["cache"]}
        if capture:
            keep.update(weights=aux["weights"], attn_out=aux["attn_out"], mlp_out=aux["mlp_out"], resid=x)
        return y, keep

    if config.remat == "none":
        return layer
    policy = jax.checkpoint_policies.dots_with_no_batch_dims_saveable if config.remat == "dots" else None
    return jax.checkpoint(layer, policy=policy)


def _unrolled(layer, x, blocks, cache, keys, n_layer: int):
    """The layers one Python step each. A list of per-layer trees is not sliced at all
    (slicing stacked weights inside a decode loop would copy them on every step)."""
    per_layer = isinstance(blocks, (list, tuple))

    def take(tree, i):
        return None if tree is None else tree[i] if per_layer else jax.tree.map(lambda a: a[i], tree)

    outs = []
    for i in range(n_layer):
        x, y = layer(x, (take(blocks, i), take(cache, i), None if keys is None else keys[i], i))
        outs.append(y)
    ys = {k: jnp.stack([o[k] for o in outs]) for k in outs[0] if k != "cache"}
    caches = [o["cache"] for o in outs]
    ys["cache"] = None if cache is None else caches if per_layer else jax.tree.map(lambda *a: jnp.stack(a), *caches)
    return x, ys


def decoder_hidden(params: Params, tokens_BT, config, *, positions_BT=None, key_mask_BS=None, cache=None,
                   cache_index=0, key=None, capture: bool = False, kernels: Optional[Kernels] = None,
                   token_types_BT=None):
    """Embedding and every block: tokens ``[B, T]`` -> ``(x [B, T, D], aux)``, the last block's
    output before the final norm (:func:`functional.unembed` finishes).

    - ``positions_BT``: absolute positions (default ``cache_index + arange(T)``).
    - ``key_mask_BS``: optional boolean ``[B, S]``, False for padding keys.
    - ``token_types_BT``: BERT's token types (segment ids; default 0) when ``config.type_vocab_size``.
    - ``cache``: from :func:`init_cache`; the T new tokens are written at ``cache_index`` and
      attend causally to everything before them. ``aux["cache"]``: the written cache (or None).
    - ``key``: PRNG key enabling dropout (training); None = deterministic.
    - ``capture``: aux also holds ``weights [L, B, H, T, S]``, ``resid [L+1, B, T, D]`` (the
      stream entering each block, then the last output), ``attn_out`` and ``mlp_out [L, B, T, D]``
      (the textbook's math: kernels are not used).
    - ``kernels``: a :mod:`jaxformer.model.kernels` set (None = the textbook).
    - ``params["blocks"]`` may be a list of per-layer trees (no ``[L]`` axis); ``cache`` and
      ``aux["cache"]`` are then lists of per-layer ``{"k", "v": [B, G, S, K]}`` (the decode loop's layout).

    Layers run under ``lax.scan`` when ``config.scan_layers`` (and the blocks are stacked)."""
    B, T = tokens_BT.shape
    kernels = None if capture else kernels
    if positions_BT is None:
        positions_BT = jnp.broadcast_to(cache_index + jnp.arange(T), (B, T))
    params = F.cast_params(params, config.dtype)
    keys = jax.random.split(key, config.n_layer + 1) if key is not None else None
    x = F.dropout(F.embed(params, tokens_BT, config, positions_BT, token_types_BT=token_types_BT), config.dropout,
                  None if keys is None else keys[-1])
    per_layer = isinstance(params["blocks"], (list, tuple))
    S = T if cache is None else (cache[0] if per_layer else cache)["v"].shape[-2]
    full, sliding = attention_masks(config, T, S, cache_index if cache is not None else 0, key_mask_BS)
    layer = _layer_fn(config, full=full, sliding=sliding, cache_index=cache_index, kernels=kernels,
                      rope=tuple(F.rope_for(config, positions_BT, s) for s in (False, True))
                      if config.positions == "rope" else None,
                      is_causal=config.causal and key_mask_BS is None and not any(config.sliding_layers),
                      capture=capture)
    if per_layer or not config.scan_layers:
        x, ys = _unrolled(layer, x, params["blocks"], cache, keys, config.n_layer)
    else:
        x, ys = lax.scan(layer, x, (params["blocks"], cache, None if keys is None else keys[:-1],
                                    jnp.arange(config.n_layer)))
    aux = {"cache": ys["cache"]}
    if capture:
        aux.update(weights=ys["weights"], attn_out=ys["attn_out"], mlp_out=ys["mlp_out"],
                   resid=jnp.concatenate([ys["resid"], x[None]], axis=0))
    return x, aux


def decoder(params: Params, tokens_BT, config, **kwargs):
    """:func:`decoder_hidden` (its keyword arguments and ``aux``) then
    :func:`functional.unembed`: ``(logits [B, T, V] float32, aux)``."""
    x, aux = decoder_hidden(params, tokens_BT, config, **kwargs)
    return F.unembed(params, x, config), aux


def next_token_loss(params: Params, tokens_BT1, config, *, key=None, kernels: Optional[Kernels] = None):
    """:func:`functional.next_token_loss` through the stack and ``kernels`` (the train step's loss)."""
    x_BTD, _ = decoder_hidden(params, tokens_BT1[:, :-1], config, key=key, kernels=kernels)
    head_loss = (kernels or TEXTBOOK).unembed_cross_entropy or F.unembed_cross_entropy
    return head_loss(params, x_BTD, tokens_BT1[:, 1:], config)


def masked_lm_loss(params: Params, inputs_BT, targets_BT, selected_BT, config, *, key=None,
                   kernels: Optional[Kernels] = None):
    """An encoder's training objective: mean cross-entropy of the original ``targets [B, T]`` at
    the ``selected`` positions of the corrupted ``inputs [B, T]`` (:func:`functional_extras.masked_lm_inputs`)."""
    x_BTD, _ = decoder_hidden(params, inputs_BT, config, key=key, kernels=kernels)
    head_loss = (kernels or TEXTBOOK).unembed_cross_entropy or F.unembed_cross_entropy
    return head_loss(params, x_BTD, targets_BT, config, selected_BT)
