"""The decode loop over any model given as a step function, the part of generation that knows
nothing of transformers: the sampling settings (:func:`_settings`: which stages are compiled in,
:class:`Spec`, and their traced values, ``knobs``), the loop state, choosing and recording one token
per row (:func:`_choose`, through :func:`jaxformer.infer.sampling.sample`), the ``lax.while_loop``
(:func:`decode_loop`), and the :class:`Generation` it returns. :func:`decode` runs it over a step
function of your own (a fake model in tests); :mod:`jaxformer.infer.generation` runs it over the
model's KV-cache steps.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxformer.errors import GenerationError
from jaxformer.infer import sampling as S_

__all__ = ["Spec", "Generation", "decode_loop", "decode"]


class Spec(NamedTuple):
    """The static (compiled-in) part of the sampling settings."""
    greedy: bool = True
    top_k: Optional[int] = None
    use_top_p: bool = False
    use_penalty: bool = False
    logprobs: bool = False
    top_n: int = 0
    record_logits: bool = False


@dataclasses.dataclass
class Generation:
    """The result of :func:`generate`.

    - ``tokens``: ``[B, max_new_tokens]`` int32 new tokens; ``-1`` after a row's stop token.
    - ``sequences``: the new tokens of each row as a list, through its first stop token.
    - ``stopped``: ``[B]`` bool, whether the row produced a stop token.
    - ``logprobs``: ``[B, N]`` model log-probability of each chosen token (0 where ``-1``).
    - ``top_ids`` / ``top_logprobs``: ``[B, N, top_n]`` the ``top_n`` most likely tokens
      at each step and their log-probabilities.
    - ``logits``: ``[B, N, V]`` the raw logits at each step (``return_logits=True``).
    - ``steps``: how many tokens per row the loop produced (less than ``max_new_tokens``
      when every row stopped early).
    """
    tokens: np.ndarray
    sequences: list
    stopped: np.ndarray
    steps: int = 0
    logprobs: Optional[np.ndarray] = None
    top_ids: Optional[np.ndarray] = None
    top_logprobs: Optional[np.ndarray] = None
    logits: Optional[np.ndarray] = None


# ----------------------------------------------------------------------------- loop pieces
def _init_state(model_state, B: int, N: int, V: int, key, spec: Spec, seen_BV=None) -> dict:
    st = {"model": model_state, "token_B": jnp.zeros((B,), jnp.int32),
          "done_B": jnp.zeros((B,), bool), "key": key, "step": jnp.zeros((), jnp.int32),
          "tokens_BN": jnp.full((B, N), -1, jnp.int32)}
    if spec.logprobs:
        st["logprobs_BN"] = jnp.zeros((B, N), jnp.float32)
    if spec.top_n:
        st["top_ids_BNn"] = jnp.zeros((B, N, spec.top_n), jnp.int32)
        st["top_logprobs_BNn"] = jnp.zeros((B, N, spec.top_n), jnp.float32)
    if spec.record_logits:
        st["logits_BNV"] = jnp.zeros((B, N, V), jnp.float32)
    if spec.use_penalty:
        st["seen_BV"] = jnp.zeros((B, V), bool) if seen_BV is None else seen_BV
    return st


def _choose(st: dict, logits_BV, knobs: dict, is_stop_V, spec: Spec) -> dict:
    """Pick the next token of every row from ``logits_BV`` and record it at ``st["step"]``.

    The token comes from :func:`jaxformer.infer.sampling.sample` (the one sampling pipeline);
    ``spec`` says which of its stages are compiled in, ``knobs`` holds their traced values.
    """
    raw_BV = logits_BV.astype(jnp.float32)
    # Ids at or past vocab_limit (a padded vocabulary's unused rows) are never chosen.
    logits_BV = jnp.where(jnp.arange(raw_BV.shape[-1]) < knobs["vocab_limit"], raw_BV, -jnp.inf)
    key, sub = jax.random.split(st["key"])
    tok_B = S_.sample(logits_BV, sub, temperature=0 if spec.greedy else knobs["temperature"],
                      top_k=spec.top_k, top_p=knobs["top_p"] if spec.use_top_p else None,
                      seen_BV=st["seen_BV"] if spec.use_penalty else None,
                      penalty=knobs["penalty"] if spec.use_penalty else None)
    i, active_B = st["step"], ~st["done_B"]
    new = dict(st, key=key, step=i + 1, token_B=tok_B,
               done_B=st["done_B"] | (active_B & is_stop_V[tok_B]))
    new["tokens_BN"] = st["tokens_BN"].at[:, i].set(jnp.where(active_B, tok_B, -1))
    if spec.logprobs or spec.top_n:
        logp_BV = jax.nn.log_softmax(logits_BV, axis=-1)
    if spec.logprobs:
        lp_B = jnp.take_along_axis(logp_BV, tok_B[:, None], axis=-1)[:, 0]
        new["logprobs_BN"] = st["logprobs_BN"].at[:, i].set(jnp.where(active_B, lp_B, 0.0))
    if spec.top_n:
        top_lp, top_id = lax.top_k(logp_BV, spec.top_n)
        new["top_ids_BNn"] = st["top_ids_BNn"].at[:, i].set(top_id.astype(jnp.int32))
        new["top_logprobs_BNn"] = st["top_logprobs_BNn"].at[:, i].set(top_lp)
    if spec.record_logits:
        new["logits_BNV"] = st["logits_BNV"].at[:, i].set(raw_BV)
    if spec.use_penalty:
        new["seen_BV"] = st["seen_BV"].at[jnp.arange(tok_B.shape[0]), tok_B].set(True)
    return new


def decode_loop(step_fn: Callable, st: dict, n_target, knobs: dict, is_stop_V, spec: Spec) -> dict:
    """Run ``step_fn`` and the sampler in a ``lax.while_loop`` until ``st["step"] == n_target``
    or every row is done.

    ``step_fn(model_state, token_B, step) -> (logits_BV, model_state)`` feeds the last
    chosen token (the ``step``-th new token, 1-based) and returns the next logits.
    """
    def cond(s):
        return (s["step"] < n_target) & ~jnp.all(s["done_B"])

    def body(s):
        logits_BV, ms = step_fn(s["model"], s["token_B"], s["step"])
        return _choose(dict(s, model=ms), logits_BV, knobs, is_stop_V, spec)

    return lax.while_loop(cond, body, st)


def decode(step_fn: Callable, model_state: Any, logits_BV, *, max_new_tokens: int, key=None,
           temperature: float = 1.0, top_k: Optional[int] = None, top_p: Optional[float] = None,
           stop_tokens: Sequence[int] = (), return_logprobs: bool = False, top_n: int = 0,
           repetition_penalty: Optional[float] = None) -> Generation:
    """The generation loop over any model given as a function (e.g. a fake one in tests).

    ``logits_BV`` are the logits of the first new token (after the prompt);
    ``step_fn(model_state, token_B, step) -> (logits_BV, model_state)`` must be traceable. Compiled
    once per ``step_fn``, settings and shapes: calling again with the same function reuses the program.
    """
    B, V = logits_BV.shape
    spec, knobs, key = _settings(temperature, top_k, top_p, repetition_penalty, return_logprobs,
                                 top_n, False, max_new_tokens, key, V)
    st = _run_decode(model_state, jnp.asarray(logits_BV, jnp.float32), key, knobs, S_.stop_mask(stop_tokens, V),
                     step_fn=step_fn, spec=spec, n=max_new_tokens)
    return _result(st, max_new_tokens, stop_tokens)


@functools.partial(jax.jit, static_argnames=("step_fn", "spec", "n"))
def _run_decode(model_state, logits_BV, key, knobs, is_stop_V, *, step_fn: Callable, spec: Spec, n: int) -> dict:
    """:func:`decode`'s first token and loop as one program (``n`` new tokens at most)."""
    B, V = logits_BV.shape
    st = _choose(_init_state(model_state, B, n, V, key, spec), logits_BV, knobs, is_stop_V, spec)
    return decode_loop(step_fn, st, n, knobs, is_stop_V, spec)


# ----------------------------------------------------------------------------- validation
def _settings(temperature, top_k, top_p, repetition_penalty, return_logprobs, top_n,
              return_logits, max_new_tokens, key, V, vocab_limit=None):
    S_.check_sampling(temperature=temperature, top_k=top_k, top_p=top_p,
                      repetition_penalty=repetition_penalty, max_new_tokens=max_new_tokens,
                      top_n=top_n)
    greedy = temperature == 0
    if not greedy and key is None:
        raise GenerationError("key=None: pass key=jax.random.key(seed) to sample with temperature > 0 "
                              "(or temperature=0 for greedy decoding)")
    spec = Spec(greedy=greedy, top_k=None if (greedy or top_k is None or top_k >= V) else top_k,
                use_top_p=(not greedy) and top_p is not None and top_p < 1.0,
                use_penalty=repetition_penalty is not None and repetition_penalty != 1.0,
                logprobs=bool(return_logprobs), top_n=min(int(top_n), V),
                record_logits=bool(return_logits))
    knobs = {"temperature": jnp.float32(temperature if not greedy else 1.0),
             "top_p": jnp.float32(1.0 if top_p is None else top_p),
             "penalty": jnp.float32(1.0 if repetition_penalty is None else repetition_penalty)}
    if vocab_limit is not None and (isinstance(vocab_limit, bool) or not isinstance(vocab_limit, (int, np.integer))
                                    or not 1 <= vocab_limit <= V):
        raise GenerationError(f"vocab_limit={vocab_limit!r} must be an integer in [1, {V}] (the model's vocab_size)")
    knobs["vocab_limit"] = jnp.int32(V if vocab_limit is None else vocab_limit)
    if key is None:
        key = jax.random.key(0)
    return spec, knobs, key


def _result(st: dict, n: int, stop_tokens) -> Generation:
    tokens = np.asarray(st["tokens_BN"])[:, :n]
    stopped = np.asarray(st["done_B"])
    seqs = [[int(t) for t in row if t >= 0] for row in tokens]
    get = lambda k: None if k not in st else np.asarray(st[k])[:, :n]  # noqa: E731
    return Generation(tokens=tokens, sequences=seqs, stopped=stopped, steps=int(st["step"]),
                      logprobs=get("logprobs_BN"),
                      top_ids=get("top_ids_BNn"), top_logprobs=get("top_logprobs_BNn"),
                      logits=get("logits_BNV"))
