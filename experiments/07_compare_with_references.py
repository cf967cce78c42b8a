# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lab 7: the library against reference implementations
#
# Writing attention from first principles is only useful if it computes the same thing as
# the implementations everyone else uses. This lab loads the same weights into
# `flax.nnx.MultiHeadAttention`, PyTorch's `nn.MultiheadAttention` (when torch is installed)
# and Hugging Face GPT-2 (when transformers is installed: a small random GPT-2 saved to a
# temporary folder and loaded with `jaxformer.load_hf`; nothing is downloaded),
# and prints the largest difference from each.
#
# - Script: `python experiments/07_compare_with_references.py [--out DIR] [--small]`
# - Notebook: `jupytext --to ipynb experiments/07_compare_with_references.py`, then open the
#   notebook in Jupyter from `experiments/`. Arguments go in `JAXFORMER_EXPERIMENT_ARGS`.

# %%
import importlib.util
import tempfile

import numpy as np

from lab_common import Report, parse, torch_gpt

args = parse("07_compare_with_references", "Lab 7: the library against Flax, PyTorch and Hugging Face GPT-2.")

import jax.numpy as jnp  # noqa: E402  (after parse: --help answers without importing JAX)
from flax import nnx  # noqa: E402

from jaxformer import attention_maps, load_hf  # noqa: E402
from jaxformer import functional as F  # noqa: E402
from jaxformer.model.modules import MultiHeadAttention  # noqa: E402
from jaxformer.viz import plots  # noqa: E402

report = Report(args.out)

# %% [markdown]
# ## 1. Our attention, with random weights
#
# One multi-head attention layer with random weights (scaled up to std 0.3 so that the
# weights are not nearly uniform and a mistake would show) on a random batch, with and
# without a causal mask.

# %%
D, H, T, B = (16, 4, 7, 2) if args.small else (64, 8, 32, 4)
rng = np.random.default_rng(0)
ours = MultiHeadAttention(D, H, rngs=nnx.Rngs(0))
p = {k: jnp.asarray(rng.normal(0, 0.3, v.shape), jnp.float32) for k, v in ours.params().items()}
ours.load_params(p)
x = jnp.asarray(rng.normal(size=(B, T, D)), jnp.float32)
mask = F.causal_mask(T)[None, None]
out, w = ours(x, mask=mask)
results = {}

# %% [markdown]
# ## 2. Flax's own attention with the same weights
#
# Flax names the projections `query`, `key`, `value` and `out` and stores them with the same
# `[D, H, K]` layout as ours, so the weights copy over directly. We compare the outputs, and
# the attention weights against `dot_product_attention_weights`.

# %%
theirs = nnx.MultiHeadAttention(num_heads=H, in_features=D, qkv_features=D, out_features=D,
                                decode=False, rngs=nnx.Rngs(1))
state = nnx.state(theirs, nnx.Param)
nnx.replace_by_pure_dict(state, {n: {"kernel": p["w" + n[0]], "bias": p["b" + n[0]]}
                                 for n in ("query", "key", "value", "out")})
nnx.update(theirs, state)
for masked in (False, True):
    m = mask if masked else None
    a = np.asarray(ours(x, mask=m)[0])
    b = np.asarray(theirs(x, mask=m, deterministic=True))
    results[f"flax nnx.MultiHeadAttention output ({'causal' if masked else 'no mask'})"] = np.abs(a - b).max()
from flax.nnx.nn.attention import dot_product_attention_weights  # noqa: E402

flax_w = np.asarray(dot_product_attention_weights(
    *(jnp.einsum("btd,dhk->bthk", x, p[n]) + p["b" + n[1]] for n in ("wq", "wk")), mask=mask, deterministic=True))
results["flax nnx.dot_product_attention_weights (causal)"] = np.abs(np.asarray(w) - flax_w).max()

# %% [markdown]
# ## 3. PyTorch
#
# `torch.nn.MultiheadAttention` keeps the three input projections stacked in one
# `in_proj_weight [3D, D]` and multiplies by the transpose (`x W^T`), and its boolean mask
# means the opposite of ours (True = masked out). It runs in float64 here, so the difference
# measures our float32 rounding.

# %%
if importlib.util.find_spec("torch") is None:
    report("torch is not installed: skipping nn.MultiheadAttention (pip install '.[hf]')")
else:
    import torch

    mha = torch_gpt().torch_mha_from_params(p, D, H)   # tests/jaxformer_testing/torch_gpt.py
    xt = torch.from_numpy(np.asarray(x, np.float64))
    causal = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)          # torch: True = masked out
    ref, ref_w = mha(xt, xt, xt, attn_mask=causal, average_attn_weights=False)
    results["torch nn.MultiheadAttention output (causal, float64)"] = np.abs(
        np.asarray(out) - ref.detach().numpy()).max()
    results["torch nn.MultiheadAttention weights (causal, float64)"] = np.abs(
        np.asarray(w) - ref_w.detach().numpy()).max()

# %% [markdown]
# ## 4. Hugging Face GPT-2, through `jaxformer.interop`
#
# A whole model this time: a random 2-layer GPT-2 is saved the way Hugging Face saves
# models, loaded with `load_hf`, and run on the same random tokens by both libraries.
# We compare the logits and every layer's attention maps (`jaxformer.attention_maps` against
# `output_attentions=True`).

# %%
if importlib.util.find_spec("transformers") is None:
    report("transformers not available: skipping the Hugging Face GPT-2 comparison")
else:
    import torch
    import transformers

    hf_cfg = transformers.GPT2Config(vocab_size=97, n_positions=64, n_embd=D, n_layer=2, n_head=H,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     bos_token_id=0, eos_token_id=0,
                                     attn_implementation="eager")   # eager: returns attentions
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(folder)
        model, _, _ = load_hf(folder)
    ids = rng.integers(0, 97, (B, T))
    with torch.no_grad():
        o = hf(torch.from_numpy(ids), output_attentions=True, output_hidden_states=True)
    logits = np.asarray(model(jnp.asarray(ids)))
    results["Hugging Face GPT-2 logits (random 2-layer model)"] = np.abs(logits - o.logits.numpy()).max()
    if not o.attentions:
        report("this transformers version returned no attention weights: comparing logits only")
    else:
        hf_w = np.stack([a.numpy() for a in o.attentions], 1)          # [B, L, H, T, T]
        w_maps = np.asarray(attention_maps(model, ids))
        results["Hugging Face GPT-2 attentions vs jaxformer.attention_maps"] = np.abs(w_maps - hf_w).max()

# %% [markdown]
# ## 5. The differences
#
# What to look for: every bar below 1e-4 (the bar chart has a log scale). The same float32
# arithmetic done in another order gives differences between about 1e-8 and 1e-5 (larger for
# outputs, which are sums over the width, than for weights); a real mistake (a transposed
# matrix, a missing scale, a mask off by one) gives differences near 1.

# %%
report("max |difference| against each reference:")
for k, v in results.items():
    report(f"  {k:60s} {v:.2e}")
worst = max(results.values())
report(f"largest difference {worst:.2e} (float32 arithmetic; all below 1e-4)")
assert worst < 1e-4, f"a reference disagrees by {worst}"
path = args.out / "differences.png"
plots.bar_chart({k: max(float(v), 1e-12) for k, v in results.items()}, logx=True,
                xlabel="max |difference| (log scale)",
                title="the library against reference implementations", path=path)
report.figure(path)

# %%
report.save()
result = {k: float(v) for k, v in results.items()}
result
