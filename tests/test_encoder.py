"""Encoders (``model.causal=false``, docs/encoders.md): attention without a mask through the
textbook, the stack and the modules; padding masks; interp identities; the refusals."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import random_model, randomize
from jaxformer_testing import reference as ref
from jaxformer_testing.tolerances import F32_VS_F64
from jaxformer import GPT, ModelConfig, attention_maps, generate, interp, save_hf
from jaxformer import functional as F
from jaxformer.errors import ConfigError, DataError, GenerationError
from jaxformer.infer.scoring import score
from jaxformer.model import stack
from jaxformer.model.modules import Encoder, model_class

CFG = ModelConfig(vocab_size=29, d_model=16, n_head=4, n_layer=2, d_ff=32, max_len=16, causal=False)
DEC = dataclasses.replace(CFG, causal=True)


def encoder(cfg=CFG, seed=0):
    assert not cfg.causal
    return random_model(cfg, seed=seed + 1, scale=0.3)


def tokens(cfg=CFG, B=2, T=7, seed=0):
    return np.random.default_rng(seed).integers(0, cfg.vocab_size - 1, (B, T))


def reference_encoder(params, tokens_BT, cfg):
    """The float64 NumPy model of :mod:`jaxformer_testing.reference` with no mask at all."""
    x = np.asarray(params["tok_emb"], np.float64)[tokens_BT] + np.asarray(params["pos_emb"], np.float64)[
        :tokens_BT.shape[1]]
    positions = np.broadcast_to(np.arange(tokens_BT.shape[1]), tokens_BT.shape)
    for i in range(cfg.n_layer):
        x = ref.block(ref._index(params["blocks"], i), x, cfg, None, positions)
    x = ref.norm(params["ln_f"], x, cfg.norm, cfg.norm_eps, cfg)
    return x @ np.asarray(params["tok_emb"], np.float64).T


# ----------------------------------------------------------------------------- the model
def test_encoder_equals_the_unmasked_float64_reference():
    model = encoder()
    t = tokens()
    want = reference_encoder(jax.tree.map(np.asarray, model.params()), t, CFG)
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(t))), want, **F32_VS_F64)
    with jax.enable_x64(True):   # the textbook in float64 agrees to rounding
        cfg64 = dataclasses.replace(CFG)
        object.__setattr__(cfg64, "dtype", "float64")
        p64 = jax.tree.map(lambda a: jax.device_put(np.asarray(a, np.float64)), model.params())   # cast on host
        got = np.asarray(jax.jit(F.decoder, static_argnums=2)(p64, jnp.asarray(t), cfg64)[0])
        np.testing.assert_allclose(got, want, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("causal", [False, True])
def test_gradient_reaches_later_positions_only_in_an_encoder(causal):
    """d logits[t] / d x[s] for s > t: non-zero for an encoder, exactly zero for a decoder."""
    cfg = dataclasses.replace(CFG, causal=causal)
    params = randomize(model_class(cfg).abstract(cfg).params(), seed=2, scale=0.3)
    t_ = jnp.asarray(tokens(cfg, B=1, T=8))
    x0 = jax.jit(F.embed, static_argnums=2)(params, t_, cfg, jnp.arange(8)[None])

    def out_at(x, t):
        logits, _ = F.decoder(params, t_, cfg, hooks={"hook_embed": lambda _: x})
        return logits[0, t].sum()

    grad = jax.jit(jax.grad(out_at), static_argnums=1)
    for t in (0, 3):
        g = np.abs(np.asarray(grad(x0, t))[0]).sum(-1)   # [T]
        assert g[:t + 1].min() > 0
        if causal:
            assert np.all(g[t + 1:] == 0.0)
        else:
            assert g[t + 1:].min() > 1e-6


def test_attention_maps_of_an_encoder_are_full():
    model = encoder()
    w = np.asarray(attention_maps(model, tokens()))               # [B, L, H, T, T]
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
    assert w[..., np.triu_indices(7, 1)[0], np.triu_indices(7, 1)[1]].min() > 0   # future keys seen
    _, cache = interp.run_with_cache(model, tokens(), "blocks.0.attn.hook_attn_scores")
    assert np.isfinite(np.asarray(cache["blocks.0.attn.hook_attn_scores"])).all()   # nothing masked


def test_padding_keys_get_no_weight_and_padded_batch_equals_each_alone():
    model = encoder()
    rows = [tokens(B=1, T=7, seed=1)[0], tokens(B=1, T=4, seed=2)[0]]
    padded = np.zeros((2, 7), np.int64)
    mask = np.zeros((2, 7), bool)
    for b, r in enumerate(rows):
        padded[b, :len(r)], mask[b, :len(r)] = r, True
    got = np.asarray(model(jnp.asarray(padded), attention_mask=mask))
    for b, r in enumerate(rows):
        alone = np.asarray(model(jnp.asarray(r[None])))[0]
        np.testing.assert_allclose(got[b, :len(r)], alone, atol=2e-6, rtol=1e-5)
    with pytest.raises(DataError, match=r"attention_mask has shape \(2, 6\): it must be the tokens' shape \(2, 7\)"):
        model(jnp.asarray(padded), attention_mask=mask[:, :6])
    _, aux = jax.jit(lambda p, t, m: stack.decoder(p, t, CFG, key_mask_BS=m, capture=True))(
        model.params(), jnp.asarray(padded), jnp.asarray(mask))
    w = np.asarray(aux["weights"])                                 # [L, B, H, T, S]
    assert np.all(w[:, 1, :, :, 4:] == 0.0)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)


def test_class_names_do_not_lie_and_encoders_refuse_to_generate():
    with pytest.raises(ConfigError, match=r"model.causal=False does not fit GPT: build Encoder"):
        GPT(CFG, rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match=r"model.causal=True does not fit Encoder: build GPT"):
        Encoder(DEC, rngs=nnx.Rngs(0))
    assert model_class(CFG) is Encoder and model_class(DEC) is GPT
    model = encoder()
    with pytest.raises(GenerationError, match="jaxformer fill"):
        generate(model, [1, 2, 3], max_new_tokens=2)
    with pytest.raises(GenerationError, match="jaxformer fill"):
        score(model, [1, 2, 3])


def test_an_encoders_sliding_window_reaches_both_sides():
    """An encoder's ``sliding_window`` W (ModernBERT's local layers): query t sees keys with
    ``|s - t| < W``, before and after it, and nothing further."""
    model = Encoder(dataclasses.replace(CFG, sliding_window=3), rngs=nnx.Rngs(0))
    w = np.asarray(attention_maps(model, jnp.asarray([[1, 2, 3, 4, 5, 6, 7, 8]])))[0]   # [L, H, T, T]
    t, s = np.arange(8)[:, None], np.arange(8)[None, :]
    assert (w[..., np.abs(s - t) >= 3] == 0).all() and (w[..., np.abs(s - t) < 3] > 0).all()
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)


def test_an_encoder_is_not_exported_as_a_decoder(tmp_path):
    with pytest.raises(ConfigError, match="model.causal=False cannot be exported"):
        save_hf(encoder(), tmp_path / "hf")


# ----------------------------------------------------------------------------- interp identities
def run_with_hooks_jitted(model, tokens_BT, hooks):
    """``interp.run_with_hooks`` under ``jax.jit`` (it is pure; called eagerly the hooked
    textbook compiles every op on its own)."""
    cfg = model.config
    return jax.jit(lambda p: interp.run_with_hooks((p, cfg), tokens_BT, hooks))(model.params())


def test_zeroing_a_heads_z_is_ablate_heads_is_zeroing_its_rows_of_wo():
    model = encoder()
    params, t = model.params(), tokens()
    cut = jax.tree.map(lambda a: a, params)
    cut["blocks"]["attn"]["wo"] = np.asarray(params["blocks"]["attn"]["wo"]).copy()
    cut["blocks"]["attn"]["wo"][1, 2] = 0.0
    want = np.asarray(jax.jit(F.decoder, static_argnums=2)(cut, jnp.asarray(t), CFG)[0])
    hooked = run_with_hooks_jitted(model, t, {"blocks.1.attn.hook_z": lambda z: z.at[:, :, 2].set(0.0)})
    ablated = interp.ablate_heads(model, t, [(1, 2)])
    np.testing.assert_allclose(np.asarray(hooked), want, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ablated), want, atol=1e-5)


def test_patching_resid_pre_restores_the_clean_run_everywhere():
    model = encoder()
    clean = tokens(seed=5)
    corrupted = clean.copy()
    corrupted[:, 5] = (clean[:, 5] + 1) % (CFG.vocab_size - 1)
    clean_logits, cache = interp.run_with_cache(model, clean, "blocks.0.hook_resid_pre")
    patched = run_with_hooks_jitted(model, corrupted,
                                    {"blocks.0.hook_resid_pre": lambda x: cache["blocks.0.hook_resid_pre"]})
    np.testing.assert_allclose(np.asarray(patched), np.asarray(clean_logits), atol=1e-5)
    table = np.asarray(interp.patch_activations(model, clean, corrupted, answer=(3, 4)))
    # the answer is read at the last position; in an encoder it sees position 5, and only
    # patching position 5 of layer 0 restores the clean run
    m_clean = float(interp.logit_difference(clean_logits, 3, 4))
    np.testing.assert_allclose(table[0, 5], m_clean, atol=1e-5)
    corrupted_logits = run_with_hooks_jitted(model, corrupted, {})
    np.testing.assert_allclose(np.delete(table[0], 5), float(interp.logit_difference(corrupted_logits, 3, 4)),
                               atol=1e-5)
    assert abs(m_clean - float(interp.logit_difference(corrupted_logits, 3, 4))) > 1e-4


def test_direct_logit_attribution_and_decomposition_sum_up():
    model = encoder()
    t = tokens()
    ids = [3, 4, 11]
    labels, attr = interp.direct_logit_attribution(model, t, ids, pos=2)
    logits = np.asarray(model(jnp.asarray(t)))[:, 2][:, ids]
    np.testing.assert_allclose(np.asarray(attr.sum(0)), logits, atol=5e-5, rtol=1e-5)
    labels, parts = interp.residual_decomposition(model, t)
    _, cache = interp.run_with_cache(model, t, "blocks.1.hook_resid_post")
    np.testing.assert_allclose(np.asarray(parts.sum(0)), np.asarray(cache["blocks.1.hook_resid_post"]),
                               atol=5e-5, rtol=1e-5)
