"""Attention-head detectors: how much of a head's attention goes where a known kind of head
looks (TransformerLens's ``detect_head`` kinds, scored as mean attention mass).

For each kind, a boolean target ``[B, T, S]`` (query t may find what it looks for at key s)
and the queries that have a target at all. A head's score is its attention mass on the
targets, averaged over those queries of all examples: 1 means every such query puts all of
its attention on a target, 0 none.

    previous-token   key t - 1                                        (queries t >= 1)
    first-token      key 0                                            (queries t >= 1)
    duplicate-token  earlier keys s < t holding the same token as t   (queries whose token occurred before)
    induction        keys s = j + 1 after an earlier occurrence j < t of t's token
                     ("what came next last time"; on a sequence repeated with period P: t - P + 1)
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxformer.interp.capture import _parts
from jaxformer.interp.hooks import HookError, _tokens, run_with_cache_fn, stack_layers

KINDS = ("previous-token", "first-token", "duplicate-token", "induction")


def detector_targets(tokens_BT, kind: str) -> Tuple[jax.Array, jax.Array]:
    """``(targets [B, T, T] bool, queries [B, T] bool)`` of detector ``kind`` (see the module
    docstring) for token ids ``[B, T]``."""
    t = jnp.asarray(tokens_BT)
    B, T = t.shape
    q_T1, s_1T = jnp.arange(T)[:, None], jnp.arange(T)[None, :]
    if kind == "previous-token":
        target = jnp.broadcast_to(s_1T == q_T1 - 1, (B, T, T))
    elif kind == "first-token":
        target = jnp.broadcast_to((s_1T == 0) & (q_T1 >= 1), (B, T, T))
    elif kind == "duplicate-token":
        target = (t[:, :, None] == t[:, None, :]) & (s_1T < q_T1)
    elif kind == "induction":
        before = jnp.concatenate([jnp.full((B, 1), -1, t.dtype), t[:, :-1]], axis=1)  # token at s - 1
        target = (t[:, :, None] == before[:, None, :]) & (s_1T >= 1) & (s_1T <= q_T1)
    else:
        raise HookError(f"kind={kind!r}: expected one of {', '.join(KINDS)}")
    return target, target.any(-1)


def head_scores(pattern_BLHTT, tokens_BT, kinds: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
    """Detector scores ``{kind: [L, H]}`` (in [0, 1]) from attention patterns ``[B, L, H, T, T]``
    (``attention_maps``, or ``hook_pattern`` stacked over layers) of ``tokens [B, T]``.
    Raises :class:`HookError` when no query of ``tokens`` has a target for a kind (no token
    repeats, for duplicate-token and induction)."""
    w = jnp.asarray(pattern_BLHTT, jnp.float32)
    tokens_BT = jnp.asarray(tokens_BT)[:, : w.shape[-1]]
    out = {}
    for kind in kinds or KINDS:
        target_BTS, query_BT = detector_targets(tokens_BT, kind)
        count = int(query_BT.sum())
        if count == 0:
            raise HookError(f"kind={kind!r}: no query in these tokens has a target (does any token repeat?), "
                            "so the score is undefined")
        mass_BLHT = jnp.sum(jnp.where(target_BTS[:, None, None], w, 0.0), -1)
        out[kind] = np.asarray(jnp.sum(jnp.where(query_BT[:, None, None], mass_BLHT, 0.0), (0, 3)) / count)
    return out


def detect_heads(model, tokens_BT, kinds: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
    """:func:`head_scores` of ``model`` (a GPT or ``(params, config)``) on ``tokens [B, T]``:
    ``{kind: [L, H]}``. Repeated random sequences are the classic probe for induction heads::

        >>> half = rng.integers(0, V, (B, 20)); probe = np.concatenate([half, half], 1)
        >>> interp.detect_heads(model, probe)["induction"]        # [L, H]
    """
    params, config = _parts(model)
    tokens_BT = _tokens(tokens_BT, config)
    names = tuple(f"blocks.{l}.attn.hook_pattern" for l in range(config.n_layer))
    _, cache = run_with_cache_fn(params, tokens_BT, config, names)
    return head_scores(stack_layers(cache, "attn.hook_pattern", config.n_layer), tokens_BT, kinds)


def name_heads(scores: Dict[str, np.ndarray], threshold: float = 0.4) -> List[Tuple[int, int, str, float]]:
    """``[(layer, head, kind, score)]`` for each head whose largest score in ``scores``
    (``{kind: [L, H]}``, e.g. from :func:`detect_heads`) is at least ``threshold``."""
    kinds = list(scores)
    stack = np.stack([np.asarray(scores[k], np.float64) for k in kinds])      # [S, L, H]
    found = []
    for layer, head in np.ndindex(*stack.shape[1:]):
        k = int(np.argmax(stack[:, layer, head]))
        if stack[k, layer, head] >= threshold:
            found.append((layer, head, kinds[k], float(stack[k, layer, head])))
    return found
