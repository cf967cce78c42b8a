"""The architecture knobs of modern open models (Llama 3, Mistral, Qwen2/3, Gemma 1/2,
GPT-NeoX), each checked in float64 against the independent NumPy reference
(``tests/jaxformer_testing/reference.py``), through the functional core, the NNX modules, the KV cache and
the gradient."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxformer import GPT, ModelConfig
from jaxformer import functional as F
from jaxformer.errors import ConfigError
from jaxformer.model import stack

from jaxformer_testing import reference as R

BASE = dict(vocab_size=37, d_model=24, n_head=4, n_layer=3, d_ff=40, max_len=32, dtype="float32",
            param_dtype="float32", dropout=0.0)

# One config per family, with the knobs that family needs (odd head widths, grouped heads).
FAMILIES = {
    "llama3": dict(norm="rmsnorm", activation="swiglu", positions="rope", bias=False, n_kv_head=2,
                   tie_embeddings=False, rope_theta=500.0, rope_scaling="llama3",
                   rope_scaling_factor=8.0, rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
                   rope_original_max_len=32, head_dim=10),
    "linear_rope": dict(norm="rmsnorm", activation="swiglu", positions="rope", bias=False,
                        rope_scaling="linear", rope_scaling_factor=2.0),
    "mistral": dict(norm="rmsnorm", activation="swiglu", positions="rope", bias=False, n_kv_head=2,
                    sliding_window=5, tie_embeddings=False),
    "qwen2": dict(norm="rmsnorm", activation="swiglu", positions="rope", bias=False, qkv_bias=True,
                  n_kv_head=2),
    "qwen3": dict(norm="rmsnorm", activation="swiglu", positions="rope", bias=False, qk_norm=True,
                  n_kv_head=1, head_dim=8),
    "gemma": dict(norm="rmsnorm", norm_offset=1.0, activation="geglu", positions="rope", bias=False,
                  scale_embeddings=True, n_kv_head=1, head_dim=12),
    "gemma2": dict(norm="rmsnorm", norm_offset=1.0, activation="geglu", positions="rope", bias=False,
                   scale_embeddings=True, n_kv_head=2, head_dim=12, norm_position="sandwich",
                   attn_scale=0.3, attn_softcap=2.0, final_softcap=3.0, sliding_window=4,
                   layer_types=("sliding", "full", "sliding")),
    "neox": dict(norm="layernorm", activation="gelu_exact", positions="rope", bias=True,
                 rope_fraction=0.25, head_dim=8, parallel_residual=True, tie_embeddings=False),
    # TransformerLens's attention-only models (the induction-head experiments): no MLP at all.
    "attn_only": dict(attn_only=True, positions="rope", norm="layernorm", bias=True, n_kv_head=2),
}


def _config(name, **extra):
    cfg = ModelConfig(**{**BASE, **FAMILIES[name], **extra})
    object.__setattr__(cfg, "dtype", "float64")  # the validator admits training dtypes; the math takes float64
    return cfg


def _random_params(config, seed=0):
    """The model's parameter tree with every leaf random (norm scales and biases too, so a
    norm or bias the math ignores would show), in float64."""
    abstract = GPT.abstract(config).params()
    leaves, tree = jax.tree.flatten(abstract)
    rng = np.random.default_rng(seed)
    return jax.tree.unflatten(tree, [rng.normal(0, 0.4, leaf.shape) for leaf in leaves])


def _tokens(config, B=2, T=13, seed=1):
    return np.random.default_rng(seed).integers(0, config.vocab_size, (B, T))


@pytest.fixture(scope="module", autouse=True)
def _float64():
    with jax.enable_x64(True):
        yield


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_decoder_equals_the_float64_reference(family):
    cfg = _config(family)
    params, tokens = _random_params(cfg), _tokens(cfg)
    want = R.decoder(params, tokens, cfg)
    for scan in (True, False):
        c = _config(family, scan_layers=scan)
        got, _ = F.decoder(jax.tree.map(jnp.asarray, params), jnp.asarray(tokens), c)
        # RoPE angles are float32 (as in Hugging Face's models), hence 1e-5 rather than 1e-12.
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5, err_msg=f"scan_layers={scan}")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_module_runs_the_same_math_and_has_the_knobs_parameters(family):
    cfg = _config(family)
    model = GPT(cfg, rngs=nnx.Rngs(0))
    params = model.params()
    attn, blocks = params["blocks"]["attn"], params["blocks"]
    K = cfg.head_dim
    assert attn["wq"].shape == (cfg.n_layer, cfg.d_model, cfg.n_head, K)
    assert attn["wk"].shape == (cfg.n_layer, cfg.d_model, cfg.kv_heads, K)
    assert ("bq" in attn) == cfg.qkv_bias and ("bo" in attn) == cfg.bias
    assert ("q_norm" in attn) == cfg.qk_norm
    if cfg.attn_only:
        assert "mlp" not in blocks and "ln2" not in blocks
    else:
        assert ("w_gate" in blocks["mlp"]) == (cfg.activation in F.GATED)
    assert ("ln_attn_out" in blocks) == (cfg.norm_position == "sandwich")
    # Gemma's norms store scale - 1: a fresh model's norms are the identity scale either way.
    np.testing.assert_allclose(np.asarray(blocks["ln1"]["scale"]) + cfg.norm_offset, 1.0)
    tokens = jnp.asarray(_tokens(cfg))
    want = R.decoder(jax.tree.map(np.asarray, params), np.asarray(tokens), cfg)
    np.testing.assert_allclose(np.asarray(model(tokens)), want, atol=1e-5)


@pytest.mark.parametrize("family", ["mistral", "gemma2", "neox", "qwen3"])
def test_cached_decoding_equals_the_full_forward(family):
    """Prefill 3 tokens, then feed one token at a time through the cache: every step's logits
    equal the uncached forward pass (the sliding window is crossed: T > window)."""
    cfg = _config(family)
    params = jax.tree.map(jnp.asarray, _random_params(cfg))
    tokens = jnp.asarray(_tokens(cfg, B=2, T=12))
    full, _ = F.decoder(params, tokens, cfg)
    step = jax.jit(lambda p, tok, cache, i: stack.decoder(p, tok, cfg, cache=cache, cache_index=i))
    logits, aux = step(params, tokens[:, :3], stack.init_cache(cfg, 2, 16, jnp.float64), 0)
    steps = [logits]
    for t in range(3, 12):
        logits, aux = step(params, tokens[:, t:t + 1], aux["cache"], t)
        steps.append(logits)
    # 1e-6: RoPE's float32 angles round differently in the jitted step than in the eager pass.
    np.testing.assert_allclose(np.concatenate([np.asarray(s) for s in steps], 1), np.asarray(full), atol=1e-6)


def test_sliding_window_mask_is_the_last_w_keys():
    m = np.asarray(F.causal_mask(6, 8, offset=2, window=3))
    for t in range(6):
        assert list(np.flatnonzero(m[t])) == [s for s in range(8) if t + 2 - 3 < s <= t + 2]


def test_sliding_window_changes_only_what_is_out_of_the_window():
    """Logits at positions < window equal those of the same model without a window; later
    ones differ (so the window really limits attention)."""
    cfg = _config("mistral")
    params = jax.tree.map(jnp.asarray, _random_params(cfg))
    tokens = jnp.asarray(_tokens(cfg))
    windowed, _ = F.decoder(params, tokens, cfg)
    full, _ = F.decoder(params, tokens, _config("mistral", sliding_window=None))
    np.testing.assert_allclose(windowed[:, :5], full[:, :5], atol=1e-12)
    assert np.abs(np.asarray(windowed[:, 5:] - full[:, 5:])).max() > 1e-3


def test_partial_rotary_leaves_the_other_dims_alone_and_is_relative():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 5, 2, 8)))
    pos = jnp.arange(5)[None]
    cos, sin = F.rope_frequencies(pos, 2)
    y = F.apply_rope(x, cos, sin)
    np.testing.assert_array_equal(y[..., 2:], x[..., 2:])
    np.testing.assert_allclose(y, R.rope(x, np.asarray(pos), rot=2), atol=1e-7)


def test_llama3_rope_scaling_matches_the_piecewise_definition():
    cfg = _config("llama3")
    got = np.asarray(F.rope_for(cfg, jnp.ones((1, 1), jnp.int32))[1])[0, 0]  # sin(1 * f_i)
    want = [np.sin(R.rope_frequency(i, cfg.rotary_dim, cfg.rope_theta, cfg)) for i in range(cfg.rotary_dim // 2)]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # the three regimes are all exercised by this config
    f = [R.rope_frequency(i, cfg.rotary_dim, cfg.rope_theta) for i in range(cfg.rotary_dim // 2)]
    wavelen = 2 * np.pi / np.asarray(f)
    assert (wavelen < 32 / 4).any() and (wavelen > 32).any() and ((wavelen > 8) & (wavelen < 32)).any()


def test_soft_cap_bounds_and_is_identity_without_a_cap():
    x = jnp.linspace(-100, 100, 11)
    assert float(jnp.max(jnp.abs(F.soft_cap(x, 5.0)))) <= 5.0
    np.testing.assert_allclose(F.soft_cap(jnp.asarray([1.0, -3.0]), 5.0), 5 * np.tanh([0.2, -0.6]))
    np.testing.assert_allclose(F.soft_cap(x, 1e6), x, rtol=1e-6)
    assert F.soft_cap(x, None) is x


@pytest.mark.parametrize("family", ["gemma2", "neox", "qwen3"])
def test_gradients_equal_central_differences(family):
    """The training loss's gradient through the new pieces (soft-caps, sandwich norms, q/k
    norms, parallel residual, partial rotary) equals central differences in float64."""
    cfg = _config(family, n_layer=2, layer_types=("sliding", "full") if family == "gemma2" else None)
    params = jax.tree.map(jnp.asarray, _random_params(cfg))
    tokens = jnp.asarray(_tokens(cfg, T=9))
    loss = jax.jit(lambda p: F.next_token_loss(p, tokens, cfg))
    grads = jax.jit(jax.grad(lambda p: F.next_token_loss(p, tokens, cfg)))(params)  # one program, not two
    rng = np.random.default_rng(3)
    for path in (("blocks", "attn", "wq"), ("blocks", "ln1", "scale"), ("blocks", "mlp", "w_in"), ("tok_emb",)):
        leaf, g = params, grads
        for k in path:
            leaf, g = leaf[k], g[k]
        idx = tuple(int(rng.integers(0, n)) for n in leaf.shape)
        eps = 1e-6

        def shifted(d, path=path, idx=idx):
            def set_(tree, keys):
                if not keys:   # in NumPy (float64): no eager scatter to compile per leaf shape
                    shifted_leaf = np.array(tree)
                    shifted_leaf[idx] += d
                    return shifted_leaf
                return {**tree, keys[0]: set_(tree[keys[0]], keys[1:])}
            return float(loss(set_(params, path)))
        numeric = (shifted(eps) - shifted(-eps)) / (2 * eps)
        np.testing.assert_allclose(float(np.asarray(g)[idx]), numeric, rtol=1e-5, atol=1e-8, err_msg=str(path))


def test_kernels_equal_the_textbook_on_the_new_knobs():
    """The CPU kernel set (fused attention, hand-written head/loss backward) falls back or
    agrees wherever a knob changes the math: loss and gradients equal the textbook's."""
    from jaxformer.model import kernels
    for family in ("gemma2", "neox", "mistral"):
        cfg = _config(family, n_layer=2, layer_types=("sliding", "full") if family == "gemma2" else None)
        params = jax.tree.map(jnp.asarray, _random_params(cfg))
        tokens = jnp.asarray(_tokens(cfg, T=11))
        want = jax.jit(jax.value_and_grad(lambda p: F.next_token_loss(p, tokens, cfg)))(params)
        got = jax.jit(jax.value_and_grad(lambda p: stack.next_token_loss(p, tokens, cfg, kernels=kernels.get("cpu"))))(params)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-10, err_msg=family)
        for a, b in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1])):
            np.testing.assert_allclose(a, b, atol=1e-9, err_msg=family)


@pytest.mark.parametrize("overrides, field", [
    (dict(d_model=30, n_head=4), "model.d_model"),
    (dict(head_dim=0), "model.head_dim"),
    (dict(positions="rope", head_dim=8, rope_fraction=0.1), "rope"),
    (dict(rope_scaling="yarn"), "model.rope_scaling"),
    (dict(rope_scaling="llama3", rope_low_freq_factor=4.0, rope_high_freq_factor=1.0), "model.rope_high_freq_factor"),
    (dict(sliding_window=0), "model.sliding_window"),
    (dict(layer_types=("full", "sliding")), "model.layer_types"),
    (dict(layer_types=("full", "sliding", "full")), "model.sliding_window"),
    (dict(attn_softcap=-1.0), "model.attn_softcap"),
    (dict(parallel_residual=True, norm_position="post"), "model.parallel_residual"),
    (dict(activation="gelu_fast"), "model.activation"),
    (dict(norm_position="sandwhich"), "model.norm_position"),
])
def test_bad_knobs_are_named(overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        ModelConfig(**{**BASE, **overrides})


def test_layer_types_round_trip_through_yaml(tmp_path):
    from jaxformer.config import Config, load_config, save_config
    cfg = Config(model=ModelConfig(**{**BASE, **FAMILIES["gemma2"]}))
    save_config(cfg, tmp_path / "config.yaml")
    assert "- sliding" in (tmp_path / "config.yaml").read_text()
    assert load_config(tmp_path / "config.yaml").model == cfg.model
