"""What each attention head does: detector scores, the shape of its attention, and names.

- :func:`head_scores` / :func:`detect_heads`: how much of a head's attention goes where a known
  kind of head looks (TransformerLens's ``detect_head`` kinds, scored as mean attention mass);
- :func:`head_statistics`: entropy, mean offset and the weight on the previous, first and own
  key of one example's attention;
- :func:`name_heads`: the heads whose best score passes a threshold, and :func:`describe_heads`,
  the same naming over :func:`head_statistics` as one printable line per head.

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

import functools
import itertools
from typing import Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxformer.errors import DataError
from jaxformer.interp.hooks import HookError, run_with_cache_fn, stack_layers
from jaxformer.interp.inputs import check_tokens, model_parts

KINDS = ("previous-token", "first-token", "duplicate-token", "induction")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise HookError(f"kind={kind!r}: expected one of {', '.join(KINDS)}")


def detector_targets(tokens_BT, kind: str) -> Tuple[jax.Array, jax.Array]:
    """``(targets [B, T, T] bool, queries [B, T] bool)`` of detector ``kind`` (see the module
    docstring) for token ids ``[B, T]``."""
    _check_kind(kind)
    t = jnp.asarray(tokens_BT)
    B, T = t.shape
    q_T1, s_1T = jnp.arange(T)[:, None], jnp.arange(T)[None, :]
    if kind == "previous-token":
        target = jnp.broadcast_to(s_1T == q_T1 - 1, (B, T, T))
    elif kind == "first-token":
        target = jnp.broadcast_to((s_1T == 0) & (q_T1 >= 1), (B, T, T))
    elif kind == "duplicate-token":
        target = (t[:, :, None] == t[:, None, :]) & (s_1T < q_T1)
    else:                                                   # induction
        before = jnp.concatenate([jnp.full((B, 1), -1, t.dtype), t[:, :-1]], axis=1)  # token at s - 1
        target = (t[:, :, None] == before[:, None, :]) & (s_1T >= 1) & (s_1T <= q_T1)
    return target, target.any(-1)


@functools.partial(jax.jit, static_argnames=("kinds",))
def _head_scores(w_BLHTT, tokens_BT, kinds: Tuple[str, ...]):
    """``{kind: (score [L, H], count)}``: one compiled program for all ``kinds``."""
    tokens_BT = tokens_BT[:, : w_BLHTT.shape[-1]]
    out = {}
    for kind in kinds:
        target_BTS, query_BT = detector_targets(tokens_BT, kind)
        count = query_BT.sum()
        mass_BLHT = jnp.sum(jnp.where(target_BTS[:, None, None], w_BLHTT, 0.0), -1)
        out[kind] = (jnp.sum(jnp.where(query_BT[:, None, None], mass_BLHT, 0.0), (0, 3)) / count, count)
    return out


def head_scores(pattern_BLHTT, tokens_BT, kinds: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
    """Detector scores ``{kind: [L, H]}`` (in [0, 1]) from attention patterns ``[B, L, H, T, T]``
    (``attention_maps``, or ``hook_pattern`` stacked over layers) of ``tokens [B, T]``.
    Raises :class:`HookError` when no query of ``tokens`` has a target for a kind (no token
    repeats, for duplicate-token and induction)."""
    kinds = tuple(kinds or KINDS)
    known = tuple(itertools.takewhile(lambda k: k in KINDS, kinds))     # up to the first unknown kind
    scores = _head_scores(jnp.asarray(pattern_BLHTT, jnp.float32), jnp.asarray(tokens_BT), known) if known else {}
    out = {}
    for kind in kinds:
        _check_kind(kind)
        score, count = scores[kind]
        if int(count) == 0:
            raise HookError(f"kind={kind!r}: no query in these tokens has a target (does any token repeat?), "
                            "so the score is undefined")
        out[kind] = np.asarray(score)
    return out


def detect_heads(model, tokens_BT, kinds: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
    """:func:`head_scores` of ``model`` (a GPT or ``(params, config)``) on ``tokens [B, T]``:
    ``{kind: [L, H]}``. Repeated random sequences are the classic probe for induction heads::

        >>> half = rng.integers(0, V, (B, 20)); probe = np.concatenate([half, half], 1)
        >>> interp.detect_heads(model, probe)["induction"]        # [L, H]
    """
    params, config = model_parts(model)
    tokens_BT = check_tokens(tokens_BT, config)
    return head_scores(_patterns(params, tokens_BT, config), tokens_BT, kinds)


@functools.partial(jax.jit, static_argnames=("config",))
def _patterns(params, tokens_BT, config):
    """Every layer's ``hook_pattern`` stacked: ``[B, L, H, T, T]``."""
    names = tuple(f"blocks.{l}.attn.hook_pattern" for l in range(config.n_layer))
    _, cache = run_with_cache_fn(params, tokens_BT, config, names)
    return stack_layers(cache, "attn.hook_pattern", config.n_layer)


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


def head_statistics(weights_LHTT) -> Dict[str, np.ndarray]:
    """Summarise each head of one example's causal attention: ``[L, H, T, T]`` -> dict of ``[L, H]``.

    Averaged over query rows ``t >= 1`` (row 0 can only attend to itself):
    ``entropy`` (nats), ``norm_entropy`` (entropy / log(t+1): 0 = one key, 1 = uniform over
    the allowed keys), ``mean_offset`` (expected ``t - s``: 1 for a previous-token head),
    ``prev``, ``first``, ``self`` (mean weight on key t-1, key 0, key t).
    """
    w = np.asarray(weights_LHTT, np.float64)
    T = w.shape[-1]
    if T < 2:
        raise DataError("head statistics need at least 2 tokens")
    t = np.arange(T)
    rows = w[..., 1:, :]                                           # [L, H, T-1, T]
    ent = -np.sum(np.where(rows > 0, rows * np.log(np.where(rows > 0, rows, 1.0)), 0.0), -1)
    offset = np.sum(rows * (t[1:, None] - t[None, :]), -1)
    diag = lambda k: np.diagonal(w, offset=-k, axis1=-2, axis2=-1)  # noqa: E731
    return {
        "entropy": ent.mean(-1),
        "norm_entropy": (ent / np.log(t[1:] + 1.0)).mean(-1),
        "mean_offset": offset.mean(-1),
        "prev": diag(1).mean(-1),
        "first": w[..., 1:, 0].mean(-1),
        "self": diag(0)[..., 1:].mean(-1),
    }


def _describe(stats: Dict[str, np.ndarray], layer: int, head: int, kind: Optional[str]) -> str:
    get = lambda k: float(stats[k][layer, head])  # noqa: E731
    name = kind or ("diffuse" if get("norm_entropy") > 0.8 else "mixed")
    return f"{name} (entropy {get('entropy'):.2f}, offset {get('mean_offset'):.1f})"


def describe_heads(stats: Dict[str, np.ndarray], threshold: float = 0.5) -> List[List[str]]:
    """One printable line per head (``[L][H]``) from :func:`head_statistics`: the kind
    :func:`name_heads` gives it among ``previous-token``, ``first-token`` and ``self`` (at least
    ``threshold`` of its weight on that key on average), else ``diffuse`` (normalised entropy
    > 0.8) or ``mixed``; then its entropy and mean offset."""
    L, H = stats["entropy"].shape
    scores = {"previous-token": stats["prev"], "first-token": stats["first"], "self": stats["self"]}
    kinds = {(layer, head): kind for layer, head, kind, _ in name_heads(scores, threshold)}
    return [[_describe(stats, layer, h, kinds.get((layer, h))) for h in range(H)] for layer in range(L)]
