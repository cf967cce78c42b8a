"""Kernels for NVIDIA GPUs: cuDNN flash attention where cuDNN supports the call, and the
output head's matrix products in the compute dtype with a vocabulary aligned for tensor cores.

:func:`attention` calls ``jax.nn.dot_product_attention(..., implementation="cudnn",
is_causal=True)`` when :func:`cudnn_supported` says cuDNN's fused kernel takes the call
(bfloat16 / float16, head width a multiple of 8 up to 128, the plain causal mask) and
XLA's implementation of the same function otherwise (float32, padding masks, decoding
over a cache). ``implementation=None`` is not used: in the JAX versions we support it
falls back to XLA rather than picking cuDNN.

:func:`unembed_cross_entropy` is the textbook's head and loss with two changes that leave the
loss's value as it is (float32 logits from 16-bit operands): the gradient of the logits is
rounded to the compute dtype before the two backward products (as mixed-precision training
in PyTorch does), which keeps them on bfloat16 tensor cores instead of float32 ones; and the
vocabulary axis of the product is padded with zero rows to a multiple of 128 (GPT-2's 50,257
is odd, which forces the slowest GEMM kernels), the padded logits cut off before the loss.
Everything else is the textbook's.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxformer import functional as F
from jaxformer.model.kernels.base import Kernels

CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
VOCAB_ALIGN = 128


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


@jax.custom_vjp
def head_logits(x_ND, w_VD):
    """``x [N, D] @ w [V, D]^T -> logits [N, V]`` in float32 from operands of the compute
    dtype; the backward products take the logits' gradient rounded to that dtype."""
    return jnp.einsum("nd,vd->nv", x_ND, w_VD, preferred_element_type=F.acc_dtype(x_ND.dtype))


def _head_logits_fwd(x_ND, w_VD):
    return head_logits(x_ND, w_VD), (x_ND, w_VD)


def _head_logits_bwd(res, g_NV):
    x_ND, w_VD = res
    g = g_NV.astype(x_ND.dtype)
    acc = F.acc_dtype(x_ND.dtype)
    dx = jnp.einsum("nv,vd->nd", g, w_VD, preferred_element_type=acc).astype(x_ND.dtype)
    dw = jnp.einsum("nv,nd->vd", g, x_ND, preferred_element_type=acc).astype(w_VD.dtype)
    return dx, dw


head_logits.defvjp(_head_logits_fwd, _head_logits_bwd)


def unembed_cross_entropy(params, x_BTD, targets_BT, config, mask_BT=None):
    """The ``unembed_cross_entropy`` slot: :func:`functional.unembed_cross_entropy` through
    :func:`head_logits` with the vocabulary padded to a multiple of ``VOCAB_ALIGN`` (BERT's head: the textbook's)."""
    if config.mlm_head:
        return F.unembed_cross_entropy(params, x_BTD, targets_BT, config, mask_BT)
    x_BTD = F.final_norm(params, x_BTD, config)
    w_VD = params["tok_emb"] if config.tie_embeddings else params["lm_head"].T
    V = w_VD.shape[0]
    w_VD = jnp.pad(w_VD.astype(x_BTD.dtype), ((0, -V % VOCAB_ALIGN), (0, 0)))
    B, T, D = x_BTD.shape
    logits = head_logits(x_BTD.reshape(B * T, D), w_VD)[:, :V].reshape(B, T, V)
    return F.cross_entropy(F.soft_cap(logits, config.final_softcap), targets_BT, mask_BT)


CUDNN = Kernels("cudnn", attention=attention, unembed_cross_entropy=unembed_cross_entropy)
