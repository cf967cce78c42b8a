"""Scoring a text: the log-probability of each token given the ones before it, in one
forward pass when the text fits the context and in strided windows when it does not."""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxformer import functional as F
from jaxformer.infer import sampling as S_
from jaxformer.errors import GenerationError
from jaxformer.infer.generation import _parts
from jaxformer.model import stack

__all__ = ["score"]


def score(model, tokens, *, stride: Optional[int] = None, batch_size: int = 16) -> np.ndarray:
    """Log-probability of each token given the ones before it: ids ``[T]`` -> ``[T - 1]``
    (float32; entry ``t`` is ``log p(tokens[t+1] | context)``).

    A text that fits (``T <= max_len``) is one forward pass and the context is everything
    before the token. A longer text is scored in windows of ``max_len`` tokens that start
    every ``stride`` tokens (default ``max_len // 2``), as in Hugging Face's strided
    perplexity: each window scores only the tokens the previous one did not, so every token
    past the first window sees at least ``max_len - stride + 1`` tokens before it, and
    ``stride=1`` is exactly the crop generation uses (the last ``max_len`` tokens).
    Windows run ``batch_size`` at a time through one compiled forward pass.
    """
    params, config = _parts(model)
    ids = S_.check_prompts(tokens, config.vocab_size)
    if len(ids) != 1:
        raise GenerationError("score takes one sequence of token ids")
    ids = ids[0]
    if len(ids) < 2:
        raise GenerationError(f"text of {len(ids)} token(s) is too short to score: need at least 2")
    C, T = config.max_len, len(ids)
    if T <= C:
        return np.asarray(_score(params, jnp.asarray([ids], jnp.int32), config=config))[0]
    stride = C // 2 if stride is None else stride
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or not 1 <= stride <= C:
        raise GenerationError(f"stride={stride!r} must be an integer in [1, max_len={C}]")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise GenerationError(f"batch_size={batch_size!r} must be an integer >= 1")
    # Window k reads tokens [s, s + C) (s = k * stride) and predicts tokens s+1 .. s+C; it
    # keeps the predictions of tokens past the previous window's last target.
    starts = [0]
    while starts[-1] + C < T - 1:
        starts.append(starts[-1] + stride)
    seq = np.asarray(list(ids) + [0] * (starts[-1] + C + 1 - T), np.int32)
    out = np.zeros(T - 1, np.float32)
    done = 0                                           # targets 1 .. done are scored
    for b in range(0, len(starts), batch_size):
        chunk = starts[b:b + batch_size]
        rows = np.stack([seq[s:s + C + 1] for s in chunk] + [np.zeros(C + 1, np.int32)] * (batch_size - len(chunk)))
        lp = np.asarray(_score_windows(params, jnp.asarray(rows), config=config))
        for k, s in enumerate(chunk):
            last = min(s + C, T - 1)                   # the last target this window predicts
            out[done:last] = lp[k, done - s:last - s]  # targets done+1 .. last
            done = last
    return out


@functools.partial(jax.jit, static_argnames=("config",))
def _score(params, tokens_BT, *, config):
    logits_BTV, _ = stack.decoder(params, tokens_BT, config)
    return F.token_log_probs(logits_BTV[:, :-1], tokens_BT[:, 1:])


@functools.partial(jax.jit, static_argnames=("config",))
def _score_windows(params, windows_BW, *, config):
    """Windows of ``max_len + 1`` tokens -> log p of tokens 1.. of each given the ones before."""
    logits_BTV, _ = stack.decoder(params, windows_BW[:, :-1], config)
    return F.token_log_probs(logits_BTV, windows_BW[:, 1:])
