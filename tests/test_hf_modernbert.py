"""Hugging Face ``ModernBertForMaskedLM`` as a :class:`jaxformer.Encoder`.

A tiny random ``transformers`` model (hidden 24, 3 heads of 8, 4 layers: 0 and 3 global, 1 and 2
local with ``local_attention=4``, i.e. keys at most 2 away; vocab 101, intermediate 20; every
weight perturbed, norms and the decoder bias included; eager attention, float32) saved with
``save_pretrained``. Checked on 9 tokens (longer than the window): masked-LM logits within 1e-4,
attention maps equal to ``output_attentions`` within 1e-5, a right-padded batch with its
attention mask, export -> ``transformers`` loads it with our logits within 1e-5, errors.
"""
import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import jaxformer  # noqa: E402
from jaxformer_testing.hf_models import perturb  # noqa: E402
from jaxformer import ModelConfig  # noqa: E402
from jaxformer.errors import CheckpointError, ConfigError  # noqa: E402
from jaxformer.interop import load_hf, model_config_from_hf_family, save_hf  # noqa: E402
from jaxformer.model import stack  # noqa: E402
from jaxformer.model.modules import Encoder  # noqa: E402

pytestmark = pytest.mark.hf
transformers.logging.set_verbosity_error()

V, PAD = 101, 0
SHAPES = dict(vocab_size=V, hidden_size=24, num_hidden_layers=4, num_attention_heads=3, intermediate_size=20,
              max_position_embeddings=32, local_attention=4, global_rope_theta=500.0, local_rope_theta=50.0,
              pad_token_id=PAD, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)


def hf_model(**kw):
    torch.manual_seed(0)
    cfg = transformers.ModernBertConfig(attn_implementation="eager", **dict(SHAPES, **kw))
    return perturb(transformers.ModernBertForMaskedLM(cfg).eval(), seed=1)


@pytest.fixture(scope="module", params=["plain", "classifier_bias"])
def saved(request, tmp_path_factory):
    hf = hf_model(classifier_bias=request.param == "classifier_bias")
    folder = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(folder)
    return hf, folder


def tokens(B=2, T=9, seed=0):
    return np.random.default_rng(seed).integers(3, V, (B, T))


def test_logits_attention_maps_and_padding_equal_transformers(saved):
    hf, folder = saved
    model, config, _ = load_hf(folder)
    assert isinstance(model, Encoder) and not config.causal and not config.first_attn_norm
    assert config.layer_types == ("full", "sliding", "sliding", "full") and config.sliding_window == 3
    assert (config.activation, config.rope_theta, config.rope_local_theta) == ("geglu_exact", 500.0, 50.0)
    assert config.mlm_bias == hf.config.classifier_bias
    ids = tokens()
    with torch.no_grad():
        out = hf(torch.from_numpy(ids), output_attentions=True)
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids))), out.logits.numpy(), atol=1e-4, rtol=0)
    maps = np.asarray(jaxformer.attention_maps(model, jnp.asarray(ids)))
    theirs = np.stack([a.numpy() for a in out.attentions], axis=1)
    np.testing.assert_allclose(maps, theirs, atol=1e-5, rtol=0)
    assert (maps[:, 1, :, 0, 3:] == 0).all() and (maps[:, 0, :, 0, 3:] > 0).all()   # local layers: 2 each side
    mask = np.ones_like(ids)
    mask[1, 5:] = 0
    padded = np.where(mask == 1, ids, PAD)
    with torch.no_grad():
        want = hf(torch.from_numpy(padded), attention_mask=torch.from_numpy(mask)).logits.numpy()
    got = np.asarray(model(jnp.asarray(padded), attention_mask=mask))
    np.testing.assert_allclose(got[mask == 1], want[mask == 1], atol=1e-4, rtol=0)
    assert np.abs(got[1, :5] - np.asarray(model(jnp.asarray(ids[1:, :5])))[0]).max() < 1e-4   # padding unseen


def test_the_textbook_and_the_engine_agree_on_modernbert(saved):
    """functional.decoder (per-layer RoPE bases, the two-sided window, no norm before layer 0's
    attention) equals the engine, scanned and unrolled, and transformers."""
    hf, folder = saved
    model, config, _ = load_hf(folder)
    ids = jnp.asarray(tokens(seed=5))
    with torch.no_grad():
        want = hf(torch.from_numpy(np.array(ids))).logits.numpy()
    book, aux = jax.jit(lambda p, t: jaxformer.functional.decoder(p, t, config))(model.params(), ids)
    np.testing.assert_allclose(np.asarray(book), want, atol=1e-4, rtol=0)
    for scan in (True, False):
        engine, _ = jax.jit(lambda p, t, c=dataclasses.replace(config, scan_layers=scan): stack.decoder(p, t, c))(
            model.params(), ids)
        np.testing.assert_allclose(np.asarray(engine), np.asarray(book), atol=1e-5, rtol=0)
    assert (np.asarray(aux["weights"])[1:3, :, :, 0, 3:] == 0).all()


def test_export_is_loaded_by_transformers_with_our_logits(saved, tmp_path):
    hf, folder = saved
    model, config, _ = load_hf(folder)
    out = save_hf(model, tmp_path / "out")
    written = json.loads((out / "config.json").read_text())
    assert written["architectures"] == ["ModernBertForMaskedLM"] and written["local_attention"] == 4
    back = transformers.AutoModelForMaskedLM.from_pretrained(out, attn_implementation="eager").eval()
    ids = tokens(seed=3)
    with torch.no_grad():
        theirs = back(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(theirs, np.asarray(model(jnp.asarray(ids))), atol=1e-5, rtol=0)
    again, config2, _ = load_hf(out)
    assert config2 == config
    for a, b in zip(jax.tree.leaves(model.params()), jax.tree.leaves(again.params())):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("key, value", [("hidden_activation", "silu"), ("mlp_bias", True), ("norm_bias", True),
                                        ("decoder_bias", False), ("rope_scaling", {"rope_type": "linear", "factor": 2.0})])
def test_unsupported_variants_are_one_line_errors(key, value):
    hf = {"architectures": ["ModernBertForMaskedLM"], "vocab_size": V, "hidden_size": 24, "num_attention_heads": 3,
          "num_hidden_layers": 2, "intermediate_size": 20, key: value}
    with pytest.raises(CheckpointError, match=f"config.json {key}=.* is not supported for ModernBertForMaskedLM") as e:
        model_config_from_hf_family(hf)
    assert "\n" not in str(e.value)


def test_new_knobs_are_validated_in_one_line():
    with pytest.raises(ConfigError, match="model.rope_local_theta=0.5 must be a finite number"):
        ModelConfig(positions="rope", rope_local_theta=0.5)
    with pytest.raises(ConfigError, match="model.first_attn_norm=false needs model.norm_position='pre'"):
        ModelConfig(first_attn_norm=False, norm_position="post")
    with pytest.raises(ConfigError, match="model.mlm_activation='swiglu' is not one of"):
        ModelConfig(mlm_activation="swiglu")
    base = ModelConfig(vocab_size=11, d_model=8, n_head=2, n_layer=2, d_ff=12, max_len=8)
    assert base.first_attn_norm and base.mlm_bias and base.rope_local_theta is None and base.mlm_activation is None
