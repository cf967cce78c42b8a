"""Autoregressive generation with a key/value cache, the decode loop inside XLA.

How it works (all of it jitted over the model's parameter pytree):

1. **Padding.** A batch of prompts of different lengths is *left*-padded to a common
   length ``P``: row ``b`` with ``n_b`` tokens fills cache slots ``[P - n_b, P)``.
   Padding slots are excluded from attention by ``key_mask_BS`` and every row gets its
   own positions (``slot - pad_b``), so a padded row computes exactly what the prompt
   computes alone. New tokens then go to the same slot for every row (one scalar
   ``cache_index``), which is why left padding is the layout used.
2. **Prefill.** One call of :func:`jaxformer.functional.decoder` over the ``[B, P]``
   prompts writes their keys/values into a preallocated cache ``{"k","v": [L, B, G, S, K]}``
   (``S = P + N`` slots) and gives the logits of the first new token.
3. **Decode.** A ``lax.while_loop`` feeds one token per step at slot ``P + i - 1``;
   attention covers the filled slots only (causal mask at ``cache_index`` plus the
   padding mask). The loop stops after ``max_new_tokens`` or as soon as every row has
   produced a stop token. The cache and output buffers are donated between calls.
4. **Buckets.** ``P`` is the longest prompt rounded up to a power of two (at least 8)
   and ``N`` is ``max_new_tokens`` rounded up the same way; the actual prompt lengths
   and number of steps are runtime values. So compilation happens once per
   ``(batch size, P bucket, N bucket, sampling mode)``: a chat-like sequence of calls
   with growing prompts recompiles only when a prompt crosses a power of two.
   Temperature, top-p and the repetition penalty are runtime values too; ``top_k``,
   ``top_n`` and which filters are on are part of the compiled program.
5. **Past the context.** When a prompt of ``n`` tokens plus ``max_new_tokens`` does not
   fit in the model's context ``C = config.max_len``, the model sees the last ``C`` tokens
   (nanoGPT's crop), for every position encoding, still inside one XLA loop: the prompt
   is cropped to its last ``C`` tokens, the cache (``C`` slots) is used while it fits, and
   when it is full the window *slides*: the last ``C - slide_every`` tokens (kept in a
   token buffer inside the loop) are re-prefilled at positions starting from 0, then
   ``slide_every`` tokens are decoded with the cache. ``slide_every=1`` (the default) is
   exactly the crop: every token past the context sees the last ``C`` tokens, and a padded
   row still computes what it computes alone. A larger ``slide_every`` re-prefills less
   often (faster) and every token then sees between ``C - slide_every + 1`` and ``C``
   tokens, on a schedule shared by the batch. (A rotating cache is not used: past the
   first layer a token's keys depend on the tokens it saw, so reusing them after the window
   moved is not the crop, even with RoPE.) ``max_new_tokens`` is bounded by memory only:
   the loop keeps a ``[B, P + N]`` int32 token buffer.

Log-probabilities returned (``return_logprobs``, ``top_n``) are those of the model itself
(``log_softmax`` of the raw logits), not of the temperature/top-k/top-p-filtered
distribution the token was drawn from.
"""
from __future__ import annotations

import collections
import functools
from typing import Callable, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxformer.data.tokenizers import end_ids, start_ids
from jaxformer.errors import GenerationError
from jaxformer.infer import sampling as S_
from jaxformer.infer.decode_loop import (  # noqa: F401 (decode, Generation: this module's API too)
    Generation, Spec, _choose, _init_state, _result, _settings, decode, decode_loop)
from jaxformer.model.kernels import platform_of
from jaxformer.model.kernels import resolve as resolve_kernels
from jaxformer.model import stack

__all__ = ["generate", "generate_stream", "decode", "Generation", "Generator", "bucket_length", "TRACES",
           "sample_text"]

BUCKET_MIN = 8
#: How many times each jitted function has been traced (compiled) in this process.
TRACES: collections.Counter = collections.Counter()


def bucket_length(n: int, minimum: int = BUCKET_MIN) -> int:
    """Round ``n`` up to a power of two, at least ``minimum`` (the compile bucket of a length)."""
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


# ----------------------------------------------------------------------------- the model's steps
@functools.partial(jax.jit, static_argnames=("config", "kernels", "spec", "S", "N", "H"))
def _prefill(params, tokens_BP, pad_B, key, knobs, is_stop_V, *, config, kernels, spec: Spec, S: int,
             N: int, H: int = 0):
    """Prompts ``[B, P]`` (left-padded by ``pad_B``) -> decode state with the first new token.
    ``H > 0``: the sliding-window state (a ``[B, H]`` token buffer and the window start)."""
    TRACES["prefill"] += 1
    B, P = tokens_BP.shape
    positions_BP = jnp.maximum(jnp.arange(P)[None, :] - pad_B[:, None], 0)
    key_mask_BS = jnp.arange(S)[None, :] >= pad_B[:, None]
    cache = stack.init_cache(config, B, S, dtype=jnp.dtype(config.dtype))
    cache = [{"k": cache["k"][i], "v": cache["v"][i]} for i in range(config.n_layer)]
    logits_BPV, aux = stack.decoder(params, tokens_BP, config, positions_BT=positions_BP,
                                    key_mask_BS=key_mask_BS, cache=cache, cache_index=0, kernels=kernels)
    seen_BV = None
    if spec.use_penalty:
        valid_BP = jnp.arange(P)[None, :] >= pad_B[:, None]
        seen_BV = jnp.zeros((B, config.vocab_size), bool).at[
            jnp.arange(B)[:, None], tokens_BP].max(valid_BP)
    model_state = {"cache": aux["cache"], "pad_B": pad_B}
    if H:
        model_state["hist_BH"] = jnp.zeros((B, H), jnp.int32).at[:, :P].set(tokens_BP)
        model_state["ws"] = jnp.zeros((), jnp.int32)
    st = _init_state(model_state, B, N, config.vocab_size, key, spec, seen_BV)
    return _choose(st, logits_BPV[:, -1], knobs, is_stop_V, spec)


# XLA:CPU copies every loop-carried buffer that the loop body both reads and updates in place
# (here: each layer's KV cache, at every step) unless its copy insertion uses region
# analysis. An XLA:CPU option: XLA:GPU and XLA:TPU do not know it, so it is passed only when
# the decode loop is compiled for a CPU (see _decode_jit).
#: XLA compiler options of the decode loop, per platform (:func:`jaxformer.model.kernels.platform_of`).
DECODE_COMPILER_OPTIONS = {"cpu": {"xla_cpu_copy_insertion_use_region_analysis": True}}


def _decode(params, st, n_target, knobs, is_stop_V, *, config, kernels, spec: Spec, P: int,
            slide_every: int = 0):
    """Continue a decode state until ``n_target`` new tokens (or all rows stopped).
    ``slide_every > 0``: the sliding-window loop (see the module docstring, point 5)."""
    TRACES["decode"] += 1
    if slide_every:
        return decode_loop(_window_step(params, config, kernels, P, slide_every), st, n_target,
                           knobs, is_stop_V, spec)

    def step_fn(ms, token_B, step):
        pad_B, S = ms["pad_B"], ms["cache"][0]["v"].shape[-2]
        slot = P + step - 1
        positions_B1 = (slot - pad_B)[:, None]
        key_mask_BS = jnp.arange(S)[None, :] >= pad_B[:, None]
        logits_B1V, aux = stack.decoder(params, token_B[:, None], config, positions_BT=positions_B1,
                                        key_mask_BS=key_mask_BS, cache=ms["cache"], cache_index=slot,
                                        kernels=kernels)
        return logits_B1V[:, 0], dict(ms, cache=aux["cache"])

    return decode_loop(step_fn, st, n_target, knobs, is_stop_V, spec)


def _window_step(params, config, kernels, P: int, slide_every: int) -> Callable:
    """The decode step past the context: cache slot ``j`` holds token-buffer slot ``ws + j``;
    row ``b`` starts at ``max(pad_b, ws)`` (its positions count from there)."""
    C = config.max_len
    keep = C - slide_every          # tokens re-prefilled when the window slides

    def slide(hist_BH, pad_B, end, cache):
        ws = end - keep
        if keep == 0:                   # a context of one token: nothing to re-prefill
            return ws, cache
        slots_W = ws + jnp.arange(keep)
        positions_BW = jnp.maximum(slots_W[None, :] - jnp.maximum(pad_B, ws)[:, None], 0)
        key_mask_BC = (ws + jnp.arange(C))[None, :] >= pad_B[:, None]
        window_BW = lax.dynamic_slice_in_dim(hist_BH, ws, keep, axis=1)
        _, aux = stack.decoder_hidden(params, window_BW, config, positions_BT=positions_BW,
                                      key_mask_BS=key_mask_BC, cache=cache, cache_index=0, kernels=kernels)
        return ws, aux["cache"]

    def step_fn(ms, token_B, step):
        pad_B = ms["pad_B"]
        end = P + step - 1                                  # the buffer slot of token_B
        hist_BH = ms["hist_BH"].at[:, end].set(token_B)
        ws, cache = lax.cond(end - ms["ws"] == C,            # cache full: slide the window
                             lambda: slide(hist_BH, pad_B, end, ms["cache"]),
                             lambda: (ms["ws"], ms["cache"]))
        positions_B1 = (end - jnp.maximum(pad_B, ws))[:, None]
        key_mask_BC = (ws + jnp.arange(C))[None, :] >= pad_B[:, None]
        logits_B1V, aux = stack.decoder(params, token_B[:, None], config, positions_BT=positions_B1,
                                        key_mask_BS=key_mask_BC, cache=cache, cache_index=end - ws,
                                        kernels=kernels)
        return logits_B1V[:, 0], dict(ms, cache=aux["cache"], hist_BH=hist_BH, ws=ws)

    return step_fn


# ----------------------------------------------------------------------------- public API
def _parts(model):
    """``(params, config)`` of a GPT, a ``(params, config)`` pair or a :class:`Generator`;
    :class:`GenerationError` for an encoder (it predicts no next token)."""
    if isinstance(model, tuple):
        params, config = model
    elif isinstance(model, Generator):
        params, config = model.params, model.config
    else:
        params, config = model.params(), model.config
    if not config.causal:
        raise GenerationError("model.causal=false: an encoder predicts masked tokens, not the next one, so it "
                              "cannot generate or score text; fill masks instead (jaxformer fill, "
                              "jaxformer.infer.fill.fill_masks)")
    return params, config


@jax.jit
def _unstack(blocks):
    L = jax.tree.leaves(blocks)[0].shape[0]
    return [jax.tree.map(lambda a: a[i], blocks) for i in range(L)]


def unstack_layers(params: dict) -> dict:
    """``params`` with ``"blocks"`` as a list of per-layer trees (no ``[L]`` axis): the layout
    the decode loop runs on (slicing a layer out of stacked weights inside the loop would
    copy every weight matrix on every step). A copy of the blocks' weights."""
    if isinstance(params["blocks"], (list, tuple)):
        return params
    return dict(params, blocks=_unstack(params["blocks"]))


_DECODE_STATIC = dict(static_argnames=("config", "kernels", "spec", "P", "slide_every"),
                      donate_argnames=("st",))
_DECODE = jax.jit(_decode, **_DECODE_STATIC)   # no compiler options: any platform
_DECODE_CPU = jax.jit(_decode, **_DECODE_STATIC, compiler_options=DECODE_COMPILER_OPTIONS["cpu"])


def _decode_jit(platform: str):
    """The jitted decode loop for ``platform`` (where the parameters live): the one with the
    XLA:CPU option on ``"cpu"`` only, the option-free one on ``cuda``, ``rocm``, ``tpu``, ..."""
    return _DECODE_CPU if platform == "cpu" else _DECODE


class Generator:
    """What repeated generation from one model needs, prepared once and owned here: the
    parameters in the decode loop's per-layer layout, the kernel set and the compiled
    decode loop for the platform the parameters live on.

    ``Generator(model)`` (a :class:`jaxformer.GPT` or a ``(params, config)`` pair);
    ``kernels`` overrides ``model.kernels`` (``textbook`` | ``cpu`` | ``cudnn`` | ``auto``).
    :func:`generate` and :func:`generate_stream` accept a Generator in place of a model,
    so a loop of calls does not re-copy the weights.
    """

    def __init__(self, model, *, kernels: Optional[str] = None):
        params, self.config = _parts(model)
        platform = platform_of(params)
        self.kernels = resolve_kernels(self.config.kernels if kernels is None else kernels, platform)
        self.params = unstack_layers(params)
        self._decode = _decode_jit(platform)

    def prefill(self, tokens_BP, pad_B, key, knobs, is_stop_V, *, spec: Spec, S: int, N: int, H: int = 0):
        return _prefill(self.params, tokens_BP, pad_B, key, knobs, is_stop_V, config=self.config,
                        kernels=self.kernels, spec=spec, S=S, N=N, H=H)

    def decode(self, st, n_target, knobs, is_stop_V, *, spec: Spec, P: int, slide_every: int = 0):
        return self._decode(self.params, st, n_target, knobs, is_stop_V, config=self.config,
                            kernels=self.kernels, spec=spec, P=P, slide_every=slide_every)


def generate_stream(model, prompt_tokens, *, max_new_tokens: int, temperature: float = 1.0,
                    top_k: Optional[int] = None, top_p: Optional[float] = None, key=None,
                    stop_tokens: Sequence[int] = (), return_logprobs: bool = False, top_n: int = 0,
                    repetition_penalty: Optional[float] = None, return_logits: bool = False,
                    chunk_size: Optional[int] = None, slide_every: int = 1,
                    vocab_limit: Optional[int] = None) -> Iterator:
    """Like :func:`generate`, but yields ``(start, tokens_Bc)`` after every ``chunk_size`` new
    tokens (numpy ``[B, c]``, ``-1`` for rows that have stopped) and finally returns the
    :class:`Generation` (``StopIteration.value``). Each chunk is one jitted call running
    the decode loop inside XLA; chunking only adds a host sync every ``chunk_size`` tokens.
    """
    gen = model if isinstance(model, Generator) else Generator(model)
    config = gen.config
    V = config.vocab_size
    spec, knobs, key = _settings(temperature, top_k, top_p, repetition_penalty, return_logprobs,
                                 top_n, return_logits, max_new_tokens, key, V, vocab_limit)
    prompts = S_.check_prompts(prompt_tokens, V)
    C = config.max_len
    if isinstance(slide_every, bool) or not isinstance(slide_every, (int, np.integer)) or slide_every < 1:
        raise GenerationError(f"slide_every={slide_every!r} must be an integer >= 1")
    slide_every = min(int(slide_every), max(C - 1, 1))   # at least one token is kept when C > 1
    slide = max(len(p) for p in prompts) + max_new_tokens > C   # past the context: the window slides
    if slide:
        prompts = [p[-C:] for p in prompts]                      # the model sees the last C tokens
    longest = max(len(p) for p in prompts)
    is_stop_V = S_.stop_mask(stop_tokens, V)
    P, N = bucket_length(longest), bucket_length(max_new_tokens)
    if slide:
        P = min(P, C)
    tokens_BP = np.zeros((len(prompts), P), np.int32)
    for b, p in enumerate(prompts):
        tokens_BP[b, P - len(p):] = p
    pad_B = np.asarray([P - len(p) for p in prompts], np.int32)
    st = gen.prefill(jnp.asarray(tokens_BP), jnp.asarray(pad_B), key, knobs, is_stop_V,
                     spec=spec, S=C if slide else P + N, N=N, H=P + N if slide else 0)
    chunk = max_new_tokens if chunk_size is None else max(1, int(chunk_size))
    # Everything above runs (and raises) on the call; the loop below runs on iteration.
    return _stream(gen, st, knobs, is_stop_V, spec, P, max_new_tokens, chunk, stop_tokens,
                   int(slide_every) if slide else 0)


def _stream(gen, st, knobs, is_stop_V, spec, P, max_new_tokens, chunk, stop_tokens, slide_every):
    done = 0
    while True:
        target = min(done + chunk, max_new_tokens)
        st = gen.decode(st, jnp.int32(target), knobs, is_stop_V, spec=spec, P=P, slide_every=slide_every)
        step = int(st["step"])
        if step > done:
            yield done, np.asarray(st["tokens_BN"][:, done:step])
        done = step
        if done >= max_new_tokens or bool(jnp.all(st["done_B"])):
            break
    return _result(st, max_new_tokens, stop_tokens)


def generate(model, prompt_tokens, *, max_new_tokens: int, temperature: float = 1.0,
             top_k: Optional[int] = None, top_p: Optional[float] = None, key=None,
             stop_tokens: Sequence[int] = (), return_logprobs: bool = False, top_n: int = 0,
             repetition_penalty: Optional[float] = None, return_logits: bool = False,
             slide_every: int = 1, vocab_limit: Optional[int] = None) -> Generation:
    """Generate up to ``max_new_tokens`` tokens after each prompt with a KV cache.

    ``model``: a :class:`jaxformer.GPT` (or a ``(params, config)`` pair).
    ``prompt_tokens``: one prompt (a list of ids or a 1-D array) or a batch (a list of
    lists of different lengths, or a ``[B, T]`` array); prompts are left-padded
    internally, so each row gives what it would give alone.
    Sampling: ``temperature`` (0 = greedy), then ``top_k``, then ``top_p``; an optional
    ``repetition_penalty`` (CTRL, applied first); ``key`` (a ``jax.random.key``) is
    required unless greedy and makes the result reproducible.
    ``stop_tokens``: a row stops after producing one of these (it is included); the
    loop ends early when every row has stopped.
    ``return_logprobs``: the model's log-probability of each chosen token; ``top_n``:
    also the ``top_n`` most likely alternatives at each step; ``return_logits``: the raw
    logits at every step (``[B, N, V]``, for tests and inspection).
    Past the context (``len + max_new_tokens > max_len``) the model sees the last
    ``max_len`` tokens, as nanoGPT's crop does; ``slide_every`` (default 1: exactly the
    crop) trades exactness for speed, see the module docstring.
    ``vocab_limit``: only ids below it are chosen (a model whose vocabulary is padded past its
    tokenizer's, as Qwen's; log-probabilities are then over those ids, logits stay raw).
    Returns a :class:`Generation`. Raises :class:`GenerationError` for bad token ids or
    sampling parameters.
    """
    it = generate_stream(model, prompt_tokens, max_new_tokens=max_new_tokens,
                         temperature=temperature, top_k=top_k, top_p=top_p, key=key,
                         stop_tokens=stop_tokens, return_logprobs=return_logprobs, top_n=top_n,
                         repetition_penalty=repetition_penalty, return_logits=return_logits,
                         slide_every=slide_every, vocab_limit=vocab_limit)
    while True:
        try:
            next(it)
        except StopIteration as stop:
            return stop.value


def sample_text(model, tokenizer, prompt: str, n_tokens: int, *, seed: int = 0,
                temperature: float = 0.8, top_k: Optional[int] = 40, slide_every: int = 1) -> str:
    """``prompt`` followed by up to ``n_tokens`` sampled tokens, as text, however small the
    context (past it the model sees the last ``max_len`` tokens, see :func:`generate`).

    Stops early at the tokenizer's end-of-text tokens (:func:`jaxformer.data.end_ids`,
    included). The prompt is encoded as the model expects (a converted Llama's BOS first); an
    empty prompt starts from :func:`jaxformer.data.start_ids`; neither start token is part
    of the returned text. ``seed`` makes the text reproducible; ``top_k`` larger than the
    vocabulary (or None) keeps every token.
    """
    _, cfg = _parts(model)
    encoded = tokenizer.encode(prompt) if prompt else []
    ids = encoded or start_ids(tokenizer)
    bos = getattr(tokenizer, "bos_id", None)
    lead = 1 if (not encoded or (bos is not None and ids[0] == bos)) else 0
    stops = end_ids(tokenizer)
    top_k = None if top_k is None else min(top_k, cfg.vocab_size)
    g = generate(model, ids, max_new_tokens=n_tokens, temperature=temperature, top_k=top_k,
                 key=jax.random.key(seed), stop_tokens=stops, slide_every=slide_every,
                 vocab_limit=min(tokenizer.vocab_size, cfg.vocab_size))
    out = list(ids) + list(g.sequences[0])
    return tokenizer.decode(out[lead:])
