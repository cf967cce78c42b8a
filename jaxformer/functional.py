"""The textbook: a GPT-style decoder as pure ``jax.numpy`` functions, in reading order.

Each cell of the labs is one small function (scores, masked softmax, weights @ V, attention, norms,
MLP, positions, a block, the stack, the head, the loss), differentiated by JAX's autodiff alone. What
later families add is in :mod:`jaxformer.functional_extras`; :mod:`jaxformer.model.stack` runs it fast.

Shapes in names (``x_BTD``): B batch, T query time, S key time, D model width, H query heads,
G kv heads, R query heads per kv head, K head width, F feed-forward width, V vocabulary, L layers.
Parameters are nested dicts of arrays (``[L]`` leading every leaf of ``blocks``):

    model  {"tok_emb": [V,D], "pos_emb": [max_len,D] (learned), "blocks": {"ln1": norm, "attn": attn,
            "ln2": norm, "mlp": mlp, "ln_attn_out", "ln_mlp_out": norm (sandwich)}, "ln_f": norm,
            "lm_head": [D,V] (untied), "type_emb": [n,D], "ln_emb": norm, "mlm" (BERT: functional_extras)}
                                           (norms only where norm_position puts them; no mlp when attn_only)
    norm   {"scale": [D], "bias": [D]}     attn {"wq": [D,H,K], "wk", "wv": [D,G,K], "wo": [H,K,D],
    mlp    {"w_in": [D,F], "w_out": [F,D],       "bq": [H,K], "bk", "bv": [G,K], "bo": [D],
            "b_in": [F], "b_out": [D],           "q_norm", "k_norm": {"scale": [K]}}
            "w_gate": [D,F] (gated)}           (biases per bias / qkv_bias)

``config``: an object with :class:`jaxformer.ModelConfig`'s fields; ``hooks``: TransformerLens's hook names ->
``fn(x) -> x``, one ``tap`` line each. Faster ``attend``, ``dense``, ``ln``, ``gelu`` come as keyword arguments.
"""
from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
from jax import lax

from jaxformer.functional_extras import (  # noqa: F401 (rope_frequencies, ...: textbook names too)
    acc_dtype, apply_rope, attention_only_block, cast_params, embed_extras, first_unnormed, gelu_exact, group_heads,
    grouped_hooks, head_transform, llama3_rope_scaling, merge_heads, output_bias, parallel_block, rope_for,
    rope_frequencies, rope_inv_freq, sandwich_norm, soft_cap, split_heads, sub_hooks, tap, GATED)

Params = Mapping[str, Any]


# ----------------------------------------------------------------------------- attention
def causal_mask(T: int, S: Optional[int] = None, offset: int = 0, window: Optional[int] = None, causal: bool = True):
    """Boolean ``[T, S=T]``: True where query t may attend key ``s <= t + offset``; with a sliding
    ``window`` W (Mistral, Gemma 2) only the last W of those, ``s > t + offset - W``; not ``causal``
    (ModernBERT's local layers): ``|s - t - offset| < W``."""
    S = T if S is None else S
    t, s = jnp.arange(T)[:, None] + offset, jnp.arange(S)[None, :]
    keep = s <= t if causal else s < t + (S if window is None else window)
    return keep if window is None else keep & (s > t - window)


def attention_scores(q, k, scale: float, softcap: Optional[float] = None):
    """``q [..., T, K] . k [..., S, K] * scale -> [..., T, S]`` (float32 at least), soft-capped."""
    return soft_cap(jnp.einsum("...tk,...sk->...ts", q, k, preferred_element_type=acc_dtype(q.dtype)) * scale, softcap)


def masked_softmax(scores, mask=None):
    """Softmax over the last axis (in float32 at least) where ``mask`` (True = keep) is True.
    Masked entries get exactly 0; a row with nothing kept is all zeros (not NaN)."""
    scores = scores.astype(acc_dtype(scores.dtype))
    scores = scores if mask is None else jnp.where(mask, scores, -jnp.inf)
    row_max = jnp.max(scores, axis=-1, keepdims=True)
    # Subtracting the row max changes nothing mathematically; it keeps exp() in range.
    row_max = lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
    e = jnp.exp(scores - row_max)
    denom = jnp.sum(e, axis=-1, keepdims=True)
    return e / jnp.where(denom == 0.0, 1.0, denom)


def weighted_values(weights, v):
    """``weights [..., T, S] @ v [..., S, K] -> [..., T, K]`` (in ``v``'s dtype)."""
    return jnp.einsum("...ts,...sk->...tk", weights.astype(v.dtype), v)


def scaled_dot_product_attention(q, k, v, *, mask=None, scale=None, softcap=None, hooks=None):
    """``softmax(q k^T * scale) v`` -> ``(out [..., T, K], weights [..., T, S])`` for ``q [..., T, K]``,
    ``k, v [..., S, K]``, ``mask`` (True = may attend) broadcastable to ``[..., T, S]``, ``scale``
    ``1/sqrt(K)`` by default. ``hooks``: ``hook_attn_scores`` (masked: -inf), ``hook_pattern``."""
    scores = attention_scores(q, k, 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale, softcap)
    if hooks is not None:
        scores = tap(hooks, "hook_attn_scores", scores if mask is None else jnp.where(mask, scores, -jnp.inf))
    weights = tap(hooks, "hook_pattern", masked_softmax(scores, mask))
    return weighted_values(weights, v), weights


# ----------------------------------------------------------------------------- multi-head attention
def linear(x, w):
    """``x [..., D] @ w [D, *out] -> [..., *out]`` (a weight may have several output axes)."""
    return jnp.tensordot(x, w, axes=1)


def attention_projections(params: Params, x_BTD, dense=linear):
    """Project ``x [B, T, D]`` to ``q [B, T, H, K]``, ``k, v [B, T, G, K]``."""
    q, k, v = (dense(x_BTD, params[w]) for w in ("wq", "wk", "wv"))
    if "bq" in params:
        q, k, v = q + params["bq"], k + params["bk"], v + params["bv"]
    return q, k, v


def grouped_attention(q_BGRTK, k_BGSK, v_BGSK, mask=None, *, scale: float, softcap=None,
                      dropout_rate: float = 0.0, key=None, hooks=None):
    """Attention of the R query heads of each kv head -> ``(out [B, G, R, T, K], weights [B, G, R, T, S])``;
    with ``key``, dropout on the weights (as GPT-2; the weights returned are those before it)."""
    k, v = k_BGSK[:, :, None], v_BGSK[:, :, None]
    out, w = scaled_dot_product_attention(q_BGRTK, k, v, mask=mask, scale=scale, softcap=softcap,
                                          hooks=grouped_hooks(hooks, k_BGSK.shape[1]))
    if key is not None and dropout_rate > 0.0:
        out = weighted_values(dropout(w, dropout_rate, key), v)
    return out, w


def multi_head_attention(params: Params, x_BTD, *, mask=None, rope=None, scale=None, softcap=None, qk_norm=None,
                         dropout_rate: float = 0.0, key=None, attend=grouped_attention, dense=linear, hooks=None):
    """Self-attention ``x [B, T, D] -> (out [B, T, D], weights [B, H, T, S])`` (``attend`` may replace
    :func:`grouped_attention`; a kernel gives None weights). ``mask`` ``[B, 1, T, S]`` or less;
    ``rope``: ``(cos, sin)``; ``qk_norm(p, x)`` norms q, k when ``params`` has ``q_norm`` (Qwen3).
    ``hooks``: ``hook_q``, ``hook_k``, ``hook_v``, ``hook_rot_q``, ``hook_rot_k``, scores, pattern, ``hook_z``."""
    q, k, v = attention_projections(params, x_BTD, dense)
    if "q_norm" in params:
        q, k = qk_norm(params["q_norm"], q), qk_norm(params["k_norm"], k)
    q, k, v = tap(hooks, "hook_q", q), tap(hooks, "hook_k", k), tap(hooks, "hook_v", v)
    if rope is not None:
        q, k = tap(hooks, "hook_rot_q", apply_rope(q, *rope)), tap(hooks, "hook_rot_k", apply_rope(k, *rope))
    B, T, H, K = q.shape
    out, w = attend(*group_heads(q, k, v, mask), scale=1.0 / math.sqrt(K) if scale is None else scale,
                    softcap=softcap, dropout_rate=dropout_rate, key=key, hooks=hooks)
    z_BTHK = tap(hooks, "hook_z", out.reshape(B, H, T, K).transpose(0, 2, 1, 3))
    y = dense(z_BTHK.reshape(B, T, H * K).astype(x_BTD.dtype), params["wo"].reshape(H * K, -1))
    return (y + params["bo"] if "bo" in params else y), None if w is None else w.reshape(B, H, T, -1)


# ----------------------------------------------------------------------------- norms, MLP, positions
def layer_norm(x, scale, bias=None, eps: float = 1e-5, offset: float = 0.0):
    """``(x - mean) / sqrt(var + eps) * (offset + scale) + bias`` over the last axis (in float32)."""
    xf = x.astype(acc_dtype(x.dtype))
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    y = (xf - mean) * lax.rsqrt(var + eps) * (offset + scale.astype(xf.dtype))
    return (y if bias is None else y + bias).astype(x.dtype)


def rms_norm(x, scale, eps: float = 1e-5, offset: float = 0.0):
    """``x / sqrt(mean(x^2) + eps) * (offset + scale)`` over the last axis (in float32; Gemma: offset 1)."""
    xf = x.astype(acc_dtype(x.dtype))
    y = xf * lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + eps)
    return (y * (offset + scale.astype(xf.dtype))).astype(x.dtype)


def norm(params: Params, x, kind: str = "layernorm", eps: float = 1e-5, offset: float = 0.0, *, ln=layer_norm):
    """The norm ``kind`` (layernorm | rmsnorm); ``ln(x, scale, bias, eps)`` may replace :func:`layer_norm`."""
    if kind == "rmsnorm":
        return rms_norm(x, params["scale"], eps, offset)
    if offset:
        return layer_norm(x, params["scale"], params.get("bias"), eps, offset)
    return ln(x, params["scale"], params.get("bias"), eps)


def gelu_tanh(x):
    """GELU with GPT-2's tanh approximation: ``0.5 x (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3)))``."""
    return 0.5 * x * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def feed_forward(params: Params, x_BTD, act: str = "gelu", *, dense=linear, gelu=gelu_tanh, hooks=None):
    """MLP ``[B, T, D] -> [B, T, D]``: ``act(x W_in + b_in) W_out + b_out``, or gated (SwiGLU, GeGLU)
    ``(act(x W_gate) * (x W_in)) W_out``; ``act`` relu | gelu (tanh) | gelu_exact | swiglu | geglu | geglu_exact.
    ``hooks``: ``hook_pre`` (the activation's input), ``hook_pre_linear`` (gated), ``hook_post``."""
    act_fn = {"relu": jax.nn.relu, "swiglu": jax.nn.silu, "gelu": gelu, "geglu": gelu,
              "gelu_exact": gelu_exact, "geglu_exact": gelu_exact}[act]
    h = dense(x_BTD, params["w_in"])
    h = h + params["b_in"] if "b_in" in params else h
    if act in GATED:
        gate = tap(hooks, "hook_pre", dense(x_BTD, params["w_gate"]))
        h = act_fn(gate) * tap(hooks, "hook_pre_linear", h)
    else:
        h = act_fn(tap(hooks, "hook_pre", h))
    y = dense(tap(hooks, "hook_post", h), params["w_out"])
    return y + params["b_out"] if "b_out" in params else y


def dropout(x, rate: float, key):
    """Zero with probability ``rate``, scale the rest by ``1/(1-rate)``; identity without a ``key``."""
    if key is None or rate <= 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def sinusoidal_positions(max_len: int, d_model: int, base: float = 10000.0):
    """The Transformer's fixed table ``[max_len, d_model]`` (float32):
    ``PE[pos, 2i] = sin(pos / base^(2i/d))``, ``PE[pos, 2i+1] = cos(pos / base^(2i/d))``."""
    pos = jnp.arange(max_len, dtype=jnp.float32)[:, None]
    two_i = jnp.arange(0, d_model, 2, dtype=jnp.float32)
    angle = pos / jnp.power(base, two_i / d_model)
    return jnp.stack([jnp.sin(angle), jnp.cos(angle)], axis=-1).reshape(max_len, -1)[:, :d_model]


# ----------------------------------------------------------------------------- one block
LN_IN = {"attn": "ln1", "mlp": "ln2"}   # the norm in front of each branch


def block_parts(params: Params, config, *, mask, rope, key, hooks, attend, dense, ln, gelu, residual, first=False):
    """A block's pieces, everything bound: ``run(branch, h)`` (``"attn"`` | ``"mlp"``), ``norm(name, x)``,
    ``norm_in(branch, x)`` (ln1 / ln2, hooked), ``out(branch, y)`` (dropout, hook ``hook_<branch>_out``),
    ``tap(name, x)``, ``residual(x)`` (a kernel set's mark); ``seen`` keeps weights and branch outputs."""
    keys = jax.random.split(key, 3) if key is not None else (None, None, None)
    seen: dict = {}
    hook = lambda name, x: tap(hooks, name, x)  # noqa: E731
    nrm = lambda p, x: norm(p, x, config.norm, config.norm_eps, config.norm_offset, ln=ln)  # noqa: E731

    def run(branch, h):
        branch_hooks = sub_hooks(hooks, f"{branch}.")
        if branch == "mlp":
            return feed_forward(params["mlp"], h, config.activation, dense=dense, gelu=gelu, hooks=branch_hooks)
        a, seen["weights"] = multi_head_attention(
            params["attn"], h, mask=mask, rope=rope, scale=config.attn_scale, softcap=config.attn_softcap, qk_norm=nrm,
            dropout_rate=config.dropout, key=keys[0], attend=attend, dense=dense, hooks=branch_hooks)
        return a

    def out(branch, y):
        y = hook(f"hook_{branch}_out", dropout(y, config.dropout, keys[1 + (branch == "mlp")]))
        seen[f"{branch}_out"] = y
        return y

    def norm_in(branch, x):   # ModernBERT's layer 0 reads x itself before attention (first: traced under scan)
        normed = first_unnormed(config, branch == "attn" and first, x, nrm(params[LN_IN[branch]], x))
        return hook(f"{LN_IN[branch]}.hook_normalized", normed)

    return SimpleNamespace(run=run, norm=lambda name, x: nrm(params[name], x), out=out, tap=hook,
                           norm_in=norm_in, residual=residual, seen=seen)


def pre_norm(f, x, branch: str):
    """GPT-2, Llama: ``x + branch(norm(x))``."""
    return x + f.out(branch, f.run(branch, f.norm_in(branch, x)))


def post_norm(f, x, branch: str):
    """The original Transformer: ``norm(x + branch(x))``."""
    return f.norm(LN_IN[branch], x + f.out(branch, f.run(branch, x)))


def no_norm(f, x, branch: str):
    """No norm at all (the hand-computed layer of the labs): ``x + branch(x)``."""
    return x + f.out(branch, f.run(branch, x))


def sequential_block(f, x, sublayer):
    """Attention, then the MLP, each one residual ``sublayer`` (nanoGPT's ``Block``)."""
    x = f.tap("hook_resid_mid", f.residual(sublayer(f, x, "attn")))
    return sublayer(f, x, "mlp")


NORM_PLACEMENTS = {"pre": pre_norm, "post": post_norm, "none": no_norm, "sandwich": sandwich_norm}
BLOCK_LAYOUTS = {"sequential": sequential_block, "parallel": parallel_block, "attn_only": attention_only_block}


def decoder_block(params: Params, x_BTD, config, *, mask=None, rope=None, key=None, hooks=None, dense=linear,
                  attend=grouped_attention, ln=layer_norm, gelu=gelu_tanh, residual=lambda x: x, first=False):
    """One block ``x [B, T, D] -> (y, {"weights", "attn_out", "mlp_out"})``: the layout of
    :data:`BLOCK_LAYOUTS`, its branches in residual sub-layers of :data:`NORM_PLACEMENTS`
    (``norm_position``); dropout with ``key``; ``first``: layer 0. Hooks: ``hook_resid_pre``, ..."""
    f = block_parts(params, config, mask=mask, rope=rope, key=key, hooks=hooks, attend=attend, dense=dense,
                    ln=ln, gelu=gelu, residual=residual, first=first)
    layout = "attn_only" if config.attn_only else "parallel" if config.parallel_residual else "sequential"
    x = f.tap("hook_resid_pre", residual(x_BTD))
    x = f.tap("hook_resid_post", BLOCK_LAYOUTS[layout](f, x, NORM_PLACEMENTS[config.norm_position]))
    return x, {name: f.seen[name] for name in ("weights", "attn_out", "mlp_out")}


# ----------------------------------------------------------------------------- the stack of blocks
def embed(params: Params, tokens_BT, config, positions_BT, hooks=None, token_types_BT=None):
    """Token embedding (times ``sqrt(D)`` when ``config.scale_embeddings``, Gemma) plus absolute positions (learned,
    from row ``position_offset``, or sinusoidal), then :func:`embed_extras` (BERT) ``-> [B, T, D]``; hooked."""
    x = jnp.take(params["tok_emb"], tokens_BT, axis=0)
    if config.scale_embeddings:  # the factor is rounded to the compute dtype, as Gemma does
        x = x * jnp.asarray(math.sqrt(config.d_model), x.dtype)
    x = tap(hooks, "hook_embed", x)
    if config.positions == "learned":
        rows = jnp.take(params["pos_emb"], positions_BT + config.position_offset, axis=0)
        x = x + tap(hooks, "hook_pos_embed", rows)
    elif config.positions == "sinusoidal":
        x = x + tap(hooks, "hook_pos_embed",
                    sinusoidal_positions(config.max_len, config.d_model)[positions_BT].astype(x.dtype))
    return embed_extras(params, x, config, token_types_BT, norm=norm)


def decoder(params: Params, tokens_BT, config, *, key=None, hooks=None):
    """One block after another (causal if ``config.causal``): tokens ``[B, T]`` -> ``(logits [B, T, V], aux)``;
    aux: ``weights [L, B, H, T, T]``, ``attn_out``, ``mlp_out [L, B, T, D]``, ``resid [L+1, B, T, D]``."""
    B, T = tokens_BT.shape
    params = cast_params(params, config.dtype)
    positions_BT = jnp.broadcast_to(jnp.arange(T), (B, T))
    keys = [None] * (config.n_layer + 1) if key is None else jax.random.split(key, config.n_layer + 1)
    x = dropout(embed(params, tokens_BT, config, positions_BT, hooks), config.dropout, keys[-1])
    full, sliding = (causal_mask(T, window=w, causal=config.causal)[None, None] if config.causal or w else None
                     for w in (None, config.sliding_window))
    ropes = [rope_for(config, positions_BT, s) if config.positions == "rope" else None for s in (False, True)]
    layers = []
    for i in range(config.n_layer):
        block_i = jax.tree.map(lambda a: a[i], params["blocks"])
        local = config.sliding_layers[i]
        y, aux = decoder_block(block_i, x, config, mask=sliding if local else full, rope=ropes[local], key=keys[i],
                               hooks=sub_hooks(hooks, f"blocks.{i}."), first=i == 0)
        layers.append(dict(aux, resid=x))
        x = y
    aux = {name: jnp.stack([layer[name] for layer in layers]) for name in ("weights", "attn_out", "mlp_out")}
    aux["resid"] = jnp.stack([layer["resid"] for layer in layers] + [x])
    return unembed(params, x, config, hooks=hooks), aux


# ----------------------------------------------------------------------------- the head and the loss
def final_norm(params: Params, x_BTD, config, *, ln=layer_norm, hooks=None):
    """``ln_f`` after the last block (pre-norm and sandwich); hook ``ln_final.hook_normalized``."""
    if config.norm_position in ("pre", "sandwich"):
        x = norm(params["ln_f"], x_BTD, config.norm, config.norm_eps, config.norm_offset, ln=ln)
        return tap(hooks, "ln_final.hook_normalized", x)
    return x_BTD


def unembed(params: Params, x_BTD, config, hooks=None):
    """:func:`final_norm` (BERT: :func:`head_transform`), ``logits [B, T, V]`` float32 (tied: ``tok_emb``), capped."""
    x_BTD = head_transform(params, final_norm(params, x_BTD, config, hooks=hooks), config, norm=norm, gelu=gelu_tanh)
    eq, w = ("btd,vd->btv", params["tok_emb"]) if config.tie_embeddings else ("btd,dv->btv", params["lm_head"])
    logits = jnp.einsum(eq, x_BTD, w.astype(x_BTD.dtype), preferred_element_type=acc_dtype(x_BTD.dtype))
    return soft_cap(output_bias(params, logits, config), config.final_softcap)


def token_log_probs(logits_BTV, targets_BT):
    """``log softmax(logits)[target]`` at every position ``-> [B, T]`` (float32 at least)."""
    logp = jax.nn.log_softmax(logits_BTV.astype(acc_dtype(logits_BTV.dtype)), axis=-1)
    return jnp.take_along_axis(logp, targets_BT[..., None], axis=-1)[..., 0]


def cross_entropy(logits_BTV, targets_BT, mask_BT=None):
    """Mean next-token cross-entropy (stable for large logits). ``mask`` weights positions."""
    nll = -token_log_probs(logits_BTV, targets_BT)
    if mask_BT is None:
        return jnp.mean(nll)
    return jnp.sum(nll * mask_BT) / jnp.maximum(jnp.sum(mask_BT.astype(nll.dtype)), 1.0)


def unembed_cross_entropy(params: Params, x_BTD, targets_BT, config, mask_BT=None):
    """``cross_entropy(unembed(params, x, config), targets, mask)``: the head and the loss."""
    return cross_entropy(unembed(params, x_BTD, config), targets_BT, mask_BT)


def next_token_loss(params: Params, tokens_BT1, config, *, key=None):
    """Training loss: mean cross-entropy of ``tokens[:, 1:]`` given ``tokens[:, :-1]`` (``key``: dropout)."""
    logits_BTV, _ = decoder(params, tokens_BT1[:, :-1], config, key=key)
    return cross_entropy(logits_BTV, tokens_BT1[:, 1:])
