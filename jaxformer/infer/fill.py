"""Filling masked positions with an encoder (``config.causal`` false, trained with the masked-LM
objective): the top candidates and their probabilities at every ``[MASK]`` of a text.

The mask token is the model's last id (:func:`jaxformer.functional_extras.mask_token_id`); the text is
encoded piece by piece between the ``[MASK]`` marks, one mask id in place of each mark.

    >>> fill_masks(model, tokenizer, "to be or not to [MASK]e", top=3)
    [{"position": 15, "candidates": [(id, "b", 0.91), ...]}]
"""
from __future__ import annotations

import functools
from typing import List

import jax
import jax.numpy as jnp
import numpy as np

from jaxformer.errors import DataError, GenerationError
from jaxformer.functional_extras import mask_token_id
from jaxformer.model import stack

__all__ = ["MASK", "encode_masked", "fill_masks"]

MASK = "[MASK]"


def encode_masked(tokenizer, text: str, config, mask: str = MASK) -> List[int]:
    """Token ids of ``text`` with the mask id at each ``mask`` mark; :class:`DataError` when there
    is no mark or the ids exceed ``config.max_len``."""
    pieces = text.split(mask)
    if len(pieces) == 1:
        raise DataError(f"text has no {mask}: put {mask} where the model should fill in a token")
    ids: List[int] = []
    for i, piece in enumerate(pieces):
        if i:
            ids.append(mask_token_id(config))
        ids.extend(tokenizer.encode(piece) if piece else [])
    if len(ids) > config.max_len:
        raise DataError(f"the text is {len(ids)} tokens, more than the model's context max_len={config.max_len}")
    return ids


@functools.partial(jax.jit, static_argnames=("config",))
def _probs(params, tokens_BT, *, config):
    """Probabilities ``[B, T, V-1]`` over the real tokens (never the mask id itself)."""
    logits_BTV, _ = stack.decoder(params, tokens_BT, config)
    return jax.nn.softmax(logits_BTV[..., :mask_token_id(config)], axis=-1)


def fill_masks(model, tokenizer, text: str, *, top: int = 5, mask: str = MASK) -> List[dict]:
    """For each ``mask`` mark of ``text`` (in order): ``{"position": t, "candidates": [(id, piece,
    probability), ...]}``, the ``top`` most likely tokens. ``model``: an
    :class:`jaxformer.model.modules.Encoder` or a ``(params, config)`` pair."""
    params, config = model if isinstance(model, tuple) else (model.params(), model.config)
    if config.causal:
        raise GenerationError("model.causal=true: a decoder predicts the next token, not masked ones; "
                              "use jaxformer sample / generate")
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise GenerationError(f"top={top!r} must be an integer >= 1")
    ids = encode_masked(tokenizer, text, config, mask)
    probs_TV = np.asarray(_probs(params, jnp.asarray([ids], jnp.int32), config=config))[0]
    out = []
    for t in np.flatnonzero(np.asarray(ids) == mask_token_id(config)):
        best = np.argsort(-probs_TV[t], kind="stable")[:top]
        out.append({"position": int(t), "candidates": [(int(i), tokenizer.decode([int(i)]), float(probs_TV[t, i]))
                                                       for i in best]})
    return out
