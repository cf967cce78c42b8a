"""What every interp entry point checks first: the model as ``(params, config)`` and the token ids.

``model`` is a :class:`jaxformer.GPT` or a ``(params, config)`` pair everywhere in
:mod:`jaxformer.interp`; tokens are a batch ``[B, T]`` of integer ids.
"""
from __future__ import annotations

from typing import Any, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxformer.errors import DataError

__all__ = ["model_parts", "check_tokens"]


def model_parts(model) -> Tuple[Any, Any]:
    """``(params, config)`` of a GPT, or the pair itself."""
    if isinstance(model, tuple):
        return model
    return model.params(), model.config


def check_tokens(tokens_BT, config) -> jax.Array:
    """Token ids ``[B, T]`` as int32, checked against ``config`` (shape, dtype, ``max_len``,
    vocabulary); traced ones (under the caller's jit / vmap / grad) pass as they are.
    Raises :class:`DataError` naming the shape, dtype or id that is wrong."""
    if isinstance(tokens_BT, jax.core.Tracer):
        return tokens_BT
    tokens = np.asarray(tokens_BT)
    if tokens.ndim == 1:
        raise DataError(f"tokens have shape {tokens.shape}: pass a batch [B, T] (e.g. tokens[None])")
    if tokens.ndim != 2 or tokens.shape[0] < 1 or tokens.shape[1] < 1:
        raise DataError(f"tokens have shape {tokens.shape}: expected a non-empty [B, T] array")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise DataError(f"tokens have dtype {tokens.dtype}: expected integer token ids")
    if tokens.shape[1] > config.max_len:
        raise DataError(f"{tokens.shape[1]} tokens exceed the model's context max_len={config.max_len}")
    if tokens.min() < 0 or tokens.max() >= config.vocab_size:
        bad = int(tokens.min()) if tokens.min() < 0 else int(tokens.max())
        raise DataError(f"token id {bad} is outside the vocabulary [0, {config.vocab_size})")
    return jnp.asarray(tokens, jnp.int32)
