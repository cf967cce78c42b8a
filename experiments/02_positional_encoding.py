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
# # Lab 2: positional encoding
#
# Attention by itself has no idea of word order: it compares every query with every key, and
# a shuffled sentence gives shuffled but otherwise identical weights. The sinusoidal
# positional encoding of the original Transformer fixes that by adding a position vector to
# each token. This lab looks at the structure of that table (each pair of dimensions turns at
# its own speed; the similarity of two positions depends only on their distance; a shift is
# a rotation) and at what adding it does to one attention head.
#
# - Script: `python experiments/02_positional_encoding.py [--out DIR] [--small]`
# - Notebook: `jupytext --to ipynb experiments/02_positional_encoding.py`, then open the
#   notebook in Jupyter from `experiments/`. Arguments go in `JAXFORMER_EXPERIMENT_ARGS`.

# %%
import numpy as np

from lab_common import Report, parse

args = parse("02_positional_encoding", "Lab 2: the sinusoidal positional encoding and what it does to attention.")

import jax  # noqa: E402  (after parse: --help answers without importing JAX)
import jax.numpy as jnp  # noqa: E402

from jaxformer import functional as F  # noqa: E402
from jaxformer.viz import attention_figures, plots, representation_figures  # noqa: E402
from jaxformer.interp.activations import token_cosine_similarity  # noqa: E402

report = Report(args.out)

# %% [markdown]
# ## 1. The sinusoidal table
#
# Row `p` of the table is the vector added to the token at position `p`:
# `PE[p, 2i] = sin(p / 10000^(2i/D))` and `PE[p, 2i+1] = cos(p / 10000^(2i/D))`. Each pair of
# dimensions is a clock hand turning at its own speed: the first pair completes a turn every
# 6.3 positions, the last one barely moves over thousands. We check three properties:
# every row has the same length, the dot product of two rows depends only on their offset,
# and moving `k` positions is the same rotation of every pair wherever you start (so a model
# can learn "k tokens back" as one linear map).

# %%
P, D = (32, 16) if args.small else (128, 64)
pe = np.asarray(F.sinusoidal_positions(P, D), np.float64)
report(f"sinusoidal table [{P} positions, {D} dims]: PE[p, 2i] = sin(p / 10000^(2i/D)), "
       f"PE[p, 2i+1] = cos(...)")
periods = 2 * np.pi * 10000 ** (np.arange(0, D, 2) / D)
report(f"  wavelengths of the dimension pairs: {periods[0]:.1f} positions (dims 0,1) ... "
       f"{periods[-1]:.0f} positions (dims {D - 2},{D - 1})")
report(f"  every row has the same norm sqrt(D/2) = {np.sqrt(D / 2):.3f}: "
       f"max deviation {np.abs(np.linalg.norm(pe, axis=1) - np.sqrt(D / 2)).max():.1e}")
dots = pe @ pe.T
rel = max(np.abs(np.diag(dots, k)[:-1] - dots[0, k]).max() for k in range(1, P // 2))
report(f"  PE[p] . PE[p+k] depends only on the offset k: max spread over p = {rel:.1e}")
# A shift by k is a rotation of each (sin, cos) pair by angle k * w_i: PE[p+k] = R_k PE[p].
k = 5
w = 1.0 / 10000 ** (np.arange(0, D, 2) / D)
c, s = np.cos(k * w), np.sin(k * w)
rot = np.empty_like(pe[:-k])
rot[:, 0::2] = pe[:-k, 0::2] * c + pe[:-k, 1::2] * s
rot[:, 1::2] = pe[:-k, 1::2] * c - pe[:-k, 0::2] * s
report(f"  PE[p+{k}] equals a fixed rotation of PE[p]: max error {np.abs(rot - pe[k:]).max():.1e}")

# %% [markdown]
# ## 2. Pictures of the table
#
# What to look for: in the heatmap the left columns (fast pairs) flicker from row to row and
# the right columns change slowly, like the digits of a counter. The curves show a few
# dimensions as functions of the position. In the similarity map every diagonal band has
# one colour: two positions are as similar as their distance says, wherever they are.

# %%
path = args.out / "pe_heatmap.png"
representation_figures.positional_encoding_heatmap(pe, title=f"sinusoidal positional encoding ({P} x {D})", path=path)
report.figure(path)
path = args.out / "pe_curves.png"
representation_figures.positional_curves(pe, dims=[d for d in (0, 1, 6, 14, 30) if d < D], path=path)
report.figure(path)
path = args.out / "pe_similarity.png"
n = min(P, 48)
ticks = [str(i) if i % 8 == 0 else "" for i in range(n)]
plots.matrix_heatmap(token_cosine_similarity(pe[:n]), xlabels=ticks, ylabels=ticks, cmap="RdBu_r",
                     vmin=-1, vmax=1, annotate=False, xlabel="position", ylabel="position",
                     cbar_label="cosine similarity",
                     title="cosine similarity between positions: a band, the same for every offset",
                     path=path)
report.figure(path)

# %% [markdown]
# ## 3. One attention head with and without positions
#
# A random head (no causal mask) on "the cat saw the dog and the bird", first on the token
# embeddings alone, then with the positions added. Without positions the three copies of
# "the" are the same vector, so they ask the same question and get the same row of weights;
# and shuffling the words only shuffles the rows and columns of the weights
# (attention is *permutation-equivariant*). With positions each copy of "the" attends in its
# own way. The head runs through `jax.jit`: compiled once into one program, not op by op.

# %%
SENTENCE = "the cat saw the dog and the bird".split()
rng = np.random.default_rng(0)
Dm = 16
vocab = sorted(set(SENTENCE))
ids = np.array([vocab.index(w) for w in SENTENCE])
emb = rng.normal(0, 1, (len(vocab), Dm))
params = {n: jnp.asarray(rng.normal(0, 0.5, (Dm, 1, Dm)), jnp.float32) for n in ("wq", "wk", "wv")}
params["wo"] = jnp.asarray(np.eye(Dm)[None], jnp.float32)
T = len(SENTENCE)
pos = np.asarray(F.sinusoidal_positions(T, Dm))
attention = jax.jit(F.multi_head_attention)
weights = {}
for name, x in (("tokens only", emb[ids]), ("tokens + sinusoidal positions", emb[ids] + pos)):
    _, wts = attention(params, jnp.asarray(x[None], jnp.float32))
    weights[name] = np.asarray(wts)[0, 0]
the = [i for i, w in enumerate(SENTENCE) if w == "the"]
report(f"attention of one random head over {' '.join(SENTENCE)!r} (no causal mask):")
for name, wts in weights.items():
    spread = np.abs(wts[the[0]] - wts[the[1:]]).max()
    report(f"  {name:30s}: the {len(the)} copies of 'the' attend identically? "
           f"max row difference {spread:.3f}")
report("  without positions attention is permutation-equivariant: the same word gets the same "
       "row wherever it stands, and shuffling the words only shuffles the rows and columns")
perm = rng.permutation(T)
_, wp = attention(params, jnp.asarray(emb[ids][perm][None], jnp.float32))
err = np.abs(np.asarray(wp)[0, 0] - weights["tokens only"][np.ix_(perm, perm)]).max()
report(f"  check: attention(shuffled words) = shuffled attention(words), max error {err:.1e}")

# %% [markdown]
# What to look for in the figure: on the left, the rows of the three "the" are identical;
# on the right they differ.

# %%
path = args.out / "attention_with_without_positions.png"
attention_figures.head_grid(np.stack(list(weights.values())), SENTENCE, head_titles=list(weights),
                title="one attention head: the repeated 'the' rows are identical without positions",
                path=path)
report.figure(path)

# %%
report.save()
result = {"relative_spread": float(rel)}
result
