"""Named hook points: read (:func:`run_with_cache`) or replace (:func:`run_with_hooks`) any
intermediate of the forward pass by its TransformerLens name.

The hooks are threaded through :mod:`jaxformer.functional` itself (each hook point is one
``tap(hooks, name, x)`` line there), so what is cached or patched is the very math the
model runs; ``hooks=None`` there is today's forward pass, unchanged. The table of names
below is checked against the taps the textbook actually reaches, for every combination of
the architecture knobs (``tests/test_textbook.py``). Hooked runs take the textbook's
:func:`~jaxformer.functional.decoder` (the layers one after another), so the layer in
``blocks.{l}.…`` is a Python int, and a cache records only the names asked for (XLA drops
everything else).
"""
from __future__ import annotations

import difflib
import functools
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import jax
import jax.numpy as jnp

from jaxformer import functional as F
from jaxformer.errors import JaxformerError
from jaxformer.interp.inputs import check_tokens, model_parts
from jaxformer.model.modules import model_class

Names = Union[None, str, Iterable[str], Callable[[str], bool]]


class HookError(JaxformerError, ValueError):
    """An unknown hook-point name, an empty selection or a hook that changed a shape."""


# ----------------------------------------------------------------------------- the names
def _block_points(config) -> List[Tuple[str, str]]:
    """``(name, shape)`` of one block's hook points in the order the block computes them."""
    pre = config.norm_position in ("pre", "sandwich")
    pts = [("hook_resid_pre", "[B, T, D]")]
    if pre:
        pts.append(("ln1.hook_normalized", "[B, T, D]"))
    pts += [("attn.hook_q", "[B, T, H, K]"), ("attn.hook_k", "[B, T, G, K]"), ("attn.hook_v", "[B, T, G, K]")]
    if config.positions == "rope":
        pts += [("attn.hook_rot_q", "[B, T, H, K]"), ("attn.hook_rot_k", "[B, T, G, K]")]
    pts += [("attn.hook_attn_scores", "[B, H, T, T]"), ("attn.hook_pattern", "[B, H, T, T]"),
            ("attn.hook_z", "[B, T, H, K]"), ("hook_attn_out", "[B, T, D]")]
    if config.attn_only:
        return pts + [("hook_resid_post", "[B, T, D]")]
    if not config.parallel_residual:
        pts.append(("hook_resid_mid", "[B, T, D]"))
    if pre:
        pts.append(("ln2.hook_normalized", "[B, T, D]"))
    pts.append(("mlp.hook_pre", "[B, T, F]"))
    if config.activation in F.GATED:
        pts.append(("mlp.hook_pre_linear", "[B, T, F]"))
    pts += [("mlp.hook_post", "[B, T, F]"), ("hook_mlp_out", "[B, T, D]"), ("hook_resid_post", "[B, T, D]")]
    return pts


@functools.lru_cache(maxsize=64)
def _table(config) -> Tuple[Tuple[str, str], ...]:
    pts = [("hook_embed", "[B, T, D]")]
    if config.positions in ("learned", "sinusoidal"):
        pts.append(("hook_pos_embed", "[B, T, D]"))
    block = _block_points(config)
    pts += [(f"blocks.{l}.{n}", s) for l in range(config.n_layer) for n, s in block]
    if config.norm_position in ("pre", "sandwich"):
        pts.append(("ln_final.hook_normalized", "[B, T, D]"))
    return tuple(pts)


def hook_names(config) -> Dict[str, str]:
    """Every hook point of a model of ``config``, in the order the forward pass reaches them,
    with its shape in the legend of :mod:`jaxformer.functional` (``G`` = ``n_kv_head``:
    ``hook_k`` / ``hook_v`` hold the shared K/V heads of grouped-query attention). Which
    names exist follows the architecture (no ``ln1`` without pre-norm, no ``hook_rot_q``
    without RoPE, no ``hook_resid_mid`` with a parallel residual, ...)."""
    return dict(_table(config))


def hook_shapes(config, batch: int, seq: int) -> Dict[str, Tuple[int, ...]]:
    """The concrete shape of every hook point for tokens ``[batch, seq]`` (traced abstractly:
    no memory, no compute)."""
    params = model_class(config).abstract(config).params()
    tokens = jax.ShapeDtypeStruct((batch, seq), jnp.int32)
    _, cache = jax.eval_shape(lambda p, t: run_hooked(p, t, config, None, tuple(hook_names(config))), params, tokens)
    return {n: tuple(cache[n].shape) for n in hook_names(config)}


def _under(name: str, prefix: str) -> bool:
    """``prefix`` names ``name`` itself or a dotted ancestor: ``blocks.1`` selects
    ``blocks.1.attn.hook_z`` but not ``blocks.10.…``."""
    return name == prefix or name.startswith(prefix if prefix.endswith(".") else prefix + ".")


def _unknown(name: str, known: Iterable[str]) -> HookError:
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return HookError(f"hook name {name!r} is not a hook point of this model{hint}; "
                     "see jaxformer.interp.hook_names(config)")


def select_names(config, names: Names = None) -> Tuple[str, ...]:
    """The hook points ``names`` selects, in forward order: all when None, those under a
    prefix string (``"blocks.0"``, ``"blocks.1.attn"``, or one full name), those a predicate
    ``fn(name) -> bool`` accepts, or a list of exact names. Raises :class:`HookError` for an
    unknown name or an empty selection."""
    known = hook_names(config)
    if names is None:
        picked = list(known)
    elif isinstance(names, str):
        picked = [n for n in known if _under(n, names)]
    elif callable(names):
        picked = [n for n in known if names(n)]
    else:
        wanted = set()
        for n in names:
            if n not in known:
                raise _unknown(n, known)
            wanted.add(n)
        picked = [n for n in known if n in wanted]
    if not picked:
        raise HookError(f"names={names!r} selects no hook point of this model; "
                        "see jaxformer.interp.hook_names(config)")
    return tuple(picked)


# ----------------------------------------------------------------------------- running
def _checked(name: str, fn: Callable) -> Callable:
    """``fn`` as a hook: None keeps the activation (a hook that only reads), and a
    replacement must keep the shape."""
    def hook(x):
        y = fn(x)
        if y is None:
            return x
        if jnp.shape(y) != x.shape:
            raise HookError(f"hook {name!r} returned shape {tuple(jnp.shape(y))} for an activation of "
                            f"shape {tuple(x.shape)}")
        return jnp.asarray(y, x.dtype)
    return hook


def run_hooked(params, tokens_BT, config, hooks: Optional[Mapping[str, Callable]], names: Tuple[str, ...]):
    """One hooked forward pass that also records ``names`` (after any hook on them):
    ``(logits [B, T, V], {name: value})``. The record is a dict local to this call, so the
    function stays pure for every JAX transformation around it."""
    store: Dict[str, Any] = {}
    run = dict(hooks or {})
    for n in names:
        def record(x, n=n, f=run.get(n)):
            x = x if f is None else f(x)
            store[n] = x
            return x
        run[n] = record
    logits, _ = F.decoder(params, tokens_BT, config, hooks=run)
    return logits, {n: store[n] for n in names}


@functools.partial(jax.jit, static_argnames=("config", "names"))
def run_with_cache_fn(params, tokens_BT, config, names: Tuple[str, ...]):
    """Pure, jitted :func:`run_with_cache` over a parameter pytree; ``names`` a tuple of
    exact hook names (see :func:`select_names`)."""
    return run_hooked(params, tokens_BT, config, None, names)


def run_with_cache(model, tokens_BT, names: Names = None, *, hooks: Optional[Mapping[str, Callable]] = None):
    """Run the model and keep the activations at the hook points ``names`` selects (see
    :func:`select_names`; all when None): ``(logits [B, T, V], cache)``, ``cache`` a dict
    holding exactly those names. Memory scales with what is asked: the rest is never
    materialised. ``hooks`` (as in :func:`run_with_hooks`) apply first, so the cache shows
    the hooked run. ``model``: a GPT or a ``(params, config)`` pair. Pure; jit / vmap / grad
    it freely (with ``(params, config)`` to differentiate the parameters)."""
    params, config = model_parts(model)
    picked = select_names(config, names)
    tokens_BT = check_tokens(tokens_BT, config)
    if not hooks:
        logits, cache = run_with_cache_fn(params, tokens_BT, config, picked)
        return logits, {n: cache[n] for n in picked}          # forward order (jit sorts keys)
    return run_hooked(params, tokens_BT, config, _check_hooks(config, hooks), picked)


def _check_hooks(config, hooks: Mapping[str, Callable]) -> Dict[str, Callable]:
    known = hook_names(config)
    out = {}
    for name, fn in hooks.items():
        if name not in known:
            raise _unknown(name, known)
        if not callable(fn):
            raise HookError(f"hooks[{name!r}] is {type(fn).__name__}, not a function fn(x) -> x")
        out[name] = _checked(name, fn)
    return out


def run_with_hooks(model, tokens_BT, hooks: Mapping[str, Callable]):
    """Logits ``[B, T, V]`` of a run where each ``hooks[name]`` (``fn(x) -> x``) sees the
    activation at hook point ``name`` and may replace it (same shape) or return None to
    leave it. Layer-qualified names (``blocks.1.attn.hook_z``) hook that layer only.
    Pure: ``jax.jit`` / ``jax.vmap`` / ``jax.grad`` work through it (hooks may close over
    traced arrays)."""
    params, config = model_parts(model)
    logits, _ = run_hooked(params, check_tokens(tokens_BT, config), config, _check_hooks(config, hooks), ())
    return logits


def stack_layers(cache: Mapping[str, jax.Array], name: str, n_layer: int) -> jax.Array:
    """``cache["blocks.{l}.<name>"]`` for every layer stacked on a new axis 1: ``[B, L, ...]``."""
    return jnp.stack([cache[f"blocks.{l}.{name}"] for l in range(n_layer)], axis=1)


def nested(cache: Mapping[str, jax.Array]) -> Dict[str, object]:
    """The cache as nested dicts along the dots of its names (``blocks`` -> ``"0"`` ->
    ``attn`` -> ``hook_z``), in the forward pass's order: a tree that ``treescope`` (Flax's
    notebook renderer: ``treescope.basic_interactive_setup()``) or ``jax.tree`` folds by layer
    and sublayer. The leaves are the same arrays."""
    out: Dict[str, object] = {}
    for name, value in cache.items():
        *path, leaf = name.split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out
