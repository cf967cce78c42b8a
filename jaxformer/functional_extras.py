"""The textbook's extra math for the model families after GPT-2, beside the reading path.

:mod:`jaxformer.functional` reads as the decoder of the labs; what later families add lives
here, each piece one small named function that the reading path imports where it enters:
soft caps (Gemma 2), rotary positions and their scalings (GPT-NeoX, Llama, Llama 3.1,
partial rotary), the exact GELU (GPT-NeoX / Pythia), grouped K/V heads (Llama 2, Mistral),
and the block layouts beyond pre / post / no norm: sandwich norms (Gemma 2), the parallel
residual (GPT-NeoX) and attention-only blocks (TransformerLens); BERT's masked-LM corruption
(encoders, ``config.causal`` false), its token-type embeddings, embedding norm and masked-LM head
transform; and the plumbing under
both files (the compute dtype, hook taps, the parameters cast to the compute dtype). Plain
``jax.numpy``, like the rest of the textbook; the shape legend is in :mod:`jaxformer.functional`.
"""
from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["acc_dtype", "tap", "sub_hooks", "cast_params", "soft_cap", "rope_inv_freq", "llama3_rope_scaling",
           "rope_frequencies", "rope_for", "apply_rope", "gelu_exact", "first_unnormed", "split_heads", "merge_heads", "group_heads",
           "grouped_hooks", "sandwich_norm", "parallel_block", "attention_only_block", "mask_token_id",
           "masked_lm_inputs", "embed_extras", "head_transform", "output_bias"]


# ----------------------------------------------------------------------------- plumbing: compute dtype, hooks
def acc_dtype(dtype):
    """The dtype softmax, norms and losses compute in: float32, or float64 for float64 inputs."""
    return jnp.promote_types(dtype, jnp.float32)


def tap(hooks, name: str, x):
    """``hooks[name](x)`` when hook point ``name`` is hooked, else ``x`` itself."""
    return x if hooks is None or name not in hooks else hooks[name](x)


def sub_hooks(hooks, prefix: str):
    """The hooks whose names start with ``prefix`` (``"attn."``, ``"blocks.3."``), with it
    stripped; None when there are none."""
    sub = {} if hooks is None else {n[len(prefix):]: f for n, f in hooks.items() if n.startswith(prefix)}
    return sub or None


def cast_params(params, dtype):
    """Every floating-point leaf in the compute ``dtype`` (integer leaves as they are)."""
    dtype = jnp.dtype(dtype)
    return jax.tree.map(lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p, params)


# ----------------------------------------------------------------------------- soft caps, rotary positions, GELU
def soft_cap(x, cap: Optional[float]):
    """``cap * tanh(x / cap)``: squashes ``x`` smoothly into ``(-cap, cap)`` (Gemma 2's
    attention-score and final-logit capping). Identity when ``cap`` is None."""
    return x if cap is None else cap * jnp.tanh(x / cap)


def rope_inv_freq(rot_dim: int, theta: float = 10000.0):
    """RoPE's angular frequencies ``theta^(-2i / rot_dim)``, ``i < rot_dim / 2`` (float32)."""
    return 1.0 / (theta ** (jnp.arange(0, rot_dim, 2, dtype=jnp.float32) / rot_dim))


def llama3_rope_scaling(inv_freq, factor: float, low_freq_factor: float, high_freq_factor: float,
                        original_max_len: int):
    """Llama 3.1's context extension of RoPE frequencies: wavelengths longer than
    ``original_max_len / low_freq_factor`` are slowed by ``factor``, those shorter than
    ``original_max_len / high_freq_factor`` kept, and those between interpolated smoothly."""
    wavelen = 2 * math.pi / inv_freq
    smooth = (original_max_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    scaled = jnp.where(wavelen > original_max_len / low_freq_factor, inv_freq / factor, inv_freq)
    medium = (wavelen >= original_max_len / high_freq_factor) & (wavelen <= original_max_len / low_freq_factor)
    return jnp.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)


def rope_frequencies(positions_BT, head_dim: int, theta: float = 10000.0, inv_freq=None):
    """Rotary angles ``(cos, sin)``, each ``[B, T, head_dim // 2]`` (float32).
    ``inv_freq`` ``[head_dim // 2]`` replaces :func:`rope_inv_freq` (e.g. scaled ones)."""
    inv_freq = rope_inv_freq(head_dim, theta) if inv_freq is None else inv_freq
    angle = positions_BT.astype(jnp.float32)[..., None] * inv_freq
    return jnp.cos(angle), jnp.sin(angle)


def rope_for(config, positions_BT, sliding: bool = False):
    """The ``(cos, sin)`` a model of ``config`` uses at ``positions [B, T]``: over ``config.rotary_dim``
    dims, base ``rope_theta`` (a ``sliding`` layer's: ``rope_local_theta`` if set), scaled per ``rope_scaling``."""
    local = sliding and config.rope_local_theta is not None
    inv_freq = rope_inv_freq(config.rotary_dim, config.rope_local_theta if local else config.rope_theta)
    if config.rope_scaling == "linear":
        inv_freq = inv_freq / config.rope_scaling_factor
    elif config.rope_scaling == "llama3":
        inv_freq = llama3_rope_scaling(inv_freq, config.rope_scaling_factor, config.rope_low_freq_factor,
                                       config.rope_high_freq_factor, config.rope_original_max_len)
    return rope_frequencies(positions_BT, config.rotary_dim, inv_freq=inv_freq)


def apply_rope(x_BTHK, cos_BTk, sin_BTk):
    """Rotate pairs ``(x[..., i], x[..., i + r/2])`` by the position's angle (GPT-NeoX / Llama
    "rotate half") over the first ``r = 2 * cos.shape[-1]`` dims; the rest pass unchanged
    (partial rotary). ``x [B, T, H, K]``, ``cos/sin [B, T, r/2]`` (:func:`rope_frequencies`)."""
    r = 2 * cos_BTk.shape[-1]
    x_rot, x_pass = x_BTHK[..., :r], x_BTHK[..., r:]
    x1, x2 = jnp.split(x_rot.astype(acc_dtype(x_BTHK.dtype)), 2, axis=-1)
    c, s = cos_BTk[:, :, None, :], sin_BTk[:, :, None, :]
    rotated = jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(x_BTHK.dtype)
    return rotated if r == x_BTHK.shape[-1] else jnp.concatenate([rotated, x_pass], axis=-1)


def gelu_exact(x):
    """GELU as defined, ``x * Phi(x) = 0.5 x (1 + erf(x / sqrt(2)))`` (GPT-NeoX / Pythia)."""
    return 0.5 * x * (1.0 + lax.erf(x / math.sqrt(2.0)))


#: Activations that multiply a gate branch into the up projection (Llama's SwiGLU, Gemma's GeGLU).
GATED = ("swiglu", "geglu", "geglu_exact")


# ----------------------------------------------------------------------------- heads: one per slice, grouped K/V
def split_heads(x_BTD, n_head: int):
    """``[B, T, H*K] -> [B, H, T, K]``."""
    B, T, D = x_BTD.shape
    return x_BTD.reshape(B, T, n_head, D // n_head).transpose(0, 2, 1, 3)


def merge_heads(x_BHTK):
    """``[B, H, T, K] -> [B, T, H*K]`` (inverse of :func:`split_heads`)."""
    B, H, T, K = x_BHTK.shape
    return x_BHTK.transpose(0, 2, 1, 3).reshape(B, T, H * K)


def group_heads(q_BTHK, k_BTGK, v_BTGK, mask=None):
    """The R = H / G query heads that share a kv head side by side: ``q [B, G, R, T, K]``,
    ``k, v [B, G, S, K]`` and ``mask`` (``[.., T, S]`` up to ``[B, 1, T, S]``) as ``[B, 1, 1, T, S]``."""
    B, T, H, K = q_BTHK.shape
    G = k_BTGK.shape[2]
    if mask is not None:
        mask = jnp.asarray(mask)
        mask = mask.reshape((1,) * (5 - mask.ndim) + mask.shape) if mask.ndim < 4 else mask[:, :, None]
    return (q_BTHK.reshape(B, T, G, H // G, K).transpose(0, 2, 3, 1, 4), k_BTGK.transpose(0, 2, 1, 3),
            v_BTGK.transpose(0, 2, 1, 3), mask)


def grouped_hooks(hooks, G: int):
    """Score and pattern hooks (on ``[B, H, T, S]``) for the grouped ``[B, G, R, T, S]`` layout."""
    if hooks is None:
        return None
    wrap = lambda f: lambda a: f(a.reshape(a.shape[0], -1, *a.shape[-2:])).reshape(a.shape)  # noqa: E731
    return {n: wrap(f) for n, f in hooks.items() if n in ("hook_attn_scores", "hook_pattern")}


# ----------------------------------------------------------------------------- more block layouts
def first_unnormed(config, first, x, normed):
    """ModernBERT (``config.first_attn_norm`` false): layer 0's attention reads ``x`` itself, not ``normed``
    (its embeddings are normed already). ``first``: whether this is layer 0 (a traced bool under a scan)."""
    if config.first_attn_norm or first is False:
        return normed
    return x if first is True else jnp.where(first, x, normed)


def sandwich_norm(f, x, branch: str):
    """Gemma 2: pre-norm, and the branch's output normed again: ``x + norm(branch(norm(x)))``."""
    return x + f.out(branch, f.norm(f"ln_{branch}_out", f.run(branch, f.norm_in(branch, x))))


def parallel_block(f, x, sublayer):
    """GPT-NeoX (pre-norm only): both branches read the block's input, ``x + attn(ln1(x)) + mlp(ln2(x))``."""
    return x + f.out("attn", f.run("attn", f.norm_in("attn", x))) + f.out("mlp", f.run("mlp", f.norm_in("mlp", x)))


def attention_only_block(f, x, sublayer):
    """No MLP (TransformerLens's attention-only models): one residual ``sublayer``."""
    x = sublayer(f, x, "attn")
    f.seen["mlp_out"] = jnp.zeros_like(f.seen["attn_out"])   # what the absent MLP adds
    return x


# ----------------------------------------------------------------------------- masked-LM (BERT)
def mask_token_id(config) -> int:
    """An encoder's mask token: the last id, ``vocab_size - 1`` (its tokenizer never produces it)."""
    return config.vocab_size - 1


def masked_lm_inputs(tokens_BT, key, *, mask_id: int, rate: float = 0.15):
    """BERT's corruption of ``tokens [B, T]`` -> ``(inputs [B, T], selected [B, T] bool)``: each
    position is selected with probability ``rate``; a selected one becomes ``mask_id`` (80%), a
    random id in ``[0, mask_id)`` (10%, may equal the original) or stays (10%). The loss is
    the cross-entropy of the original tokens at the selected positions only."""
    k_pick, k_how, k_tok = jax.random.split(key, 3)
    selected = jax.random.uniform(k_pick, tokens_BT.shape) < rate
    how = jax.random.uniform(k_how, tokens_BT.shape)
    random_BT = jax.random.randint(k_tok, tokens_BT.shape, 0, mask_id, tokens_BT.dtype)
    replaced = jnp.where(how < 0.8, jnp.asarray(mask_id, tokens_BT.dtype), jnp.where(how < 0.9, random_BT, tokens_BT))
    return jnp.where(selected, replaced, tokens_BT), selected


def embed_extras(params, x_BTD, config, token_types_BT=None, *, norm):
    """BERT's additions to the summed embeddings ``x [B, T, D]``: the token-type row of each
    position (``params["type_emb"] [n, D]``; type 0 everywhere without ``token_types [B, T]``),
    then the norm ``ln_emb``; ``norm(p, x, kind, eps, offset)`` is the textbook's. A GPT's ``x`` as it is."""
    if config.type_vocab_size:
        table = params["type_emb"].astype(x_BTD.dtype)
        x_BTD = x_BTD + (table[0] if token_types_BT is None else jnp.take(table, token_types_BT, axis=0))
    if config.embed_norm:
        x_BTD = norm(params["ln_emb"], x_BTD, config.norm, config.norm_eps, config.norm_offset)
    return x_BTD


def head_transform(params, x_BTD, config, *, norm, gelu):
    """BERT's masked-LM head before the unembedding, ``norm(act(x W + b))`` (``params["mlm"]``:
    ``{"w": [D, D], "b": [D] (``mlm_bias``), "ln": norm}``; ``act`` is ``config.mlm_activation`` or ``activation``, ``gelu`` the tanh GELU);
    ``x`` as it is without ``config.mlm_head``."""
    if not config.mlm_head:
        return x_BTD
    p = params["mlm"]
    act = {"relu": jax.nn.relu, "gelu_exact": gelu_exact, "gelu": gelu}[config.mlm_activation or config.activation]
    h = jnp.tensordot(x_BTD, p["w"].astype(x_BTD.dtype), axes=1)
    h = act(h + p["b"].astype(x_BTD.dtype) if "b" in p else h)
    return norm(p["ln"], h, config.norm, config.norm_eps, config.norm_offset)


def output_bias(params, logits_BTV, config):
    """The masked-LM head's bias ``params["mlm"]["bias"] [V]`` added to the logits (``config.mlm_head``)."""
    return logits_BTV + params["mlm"]["bias"].astype(logits_BTV.dtype) if config.mlm_head else logits_BTV
