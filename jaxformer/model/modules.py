"""Flax NNX modules that own parameters and call the textbook (:mod:`jaxformer.functional`).

No math lives here: each module holds ``nnx.Param`` leaves named exactly like the
functional parameter pytree (see the legend in ``functional.py``), so
``nnx.to_pure_dict(nnx.state(module, nnx.Param))`` *is* the pytree the functional
core takes, and ``module.params()`` returns it.

:class:`GPT` runs through the engine (:func:`jaxformer.model.stack.decoder`, without
kernels, so every autodiff mode works on it). It holds its ``L`` blocks stacked: ``GPT.blocks``
is one :class:`DecoderBlock` whose every parameter has a leading ``[L]`` axis (created by
``nnx.vmap`` with one RNG split per layer), the layout the stack scans over. That stacked
block and its sub-modules (``GPT.blocks.attn``, ``.mlp``, ``.ln1``, ...) only hold
parameters: calling one raises :class:`StackedLayersError`. ``GPT.layer(i)`` is layer ``i`` as
a block of its own, callable like the lab modules :class:`DecoderBlock`,
:class:`MultiHeadAttention`, :class:`FeedForward` and :class:`LayerNorm` built on their own.
Those attend everywhere unless given a ``mask`` or ``causal=True`` (as ``torch.nn.MultiheadAttention``).

:class:`Encoder` is the bidirectional model (``config.causal`` false) with the same parameters;
:func:`model_class` picks GPT or Encoder for a config (each refuses the other's config).
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from jaxformer import functional as F
from jaxformer.config import ModelConfig
from jaxformer.errors import ConfigError, DataError, JaxformerError
from jaxformer.model import stack


class StackedLayersError(JaxformerError, ValueError):
    """A module holding all ``L`` stacked layers of a :class:`GPT` was called as one layer."""


def _one_layer(module, leaf, ndim: int) -> None:
    """Raise :class:`StackedLayersError` when ``leaf`` has a stacked ``[L]`` axis beyond ``ndim``."""
    if leaf.ndim != ndim:
        raise StackedLayersError(
            f"this {type(module).__name__} holds the {leaf.shape[0]} stacked layers of a GPT (GPT.blocks) and "
            "only stores their parameters: call gpt.layer(i) for layer i as a block of its own, or run the model")


def _with_causal(mask, causal: bool, T: int):
    """``mask`` (None = attend everywhere), and-ed with the causal mask when ``causal``."""
    if not causal:
        return mask
    return F.causal_mask(T) if mask is None else mask & F.causal_mask(T)


def _normal(rngs: nnx.Rngs, shape, std: float, dtype) -> nnx.Param:
    # The barrier keeps XLA from folding ``std`` into the sampler when the init is compiled as
    # one program, so the values are bit-identical to drawing and scaling op by op.
    return nnx.Param(std * jax.lax.optimization_barrier(jax.random.normal(rngs.params(), shape, dtype)))


def _const(shape, value: float, dtype) -> nnx.Param:
    return nnx.Param(jnp.full(shape, value, dtype))


class ParamsMixin:
    def params(self) -> dict:
        """This module's parameters as the plain nested dict the functional core takes."""
        return nnx.to_pure_dict(nnx.state(self, nnx.Param))

    def load_params(self, tree: dict) -> None:
        """Overwrite this module's parameters from a plain nested dict (same structure)."""
        state = nnx.state(self, nnx.Param)
        nnx.replace_by_pure_dict(state, tree)
        nnx.update(self, state)


class LayerNorm(ParamsMixin, nnx.Module):
    """Layer norm (or RMS norm with ``kind="rmsnorm"``) over the last axis."""

    def __init__(self, dim: int, *, kind: str = "layernorm", bias: bool = True, eps: float = 1e-5,
                 offset: float = 0.0, param_dtype=jnp.float32):
        self.kind, self.eps, self.offset = kind, eps, offset
        self.scale = _const((dim,), 1.0 - offset, param_dtype)  # applied as offset + scale = 1
        if bias and kind == "layernorm":
            self.bias = _const((dim,), 0.0, param_dtype)

    def __call__(self, x):
        _one_layer(self, self.scale, 1)
        return F.norm(self.params(), x, self.kind, self.eps, offset=self.offset)

    @classmethod
    def of(cls, config: ModelConfig, dim: Optional[int] = None, bias: Optional[bool] = None) -> "LayerNorm":
        """The norm ``config`` asks for (kind, epsilon, offset, bias), over ``dim`` (default D)."""
        return cls(dim or config.d_model, kind=config.norm, bias=config.bias if bias is None else bias,
                   eps=config.norm_eps, offset=config.norm_offset, param_dtype=jnp.dtype(config.param_dtype))


class MultiHeadAttention(ParamsMixin, nnx.Module):
    """Multi-head self-attention with optional grouped K/V heads (``n_kv_head < n_head``)."""

    def __init__(self, d_model: int, n_head: int, *, n_kv_head: Optional[int] = None,
                 head_dim: Optional[int] = None, bias: bool = True, qkv_bias: Optional[bool] = None,
                 qk_norm: Optional["LayerNorm"] = None, rngs: nnx.Rngs, init_std: float = 0.02,
                 out_std: Optional[float] = None, param_dtype=jnp.float32):
        G = n_head if n_kv_head is None else n_kv_head
        K = d_model // n_head if head_dim is None else head_dim
        self.wq = _normal(rngs, (d_model, n_head, K), init_std, param_dtype)
        self.wk = _normal(rngs, (d_model, G, K), init_std, param_dtype)
        self.wv = _normal(rngs, (d_model, G, K), init_std, param_dtype)
        self.wo = _normal(rngs, (n_head, K, d_model), out_std or init_std, param_dtype)
        if bias if qkv_bias is None else qkv_bias:
            self.bq = _const((n_head, K), 0.0, param_dtype)
            self.bk = _const((G, K), 0.0, param_dtype)
            self.bv = _const((G, K), 0.0, param_dtype)
        if bias:
            self.bo = _const((d_model,), 0.0, param_dtype)
        if qk_norm is not None:  # a LayerNorm over K, copied for q and for k (Qwen3)
            self.q_norm, self.k_norm = qk_norm, nnx.clone(qk_norm)

    def __call__(self, x_BTD, *, mask=None, causal: bool = False, rope=None):
        """``x [B, T, D]``, boolean ``mask`` (True = may attend) broadcastable to ``[B, 1, T, T]`` ->
        ``(out [B, T, D], weights [B, H, T, T])``. Without a mask every token attends to every
        token (as ``torch.nn.MultiheadAttention``); ``causal=True`` adds the causal mask."""
        _one_layer(self, self.wq, 3)
        mask = _with_causal(mask, causal, x_BTD.shape[1])
        qk_norm = getattr(self, "q_norm", None)
        out, weights = F.multi_head_attention(
            self.params(), x_BTD, mask=mask, rope=rope,
            qk_norm=None if qk_norm is None else (lambda p, h: F.norm(p, h, qk_norm.kind, qk_norm.eps,
                                                                      offset=qk_norm.offset)))
        return out, weights


class FeedForward(ParamsMixin, nnx.Module):
    """Position-wise MLP with ``relu`` | ``gelu`` | ``gelu_exact`` | ``swiglu`` | ``geglu``."""

    def __init__(self, d_model: int, d_ff: int, *, activation: str = "gelu", bias: bool = True,
                 rngs: nnx.Rngs, init_std: float = 0.02, out_std: Optional[float] = None,
                 param_dtype=jnp.float32):
        self.activation = activation
        self.w_in = _normal(rngs, (d_model, d_ff), init_std, param_dtype)
        if activation in F.GATED:
            self.w_gate = _normal(rngs, (d_model, d_ff), init_std, param_dtype)
        self.w_out = _normal(rngs, (d_ff, d_model), out_std or init_std, param_dtype)
        if bias:
            self.b_in = _const((d_ff,), 0.0, param_dtype)
            self.b_out = _const((d_model,), 0.0, param_dtype)

    def __call__(self, x_BTD):
        _one_layer(self, self.w_in, 2)
        return F.feed_forward(self.params(), x_BTD, self.activation)


class DecoderBlock(ParamsMixin, nnx.Module):
    """One decoder block (attention + MLP with residuals; norms per ``config.norm_position``)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        c = config
        self.config = c
        pdt = jnp.dtype(c.param_dtype)
        # GPT-2: residual projections scaled by 1/sqrt(2 * n_layer).
        out_std = c.init_std / (2 * c.n_layer) ** 0.5
        if c.norm_position != "none":
            self.ln1 = LayerNorm.of(c)
        if c.norm_position == "sandwich":
            self.ln_attn_out = LayerNorm.of(c)
        self.attn = MultiHeadAttention(c.d_model, c.n_head, n_kv_head=c.n_kv_head, head_dim=c.head_dim,
                                       bias=c.bias, qkv_bias=c.qkv_bias,
                                       qk_norm=LayerNorm.of(c, c.head_dim, bias=False) if c.qk_norm else None,
                                       rngs=rngs, init_std=c.init_std, out_std=out_std, param_dtype=pdt)
        if not c.attn_only:
            if c.norm_position != "none":
                self.ln2 = LayerNorm.of(c)
            if c.norm_position == "sandwich":
                self.ln_mlp_out = LayerNorm.of(c)
            self.mlp = FeedForward(c.d_model, c.d_ff, activation=c.activation, bias=c.bias, rngs=rngs,
                                   init_std=c.init_std, out_std=out_std, param_dtype=pdt)

    def __call__(self, x_BTD, *, mask=None, causal: bool = False, rope=None, key=None):
        """``x [B, T, D] -> (y [B, T, D], aux)`` (see :func:`functional.decoder_block`). Without a
        ``mask`` every token attends to every token; ``causal=True`` adds the causal mask (a
        decoder's layer: ``gpt.layer(i)(x, causal=True)`` is what the model computes)."""
        _one_layer(self, self.attn.wq, 3)
        mask = _with_causal(mask, causal, x_BTD.shape[1])
        return F.decoder_block(self.params(), x_BTD, self.config, mask=mask, rope=rope, key=key)


class MaskedLMHead(ParamsMixin, nnx.Module):
    """BERT's masked-LM head parameters (``config.mlm_head``): the transform ``w [D, D]``, ``b [D]`` (``mlm_bias``),
    its norm ``ln`` and the output bias ``bias [V]`` (see :func:`functional_extras.head_transform`)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        pdt = jnp.dtype(config.param_dtype)
        self.w = _normal(rngs, (config.d_model, config.d_model), config.init_std, pdt)
        if config.mlm_bias:
            self.b = _const((config.d_model,), 0.0, pdt)
        self.ln = LayerNorm.of(config)
        self.bias = _const((config.vocab_size,), 0.0, pdt)


class Transformer(ParamsMixin, nnx.Module):
    """What :class:`GPT` and :class:`Encoder` share: the parameters (one layout for both) and how
    they are built, copied and counted. Build one of the two, never this class itself.

    Blocks are stored stacked (leading ``[L]`` axis) and run by :func:`stack.decoder`
    under ``lax.scan`` when ``config.scan_layers`` (the default). ``.blocks`` is a
    :class:`DecoderBlock` holding all ``L`` layers' parameters (calling it raises);
    :meth:`layer` gives one layer as a callable block.
    """

    causal: bool = True   # what config.causal the class takes

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, _traced: bool = False):
        c = config
        if c.causal != self.causal:
            raise ConfigError(f"model.causal={c.causal!r} does not fit {type(self).__name__}: build "
                              f"{model_class(c).__name__}(config, rngs=...) (model_class(config) picks the class)")
        if not _traced:   # the random init as one compiled program, not one per array op
            built = _built(type(self), c, rngs)
            for name, value in vars(built).items():
                if not name.startswith("_"):
                    setattr(self, name, value)
            return
        self.config = c
        pdt = jnp.dtype(c.param_dtype)
        self.tok_emb = _normal(rngs, (c.vocab_size, c.d_model), c.init_std, pdt)
        if c.positions == "learned":
            self.pos_emb = _normal(rngs, (c.max_len + c.position_offset, c.d_model), c.init_std / 2, pdt)
        if c.type_vocab_size:
            self.type_emb = _normal(rngs, (c.type_vocab_size, c.d_model), c.init_std, pdt)
        if c.embed_norm:
            self.ln_emb = LayerNorm.of(c)

        @nnx.split_rngs(splits=c.n_layer)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def stacked_blocks(rngs):
            return DecoderBlock(c, rngs=rngs)

        self.blocks = stacked_blocks(rngs)
        if c.norm_position in ("pre", "sandwich"):
            self.ln_f = LayerNorm.of(c)
        if not c.tie_embeddings:
            self.lm_head = _normal(rngs, (c.d_model, c.vocab_size), c.init_std, pdt)
        if c.mlm_head:
            self.mlm = MaskedLMHead(c, rngs=rngs)

    def layer(self, i: int) -> DecoderBlock:
        """Layer ``i`` as a callable :class:`DecoderBlock` holding a copy of its parameters."""
        block = nnx.eval_shape(lambda: DecoderBlock(self.config, rngs=nnx.Rngs(0)))
        block.load_params(jax.tree.map(lambda a: a[i], self.params()["blocks"]))
        return block

    @classmethod
    def abstract(cls, config: ModelConfig) -> "Transformer":
        """The model's structure with ``jax.ShapeDtypeStruct`` leaves: no memory, no random init."""
        return nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0)))

    @classmethod
    def from_params(cls, config: ModelConfig, params: dict) -> "Transformer":
        """A model holding ``params`` (a functional pytree), built without a random init.
        The one way the library builds a model from loaded or trained parameters."""
        model = cls.abstract(config)
        model.load_params(params)
        return model

    def num_params(self, non_embedding: bool = False) -> int:
        """Number of parameters (``non_embedding``: without token/position tables)."""
        return count_params(self.params(), non_embedding=non_embedding)


class GPT(Transformer):
    """A GPT-style decoder (``config.causal`` true): ``GPT(config, rngs=nnx.Rngs(0))(tokens [B, T])
    -> logits [B, T, V]``, each position predicting the next token from those up to it."""

    causal = True

    def __call__(self, tokens_BT, *, key: Optional[jax.Array] = None):
        """Logits ``[B, T, V]`` (float32). ``key`` enables dropout (training)."""
        return _logits(self.params(), jnp.asarray(tokens_BT), self.config, key=key)


class Encoder(Transformer):
    """A bidirectional encoder (``config.causal`` false; BERT's shape, TransformerLens's
    HookedEncoder): ``Encoder(config, rngs=nnx.Rngs(0))(tokens [B, T]) -> logits [B, T, V]``,
    every position seeing every token; trained with the masked-LM objective (docs/encoders.md).
    The same parameters as :class:`GPT`."""

    causal = False

    def __call__(self, tokens_BT, *, attention_mask=None, token_type_ids=None, key: Optional[jax.Array] = None):
        """Logits ``[B, T, V]`` (float32). ``attention_mask`` ``[B, T]`` (True = real token,
        False = padding) keeps padding keys out of every token's attention (the padded rows'
        own logits mean nothing); ``token_type_ids`` ``[B, T]``: BERT's segment ids (default 0;
        needs ``config.type_vocab_size``); ``key`` enables dropout (training)."""
        key_mask = None if attention_mask is None else jnp.asarray(attention_mask, bool)
        shape = tuple(jnp.shape(tokens_BT))
        if key_mask is not None and key_mask.shape != shape:
            raise DataError(f"attention_mask has shape {key_mask.shape}: it must be the tokens' shape "
                            f"{shape} (True = real token, False = padding)")
        types = None if token_type_ids is None else jnp.asarray(token_type_ids, jnp.int32)
        if types is not None and (types.shape != shape or not self.config.type_vocab_size):
            raise DataError(f"token_type_ids of shape {types.shape} need the tokens' shape {shape} and "
                            f"model.type_vocab_size > 0 (it is {self.config.type_vocab_size})")
        return _logits(self.params(), jnp.asarray(tokens_BT), self.config, key_mask, key, types)


@functools.partial(nnx.jit, static_argnums=(0, 1))
def _built(cls, config: ModelConfig, rngs: nnx.Rngs) -> Transformer:
    """``cls(config, rngs=rngs)`` built under one ``jit``: the same values as building it op by op
    (the same random draws from the same keys), compiled once per config instead of once per array
    op; ``rngs`` advances as it would eagerly."""
    return cls(config, rngs=rngs, _traced=True)


@functools.partial(jax.jit, static_argnums=(2,))
def _logits(params, tokens_BT, config: ModelConfig, key_mask_BS=None, key=None, token_types_BT=None):
    """The models' forward pass, compiled once per config and shape (an eager call would
    dispatch and compile every op and the layer scan on each call)."""
    return stack.decoder(params, tokens_BT, config, key_mask_BS=key_mask_BS, key=key, token_types_BT=token_types_BT)[0]


def model_class(config: ModelConfig) -> type:
    """:class:`GPT` for a causal ``config``, :class:`Encoder` for a bidirectional one."""
    return GPT if config.causal else Encoder


def count_params(params: dict, non_embedding: bool = False) -> int:
    """Count the scalars in a parameter pytree, optionally without ``tok_emb``/``pos_emb``."""
    if non_embedding:
        params = {k: v for k, v in params.items() if k not in ("tok_emb", "pos_emb", "type_emb")}
    return int(sum(x.size for x in jax.tree.leaves(params)))
