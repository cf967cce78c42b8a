"""Samplers as pure functions of (logits, key): their supports and their distributions.

The statistical tests draw through both entry points of the one sampling pipeline:
``sampling.make_sampler`` and the decode loop's own per-token step (``decode_loop._choose``, what
``generate`` and ``decode`` run for every new token)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer.infer import decode_loop as L
from jaxformer.infer import generation as G
from jaxformer.infer import sampling as S
from jaxformer.errors import GenerationError

LOGITS = np.array([[2.0, 1.0, 0.5, -1.0, 0.0, 1.5, -0.3, 0.9],
                   [0.1, 0.2, 3.0, 0.0, -2.0, 0.4, 1.1, 0.3]], np.float32)
N_DRAWS = 20000


def softmax64(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def generate_sampler(temperature=1.0, top_k=None, top_p=None, repetition_penalty=None, seen_BV=None):
    """``(logits_BV, key) -> tokens_B`` through the token step of :func:`jaxformer.generate`
    (its settings, compiled spec and ``_choose``), as one decode step with no model."""
    def sampler(logits_BV, key):
        B, V = logits_BV.shape
        spec, knobs, _ = L._settings(temperature, top_k, top_p, repetition_penalty, False, 0, False,
                                     1, key, V)
        seen = None if seen_BV is None else jnp.asarray(seen_BV)
        st = L._init_state(None, B, 1, V, key, spec, seen)
        return L._choose(st, logits_BV, knobs, S.stop_mask((), V), spec)["token_B"]
    return sampler


SAMPLERS = pytest.mark.parametrize("make", [S.make_sampler, generate_sampler],
                                   ids=["make_sampler", "generate"])


def draws(sampler, logits=LOGITS, n=N_DRAWS, seed=0):
    """``n`` independent draws per row -> ``[n, B]`` (vmapped over keys)."""
    keys = jax.random.split(jax.random.key(seed), n)
    return np.asarray(jax.jit(jax.vmap(lambda k: sampler(jnp.asarray(logits), k)))(keys))


def assert_frequencies(samples_nB, probs_BV):
    """Empirical frequencies within 5 binomial standard errors of ``probs`` (and exactly 0
    where the probability is 0)."""
    n = samples_nB.shape[0]
    for b, p in enumerate(probs_BV):
        freq = np.bincount(samples_nB[:, b], minlength=len(p)) / n
        tol = 5 * np.sqrt(p * (1 - p) / n) + 1e-12
        assert np.all(np.abs(freq - p) <= tol), (b, freq, p)
        assert np.all(freq[p == 0] == 0)


def nucleus64(logits_V, p):
    """Float64 reference for the nucleus: sorted by probability, keep while the mass
    strictly before a token is < p."""
    probs = softmax64(logits_V)
    order = np.argsort(-probs, kind="stable")
    before = np.cumsum(probs[order]) - probs[order]
    keep = np.zeros(len(probs), bool)
    keep[order[(before < p) | (np.arange(len(probs)) == 0)]] = True
    return keep


#: The filters, each as one compiled program (run op by op, every jnp call compiles alone);
#: ``p`` stays a traced argument, as generation passes it.
top_p_filter = jax.jit(S.top_p_filter)


def filter_logits(logits, seen_BV=None, **settings):
    """``S.filter_logits`` with these (static) settings, compiled as one program."""
    return _jit(S.filter_logits, tuple(sorted(settings.items())))(logits, seen_BV=seen_BV)


def sample(logits, key, seen_BV=None, **settings):
    """``S.sample`` with these (static) settings, compiled as one program."""
    return _jit(S.sample, tuple(sorted(settings.items())))(logits, key, seen_BV=seen_BV)


@functools.lru_cache(maxsize=None)
def _jit(fn, settings):
    return jax.jit(functools.partial(fn, **dict(settings)))


def test_greedy_is_argmax():
    np.testing.assert_array_equal(S.greedy(jnp.asarray(LOGITS)), LOGITS.argmax(-1))


@SAMPLERS
def test_temperature_frequencies_match_softmax(make):
    for T in (1.0, 0.7, 2.0):
        out = draws(make(temperature=T))
        assert_frequencies(out, softmax64(LOGITS / T))


@SAMPLERS
def test_temperature_zero_and_tiny_are_greedy(make):
    assert S.make_sampler(temperature=0) is S.greedy
    for T in (0, 1e-4):
        out = draws(make(temperature=T), n=500)
        assert (out == LOGITS.argmax(-1)).all()


@SAMPLERS
def test_top_k_support_and_distribution(make):
    for k in (1, 2, 3, 5):
        out = draws(make(top_k=k))
        top = np.argsort(-LOGITS, axis=-1)[:, :k]
        for b in range(LOGITS.shape[0]):
            assert set(np.unique(out[:, b])) <= set(top[b].tolist())
        probs = np.stack([np.where(np.isin(np.arange(8), top[b]), softmax64(LOGITS[b]), 0)
                          for b in range(2)])
        assert_frequencies(out, probs / probs.sum(-1, keepdims=True))


@SAMPLERS
def test_top_k_never_outside_k_best_with_ties(make):
    logits = np.array([[1.0, 1.0, 1.0, 0.0, 1.0]], np.float32)
    out = draws(make(top_k=2), logits=logits, n=2000)
    assert len(np.unique(out)) <= 2 and 3 not in out


def test_top_k_larger_than_vocab_is_identity():
    x = jnp.asarray(LOGITS)
    np.testing.assert_array_equal(S.top_k_filter(x, 100), x)
    np.testing.assert_array_equal(S.top_k_filter(x, 8), x)
    k = jax.random.key(3)
    np.testing.assert_array_equal(sample(x, k, top_k=1000), sample(x, k))


def test_top_p_keeps_the_nucleus():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (16, 50)).astype(np.float32)
    for p in (0.05, 0.3, 0.5, 0.9, 0.99):
        kept = np.isfinite(np.asarray(top_p_filter(jnp.asarray(logits), p)))
        for b in range(16):
            np.testing.assert_array_equal(kept[b], nucleus64(logits[b], p))


@SAMPLERS
def test_top_p_distribution(make):
    out = draws(make(top_p=0.8))
    probs = np.stack([np.where(nucleus64(LOGITS[b], 0.8), softmax64(LOGITS[b]), 0) for b in range(2)])
    assert_frequencies(out, probs / probs.sum(-1, keepdims=True))


def test_top_p_limits():
    x = jnp.asarray(LOGITS)
    # p -> 0 keeps the single most likely token
    kept = np.isfinite(np.asarray(top_p_filter(x, 1e-9)))
    assert (kept.sum(-1) == 1).all() and kept[np.arange(2), LOGITS.argmax(-1)].all()
    for make in (S.make_sampler, generate_sampler):
        assert (draws(make(top_p=1e-6), n=300) == LOGITS.argmax(-1)).all()
    # p = 1 keeps everything
    np.testing.assert_array_equal(top_p_filter(x, 1.0), x)


@SAMPLERS
def test_combined_order_temperature_then_top_k_then_top_p(make):
    T, k, p = 0.5, 4, 0.7
    out = draws(make(temperature=T, top_k=k, top_p=p))
    probs = []
    for b in range(2):
        scaled = LOGITS[b] / T
        top = np.argsort(-scaled)[:k]
        masked = np.where(np.isin(np.arange(8), top), scaled, -np.inf)
        keep = nucleus64(masked, p)
        q = np.where(keep, softmax64(masked), 0)
        probs.append(q / q.sum())
    assert_frequencies(out, np.stack(probs))


@SAMPLERS
def test_fixed_key_reproducible_and_keys_differ(make):
    x = jnp.asarray(np.random.default_rng(1).normal(0, 1, (4, 100)).astype(np.float32))
    f = jax.jit(make(temperature=1.0, top_k=50, top_p=0.95))
    a, b = f(x, jax.random.key(7)), f(x, jax.random.key(7))
    np.testing.assert_array_equal(a, b)
    outs = {tuple(np.asarray(f(x, jax.random.key(s))).tolist()) for s in range(10)}
    assert len(outs) > 1


def test_repetition_penalty_known_values():
    logits = jnp.asarray([[2.0, -1.0, 0.5, 3.0]])
    seen = jnp.asarray([[True, True, False, False]])
    out = S.apply_repetition_penalty(logits, seen, 2.0)
    np.testing.assert_allclose(out, [[1.0, -2.0, 0.5, 3.0]])
    np.testing.assert_allclose(S.apply_repetition_penalty(logits, seen, 1.0), logits)


@pytest.mark.parametrize("kwargs, name", [
    ({"temperature": -1.0}, "temperature"), ({"temperature": float("nan")}, "temperature"),
    ({"temperature": "hot"}, "temperature"), ({"top_k": 0}, "top_k"), ({"top_k": 2.5}, "top_k"),
    ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"top_p": float("inf")}, "top_p"),
    ({"repetition_penalty": 0.0}, "repetition_penalty"), ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"top_n": -1}, "top_n")])
def test_bad_parameters_name_the_parameter(kwargs, name):
    with pytest.raises(GenerationError, match=rf"^{name}="):
        S.check_sampling(**kwargs)


def test_filter_logits_order_penalty_then_temperature_then_top_k_then_top_p():
    logits = jnp.asarray([[3.0, 2.5, 0.0, -1.0]])
    seen = jnp.asarray([[True, False, False, True]])
    # the penalty acts first: token 0 drops to 1.5, so top-1 keeps token 1, not token 0
    x = filter_logits(logits, temperature=0.5, top_k=1, seen_BV=seen, penalty=2.0)
    np.testing.assert_array_equal(np.isfinite(x), [[False, True, False, False]])
    np.testing.assert_allclose(x[0, 1], 5.0)
    full = filter_logits(logits, temperature=0.5, seen_BV=seen, penalty=2.0)
    np.testing.assert_allclose(full, [[3.0, 5.0, 0.0, -4.0]])
    np.testing.assert_array_equal(filter_logits(logits, top_p=1.0), logits)   # p = 1 keeps all
    np.testing.assert_array_equal(filter_logits(logits, top_p=0.2), top_p_filter(logits, 0.2))
    # greedy applies the penalty too
    np.testing.assert_array_equal(sample(logits, None, temperature=0, seen_BV=seen, penalty=2.0), [1])


@pytest.mark.parametrize("T", [0.7, 1.3])
def test_repetition_penalty_distribution_through_generate(T):
    seen = np.zeros(LOGITS.shape, bool)
    seen[0, [0, 3, 5]] = True
    seen[1, [2, 4]] = True
    out = draws(generate_sampler(temperature=T, repetition_penalty=1.8, seen_BV=seen))
    pen = np.where(seen, np.where(LOGITS > 0, LOGITS / 1.8, LOGITS * 1.8), LOGITS)
    assert_frequencies(out, softmax64(pen / T))


def test_decode_draws_through_sampling_sample():
    """The first token of ``decode`` (the loop ``generate`` runs, here over a fake model) is
    ``sampling.sample`` of the same logits with the loop's key."""
    logits = jnp.asarray(LOGITS)
    fake_step = lambda ms, token_B, step: (logits, ms)  # noqa: E731  always the same logits
    kw = dict(temperature=0.8, top_k=5, top_p=0.9)
    for seed in range(5):
        key = jax.random.key(seed)
        g = G.decode(fake_step, None, logits, max_new_tokens=1, key=key, **kw)
        np.testing.assert_array_equal(g.tokens[:, 0], sample(logits, jax.random.split(key)[1], **kw))
