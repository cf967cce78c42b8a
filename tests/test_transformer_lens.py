"""Parity of jaxformer.interp's hook points with TransformerLens (needs the interp extra).

A tiny random GPT-2 and a tiny random Llama (grouped kv heads, RoPE, RMSNorm, SwiGLU) are
built with ``transformers``, every weight perturbed (norm scales and biases far from 1 / 0),
saved, and loaded twice: into jaxformer with :func:`jaxformer.load_hf`, and into
TransformerLens. TransformerLens 4 removed ``HookedTransformer`` and its weight converters;
its model is ``TransformerBridge``, which wraps the ``transformers`` module itself and keeps
the raw weights unless ``enable_compatibility_mode()`` folds them (not called here, so no
fold_ln / centring: the hook values are comparable). The bridge is booted from the local
folder with the model object and a local tokenizer, so nothing touches the Hub.

Checked: every hook point of ours exists in TransformerLens under the same name and holds
the same values (1e-4), and activation patching (``interp.patch_activations``) gives the
same tables as the same experiment written by hand with TransformerLens's
``run_with_hooks``: the residual stream over (layer, position) and ``hook_z`` over
(layer, head).

One name means something else in TransformerLens 4: its bridge's ``ln*.hook_normalized`` is
the norm's output *before* its weight and bias, ``(x - mean) / scale`` (``x / rms`` for
RMSNorm); ours is what the next sublayer reads, after them, as in TransformerLens 3's
``HookedTransformer`` (``components/layer_norm.py``: ``hook_normalized(x * w + b)``) and
TransformerLens 4's ``ln*.hook_out``. The
two agree exactly for the unit weights of a ``fold_ln`` model. Ours is compared with
``hook_out``, and :func:`test_normalized_is_tl_normalized_times_weight_plus_bias` pins the
relation.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("transformer_lens")

import jax  # noqa: E402
from tokenizers import Tokenizer, models  # noqa: E402
from transformer_lens.model_bridge import TransformerBridge  # noqa: E402

import jaxformer  # noqa: E402
from jaxformer import interp  # noqa: E402

pytestmark = pytest.mark.hf
transformers.logging.set_verbosity_error()

V, B, T = 101, 2, 6
RIGHT, WRONG = 3, 7                      # the metric: logit difference at the last position
ATOL = 1e-4
COMMON = dict(vocab_size=V, bos_token_id=None, eos_token_id=None, pad_token_id=None)
ARCHS = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_layer=2, n_head=4, n_embd=32, n_positions=32)),
    "llama": ("LlamaConfig", "LlamaForCausalLM",
              dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8, hidden_size=32,
                   intermediate_size=48, max_position_embeddings=32,
                   rope_parameters=dict(rope_type="default", rope_theta=100.0))),
}
# Ours -> TransformerLens's name for the same value (see the module docstring).
SAME_AS = {"hook_normalized": "hook_out"}


def tl_name(name: str) -> str:
    head, _, last = name.rpartition(".")
    return f"{head}.{SAME_AS[last]}" if last in SAME_AS else name


@pytest.fixture(scope="module", autouse=True)
def _quick():
    """XLA's cheapest optimisation level (these tests compile a few programs once each), and
    one torch thread: on a busy host torch's thread pool makes each of the ~60 tiny forward
    passes 20x slower."""
    before = jax.config.read("jax_disable_most_optimizations"), torch.get_num_threads()
    jax.config.update("jax_disable_most_optimizations", True)
    torch.set_num_threads(1)
    yield
    jax.config.update("jax_disable_most_optimizations", before[0])
    torch.set_num_threads(before[1])


def local_tokenizer():
    """A word-level tokenizer over the ids: the bridge wants one, and the Hub is off limits."""
    vocab = {f"t{i}": i for i in range(V)}
    return transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")))


@pytest.fixture(scope="module", params=list(ARCHS))
def pair(request, tmp_path_factory):
    """``(name, jaxformer model, its config, TransformerBridge)`` with the same weights."""
    name = request.param
    config_cls, model_cls, kw = ARCHS[name]
    torch.manual_seed(0)
    hf = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**COMMON, **kw)).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():                # norms far from 1, biases far from 0, sharper attention
        for pname, p in hf.named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * (0.3 if "ln" in pname or "norm" in pname else 0.2))
    folder = tmp_path_factory.mktemp(name)
    hf.save_pretrained(folder)          # before the bridge replaces the module's submodules
    loaded = jaxformer.load_hf(folder)
    bridge = TransformerBridge.boot_transformers(str(folder), hf_model=hf, tokenizer=local_tokenizer(),
                                                 device="cpu", dtype=torch.float32)
    return name, loaded.model, loaded.config, bridge


def token_pair(seed=0):
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, V, (B, T)).astype(np.int32)
    corrupted = clean.copy()
    corrupted[:, [1, 3]] = rng.integers(0, V, (B, 2))
    return clean, corrupted


def tl_cache(bridge, tokens):
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(torch.from_numpy(tokens.astype(np.int64)))
    return logits.numpy(), {k: v.detach().numpy() for k, v in cache.items()}


@pytest.fixture(scope="module")
def caches(pair):
    """Both libraries' full run on the same tokens: ``(logits, cache)`` of ours, of theirs."""
    _, model, config, bridge = pair
    tokens = token_pair()[0]
    with jax.default_matmul_precision("highest"):
        ours = interp.run_with_cache(model, tokens)
    return ours, tl_cache(bridge, tokens)


def max_diff(name, ours, theirs):
    """Largest |ours - theirs|; for attention scores over the unmasked entries only (ours
    hold -inf where masked, TransformerLens the dtype's most negative number), after
    checking both mask the same entries."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, (name, ours.shape, theirs.shape)
    if name.endswith("hook_attn_scores"):
        keep = np.isfinite(ours)
        np.testing.assert_array_equal(keep, theirs > -1e30, err_msg=name)
        ours, theirs = ours[keep], theirs[keep]
    return float(np.max(np.abs(ours - theirs)))


def test_every_hook_point_matches_transformer_lens(pair, caches):
    name, _, config, bridge = pair
    ours_names = list(interp.hook_names(config))
    # Our hook table for this architecture, every entry present in TransformerLens too, so an
    # empty or shrinking intersection cannot pass.
    wanted = set(ours_names) | {tl_name(n) for n in ours_names}
    assert wanted <= set(bridge.hook_dict), sorted(wanted - set(bridge.hook_dict))
    must = {"hook_embed", "ln_final.hook_normalized"} | {f"blocks.{l}.{n}" for l in range(config.n_layer) for n in (
        "hook_resid_pre", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k", "attn.hook_v",
        "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z", "hook_attn_out", "hook_resid_mid",
        "ln2.hook_normalized", "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out", "hook_resid_post")}
    must |= {"hook_pos_embed"} if name == "gpt2" else \
        {f"blocks.{l}.{n}" for l in range(config.n_layer) for n in ("attn.hook_rot_q", "attn.hook_rot_k",
                                                                       "mlp.hook_pre_linear")}
    assert must <= set(ours_names), sorted(must - set(ours_names))

    (logits, cache), (tl_logits, theirs) = caches
    diffs = {n: max_diff(n, cache[n], theirs[tl_name(n)]) for n in ours_names}
    diffs["logits"] = max_diff("logits", logits, tl_logits)
    bad = {n: d for n, d in diffs.items() if not d <= ATOL}
    assert not bad, bad


def test_normalized_is_tl_normalized_times_weight_plus_bias(pair, caches):
    """Ours = TransformerLens's hook_normalized * w (+ b): the same point after the affine
    part, which the perturbed weights make visible (they differ by far more than 1e-4)."""
    _, _, config, bridge = pair
    (_, cache), (_, theirs) = caches
    names = [n for n in interp.hook_names(config) if n.endswith("hook_normalized")]
    for n in names:
        norm = bridge.get_submodule(n.rpartition(".")[0]).original_component
        w = norm.weight.detach().numpy()
        b = 0.0 if getattr(norm, "bias", None) is None else norm.bias.detach().numpy()
        assert max_diff(n, cache[n], theirs[n] * w + b) <= ATOL, n
        assert max_diff(n, cache[n], theirs[n]) > 1e-2, n


def tl_patching_table(bridge, clean, corrupted, hook, over, n_layer):
    """Activation patching written out with TransformerLens: one corrupted run per (layer,
    index), the index of ``over`` (axis 1 = position of a [B, T, ...] point, axis 2 = head
    of hook_z) taken from the clean run."""
    clean_t, corrupted_t = (torch.from_numpy(a.astype(np.int64)) for a in (clean, corrupted))
    with torch.no_grad():
        _, clean_cache = bridge.run_with_cache(clean_t)
    axis = 1 if over == "position" else 2
    rows = []
    for layer in range(n_layer):
        name = f"blocks.{layer}.{hook}"
        row = []
        for i in range(clean_cache[name].shape[axis]):
            def patch(x, hook, name=name, i=i):
                x = x.clone()
                index = (slice(None),) * axis + (i,)
                x[index] = clean_cache[name][index]
                return x
            with torch.no_grad():
                logits = bridge.run_with_hooks(corrupted_t, fwd_hooks=[(name, patch)])
            row.append(float((logits[:, -1, RIGHT] - logits[:, -1, WRONG]).mean()))
        rows.append(row)
    return np.array(rows)


@pytest.mark.parametrize("hook,over", [("hook_resid_pre", "position"), ("attn.hook_z", "head")])
def test_patching_table_matches_transformer_lens(pair, hook, over):
    _, model, config, bridge = pair
    clean, corrupted = token_pair(seed=1)
    metric = lambda logits: interp.logit_difference(logits, RIGHT, WRONG)  # noqa: E731
    with jax.default_matmul_precision("highest"):
        ours = np.asarray(interp.patch_activations(model, clean, corrupted, metric, hook=hook, over=over))
    theirs = tl_patching_table(bridge, clean, corrupted, hook, over, config.n_layer)
    assert ours.shape == theirs.shape == (config.n_layer, T if over == "position" else config.n_head)
    assert np.ptp(theirs) > 1e-2           # the patches move the metric: the table is no constant
    np.testing.assert_allclose(ours, theirs, atol=ATOL, rtol=0)
