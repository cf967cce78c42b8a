"""Samplers as pure functions of (logits, key): their supports and their distributions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer import sampling as S
from jaxformer.errors import GenerationError

LOGITS = np.array([[2.0, 1.0, 0.5, -1.0, 0.0, 1.5, -0.3, 0.9],
                   [0.1, 0.2, 3.0, 0.0, -2.0, 0.4, 1.1, 0.3]], np.float32)
N_DRAWS = 20000


def softmax64(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


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


def test_greedy_is_argmax():
    np.testing.assert_array_equal(S.greedy(jnp.asarray(LOGITS)), LOGITS.argmax(-1))


def test_temperature_frequencies_match_softmax():
    for T in (1.0, 0.7, 2.0):
        out = draws(S.make_sampler(temperature=T))
        assert_frequencies(out, softmax64(LOGITS / T))


def test_temperature_zero_and_tiny_are_greedy():
    assert S.make_sampler(temperature=0) is S.greedy
    out = draws(S.make_sampler(temperature=1e-4), n=500)
    assert (out == LOGITS.argmax(-1)).all()


def test_top_k_support_and_distribution():
    for k in (1, 2, 3, 5):
        out = draws(S.make_sampler(top_k=k))
        top = np.argsort(-LOGITS, axis=-1)[:, :k]
        for b in range(LOGITS.shape[0]):
            assert set(np.unique(out[:, b])) <= set(top[b].tolist())
        probs = np.stack([np.where(np.isin(np.arange(8), top[b]), softmax64(LOGITS[b]), 0)
                          for b in range(2)])
        assert_frequencies(out, probs / probs.sum(-1, keepdims=True))


def test_top_k_never_outside_k_best_with_ties():
    logits = np.array([[1.0, 1.0, 1.0, 0.0, 1.0]], np.float32)
    out = draws(S.make_sampler(top_k=2), logits=logits, n=2000)
    assert len(np.unique(out)) <= 2 and 3 not in out


def test_top_k_larger_than_vocab_is_identity():
    x = jnp.asarray(LOGITS)
    np.testing.assert_array_equal(S.top_k_filter(x, 100), x)
    np.testing.assert_array_equal(S.top_k_filter(x, 8), x)
    k = jax.random.key(3)
    np.testing.assert_array_equal(S.sample(x, k, top_k=1000), S.sample(x, k))


def test_top_p_keeps_the_nucleus():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (16, 50)).astype(np.float32)
    for p in (0.05, 0.3, 0.5, 0.9, 0.99):
        kept = np.isfinite(np.asarray(S.top_p_filter(jnp.asarray(logits), p)))
        for b in range(16):
            np.testing.assert_array_equal(kept[b], nucleus64(logits[b], p))
    out = draws(S.make_sampler(top_p=0.8))
    probs = np.stack([np.where(nucleus64(LOGITS[b], 0.8), softmax64(LOGITS[b]), 0) for b in range(2)])
    assert_frequencies(out, probs / probs.sum(-1, keepdims=True))


def test_top_p_limits():
    x = jnp.asarray(LOGITS)
    # p -> 0 keeps the single most likely token
    kept = np.isfinite(np.asarray(S.top_p_filter(x, 1e-9)))
    assert (kept.sum(-1) == 1).all() and kept[np.arange(2), LOGITS.argmax(-1)].all()
    assert (draws(S.make_sampler(top_p=1e-6), n=300) == LOGITS.argmax(-1)).all()
    # p = 1 keeps everything
    np.testing.assert_array_equal(S.top_p_filter(x, 1.0), x)


def test_combined_order_temperature_then_top_k_then_top_p():
    T, k, p = 0.5, 4, 0.7
    out = draws(S.make_sampler(temperature=T, top_k=k, top_p=p))
    probs = []
    for b in range(2):
        scaled = LOGITS[b] / T
        top = np.argsort(-scaled)[:k]
        masked = np.where(np.isin(np.arange(8), top), scaled, -np.inf)
        keep = nucleus64(masked, p)
        q = np.where(keep, softmax64(masked), 0)
        probs.append(q / q.sum())
    assert_frequencies(out, np.stack(probs))


def test_fixed_key_reproducible_and_keys_differ():
    x = jnp.asarray(np.random.default_rng(1).normal(0, 1, (4, 100)).astype(np.float32))
    f = S.make_sampler(temperature=1.0, top_k=50, top_p=0.95)
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
