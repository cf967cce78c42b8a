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
# # Lab 3: one decoder block, then a stack
#
# A decoder block is attention then a feed-forward network, each added back to the
# *residual stream* that carries every token's vector from layer to layer. Where the layer
# normalisation sits changes what that stream looks like: **post-norm** (the original
# Transformer) normalises after each addition, **pre-norm** (GPT-2) normalises only the input
# of each branch and leaves the stream alone, **no norm** does neither. This lab runs one
# block with the three placements on the same weights and input, then a stack of 6 layers,
# and watches how token representations change with depth.
#
# - Script: `python experiments/03_block_and_stack.py [--out DIR] [--small]`
# - Notebook: `jupytext --to ipynb experiments/03_block_and_stack.py`, then open the notebook
#   in Jupyter from `experiments/`. Arguments go in `JAXFORMER_EXPERIMENT_ARGS`.

# %%
import dataclasses

import numpy as np

from lab_common import Report, parse

args = parse("03_block_and_stack", "Lab 3: one decoder block with each norm placement, then a 6-layer stack.")

import jax  # noqa: E402  (after parse: --help answers without importing JAX)
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from jaxformer import GPT, ModelConfig  # noqa: E402
from jaxformer import functional as F  # noqa: E402
from jaxformer.viz import attention_figures, plots, representation_figures  # noqa: E402
from jaxformer.data import CharTokenizer  # noqa: E402
from jaxformer.interp.activations import capture, layer_cosine_similarity, token_cosine_similarity  # noqa: E402
from jaxformer.viz.text import token_labels  # noqa: E402

report = Report(args.out)


def nice(pos: str) -> str:
    """'pre' -> 'pre-norm', 'none' -> 'no norm'."""
    return "no norm" if pos == "none" else f"{pos}-norm"


def mean_offdiag(x_TD) -> float:
    """Mean cosine similarity between two different tokens of one layer."""
    s = token_cosine_similarity(x_TD)
    T = s.shape[0]
    return float((s.sum() - np.trace(s)) / (T * (T - 1)))


# %% [markdown]
# ## 1. One block, three norm placements
#
# The input is random token vectors whose scale grows along the sequence (the last token's
# vector is about 6 times longer than the first one's), so we can see which placement keeps
# that scale and which removes it. The block's weights come from a freshly initialised GPT (larger than
# usual, std 0.2, so the branches visibly change the stream).

# %%
TEXT = "the cat sat on the mat"
tok = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz .,")
ids = tok.encode(TEXT)
labels = token_labels(tok, ids)
T = len(ids)
D, H = (16, 2) if args.small else (64, 4)
base = ModelConfig(vocab_size=tok.vocab_size, d_model=D, n_head=H, n_layer=6, max_len=32,
                   init_std=0.2, activation="gelu")

rng = np.random.default_rng(0)
x = jnp.asarray(rng.normal(0, 1.0, (1, T, D)) * np.linspace(0.5, 3, T)[None, :, None], jnp.float32)
blk = jax.tree.map(lambda a: a[0], GPT(base, rngs=nnx.Rngs(0)).params()["blocks"])
outs, attn = {}, {}
report(f"one block (width {D}, {H} heads) on {T} random token vectors whose scale grows along "
       f"the sequence (norm {float(jnp.linalg.norm(x[0, 0])):.1f} -> {float(jnp.linalg.norm(x[0, -1])):.1f}):")
for pos in ("pre", "post", "none"):
    cfg = dataclasses.replace(base, norm_position=pos)
    p = blk if pos != "none" else {k: v for k, v in blk.items() if k in ("attn", "mlp")}
    y, aux = F.decoder_block(p, x, cfg, mask=F.causal_mask(T))
    outs[pos], attn[pos] = np.asarray(y)[0], np.asarray(aux["weights"])[0, 0]
    n = np.linalg.norm(outs[pos], axis=-1)
    report(f"  {nice(pos):>9s}: output norm per token {n.min():6.2f} .. {n.max():6.2f}, "
           f"mean {outs[pos].mean():+.3f}, std {outs[pos].std():.3f}, "
           f"attention entropy {-(attn[pos] * np.log(attn[pos] + 1e-12)).sum(-1).mean():.3f} nats")
report("  post-norm re-normalises every token (norm ~ sqrt(D) = "
       f"{np.sqrt(D):.1f}); pre-norm and no-norm keep the input's scale in the residual stream")

# %% [markdown]
# What to look for: post-norm and no norm give the *same* attention (both feed the raw,
# growing vectors to attention; post-norm normalises only afterwards), and it is sharp
# (low entropy): the large vectors of the late tokens produce large scores. Pre-norm
# normalises the input of attention first, so its weights are softer. In the norm plot
# post-norm is flat at `sqrt(D)` (layer norm with unit gain gives every token mean 0 and
# standard deviation 1); pre-norm and no norm carry the input's growth along.

# %%
path = args.out / "block_attention.png"
attention_figures.head_grid(np.stack([attn[k] for k in outs]), labels,
                head_titles=[f"{nice(k)}, head 0" for k in outs],
                title="the same block's attention with each norm placement", path=path)
report.figure(path)
path = args.out / "block_output_norms.png"
plots.line_plot({f"{nice(k)}": np.linalg.norm(v, axis=-1) for k, v in outs.items()}
                | {"input": np.linalg.norm(np.asarray(x)[0], axis=-1)},
                xticklabels=labels, xlabel="token", ylabel="L2 norm of the block's output",
                title="one block: output norm per token", path=path)
report.figure(path)

# %% [markdown]
# ## 2. A stack of 6 layers: how representations evolve
#
# The same sentence through a 6-layer model for each placement; `jaxformer.interp.capture` returns
# the residual stream entering every block (`resid [B, L+1, T, D]`). Three numbers per depth:
# the mean norm of a token's vector, its cosine similarity to the embedding it started from
# (how much of the input survives), and the mean cosine similarity between two different
# tokens (whether the tokens stay distinct or collapse onto one direction).

# %%
report(f"a stack of 6 layers (width {D}, GPT-2 initialisation with std {base.init_std}) on {TEXT!r}:")
mean_norms, sims, resids = {}, {}, {}
for pos in ("pre", "post", "none"):
    cfg = dataclasses.replace(base, norm_position=pos)
    model = GPT(cfg, rngs=nnx.Rngs(1))
    acts = capture(model, [ids], with_logit_lens=False)
    resids[pos] = np.asarray(acts["resid"])[0]                   # [L+1, T, D]
    mean_norms[pos] = np.linalg.norm(resids[pos], axis=-1).mean(-1)
    sims[pos] = layer_cosine_similarity(resids[pos])
    tok_sim = np.array([mean_offdiag(r) for r in resids[pos]])
    report(f"  {nice(pos):>9s}: mean token norm by depth " + " ".join(f"{v:6.2f}" for v in mean_norms[pos]))
    report("             cos(embedding, layer l)     " + " ".join(f"{v:6.2f}" for v in sims[pos][0]))
    report("             mean cos between tokens     " + " ".join(f"{v:6.2f}" for v in tok_sim))

# %% [markdown]
# What to look for: in the pre-norm stack each block adds to the stream, so norms grow with
# depth; post-norm holds every layer at the same norm; without any norm the growth compounds
# (each block sees, and amplifies, the previous one's output). The layer-similarity maps show
# how quickly a token's vector drifts from its embedding: a bright band near the diagonal
# means neighbouring layers are alike, a dark first row means little of the input survives.
# The printed "mean cos between tokens" rising with depth is the tokens becoming alike, a
# random deep stack smearing them together (with trained weights, much less so).

# %%
path = args.out / "stack_residual_norms_pre.png"
representation_figures.residual_norms(resids["pre"], labels, title="pre-norm stack: norm of each token's residual stream",
                     path=path)
report.figure(path)
for pos in ("pre", "post", "none"):
    path = args.out / f"stack_layer_similarity_{pos}.png"
    representation_figures.layer_similarity(sims[pos], title=f"{nice(pos)} stack: cosine similarity across depth", path=path)
    report.figure(path)
path = args.out / "stack_norm_by_depth.png"
plots.line_plot({f"{nice(k)}": v for k, v in mean_norms.items()},
                xticklabels=["emb"] + [f"L{i}" for i in range(1, 7)], xlabel="residual stream after block",
                ylabel="mean token norm", title="how the residual stream grows with depth", path=path)
report.figure(path)

# %%
report.save()
result = {"mean_norms": {k: v.tolist() for k, v in mean_norms.items()}}
result
