"""Samplers: pure functions of ``(logits_BV, key)`` that pick the next token of every row.

There is one sampling pipeline, :func:`filter_logits`, applied in this order: repetition
penalty (optional), temperature, top-k, top-p (nucleus). :func:`sample` draws from it
(or takes the arg-max when ``temperature == 0``); :func:`jaxformer.infer.generation.generate`,
:func:`make_sampler` and :func:`jaxformer.interp.activations.next_token_distribution` all go through
these two functions. Each stage is its own function so it can be tested and reused:

- :func:`greedy` -- the arg-max token (``temperature == 0`` means greedy).
- :func:`apply_temperature` -- ``logits / T``.
- :func:`top_k_filter` -- keep the ``k`` largest logits (``k >= V`` keeps everything).
- :func:`top_p_filter` -- keep the smallest set of most likely tokens whose probability
  reaches ``p``; the most likely token is always kept, so ``p -> 0`` is greedy and
  ``p = 1`` keeps everything.
- :func:`apply_repetition_penalty` -- CTRL-style penalty on tokens already seen.
- :func:`filter_logits` -- the whole pipeline, as logits;
  :func:`sample` -- the whole pipeline and the draw; :func:`make_sampler` binds the
  settings and returns a ``(logits_BV, key) -> tokens_B`` function.

Filters return logits with removed entries set to ``-inf``; logits are float32.
Shapes: ``B`` batch, ``V`` vocabulary.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxformer.errors import GenerationError

__all__ = ["greedy", "apply_temperature", "top_k_filter", "top_p_filter",
           "apply_repetition_penalty", "filter_logits", "sample", "make_sampler", "check_sampling",
           "check_prompts", "stop_mask"]

Sampler = Callable[[jax.Array, jax.Array], jax.Array]


def greedy(logits_BV, key=None):
    """The most likely token of each row ``[B, V] -> [B]`` (int32). ``key`` is ignored."""
    del key
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)


def apply_temperature(logits_BV, temperature):
    """Divide logits by ``temperature`` (> 0); may be a traced scalar or a ``[B]`` array."""
    t = jnp.asarray(temperature, jnp.float32)
    t = t[:, None] if t.ndim == 1 else t
    return logits_BV.astype(jnp.float32) / t


def top_k_filter(logits_BV, k: int):
    """Keep the ``k`` largest logits of each row, set the rest to ``-inf``.

    ``k`` is a static Python int; ``k >= V`` (or None) returns the logits unchanged.
    Exactly ``k`` entries survive (ties at the boundary are broken by index, as
    ``lax.top_k`` breaks them), so a draw can never fall outside the ``k`` best.
    """
    V = logits_BV.shape[-1]
    if k is None or k >= V:
        return logits_BV
    _, idx_Bk = lax.top_k(logits_BV, k)
    keep_BV = jnp.zeros(logits_BV.shape, bool)
    keep_BV = jax.vmap(lambda row, i: row.at[i].set(True))(keep_BV, idx_Bk)
    return jnp.where(keep_BV, logits_BV, -jnp.inf)


def top_p_filter(logits_BV, p):
    """Nucleus filter: keep the most likely tokens until their probability reaches ``p``.

    A token is kept when the total probability of the tokens strictly more likely than it
    (in sorted order) is below ``p``, so the arg-max always survives: ``p -> 0`` keeps
    exactly one token and ``p = 1`` keeps every token with non-zero probability.
    ``p`` may be a traced scalar.
    """
    logits_BV = logits_BV.astype(jnp.float32)
    order_BV = jnp.argsort(-logits_BV, axis=-1)
    sorted_BV = jnp.take_along_axis(logits_BV, order_BV, axis=-1)
    probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
    before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV  # mass strictly before each token
    keep_sorted_BV = before_BV < jnp.asarray(p, jnp.float32)
    keep_sorted_BV = keep_sorted_BV.at[:, 0].set(True)
    # Scatter the decision back to vocabulary order.
    keep_BV = jnp.zeros_like(keep_sorted_BV).at[
        jnp.arange(logits_BV.shape[0])[:, None], order_BV].set(keep_sorted_BV)
    return jnp.where(keep_BV, logits_BV, -jnp.inf)


def apply_repetition_penalty(logits_BV, seen_BV, penalty):
    """CTRL's repetition penalty: for tokens already seen (``seen_BV`` True), divide a
    positive logit by ``penalty`` and multiply a negative one by it (``penalty > 1``
    discourages repeats; 1 is a no-op)."""
    logits_BV = logits_BV.astype(jnp.float32)
    penalized = jnp.where(logits_BV > 0, logits_BV / penalty, logits_BV * penalty)
    return jnp.where(seen_BV, penalized, logits_BV)


def _is_static_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def filter_logits(logits_BV, *, temperature=1.0, top_k: Optional[int] = None, top_p=None,
                  seen_BV=None, penalty=None):
    """The sampling pipeline as logits: ``[B, V] -> [B, V]`` float32, removed tokens ``-inf``.

    Order: repetition ``penalty`` on the tokens ``seen_BV`` (``[B, V]`` bool; skipped when
    either is None), then ``temperature`` (> 0), then ``top_k`` (a static int; None or
    ``>= V`` keeps all), then ``top_p`` (None, or a Python number ``>= 1``, keeps all).
    ``temperature``, ``top_p`` and ``penalty`` may be traced scalars. ``softmax`` of the
    result is the distribution :func:`sample` draws from.
    """
    x = logits_BV.astype(jnp.float32)
    if seen_BV is not None and penalty is not None:
        x = apply_repetition_penalty(x, seen_BV, penalty)
    x = top_k_filter(apply_temperature(x, temperature), top_k)
    if top_p is not None and not (_is_static_number(top_p) and top_p >= 1):
        x = top_p_filter(x, top_p)
    return x


def sample(logits_BV, key, *, temperature=1.0, top_k: Optional[int] = None, top_p=None,
           seen_BV=None, penalty=None):
    """Pick one token per row ``[B, V] -> [B]`` int32 through :func:`filter_logits`.

    ``temperature`` 0 (a Python number) is greedy: the arg-max of the logits after the
    repetition penalty (``key`` unused). Otherwise a categorical draw with ``key`` from
    the filtered logits. ``top_k`` is static; ``temperature``, ``top_p`` and ``penalty``
    may be traced scalars (then no recompilation when they change).
    """
    if _is_static_number(temperature) and temperature == 0:
        return greedy(filter_logits(logits_BV, seen_BV=seen_BV, penalty=penalty))
    x = filter_logits(logits_BV, temperature=temperature, top_k=top_k, top_p=top_p,
                      seen_BV=seen_BV, penalty=penalty)
    return jax.random.categorical(key, x, axis=-1).astype(jnp.int32)


def make_sampler(temperature: float = 1.0, top_k: Optional[int] = None,
                 top_p: Optional[float] = None) -> Sampler:
    """Validate the settings and return ``sampler(logits_BV, key) -> tokens_B`` (:func:`sample`
    with these settings; :func:`greedy` itself when ``temperature == 0``)."""
    check_sampling(temperature=temperature, top_k=top_k, top_p=top_p)
    if temperature == 0:
        return greedy
    return functools.partial(sample, temperature=temperature, top_k=top_k, top_p=top_p)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_sampling(*, temperature=1.0, top_k=None, top_p=None, repetition_penalty=None,
                   max_new_tokens=None, top_n=None) -> None:
    """Raise :class:`GenerationError` naming the first invalid sampling parameter."""
    if not (_is_number(temperature) and temperature >= 0):
        raise GenerationError(f"temperature={temperature!r} must be a finite number >= 0 (0 = greedy)")
    if top_k is not None and not (isinstance(top_k, int) and not isinstance(top_k, bool) and top_k >= 1):
        raise GenerationError(f"top_k={top_k!r} must be an integer >= 1 or None")
    if top_p is not None and not (_is_number(top_p) and 0 < top_p <= 1):
        raise GenerationError(f"top_p={top_p!r} must be a number in (0, 1] or None")
    if repetition_penalty is not None and not (_is_number(repetition_penalty) and repetition_penalty > 0):
        raise GenerationError(f"repetition_penalty={repetition_penalty!r} must be a finite number > 0 or None")
    if max_new_tokens is not None and not (isinstance(max_new_tokens, int)
                                           and not isinstance(max_new_tokens, bool) and max_new_tokens >= 1):
        raise GenerationError(f"max_new_tokens={max_new_tokens!r} must be an integer >= 1")
    if top_n is not None and not (isinstance(top_n, int) and not isinstance(top_n, bool) and top_n >= 0):
        raise GenerationError(f"top_n={top_n!r} must be an integer >= 0")


def stop_mask(stop_tokens, V: int):
    """Boolean ``[V]``: True for the stop tokens (checked to be ids in ``[0, V)``)."""
    stop_tokens = [stop_tokens] if isinstance(stop_tokens, (int, np.integer)) else list(stop_tokens)
    for t in stop_tokens:
        if not (isinstance(t, (int, np.integer)) and 0 <= int(t) < V):
            raise GenerationError(f"stop token {t!r} is not a token id in [0, {V})")
    return jnp.zeros((V,), bool).at[jnp.asarray(stop_tokens, jnp.int32)].set(True) if stop_tokens \
        else jnp.zeros((V,), bool)


def check_prompts(prompt_tokens, V: int) -> list:
    """Normalise prompts to a list of lists of ints, checking ids. A flat list is one prompt."""
    if isinstance(prompt_tokens, (np.ndarray, jax.Array)):
        arr = np.asarray(prompt_tokens)
        if arr.ndim not in (1, 2) or not np.issubdtype(arr.dtype, np.integer):
            raise GenerationError(f"prompt_tokens must be integer token ids of shape [T] or [B, T], "
                                  f"got {arr.dtype} {arr.shape}")
        prompts = [arr.tolist()] if arr.ndim == 1 else arr.tolist()
    else:
        prompts = list(prompt_tokens)
        if not prompts or all(isinstance(t, (int, np.integer)) for t in prompts):
            prompts = [prompts]
        prompts = [list(p) for p in prompts]
    for b, p in enumerate(prompts):
        if not p:
            raise GenerationError(f"prompt {b} is empty: a prompt needs at least one token")
        for t in p:
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= int(t) < V:
                raise GenerationError(f"prompt {b} has token id {t!r}; ids must be integers in [0, {V})")
    return [[int(t) for t in p] for p in prompts]


def repeating_cycle(ids, *, max_period: int = 8, min_repeats: int = 3) -> Optional[int]:
    """The period of a cycle the sequence ends in (its last ``period`` tokens repeated at
    least ``min_repeats`` times back to back), shortest first, or None. Greedy decoding of a
    small model falls into such loops ("the the the"); a repetition penalty breaks them."""
    ids = [int(t) for t in ids]
    for period in range(1, max_period + 1):
        need = period * min_repeats
        if len(ids) >= need and all(ids[-1 - i] == ids[-1 - i - period] for i in range(need - period)):
            return period
    return None
