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
# # Lab 1: attention by hand
#
# Single-head attention on the three-word sentence "the cat sleeps", one step at a time in
# float64 NumPy: tokens -> embeddings -> queries, keys and values -> scores -> weights ->
# output. Then the same numbers from the library's functional attention and from its NNX
# module, which must agree with the hand computation.
#
# - Script: `python experiments/01_attention_by_hand.py [--out DIR] [--small]`
# - Notebook: `jupytext --to ipynb experiments/01_attention_by_hand.py`, then open the notebook
#   in Jupyter from `experiments/`. Arguments go in `JAXFORMER_EXPERIMENT_ARGS`.

# %%
import numpy as np

from lab_common import Report, parse

args = parse("01_attention_by_hand", "Lab 1: attention by hand, checked against the library.")

import jax  # noqa: E402  (after parse: --help answers without importing JAX)
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from jaxformer.model.modules import MultiHeadAttention  # noqa: E402
from jaxformer import functional as F  # noqa: E402
from jaxformer.viz import attention_figures, plots  # noqa: E402

report = Report(args.out)

# %% [markdown]
# ## 1. The numbers
#
# Three tokens and a model width of 4, small enough to check on paper (the same numbers as
# the seed material; `tests/test_seed_layer.py` checks them too). Each word has an embedding
# row; a small positional term is added so that the same word at two positions would differ.
# `W_Q`, `W_K` and `W_V` are the three projection matrices of the head.

# %%
WORDS = ["the", "cat", "sleeps"]
EMB = np.array([[0.2, 0.1, 0.0, 0.3], [0.9, 0.7, 0.1, 0.0], [0.8, 0.2, 0.6, 0.4]])
POS = 0.05 * np.eye(3, 4)
W_Q = np.array([[0.5, 0.1, 0.0, 0.2], [0.0, 0.6, 0.1, 0.0], [0.3, 0.0, 0.7, 0.1], [0.0, 0.2, 0.0, 0.5]])
W_K = np.array([[0.4, 0.0, 0.1, 0.2], [0.1, 0.5, 0.0, 0.1], [0.2, 0.1, 0.6, 0.0], [0.0, 0.2, 0.1, 0.4]])
W_V = np.array([[0.3, 0.2, 0.1, 0.0], [0.0, 0.4, 0.2, 0.1], [0.1, 0.0, 0.5, 0.2], [0.2, 0.1, 0.0, 0.6]])


def show(name, m):
    """Print a matrix with one row per word."""
    report(f"{name} =")
    for word, row in zip(WORDS, np.atleast_2d(m)):
        report(f"  {word:>7s} [" + "  ".join(f"{x:8.4f}" for x in row) + " ]")


ids = [WORDS.index(w) for w in WORDS]
report(f"sentence: {' '.join(WORDS)!r} -> token ids {ids}")
x = EMB[ids] + POS
show("1. embeddings + positions  x [T=3, D=4]", x)

# %% [markdown]
# ## 2. Every step of attention
#
# Each token asks a question (its query `q = x W_Q`), offers a label (its key `k = x W_K`)
# and carries a message (its value `v = x W_V`). The score of query `t` for key `s` is the dot
# product `q_t . k_s`, divided by `sqrt(d)` so that the scores do not grow with the width. A
# softmax over each row turns the scores into weights that are positive and sum to 1, and
# each output row is the weighted mean of the values. With a causal mask (a decoder, which
# must not see the future) the scores above the diagonal are set to minus infinity first, so
# their weights are exactly 0.

# %%
def by_hand(x, causal: bool):
    """Every step of single-head attention in float64."""
    q, k, v = x @ W_Q, x @ W_K, x @ W_V
    scores = q @ k.T / np.sqrt(x.shape[1])
    if causal:
        scores = np.where(np.tril(np.ones_like(scores, bool)), scores, -np.inf)
    e = np.exp(scores - scores.max(1, keepdims=True))
    w = e / e.sum(1, keepdims=True)
    return dict(q=q, k=k, v=v, scores=scores, weights=w, out=w @ v)


ref = by_hand(x, causal=False)
show("2. queries  Q = x W_Q", ref["q"])
show("   keys     K = x W_K", ref["k"])
show("   values   V = x W_V", ref["v"])
show("3. scores   Q K^T / sqrt(4)   (row: query, column: key)", ref["scores"])
show("4. weights  softmax over each row (rows sum to 1)", ref["weights"])
show("5. output   weights @ V", ref["out"])
causal = by_hand(x, causal=True)
show("   with a causal mask, weights (no looking ahead)", causal["weights"])

# %% [markdown]
# ## 3. The same numbers from the library
#
# `F.scaled_dot_product_attention` is the functional core; `F.multi_head_attention` splits
# the width into heads (here one head, with an identity output projection); the NNX module
# `MultiHeadAttention` owns the same parameters and calls the same function. All three run
# in float32, so they agree with the float64 hand computation to about 1e-7. Each call goes
# through `jax.jit` (`nnx.jit` for the module), which compiles the whole function into one
# program: called directly, JAX would compile and run its operations one at a time.

# %%
f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
out_f, w_f = jax.jit(F.scaled_dot_product_attention)(f32(x @ W_Q), f32(x @ W_K), f32(x @ W_V))
params = {"wq": f32(W_Q[:, None, :]), "wk": f32(W_K[:, None, :]), "wv": f32(W_V[:, None, :]),
          "wo": f32(np.eye(4)[None])}          # one head; identity output projection
causal_attention = jax.jit(lambda params, x: F.multi_head_attention(params, x, mask=F.causal_mask(3)))
out_m, w_m = causal_attention(params, f32(x[None]))
module = MultiHeadAttention(4, 1, bias=False, rngs=nnx.Rngs(0))
module.load_params(params)
out_n, w_n = nnx.jit(lambda module, x: module(x))(module, f32(x[None]))
diffs = {
    "functional scaled_dot_product_attention: weights": np.abs(np.asarray(w_f) - ref["weights"]).max(),
    "functional scaled_dot_product_attention: output": np.abs(np.asarray(out_f) - ref["out"]).max(),
    "functional multi_head_attention (causal): weights": np.abs(np.asarray(w_m)[0, 0] - causal["weights"]).max(),
    "functional multi_head_attention (causal): output": np.abs(np.asarray(out_m)[0] - causal["out"]).max(),
    "nnx MultiHeadAttention module: weights": np.abs(np.asarray(w_n)[0, 0] - ref["weights"]).max(),
    "nnx MultiHeadAttention module: output": np.abs(np.asarray(out_n)[0] - ref["out"]).max(),
}
report("6. the library agrees with the hand computation (float32 vs float64):")
for k, v in diffs.items():
    report(f"  max |difference| {k:52s} {v:.2e}")
worst = max(diffs.values())
assert worst < 1e-6, f"library and hand computation disagree by {worst}"

# %% [markdown]
# ## 4. Pictures of the weights
#
# What to look for: in the unmasked map every row sums to 1 and no word gets all the
# attention (these small random-looking weights give soft attention). With the causal mask
# the upper triangle is empty: "the" can only attend to itself, "cat" to "the" and itself.
# The scores map shows the numbers before the softmax: the softmax keeps their order within
# a row but squeezes them into weights.

# %%
path = args.out / "weights.png"
attention_figures.attention_heatmap(ref["weights"], WORDS, title="'the cat sleeps': attention weights (no mask)",
                        path=path, size=4.5)
report.figure(path)
path = args.out / "weights_causal.png"
attention_figures.attention_heatmap(causal["weights"], WORDS, title="with a causal mask", path=path, size=4.5)
report.figure(path)
path = args.out / "scores.png"
plots.matrix_heatmap(ref["scores"], xlabels=WORDS, ylabels=WORDS, title="scores Q K^T / sqrt(d)",
                     xlabel="key", ylabel="query", cbar_label="score", path=path)
report.figure(path)

# %%
report.save()
result = {"max_diff": float(worst)}
result
