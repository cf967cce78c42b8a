"""Training: the optimizer, a jitted pure train step and evaluation (the run loop is
:mod:`jaxformer.training.loop`).

The train step is one pure function ``(params, opt_state, batch_KBT1, step) -> (params,
opt_state, metrics)`` over the plain parameter pytree, jitted with its buffers donated:
next-token cross-entropy through :func:`functional.decoder`, gradients accumulated over the
``K`` micro-batches with a ``lax.scan``, then optax (global-norm clipping, AdamW with a
weight-decay mask, linear warmup then cosine decay); an encoder's masked-LM loss instead, on
BERT's masking of the batch drawn from ``(seed, s)`` too. The dropout key of step ``s`` is
``fold_in(key(seed), s)`` and the batch of step ``s`` is drawn from ``(seed, s)``, so a run
is a pure function of its config: resuming from a checkpoint reproduces it bit for bit.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxformer.config import Config, ModelConfig, TrainConfig
from jaxformer.data.batches import get_batch
from jaxformer.errors import JaxformerError
from jaxformer.functional_extras import mask_token_id, masked_lm_inputs
from jaxformer.model.kernels import Kernels, platform_of
from jaxformer.model.kernels import resolve as resolve_kernels
from jaxformer.model import stack
from jaxformer.model.modules import model_class

DECAYED_NAMES = ("wq", "wk", "wv", "wo", "w_in", "w_out", "w_gate", "lm_head")
EMBEDDING_NAMES = ("tok_emb", "pos_emb")


class NonFiniteLossError(JaxformerError):
    """The training loss became NaN or infinite (the message names the step)."""


# ----------------------------------------------------------------------------- optimizer
def lr_schedule(tc: TrainConfig) -> Callable:
    """Linear warmup from ``lr/warmup`` to ``lr`` over ``warmup_steps``, then cosine decay to
    ``min_lr`` at ``decay_steps`` (default ``max_steps``), constant after. Step-indexed from 0."""
    decay = tc.decay_steps or tc.max_steps
    warmup = tc.warmup_steps
    if warmup == 0:
        base = optax.cosine_decay_schedule(tc.lr, max(decay, 1), alpha=tc.min_lr / tc.lr)
        return base
    base = optax.warmup_cosine_decay_schedule(0.0, tc.lr, warmup, max(decay, warmup + 1), tc.min_lr)
    return lambda count: base(count + 1)


def weight_decay_mask(params, decay_embeddings: bool = False):
    """A pytree of bools like ``params``: True for the weight matrices (``wq``, ``wk``, ``wv``,
    ``wo``, ``w_in``, ``w_out``, ``w_gate``, ``lm_head``; the embeddings too with
    ``decay_embeddings``), False for norms and biases. By name, because stacked layers give
    biases a leading ``[L]`` axis that makes them look like matrices."""
    names = DECAYED_NAMES + (EMBEDDING_NAMES if decay_embeddings else ())

    def leaf(path, _):
        return str(getattr(path[-1], "key", path[-1])) in names
    return jax.tree_util.tree_map_with_path(leaf, params)


def make_optimizer(tc: TrainConfig, params) -> optax.GradientTransformation:
    """Global-norm clipping (``grad_clip > 0``), then AdamW with :func:`weight_decay_mask`."""
    adamw = optax.adamw(lr_schedule(tc), b1=tc.beta1, b2=tc.beta2, eps=1e-8,
                        weight_decay=tc.weight_decay,
                        mask=weight_decay_mask(params, tc.decay_embeddings))
    return optax.chain(optax.clip_by_global_norm(tc.grad_clip), adamw) if tc.grad_clip > 0 else adamw


def compute_config(config: Config) -> ModelConfig:
    """The model config used for the forward pass: ``train.dtype`` (e.g. bfloat16) as compute
    dtype when it is not float32; parameters stay in ``model.param_dtype``."""
    if config.train.dtype != "float32":
        return dataclasses.replace(config.model, dtype=config.train.dtype)
    return config.model


# ----------------------------------------------------------------------------- steps
def step_kernels(model_config: ModelConfig, where=None) -> Kernels:
    """The kernel set ``model.kernels`` picks for a step running where ``where`` lives (a
    mesh, a device, arrays; None = the default device). Resolved once, outside tracing."""
    return resolve_kernels(model_config.kernels, platform_of(where))


def masking_key(seed: int, step, split: str = "train") -> jax.Array:
    """The key of BERT's masking of step ``step`` (``split="val"``: of evaluation batch ``step``),
    so a run's masks, like its batches, are a function of ``(seed, step)`` (resume is exact)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), step), 1 + (split == "val"))


def objective_batch(batch_BT1, model_config: ModelConfig, mask_key=None):
    """What the loss of ``model_config`` takes from a batch ``[..., T+1]``: the batch itself
    (next-token, a decoder), or for an encoder (masked-LM) ``(inputs, targets, selected)``
    ``[..., T]``: the first T tokens corrupted by :func:`functional_extras.masked_lm_inputs` with ``mask_key``."""
    if model_config.causal:
        return batch_BT1
    targets = batch_BT1[..., :-1]
    inputs, selected = masked_lm_inputs(targets, mask_key, mask_id=mask_token_id(model_config))
    return inputs, targets, selected


def loss_fn(params, batch, model_config: ModelConfig, key=None, kernels: Optional[Kernels] = None):
    """The objective of ``model_config``, with ``kernels`` (None = textbook). A decoder: mean
    next-token cross-entropy of ``batch [B, T+1]`` (inputs ``[:, :-1]``, targets ``[:, 1:]``,
    :func:`functional.next_token_loss`); an encoder: the masked-LM loss of ``batch = (inputs,
    targets, selected)`` (:func:`objective_batch`, :func:`stack.masked_lm_loss`)."""
    if model_config.causal:
        return stack.next_token_loss(params, batch, model_config, key=key, kernels=kernels)
    return stack.masked_lm_loss(params, *batch, model_config, key=key, kernels=kernels)


def accumulate_gradients(params, batch_KBT1, model_config: ModelConfig, key=None,
                         kernels: Optional[Kernels] = None):
    """Mean loss and gradient over ``K`` micro-batches ``[K, B/K, T+1]`` (a ``lax.scan``, so
    only one micro-batch's activations are live). Equals one batch of ``B`` rows. An encoder's
    batch is the tuple of :func:`objective_batch` with the leading ``[K]`` axis."""
    grad_fn = jax.value_and_grad(loss_fn)
    K = jax.tree.leaves(batch_KBT1)[0].shape[0]
    if K == 1:
        return grad_fn(params, jax.tree.map(lambda a: a[0], batch_KBT1), model_config, key, kernels)

    def body(carry, xs):
        loss_sum, grad_sum = carry
        i, micro = xs
        k = None if key is None else jax.random.fold_in(key, i)
        loss, grads = grad_fn(params, micro, model_config, k, kernels)
        return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    (loss_sum, grad_sum), _ = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros),
                                           (jnp.arange(K), batch_KBT1))
    return loss_sum / K, jax.tree.map(lambda g: g / K, grad_sum)


def make_train_step(config: Config, optimizer: optax.GradientTransformation, *, jit: bool = True,
                    kernels: Optional[Kernels] = None):
    """``step_fn(params, opt_state, batch_KBT1 int32 [K, B/K, T+1], step int32) ->
    (params, opt_state, {"loss", "grad_norm", "lr", "finite"})``, jitted with params and
    optimizer state donated. With ``train.on_nonfinite="skip"`` a step whose loss or gradient
    is not finite leaves params and optimizer state unchanged. ``kernels`` defaults to
    :func:`step_kernels` on the default device."""
    mc, tc = compute_config(config), config.train
    kernels = step_kernels(mc) if kernels is None else kernels
    schedule = lr_schedule(tc)
    use_dropout = mc.dropout > 0

    def step_fn(params, opt_state, batch_KBT1, step):
        key = jax.random.fold_in(jax.random.key(tc.seed), step) if use_dropout else None
        batch = objective_batch(batch_KBT1, mc, None if mc.causal else masking_key(tc.seed, step))
        loss, grads = accumulate_gradients(params, batch, mc, key, kernels)
        grad_norm = optax.tree.norm(grads)
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        if tc.on_nonfinite == "skip":
            keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
            new_params = jax.tree.map(keep, new_params, params)
            new_opt_state = jax.tree.map(keep, new_opt_state, opt_state)
        return new_params, new_opt_state, {"loss": loss, "grad_norm": grad_norm,
                                           "lr": schedule(step), "finite": finite}

    return jax.jit(step_fn, donate_argnums=(0, 1)) if jit else step_fn


def make_eval_step(model_config: ModelConfig, kernels: Optional[Kernels] = None):
    """Jitted ``eval_step(params, batch_BT1, mask_key) -> mean loss`` (no dropout; ``mask_key``:
    an encoder's masking, ignored by a decoder; ``kernels`` default: :func:`step_kernels` on
    the default device)."""
    kernels = step_kernels(model_config) if kernels is None else kernels
    return jax.jit(lambda params, batch_BT1, mask_key: loss_fn(
        params, objective_batch(batch_BT1, model_config, mask_key), model_config, None, kernels))


def evaluate(params, model_config: ModelConfig, ids: np.ndarray, *, batch_size: int, steps: int,
             seed: int = 0, split: str = "val", eval_step=None) -> float:
    """Mean loss over ``steps`` batches ``[B, T+1]`` (``T = model_config.max_len``) of
    ``ids``; batch ``i`` is drawn from ``(seed, split, i)`` (an encoder's masks too), so every
    evaluation of a run sees the same batches: next-token loss, or masked-LM loss for an encoder."""
    eval_step = eval_step or make_eval_step(model_config)
    losses = [eval_step(params, get_batch(ids, batch_size, model_config.max_len, seed=seed, step=i, split=split),
                        masking_key(seed, i, "val")) for i in range(steps)]
    return float(jnp.mean(jnp.stack(losses)))


def loss_curve(config: Config, ids: np.ndarray, steps: int, *, seed: int = 0) -> np.ndarray:
    """Training losses of ``steps`` steps of the library's train step from
    :func:`init_params`, on batches of ``ids`` drawn from ``(seed, step)``. Runs with
    different ``train.dtype`` see identical initial weights and batches, so their curves
    can be compared step by step (``benchmarks/mixed_precision.py``)."""
    tc, mc = config.train, config.model
    params = init_params(config)
    optimizer = make_optimizer(tc, params)
    opt_state = optimizer.init(params)
    step_fn = make_train_step(config, optimizer)
    losses = []
    for s in range(steps):
        batch = micro_batches(get_batch(ids, tc.batch_size, mc.max_len, seed=seed, step=s), tc.grad_accum)
        params, opt_state, m = step_fn(params, opt_state, jnp.asarray(batch), jnp.int32(s))
        losses.append(m["loss"])
    return np.asarray(jax.device_get(losses), np.float64)


def micro_batches(batch_BT1: np.ndarray, grad_accum: int) -> np.ndarray:
    """``[B, T+1] -> [K, B/K, T+1]`` (consecutive rows form a micro-batch)."""
    B = batch_BT1.shape[0]
    return batch_BT1.reshape(grad_accum, B // grad_accum, *batch_BT1.shape[1:])


def fresh_params(model_config: ModelConfig, seed: int) -> dict:
    """A random init of ``model_config`` from ``seed`` as a plain nested dict: the function
    that :func:`init_params` (one device) and :func:`jaxformer.training.parallel.init_sharded` (a
    mesh, each device computing only its shards) both compile, so they agree exactly."""
    return model_class(model_config)(model_config, rngs=nnx.Rngs(seed)).params()


_init_params = jax.jit(fresh_params, static_argnums=(0, 1))


def init_params(config: Config):
    """Fresh float parameters of ``config.model`` from ``train.seed`` (a plain nested dict),
    computed by one compiled program (:func:`fresh_params`)."""
    return _init_params(config.model, config.train.seed)


def abstract_params(config: Config):
    """The parameters' structure as ``jax.ShapeDtypeStruct`` leaves: nothing computed."""
    return model_class(config.model).abstract(config.model).params()
