"""jaxformer.interp: hook points, run_with_cache / run_with_hooks, patching, ablation and
attribution, checked by identities that hold exactly (or to first order)."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import randomize
from jaxformer import GPT, ModelConfig, attention_maps, interp
from jaxformer import functional as F
from test_architectures import BASE, FAMILIES

CFG = ModelConfig(vocab_size=29, d_model=16, n_head=4, n_layer=2, d_ff=32, max_len=16)
SMALL = dict(BASE, n_layer=2)
ARCHS = {"gpt2": CFG,
         **{name: ModelConfig(**{**SMALL, **FAMILIES[name]}) for name in ("neox", "llama3", "attn_only")},
         "gemma2": ModelConfig(**{**SMALL, **FAMILIES["gemma2"], "layer_types": ("sliding", "full")}),
         "post_sinusoidal": dataclasses.replace(CFG, norm_position="post", positions="sinusoidal", n_kv_head=2),
         "none_relu": dataclasses.replace(CFG, norm_position="none", activation="relu", bias=False)}
_DECODER = jax.jit(F.decoder, static_argnames=("config",))


def DECODER(params, tokens_BT, cfg):
    """The plain forward pass (hooks=None), unscanned like a hooked run, so that tests share
    compiled programs (compiling dominates the time of these tests)."""
    return _DECODER(params, tokens_BT, dataclasses.replace(cfg, scan_layers=False))


def full_cache(name, tokens_BT):
    """run_with_cache of every hook point: one compiled program per model, shared by tests."""
    return interp.run_with_cache(model(name), tokens_BT)


@functools.lru_cache(maxsize=None)
def params_for(name):
    cfg = ARCHS[name]
    return randomize(GPT.abstract(cfg).params(), seed=3, scale=0.4)


def model(name):
    return params_for(name), ARCHS[name]


@pytest.fixture(scope="module", autouse=True)
def _quick_compiles():
    """These tests compile many small programs once each: XLA's cheapest optimisation level
    halves their time (the identities hold the same)."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


def tokens(cfg, B=2, T=7, seed=0):
    return np.random.default_rng(seed).integers(0, cfg.vocab_size, (B, T))


# ----------------------------------------------------------------------------- names and shapes
def test_hook_names_and_shapes_follow_the_architecture():
    for name, cfg in ARCHS.items():
        names, shapes = interp.hook_names(cfg), interp.hook_shapes(cfg, 2, 5)
        assert list(shapes) == list(names), name
        G, H, K = cfg.kv_heads, cfg.n_head, cfg.head_dim
        assert shapes["blocks.1.attn.hook_q"] == shapes["blocks.1.attn.hook_z"] == (2, 5, H, K)
        assert shapes["blocks.1.attn.hook_k"] == shapes["blocks.1.attn.hook_v"] == (2, 5, G, K)
        assert shapes["blocks.0.attn.hook_pattern"] == (2, H, 5, 5)
        if not cfg.attn_only:
            assert shapes["blocks.0.mlp.hook_post"] == (2, 5, cfg.d_ff)
        assert shapes["blocks.1.hook_resid_post"] == (2, 5, cfg.d_model)
    assert "blocks.0.hook_resid_mid" not in interp.hook_names(ARCHS["neox"])          # parallel residual
    assert [n for n in interp.hook_names(ARCHS["attn_only"]) if n.startswith("blocks.0.hook")] == \
        ["blocks.0.hook_resid_pre", "blocks.0.hook_attn_out", "blocks.0.hook_resid_post"]  # no MLP
    assert "blocks.0.attn.hook_rot_k" in interp.hook_names(ARCHS["llama3"])
    assert "blocks.0.mlp.hook_pre_linear" in interp.hook_names(ARCHS["gemma2"])
    post = interp.hook_names(ARCHS["post_sinusoidal"])
    assert "blocks.0.ln1.hook_normalized" not in post and "ln_final.hook_normalized" not in post
    assert "hook_pos_embed" in post and "hook_pos_embed" not in interp.hook_names(ARCHS["llama3"])


def test_cache_holds_exactly_the_requested_names():
    m = model("gpt2")
    t = tokens(CFG)
    logits, cache = interp.run_with_cache(m, t, names=["blocks.1.attn.hook_z"])
    assert list(cache) == ["blocks.1.attn.hook_z"] and cache["blocks.1.attn.hook_z"].shape == (2, 7, 4, 4)
    all_logits, everything = full_cache("gpt2", t)
    assert list(everything) == list(interp.hook_names(CFG))
    np.testing.assert_allclose(np.asarray(logits), np.asarray(all_logits), atol=1e-6)
    np.testing.assert_allclose(np.asarray(cache["blocks.1.attn.hook_z"]),
                               np.asarray(everything["blocks.1.attn.hook_z"]),
                               atol=1e-6)
    assert set(interp.select_names(CFG, "blocks.1.attn")) == {n for n in interp.hook_names(CFG)
                                                              if n.startswith("blocks.1.attn.")}
    assert interp.select_names(CFG, lambda n: n.endswith("hook_resid_pre")) == ("blocks.0.hook_resid_pre",
                                                                               "blocks.1.hook_resid_pre")
    pair = ("hook_embed", "blocks.0.hook_resid_pre")
    assert interp.select_names(CFG, list(pair[::-1])) == pair                 # forward order
    with pytest.raises(interp.HookError, match="did you mean 'blocks.0.attn.hook_z'"):
        interp.run_with_cache(m, t, names=["blocks.0.attn.hook_zz"])
    with pytest.raises(interp.HookError, match="selects no hook point"):
        interp.run_with_cache(m, t, names="blocks.7")
    with pytest.raises(interp.HookError, match=r"returned shape \(2, 7\)"):
        interp.run_with_hooks(m, t, {"hook_embed": lambda x: x[..., 0]})


@pytest.mark.parametrize("name", ["gpt2", "gemma2", "neox", "llama3", "post_sinusoidal", "none_relu", "attn_only"])
def test_hooked_run_is_the_model(name):
    params, cfg = model(name)
    t = tokens(cfg)
    logits, cache = full_cache(name, t)                              # every hook point recorded
    # the plain forward pass (hooks=None) with the layers unrolled as in a hooked run
    np.testing.assert_allclose(np.asarray(logits), np.asarray(DECODER(params, jnp.asarray(t), cfg)[0]),
                               atol=1e-6, rtol=1e-6)
    # the stream passes on unchanged: resid_post of a block is the next block's resid_pre
    np.testing.assert_array_equal(np.asarray(cache["blocks.0.hook_resid_post"]),
                                  np.asarray(cache["blocks.1.hook_resid_pre"]))


def test_hook_pattern_equals_attention_maps():
    for name in ("gpt2", "gemma2"):
        params, cfg = model(name)
        t = tokens(cfg)
        _, cache = full_cache(name, t)
        w = np.asarray(attention_maps((params, cfg), t))                          # [B, L, H, T, T]
        pattern = interp.stack_layers(cache, "attn.hook_pattern", cfg.n_layer)
        np.testing.assert_allclose(np.asarray(pattern), w, atol=1e-5)


# ----------------------------------------------------------------------------- interventions
def test_zeroing_a_heads_z_is_zeroing_its_rows_of_wo():
    for (params, cfg), layer, head, via_hook in ((model("llama3"), 1, 3, False), (model("gpt2"), 0, 1, True)):
        t = tokens(cfg)
        cut = jax.tree.map(lambda a: a, params)
        cut["blocks"]["attn"]["wo"] = params["blocks"]["attn"]["wo"].at[layer, head].set(0.0)
        want = np.asarray(DECODER(cut, jnp.asarray(t), cfg)[0])
        if via_hook:
            kill = lambda z: z.at[:, :, head].set(0.0)                   # noqa: E731
            got = interp.run_with_hooks((params, cfg), t, {f"blocks.{layer}.attn.hook_z": kill})
        else:
            got = interp.ablate_heads((params, cfg), t, [(layer, head)])
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def test_mean_ablation_replaces_the_head_by_its_mean():
    m = model("gpt2")
    t = tokens(CFG)
    _, cache = full_cache("gpt2", t)
    mean = jnp.mean(cache["blocks.1.attn.hook_z"][:, :, 2], axis=(0, 1))
    want = interp.run_with_hooks(m, t, {"blocks.1.attn.hook_z": lambda z: z.at[:, :, 2].set(mean)})
    got = interp.ablate_heads(m, t, [(1, 2)], mode="mean")
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
    with pytest.raises(interp.HookError, match="mode='half'"):
        interp.ablate_heads(m, t, [(1, 2)], mode="half")
    with pytest.raises(interp.HookError, match=r"head \(2, 0\)"):
        interp.ablate_heads(m, t, [(2, 0)])


def _pair(cfg, pos=2):
    clean = tokens(cfg, seed=5)
    corrupted = clean.copy()
    corrupted[:, pos] = (clean[:, pos] + 1) % cfg.vocab_size
    return clean, corrupted


def test_patching_the_clean_stream_restores_the_clean_run():
    m = model("gpt2")
    cfg = m[1]
    clean, corrupted = _pair(cfg)
    clean_logits, cache = full_cache("gpt2", clean)
    clean_stream = cache["blocks.0.hook_resid_pre"]
    patched = interp.run_with_hooks(m, corrupted, {"blocks.0.hook_resid_pre": lambda x: clean_stream})
    np.testing.assert_allclose(np.asarray(patched), np.asarray(clean_logits), atol=1e-5)

    answer = (3, 4)
    metric = lambda logits: interp.logit_difference(logits, *answer)  # noqa: E731
    m_clean = float(metric(clean_logits))
    m_corrupted = float(metric(full_cache("gpt2", corrupted)[0]))
    table = np.asarray(interp.patch_activations(m, clean, corrupted, answer=answer))
    assert table.shape == (cfg.n_layer, clean.shape[1])
    # layer 0: only position 2 differs between the runs, and patching it there is the clean run
    np.testing.assert_allclose(table[0, 2], m_clean, atol=1e-5)
    np.testing.assert_allclose(np.delete(table[0], 2), m_corrupted, atol=1e-5)
    # over heads: one entry checked by hand
    heads = np.asarray(interp.patch_activations(m, clean, corrupted, metric, over="head"))
    assert heads.shape == (cfg.n_layer, cfg.n_head)
    zc = cache["blocks.1.attn.hook_z"]
    one = interp.run_with_hooks(m, corrupted, {"blocks.1.attn.hook_z": lambda z: z.at[:, :, 2].set(zc[:, :, 2])})
    np.testing.assert_allclose(heads[1, 2], float(metric(one)), atol=1e-5)


def test_attribution_patching_is_exact_to_first_order():
    with jax.enable_x64(True):
        cfg = dataclasses.replace(ARCHS["gpt2"])
        object.__setattr__(cfg, "dtype", "float64")
        params = jax.tree.map(lambda a: np.asarray(a, np.float64), params_for("gpt2"))
        clean, corrupted = _pair(cfg)
        # make the two token ids nearly the same vector, so the runs differ a little
        emb = params["tok_emb"].copy()
        noise = np.random.default_rng(0).normal(size=emb.shape[1:])
        for a, b in zip(clean[:, 2], corrupted[:, 2]):
            emb[b] = emb[a] + 1e-4 * noise
        params = dict(params, tok_emb=emb)
        base = None
        for over in ("position", "head"):
            exact = np.asarray(interp.patch_activations((params, cfg), clean, corrupted, answer=(3, 4), over=over))
            approx = np.asarray(interp.attribution_patching((params, cfg), clean, corrupted, answer=(3, 4), over=over))
            # layer 0's stream is the same in both runs but at position 2: patching elsewhere is no patch
            base = exact[0, 0] if base is None else base
            effect = exact - base
            assert np.abs(effect).max() > 1e-6
            np.testing.assert_allclose(approx - base, effect, atol=1e-3 * np.abs(effect).max())


# ----------------------------------------------------------------------------- attribution
@pytest.mark.parametrize("name", ["gpt2", "neox", "gemma2", "none_relu", "attn_only"])
def test_residual_decomposition_sums_to_the_final_stream(name):
    params, cfg = model(name)
    t = tokens(cfg)
    labels, parts = interp.residual_decomposition((params, cfg), t)
    assert parts.shape == (len(labels), 2, 7, cfg.d_model)
    _, cache = full_cache(name, t)
    np.testing.assert_allclose(np.asarray(parts.sum(0)), np.asarray(cache[f"blocks.{cfg.n_layer - 1}.hook_resid_post"]),
                               atol=5e-5, rtol=1e-5)
    assert ("L1.mlp" in labels) == (name != "attn_only")
    if name != "gemma2":
        assert "L1H3" in labels
    else:
        assert "L1.attn" in labels


@pytest.mark.parametrize("name", ["gpt2", "llama3", "none_relu"])
def test_direct_logit_attribution_sums_to_the_logits(name):
    params, cfg = model(name)
    t = tokens(cfg)
    ids = [3, 4, 11]
    labels, attr = interp.direct_logit_attribution((params, cfg), t, ids)
    assert attr.shape == (len(labels), 2, 3)
    logits = np.asarray(DECODER(params, jnp.asarray(t), cfg)[0])[:, -1][:, ids]
    np.testing.assert_allclose(np.asarray(attr.sum(0)), logits, atol=5e-5, rtol=1e-5)
    assert ("ln_final.bias" in labels) == (name == "gpt2")
    with pytest.raises(interp.HookError, match="norm_position='post'"):
        interp.direct_logit_attribution(model("post_sinusoidal"), t, ids)


# ----------------------------------------------------------------------------- transformations
def test_jit_vmap_and_grad_of_run_with_hooks():
    params, cfg = model("gpt2")
    t = jnp.asarray(tokens(cfg))
    halve = {"blocks.0.attn.hook_z": lambda z: 0.5 * z}
    # halving layer 0's z is halving its wo: the same logits, the same gradients
    half = jax.tree.map(lambda a: a, params)
    half["blocks"]["attn"]["wo"] = params["blocks"]["attn"]["wo"].at[0].multiply(0.5)

    def loss(p, hooks, fix_wo=False):
        if fix_wo:
            p = dict(p, blocks=dict(p["blocks"], attn=dict(p["blocks"]["attn"], wo=half["blocks"]["attn"]["wo"])))
        return F.cross_entropy(interp.run_with_hooks((p, cfg), t, hooks)[:, :-1], t[:, 1:])

    np.testing.assert_allclose(np.asarray(interp.run_with_hooks((params, cfg), t, halve)),
                               np.asarray(DECODER(half, t, cfg)[0]), atol=1e-5)
    g_hooked = jax.jit(jax.grad(lambda p: loss(p, halve)))(params)
    g_plain = jax.jit(jax.grad(lambda p: loss(p, {}, fix_wo=True)))(params)
    for key in ("tok_emb", "pos_emb"):
        np.testing.assert_allclose(np.asarray(g_hooked[key]), np.asarray(g_plain[key]), atol=1e-6)
    # vmap over a stack of batches, with a hook closing over a traced per-batch scale
    stacked = jnp.stack([t, t[::-1]])
    scales = jnp.asarray([0.5, 2.0])
    scaled = lambda tt, s: interp.run_with_hooks((params, cfg), tt, {"hook_embed": lambda x: s * x})  # noqa: E731
    out = jax.jit(jax.vmap(scaled))(stacked, scales)
    for i in range(2):
        one = interp.run_with_hooks((params, cfg), stacked[i], {"hook_embed": lambda x: scales[i] * x})
        np.testing.assert_allclose(np.asarray(out[i]), np.asarray(one), atol=1e-5)


def test_a_one_name_cache_is_a_small_fraction_of_the_full_cache():
    cfg = dataclasses.replace(CFG, n_layer=12)
    params = GPT.abstract(cfg).params()
    t = jax.ShapeDtypeStruct((4, 16), jnp.int32)

    def footprint(names):       # XLA's own accounting of the compiled program's buffers
        m = interp.run_with_cache_fn.lower(params, t, cfg, names).compile().memory_analysis()
        return m.output_size_in_bytes + m.temp_size_in_bytes

    one, everything = footprint(("blocks.5.attn.hook_z",)), footprint(interp.select_names(cfg))
    assert one < 0.2 * everything, (one, everything)          # about 12% here


# ----------------------------------------------------------------------------- head detectors
def _reference_scores(w, toks):
    """float64 loops over the definitions in jaxformer.interp.heads."""
    B, L, H, T, _ = w.shape
    out = {}
    for kind in interp.KINDS:
        total, count = np.zeros((L, H)), 0
        for b in range(B):
            tk = list(toks[b])
            for t in range(T):
                if kind == "previous-token":
                    keys = [t - 1] if t >= 1 else []
                elif kind == "first-token":
                    keys = [0] if t >= 1 else []
                elif kind == "duplicate-token":
                    keys = [s for s in range(t) if tk[s] == tk[t]]
                else:
                    keys = [j + 1 for j in range(t) if tk[j] == tk[t]]
                if keys:
                    total += w[b, :, :, t, sorted(set(keys))].sum(0)
                    count += 1
        out[kind] = total / count
    return out


def test_head_detectors_match_the_definitions():
    rng = np.random.default_rng(0)
    B, L, H, T = 3, 2, 3, 12
    toks = rng.integers(0, 5, (B, T))                               # small vocabulary: many repeats
    logits = rng.normal(size=(B, L, H, T, T))
    logits = np.where(np.tril(np.ones((T, T), bool)), logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    got, want = interp.head_scores(w, toks), _reference_scores(w, toks)
    for kind in interp.KINDS:
        np.testing.assert_allclose(got[kind], want[kind], atol=1e-6, err_msg=kind)
    # ideal heads score 1 on their own detector: looking back one token, and on a sequence
    # repeated with period P, at t - P + 1 in the second half
    P = 6
    rep = np.concatenate([rng.permutation(20)[:P]] * 2)[None]
    prev = np.eye(2 * P, k=-1)
    prev[0, 0] = 1.0
    induct = np.eye(2 * P, k=0)
    induct[P:] = np.eye(2 * P, k=-(P - 1))[P:]
    ideal = np.stack([prev, induct])[None, None]                    # [1, 1, 2, T, T]
    s = interp.head_scores(ideal, rep)
    np.testing.assert_allclose(s["previous-token"][0], [1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(s["induction"][0], [0.0, 1.0], atol=1e-6)
    named = interp.name_heads({k: s[k] for k in ("previous-token", "induction")})
    assert [(n[1], n[2]) for n in named] == [(0, "previous-token"), (1, "induction")]
    with pytest.raises(interp.HookError, match="kind='induction': no query"):
        interp.head_scores(ideal[..., :P, :P], rep[:, :P], kinds=["induction"])   # no token repeats
    with pytest.raises(interp.HookError, match="kind='copying'"):
        interp.head_scores(ideal, rep, kinds=["copying"])


def test_detect_heads_scores_the_models_own_patterns():
    params, cfg = model("gpt2")
    half = np.random.default_rng(2).integers(0, cfg.vocab_size, (2, 5))
    probe = np.concatenate([half, half], 1)
    got = interp.detect_heads((params, cfg), probe)
    want = interp.head_scores(np.asarray(attention_maps((params, cfg), probe)), probe)
    for kind in interp.KINDS:
        assert got[kind].shape == (cfg.n_layer, cfg.n_head)
        np.testing.assert_allclose(got[kind], want[kind], atol=1e-6)


def test_interp_figures(tmp_path):
    from jaxformer.viz import plots
    table = np.arange(12.0).reshape(2, 6)
    fig = plots.patching_heatmap(table, labels=list("abcdef"), clean=11.0, corrupted=0.0,
                                 path=tmp_path / "patch.png")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == list("abcdef")
    assert fig.axes[1].get_ylabel() == "fraction of clean logit difference restored"
    np.testing.assert_allclose(ax.images[0].get_array()[1, 5], 1.0)          # clean restored
    fig = plots.logit_attribution(["embed", "L0H0", "L0.mlp"], [0.5, -1.0, 2.0], top=2,
                                  path=tmp_path / "dla.png")
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["L0H0", "L0.mlp"]
    plots.head_detector_scores({"previous-token": np.eye(2), "induction": 1 - np.eye(2)},
                               path=tmp_path / "heads.png")
    assert all((tmp_path / f).stat().st_size > 5000 for f in ("patch.png", "dla.png", "heads.png"))


def test_caches_and_models_render_in_treescope():
    treescope = pytest.importorskip("treescope")
    params, cfg = model("gpt2")
    _, cache = interp.run_with_cache((params, cfg), tokens(cfg), names="blocks.1.attn")
    text = treescope.render_to_text(cache)
    assert "'blocks.1.attn.hook_pattern': <jax.Array float32(2, 4, 7, 7)" in text
    tree = interp.nested(cache)
    assert list(tree["blocks"]["1"]["attn"]) == [n.split(".")[-1] for n in cache]
    assert tree["blocks"]["1"]["attn"]["hook_z"] is cache["blocks.1.attn.hook_z"]
    assert "hook_z" in treescope.render_to_text(tree)
    n = sum(x.size for x in jax.tree.leaves(params))
    assert f"GPT( # Param: {n:,}" in treescope.render_to_text(GPT(cfg, rngs=__import__("flax").nnx.Rngs(0)))
