"""Kernels for NVIDIA GPUs: cuDNN flash attention where cuDNN supports the call.

:func:`attention` calls ``jax.nn.dot_product_attention(..., implementation="cudnn",
is_causal=True)`` when :func:`cudnn_supported` says cuDNN's fused kernel takes the call
(bfloat16 / float16, head width a multiple of 8 up to 128, the plain causal mask) and
XLA's implementation of the same function otherwise (float32, padding masks, decoding
over a cache). ``implementation=None`` is not used: in the JAX versions we support it
falls back to XLA rather than picking cuDNN. Everything else is the textbook's.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from . import Kernels

CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def cudnn_supported(dtype, head_dim: int, is_causal: bool) -> bool:
    """Whether cuDNN's fused attention takes queries of ``dtype`` and ``head_dim`` with
    the plain causal mask (the only mask this kernel hands to cuDNN)."""
    return (is_causal and any(jnp.dtype(dtype) == jnp.dtype(d) for d in CUDNN_DTYPES)
            and head_dim % 8 == 0 and head_dim <= 128)


def attention(q_BGRTK, k_BGSK, v_BGSK, mask, scale: float, is_causal: bool = False):
    """The ``attention`` slot through ``jax.nn.dot_product_attention`` (``[B, T, N, K]``
    layout, grouped K/V heads native). Fully-masked rows give zeros, as in the textbook."""
    B, G, R, T, K = q_BGRTK.shape
    S = k_BGSK.shape[2]
    q = q_BGRTK.reshape(B, G * R, T, K).transpose(0, 2, 1, 3)
    k, v = k_BGSK.transpose(0, 2, 1, 3), v_BGSK.transpose(0, 2, 1, 3).astype(q.dtype)
    if cudnn_supported(q.dtype, K, is_causal):
        out = jax.nn.dot_product_attention(q, k.astype(q.dtype), v, scale=scale, is_causal=True,
                                           implementation="cudnn")
    else:
        m = None
        if mask is not None:
            m = jnp.broadcast_to(mask, (mask.shape[0], G, R, T, S)).reshape(mask.shape[0], G * R, T, S)
        out = jax.nn.dot_product_attention(q, k.astype(q.dtype), v, mask=m, scale=scale,
                                           implementation="xla")
        if m is not None:  # fully-masked rows: zeros (XLA's softmax would average the values)
            out = out * jnp.any(m, axis=-1).transpose(0, 2, 1)[..., None].astype(out.dtype)
    return out.transpose(0, 2, 1, 3).reshape(B, G, R, T, K)


CUDNN = Kernels("cudnn", attention=attention)
