"""Filling masked positions with an encoder (``config.causal`` false, trained with the masked-LM
objective): the top candidates and their probabilities at every ``[MASK]`` of a text.

The mask token is the tokenizer's ``mask_id`` when it has one (a converted BERT / RoBERTa / XLM-R:
each ``[MASK]`` mark becomes the model's own mask token and the whole text is encoded as
``transformers`` encodes it), else the model's last id (:func:`jaxformer.functional_extras.mask_token_id`,
models trained here), the text encoded piece by piece between the marks.

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

__all__ = ["MASK", "encode_masked", "fill_masks", "mask_id_of"]

MASK = "[MASK]"


def mask_id_of(tokenizer, config) -> int:
    """The id of the mask token: the tokenizer's ``mask_id`` (a converted masked LM), else the
    model's last id (an encoder trained here)."""
    own = getattr(tokenizer, "mask_id", None)
    return mask_token_id(config) if own is None else int(own)


def encode_masked(tokenizer, text: str, config, mask: str = MASK) -> List[int]:
    """Token ids of ``text`` with the mask id at each ``mask`` mark; :class:`DataError` when there
    is no mark or the ids exceed ``config.max_len``."""
    pieces = text.split(mask)
    if len(pieces) == 1:
        raise DataError(f"text has no {mask}: put {mask} where the model should fill in a token")
    mask_id = mask_id_of(tokenizer, config)
    ids: List[int] = []
    if getattr(tokenizer, "mask_id", None) is not None:   # the model's own mask token, in the text
        ids = list(tokenizer.encode(tokenizer.tk.id_to_token(mask_id).join(pieces)))
        if ids.count(mask_id) != len(pieces) - 1:
            raise DataError(f"the tokenizer does not keep its mask token (id {mask_id}) whole in this text")
    for i, piece in enumerate(pieces if not ids else ()):
        if i:
            ids.append(mask_id)
        ids.extend(tokenizer.encode(piece) if piece else [])
    if len(ids) > config.max_len:
        raise DataError(f"the text is {len(ids)} tokens, more than the model's context max_len={config.max_len}")
    return ids


@functools.partial(jax.jit, static_argnames=("config", "mask_id"))
def _probs(params, tokens_BT, *, config, mask_id):
    """Probabilities over the real tokens, never the mask id itself: ``[B, T, V-1]`` when it is
    the last id, else ``[B, T, V]`` with 0 at ``mask_id``."""
    logits_BTV, _ = stack.decoder(params, tokens_BT, config)
    if mask_id == mask_token_id(config):
        return jax.nn.softmax(logits_BTV[..., :mask_id], axis=-1)
    return jax.nn.softmax(logits_BTV.at[..., mask_id].set(-jnp.inf), axis=-1)


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
    mask_id = mask_id_of(tokenizer, config)
    probs_TV = np.asarray(_probs(params, jnp.asarray([ids], jnp.int32), config=config, mask_id=mask_id))[0]
    out = []
    for t in np.flatnonzero(np.asarray(ids) == mask_id):
        best = np.argsort(-probs_TV[t], kind="stable")[:top]
        out.append({"position": int(t), "candidates": [(int(i), tokenizer.decode([int(i)]), float(probs_TV[t, i]))
                                                       for i in best]})
    return out
