"""Forward-mode autodiff through the textbook: ``jax.jvp``, ``jax.jacfwd``, ``jax.linearize``
through ``GPT.__call__`` and ``functional.decoder``, and ``jax.hessian`` of a scalar loss,
each checked against central finite differences in float64. Inference entry points
(``GPT.__call__``, ``capture``, ``attention_maps``, ``score``) support forward mode
whatever ``model.kernels`` says; the kernels then train to the textbook's loss curve."""
import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import randomize
from jaxformer import GPT, ModelConfig, load_config
from jaxformer import functional as F
from jaxformer.interp import activations as inspect
from jaxformer.infer import scoring
from jaxformer.training import steps as training

EPS = 1e-5


def tiny(**kw):
    base = dict(vocab_size=23, d_model=8, n_head=2, n_layer=2, d_ff=16, max_len=8)
    base.update(kw)
    return ModelConfig(**base)


def f64(cfg):
    # The validator admits only training dtypes; the math takes float64 too.
    cfg = dataclasses.replace(cfg)
    object.__setattr__(cfg, "dtype", "float64")
    return cfg


def f64_params(cfg, seed=0):
    p = randomize(GPT.abstract(cfg).params(), seed=seed)
    return jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)), p)


def direction(tree, seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)), tree)


_BATCHED = {}


def central(f, p, d, eps=EPS):
    """``(f(p + eps d) - f(p - eps d)) / 2 eps``: both points in one jitted call (compiled
    once per ``f``: kept, so the columns of one ``f`` reuse it)."""
    if f not in _BATCHED:
        _BATCHED[f] = jax.jit(lambda p, d, eps: jax.vmap(f)(
            jax.tree.map(lambda a, b: jnp.stack([a + eps * b, a - eps * b]), p, d)))
    both = _BATCHED[f](p, d, eps)
    return (np.asarray(both[0]) - np.asarray(both[1])) / (2 * eps)


def jvp_and_linearized(f):
    """``p, d -> (f(p), jvp tangent, linearize(f, p)(d))``, as one compiled program."""
    def both(p, d):
        out, tangent = jax.jvp(f, (p,), (d,))
        _, f_lin = jax.linearize(f, p)
        return out, tangent, f_lin(d)
    return jax.jit(both)


def close(a, b, tol=1e-6):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.max(np.abs(a - b)) <= tol * max(1.0, np.max(np.abs(b))), np.max(np.abs(a - b))


TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 23, (2, 8)))
ARCHS = [{}, {"positions": "rope", "n_kv_head": 1, "norm": "rmsnorm", "activation": "swiglu"},
         {"norm_position": "post", "scan_layers": False, "remat": "dots"}]


@pytest.mark.parametrize("kw", ARCHS)
def test_jvp_and_linearize_through_gpt_call_and_decoder(kw):
    with jax.enable_x64(True):
        cfg = f64(tiny(**kw))
        params = f64_params(cfg)
        d = direction(params, 1)
        graphdef, _ = nnx.split(GPT.from_params(cfg, params))

        def through_module(p):                      # GPT.__call__ on the parameters p
            model = GPT.from_params(cfg, p)
            return model(TOKENS)

        def through_functional(p):
            return F.decoder(p, TOKENS, cfg)[0]

        fd = central(through_functional, params, d)
        for f in (through_module, through_functional):
            out, tangent, lin = jvp_and_linearized(f)(params, d)
            assert out.dtype == jnp.float64
            close(tangent, fd)
            close(lin, fd)
        del graphdef


def test_jacfwd_of_logits_matches_finite_differences():
    with jax.enable_x64(True):
        cfg = f64(tiny())
        params = f64_params(cfg, seed=3)

        def last_logits(scale):                      # [V] as a function of ln_f's scale [D]
            p = dict(params, ln_f=dict(params["ln_f"], scale=scale))
            return F.decoder(p, TOKENS, cfg)[0][0, -1]

        s0 = params["ln_f"]["scale"]
        jac = jax.jit(jax.jacfwd(last_logits))(s0)   # [V, D]
        assert jac.shape == (cfg.vocab_size, cfg.d_model)
        for i in range(cfg.d_model):
            e = jnp.asarray(np.eye(cfg.d_model)[i])
            close(np.asarray(jac)[:, i], central(last_logits, s0, e))
        close(jac, jax.jit(jax.jacrev(last_logits))(s0), 1e-12)
        # and through the module's __call__, jacfwd w.r.t. the whole parameter tree runs
        model_logits = lambda p: GPT.from_params(cfg, p)(TOKENS)[0, -1, :3]  # noqa: E731
        jt = jax.jit(jax.jacfwd(model_logits))(params)
        assert jt["tok_emb"].shape == (3, cfg.vocab_size, cfg.d_model)


def test_hessian_of_loss_matches_finite_differences_of_the_gradient():
    with jax.enable_x64(True):
        cfg = f64(tiny(n_layer=1))
        params = f64_params(cfg, seed=5)
        batch = jnp.asarray(np.random.default_rng(2).integers(0, 23, (2, 9)))

        def loss_of(scale):                          # block 0's first norm scale [1, D]:
            blocks = dict(params["blocks"], ln1=dict(params["blocks"]["ln1"], scale=scale))
            return F.next_token_loss(dict(params, blocks=blocks), batch, cfg)   # through the whole block

        s0 = params["blocks"]["ln1"]["scale"]
        H = jax.jit(jax.hessian(loss_of))(s0)        # [1, D, 1, D]
        assert H.shape == s0.shape * 2
        Hm = np.asarray(H).reshape(s0.size, s0.size)
        close(Hm, Hm.T, 1e-10)                       # symmetric
        grad = jax.grad(loss_of)
        eye = np.eye(s0.size).reshape(s0.size, *s0.shape)
        for i in range(s0.size):                     # every column == central difference of the gradient
            close(Hm[:, i], central(grad, s0, jnp.asarray(eye[i])).reshape(-1))
        assert np.abs(Hm).max() > 1e-3               # not trivially zero


@pytest.mark.parametrize("kernels", ["cpu", "auto", "textbook"])
def test_inference_entry_points_support_forward_mode_in_every_kernels_mode(kernels):
    """``GPT.__call__``, ``capture``, ``attention_maps`` and ``score`` use the textbook, so a
    jvp runs (and agrees with finite differences) even when training uses custom-VJP kernels."""
    with jax.enable_x64(True):
        cfg = f64(tiny(kernels=kernels))
        params = f64_params(cfg, seed=7)
        d = direction(params, 8)
        fns = {
            "call": lambda p: GPT.from_params(cfg, p)(TOKENS),
            "capture": lambda p: inspect.capture_fn(p, TOKENS, cfg)["resid"],
            "attention_maps": lambda p: inspect.attention_maps_fn(p, TOKENS, cfg),
            "score": lambda p: scoring._score(p, TOKENS, config=cfg),
        }
        for name, f in fns.items():
            _, tangent = jax.jit(lambda p, d: jax.jvp(f, (p,), (d,)))(params, d)
            close(tangent, central(f, params, d))


@pytest.mark.slow
def test_every_kernels_mode_trains_the_toy_config_to_the_same_loss_curve():
    """``model.kernels=textbook``, ``cpu`` and ``auto``: the same 50-step loss curve of the
    toy config as shipped (float32, batch 16, its pydoc corpus, byte tokens) to 1e-4, so the
    kernels are the textbook's math. Measured 1e-6 to 4e-6 apart over train seeds 0-2. (On
    other text float32 rounding can grow chaotically once the learning rate peaks: 3e-4 on
    this README's bytes, where gradients at step 0 agree to 1e-7.)"""
    from jaxformer.data import ByteTokenizer, load_corpus

    toy = pathlib.Path(__file__).resolve().parents[1] / "configs" / "toy.yaml"
    curves = {}
    for k in ("textbook", "cpu", "auto"):
        cfg = load_config(toy, [f"model.kernels={k}", "train.max_steps=50"])
        if not curves:
            ids = np.asarray(ByteTokenizer().encode(load_corpus(cfg.data.path)), np.int32)
        curves[k] = training.loss_curve(cfg, ids, 50)
    assert curves["textbook"][-1] < curves["textbook"][0] - 1.0   # it learns
    for k in ("cpu", "auto"):
        np.testing.assert_allclose(curves[k], curves["textbook"], atol=1e-4, rtol=0)
