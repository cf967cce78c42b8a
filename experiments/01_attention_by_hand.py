"""Lab 1: attention by hand. Tokens -> embeddings -> Q, K, V -> scores -> weights -> output for
"the cat sleeps", printed step by step in float64 NumPy, then the same numbers from the
library's functional attention and from the NNX module (they must agree).

    python experiments/01_attention_by_hand.py [--out DIR] [--small]
"""
from __future__ import annotations

import numpy as np

from common import Report, parse

# The seed material's numbers: 3 tokens, width 4 (tests/test_seed_layer.py checks them too).
WORDS = ["the", "cat", "sleeps"]
EMB = np.array([[0.2, 0.1, 0.0, 0.3], [0.9, 0.7, 0.1, 0.0], [0.8, 0.2, 0.6, 0.4]])
POS = 0.05 * np.eye(3, 4)
W_Q = np.array([[0.5, 0.1, 0.0, 0.2], [0.0, 0.6, 0.1, 0.0], [0.3, 0.0, 0.7, 0.1], [0.0, 0.2, 0.0, 0.5]])
W_K = np.array([[0.4, 0.0, 0.1, 0.2], [0.1, 0.5, 0.0, 0.1], [0.2, 0.1, 0.6, 0.0], [0.0, 0.2, 0.1, 0.4]])
W_V = np.array([[0.3, 0.2, 0.1, 0.0], [0.0, 0.4, 0.2, 0.1], [0.1, 0.0, 0.5, 0.2], [0.2, 0.1, 0.0, 0.6]])


def by_hand(x, causal: bool):
    """Every step of single-head attention in float64."""
    q, k, v = x @ W_Q, x @ W_K, x @ W_V
    scores = q @ k.T / np.sqrt(x.shape[1])
    if causal:
        scores = np.where(np.tril(np.ones_like(scores, bool)), scores, -np.inf)
    e = np.exp(scores - scores.max(1, keepdims=True))
    w = e / e.sum(1, keepdims=True)
    return dict(q=q, k=k, v=v, scores=scores, weights=w, out=w @ v)


def show(report, name, m):
    report(f"{name} =")
    for word, row in zip(WORDS, np.atleast_2d(m)):
        report(f"  {word:>7s} [" + "  ".join(f"{x:8.4f}" for x in row) + " ]")


def main(argv=None) -> dict:
    args = parse(__file__, __doc__.splitlines()[0], argv)
    import jax.numpy as jnp
    from flax import nnx

    from jaxformer import MultiHeadAttention
    from jaxformer import functional as F
    from jaxformer import plots

    report = Report(args.out)
    ids = [WORDS.index(w) for w in WORDS]
    report(f"sentence: {' '.join(WORDS)!r} -> token ids {ids}")
    x = EMB[ids] + POS
    show(report, "1. embeddings + positions  x [T=3, D=4]", x)
    ref = by_hand(x, causal=False)
    show(report, "2. queries  Q = x W_Q", ref["q"])
    show(report, "   keys     K = x W_K", ref["k"])
    show(report, "   values   V = x W_V", ref["v"])
    show(report, "3. scores   Q K^T / sqrt(4)   (row: query, column: key)", ref["scores"])
    show(report, "4. weights  softmax over each row (rows sum to 1)", ref["weights"])
    show(report, "5. output   weights @ V", ref["out"])
    causal = by_hand(x, causal=True)
    show(report, "   with a causal mask, weights (no looking ahead)", causal["weights"])

    # The same numbers from the library: the functional core and the NNX module.
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    out_f, w_f = F.scaled_dot_product_attention(f32(x @ W_Q), f32(x @ W_K), f32(x @ W_V))
    params = {"wq": f32(W_Q[:, None, :]), "wk": f32(W_K[:, None, :]), "wv": f32(W_V[:, None, :]),
              "wo": f32(np.eye(4)[None])}          # one head; identity output projection
    out_m, w_m, _ = F.multi_head_attention(params, f32(x)[None], mask=F.causal_mask(3))
    module = MultiHeadAttention(4, 1, bias=False, rngs=nnx.Rngs(0))
    module.load_params(params)
    out_n, w_n = module(f32(x)[None])
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

    path = args.out / "weights.png"
    plots.attention_heatmap(ref["weights"], WORDS, title="'the cat sleeps': attention weights (no mask)",
                            path=path, size=4.5)
    report.figure(path)
    path = args.out / "weights_causal.png"
    plots.attention_heatmap(causal["weights"], WORDS, title="with a causal mask", path=path, size=4.5)
    report.figure(path)
    path = args.out / "scores.png"
    plots.matrix_heatmap(ref["scores"], xlabels=WORDS, ylabels=WORDS, title="scores Q K^T / sqrt(d)",
                         xlabel="key", ylabel="query", cbar_label="score", path=path)
    report.figure(path)
    report.save()
    return {"max_diff": float(worst)}


if __name__ == "__main__":
    main()
