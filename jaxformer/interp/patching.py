"""Ready-made interventions on top of the hook points: activation patching (exact and its
gradient approximation), head ablation, the residual decomposition and direct logit
attribution. Each returns arrays; each runs as one compiled program.

Shapes as in :mod:`jaxformer.functional` (C: components of the residual stream, A: answer
tokens). ``model`` is a GPT or a ``(params, config)`` pair everywhere.
"""
from __future__ import annotations

import functools
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

from jaxformer.interp.hooks import HookError, hook_names, run_hooked, run_with_cache_fn
from jaxformer.interp.inputs import check_tokens, model_parts

Metric = Callable[[jax.Array], jax.Array]

# Hook points with a head axis, and where it is; all others patch over positions (axis 1).
_HEAD_AXIS = {"attn.hook_q": 2, "attn.hook_k": 2, "attn.hook_v": 2, "attn.hook_rot_q": 2,
              "attn.hook_rot_k": 2, "attn.hook_z": 2, "attn.hook_attn_scores": 1, "attn.hook_pattern": 1}


def logit_difference(logits_BTV, right, wrong) -> jax.Array:
    """Mean over the batch of ``logits[:, -1, right] - logits[:, -1, wrong]`` (ids: ints or
    ``[B]`` arrays): the default metric of the patching functions."""
    last_BV = logits_BTV[:, -1]
    rows = jnp.arange(last_BV.shape[0])
    pick = lambda ids: last_BV[rows, jnp.broadcast_to(jnp.asarray(ids), rows.shape)]  # noqa: E731
    return jnp.mean(pick(right) - pick(wrong))


def _metric(metric: Optional[Metric], answer) -> Metric:
    if metric is not None:
        return metric
    if answer is None or len(answer) != 2:
        raise HookError(f"answer={answer!r}: pass metric=fn(logits) -> scalar, or answer=(right_id, wrong_id) "
                        "for the logit difference at the last position")
    return lambda logits: logit_difference(logits, *answer)


def _layer_names(config, hook: str, over: str) -> Tuple[Tuple[str, ...], int]:
    """``blocks.{l}.<hook>`` for every layer, and the axis patched one index at a time."""
    if over not in ("position", "head"):
        raise HookError(f"over={over!r}: expected 'position' or 'head'")
    names = tuple(f"blocks.{l}.{hook}" for l in range(config.n_layer))
    if names[0] not in hook_names(config):
        raise HookError(f"hook={hook!r} is not a per-layer hook point of this model (e.g. 'hook_resid_pre', "
                        "'attn.hook_z'); see jaxformer.interp.hook_names(config)")
    if over == "head":
        if hook not in _HEAD_AXIS:
            raise HookError(f"hook={hook!r} has no head axis; over='head' takes one of {sorted(_HEAD_AXIS)}")
        return names, _HEAD_AXIS[hook]
    if _HEAD_AXIS.get(hook) == 1:
        raise HookError(f"hook={hook!r} is [B, H, T, T]; over='position' takes a [B, T, ...] hook point")
    return names, 1


def _pair(model, clean_tokens, corrupted_tokens):
    params, config = model_parts(model)
    clean, corrupted = check_tokens(clean_tokens, config), check_tokens(corrupted_tokens, config)
    if clean.shape != corrupted.shape:
        raise HookError(f"corrupted_tokens have shape {tuple(corrupted.shape)}, clean_tokens {tuple(clean.shape)}: "
                        "patching needs the same [B, T]")
    return params, config, clean, corrupted


def _one_hot(i, size: int, axis: int, ndim: int):
    """Boolean, True at index ``i`` of ``axis``, broadcastable to an ``ndim`` array."""
    return (jnp.arange(size) == i).reshape([size if a == axis else 1 for a in range(ndim)])


def _patching_setup(model, clean_tokens, corrupted_tokens, metric, answer, hook, over):
    """What patching and its gradient approximation share: the checked token pair, the
    patched hook names of every layer with the patched axis, and the metric."""
    hook = hook or ("hook_resid_pre" if over == "position" else "attn.hook_z")
    params, config, clean, corrupted = _pair(model, clean_tokens, corrupted_tokens)
    names, axis = _layer_names(config, hook, over)
    return params, config, clean, corrupted, names, axis, _metric(metric, answer)


def patch_activations(model, clean_tokens, corrupted_tokens, metric: Optional[Metric] = None, *,
                      answer=None, hook: Optional[str] = None, over: str = "position") -> jax.Array:
    """Activation patching clean -> corrupted: run ``corrupted_tokens`` with one slice of
    hook point ``blocks.{l}.<hook>`` taken from the clean run, for every layer l and every
    index along ``over``, and measure ``metric(logits) -> scalar`` (default: the logit
    difference ``answer=(right, wrong)`` at the last position, :func:`logit_difference`).

    ``over="position"`` (default hook ``hook_resid_pre``): ``[L, T]``, one position of every
    example at a time. ``over="head"`` (default hook ``attn.hook_z``): ``[L, H]``, one head at
    every position (``[L, G]`` for ``hook_k`` / ``hook_v``). Returns the metric of each
    patched run; normalise with the clean and corrupted runs' metric as you like, e.g.
    ``(table - m_corrupted) / (m_clean - m_corrupted)``.
    """
    params, config, clean, corrupted, names, axis, metric = _patching_setup(
        model, clean_tokens, corrupted_tokens, metric, answer, hook, over)

    @jax.jit
    def table(params, clean, corrupted):
        _, cached = run_hooked(params, clean, config, None, names)
        rows = []
        for n in names:
            size, ndim = cached[n].shape[axis], cached[n].ndim

            def patched(i, n=n, size=size, ndim=ndim):
                hooks = {n: lambda x: jnp.where(_one_hot(i, size, axis, ndim), cached[n], x)}
                return metric(run_hooked(params, corrupted, config, hooks, ())[0])
            rows.append(jax.vmap(patched)(jnp.arange(size)))
        return jnp.stack(rows)

    return table(params, clean, corrupted)


def attribution_patching(model, clean_tokens, corrupted_tokens, metric: Optional[Metric] = None, *,
                         answer=None, hook: Optional[str] = None, over: str = "position") -> jax.Array:
    """The gradient approximation of :func:`patch_activations` (same arguments, same shape,
    same quantity): ``metric(corrupted) + sum (clean - corrupted) * d metric / d activation``
    over each patched slice, from one clean forward and one corrupted forward and backward
    pass. Exact to first order in the difference between the runs. Masked (``-inf``) attention
    scores contribute nothing."""
    params, config, clean, corrupted, names, axis, metric = _patching_setup(
        model, clean_tokens, corrupted_tokens, metric, answer, hook, over)

    @jax.jit
    def table(params, clean, corrupted):
        _, cached = run_hooked(params, clean, config, None, names)

        def corrupted_metric(deltas):
            # Adding zero at each hook point makes d metric / d delta the activation's gradient.
            hooks = {n: (lambda x, n=n: x + deltas[n]) for n in names}
            logits, seen = run_hooked(params, corrupted, config, hooks, names)
            return metric(logits), seen

        zeros = {n: jnp.zeros_like(a) for n, a in cached.items()}
        (m, seen), grads = jax.value_and_grad(corrupted_metric, has_aux=True)(zeros)
        rows = []
        for n in names:
            diff = cached[n] - seen[n]
            diff = jnp.where(jnp.isfinite(diff), diff, 0.0)
            other = tuple(a for a in range(diff.ndim) if a != axis)
            rows.append(jnp.sum(diff * grads[n], axis=other))
        return m + jnp.stack(rows)

    return table(params, clean, corrupted)


def ablate_heads(model, tokens_BT, heads: Iterable[Tuple[int, int]], mode: str = "zero") -> jax.Array:
    """Logits ``[B, T, V]`` with the attention heads ``heads`` (``(layer, head)`` pairs)
    knocked out at ``hook_z``: ``mode="zero"`` sets their output to 0 (the same as zeroing
    that head's rows of ``wo``; ``bo`` stays), ``mode="mean"`` to its mean over the batch and
    positions of this run."""
    if mode not in ("zero", "mean"):
        raise HookError(f"mode={mode!r}: expected 'zero' or 'mean'")
    params, config = model_parts(model)
    tokens_BT = check_tokens(tokens_BT, config)
    by_layer: Dict[int, list] = {}
    for layer, head in heads:
        if not (0 <= layer < config.n_layer and 0 <= head < config.n_head):
            raise HookError(f"head ({layer}, {head}) is outside the model's {config.n_layer} layers x "
                            f"{config.n_head} heads")
        by_layer.setdefault(int(layer), []).append(int(head))
    names = tuple(f"blocks.{l}.attn.hook_z" for l in sorted(by_layer))

    @jax.jit
    def run(params, tokens_BT):
        means = {}
        if mode == "mean":
            _, cached = run_hooked(params, tokens_BT, config, None, names)
            means = {n: jnp.mean(z, axis=(0, 1)) for n, z in cached.items()}       # [H, K]

        def knock(n, hs):
            off = jnp.isin(jnp.arange(config.n_head), jnp.asarray(hs))[:, None]  # [H, 1]
            return lambda z: jnp.where(off, means.get(n, 0.0), z)
        hooks = {f"blocks.{l}.attn.hook_z": knock(f"blocks.{l}.attn.hook_z", hs) for l, hs in by_layer.items()}
        return run_hooked(params, tokens_BT, config, hooks, ())[0]

    return run(params, tokens_BT)


# ----------------------------------------------------------------------------- attribution
def _layer(blocks, l: int):
    return blocks[l] if isinstance(blocks, (list, tuple)) else jax.tree.map(lambda a: a[l], blocks)


def residual_decomposition(model, tokens_BT) -> Tuple[Tuple[str, ...], jax.Array]:
    """The final residual stream (the last block's output, before the final norm) as a sum
    of what each part wrote: ``(labels, parts [C, B, T, D])``, ``parts.sum(0)`` = the stream.

    Parts: ``embed``, ``pos_embed`` (absolute positions), then per layer each head
    ``L{l}H{h}`` (its ``hook_z`` times its rows of ``wo``) and ``L{l}.attn_bias`` (``bo``,
    when the model has biases), and ``L{l}.mlp`` (not for ``attn_only`` models). Sandwich-norm models normalise the
    attention output after the heads are summed, so their attention is one part per layer
    (``L{l}.attn``). Post-norm models have no such sum: :class:`HookError`.
    """
    params, config = model_parts(model)
    if config.norm_position == "post":
        raise HookError("norm_position='post' renormalises the stream after each branch, so it is no sum of "
                        "parts; residual_decomposition takes pre, sandwich or none")
    return _decompose(params, check_tokens(tokens_BT, config), config)[:2]


def _decompose_names(config) -> Tuple[str, ...]:
    per_head = config.norm_position != "sandwich"
    layer = ("attn.hook_z" if per_head else "hook_attn_out",) + (() if config.attn_only else ("hook_mlp_out",))
    first = ("hook_embed", "hook_pos_embed") if config.positions in ("learned", "sinusoidal") else ("hook_embed",)
    return first + tuple(f"blocks.{l}.{n}" for l in range(config.n_layer) for n in layer) + \
        (f"blocks.{config.n_layer - 1}.hook_resid_post",)


def _decompose(params, tokens_BT, config):
    """``(labels, parts [C, B, T, D], final stream [B, T, D])``: the labels from the config, the
    arrays from one compiled program."""
    return (_decompose_labels(params, config),) + _decompose_arrays(params, tokens_BT, config)


def _decompose_labels(params, config) -> Tuple[str, ...]:
    blocks = params["blocks"]
    has_bias = "bo" in (blocks[0] if isinstance(blocks, (list, tuple)) else blocks)["attn"]
    labels = ["embed"]
    if config.positions in ("learned", "sinusoidal"):
        labels.append("pos_embed")
    for l in range(config.n_layer):
        if config.norm_position == "sandwich":
            labels.append(f"L{l}.attn")
        else:
            labels += [f"L{l}H{h}" for h in range(config.n_head)]
            if has_bias:
                labels.append(f"L{l}.attn_bias")
        if not config.attn_only:
            labels.append(f"L{l}.mlp")
    return tuple(labels)


@functools.partial(jax.jit, static_argnames=("config",))
def _decompose_arrays(params, tokens_BT, config):
    _, cache = run_with_cache_fn(params, tokens_BT, config, _decompose_names(config))
    parts = [cache["hook_embed"]]
    if "hook_pos_embed" in cache:
        parts.append(cache["hook_pos_embed"])
    for l in range(config.n_layer):
        if config.norm_position == "sandwich":
            parts.append(cache[f"blocks.{l}.hook_attn_out"])
        else:
            attn = _layer(params["blocks"], l)["attn"]
            z_BTHK = cache[f"blocks.{l}.attn.hook_z"]
            parts += list(jnp.einsum("bthk,hkd->hbtd", z_BTHK, attn["wo"].astype(z_BTHK.dtype)))
            if "bo" in attn:
                parts.append(jnp.broadcast_to(attn["bo"].astype(parts[0].dtype), parts[0].shape))
        if not config.attn_only:
            parts.append(cache[f"blocks.{l}.hook_mlp_out"])
    return jnp.stack(parts), cache[f"blocks.{config.n_layer - 1}.hook_resid_post"]


def direct_logit_attribution(model, tokens_BT, answer_ids: Sequence[int], *, pos: int = -1
                             ) -> Tuple[Tuple[str, ...], jax.Array]:
    """What each part of :func:`residual_decomposition` adds to the logits of ``answer_ids``
    (``[A]`` token ids) at position ``pos``: ``(labels, attribution [C, B, A])``.

    Each part goes through the final norm as a linear map, with the norm's scale taken from
    the actual final stream (frozen, as TransformerLens's cached ``ln_final.hook_scale``):
    ``(part - mean(part)) / scale * w @ W_U`` for layer norm (no centring for RMS norm). The
    norm's bias is one more part, ``ln_final.bias``. The attributions sum to the logits
    before any final soft-cap (Gemma 2 caps after). ``attribution[..., 0] -
    attribution[..., 1]`` is each part's share of a logit difference.
    """
    params, config = model_parts(model)
    if config.norm_position == "post":
        raise HookError("norm_position='post' has no residual sum to attribute; direct_logit_attribution "
                        "takes pre, sandwich or none")
    labels, parts_CBTD, resid_BTD = _decompose(params, check_tokens(tokens_BT, config), config)
    ids = jnp.asarray(answer_ids, jnp.int32).reshape(-1)
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= config.vocab_size):
        raise HookError(f"answer_ids={list(map(int, ids))} reach outside the vocabulary [0, {config.vocab_size})")
    return labels + (("ln_final.bias",) if _ln_bias(params, config) else ()), \
        _attribute(params, parts_CBTD, resid_BTD, ids, config, pos)


def _ln_bias(params, config) -> bool:
    return config.norm_position in ("pre", "sandwich") and "bias" in params["ln_f"]


@functools.partial(jax.jit, static_argnames=("config",))
def _attribute(params, parts_CBTD, resid_BTD, ids_A, config, pos):
    parts_CBD, resid_BD = parts_CBTD[:, :, pos], resid_BTD[:, pos]
    dtype = parts_CBD.dtype
    w = params["tok_emb"].T if config.tie_embeddings else params["lm_head"]
    w_DA = w[:, ids_A].astype(dtype)
    if config.norm_position not in ("pre", "sandwich"):
        return parts_CBD @ w_DA
    ln = params["ln_f"]
    r = resid_BD.astype(jnp.promote_types(dtype, jnp.float32))
    if config.norm == "layernorm":
        r = r - r.mean(-1, keepdims=True)
        parts_CBD = parts_CBD - parts_CBD.mean(-1, keepdims=True)
    scale_B1 = jnp.sqrt(jnp.mean(jnp.square(r), -1, keepdims=True) + config.norm_eps)
    gain_D = config.norm_offset + ln["scale"].astype(dtype)
    out = ((parts_CBD / scale_B1.astype(dtype)) * gain_D) @ w_DA
    if "bias" in ln:
        out = jnp.concatenate([out, jnp.broadcast_to(ln["bias"].astype(dtype) @ w_DA, (1,) + out.shape[1:])])
    return out
