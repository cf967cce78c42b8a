"""Lab 2: positional encoding. The sinusoidal table's structure (each pair of dimensions turns
at its own speed; the similarity of two positions depends only on their distance; a shift is
a rotation), and what adding positions does to attention (without them a token attends the
same way wherever it stands: attention cannot tell word order).

    python experiments/02_positional_encoding.py [--out DIR] [--small]
"""
from __future__ import annotations

import numpy as np

from common import Report, parse

SENTENCE = "the cat saw the dog and the bird".split()


def main(argv=None) -> dict:
    args = parse(__file__, __doc__.splitlines()[0], argv)
    import jax.numpy as jnp

    from jaxformer import functional as F
    from jaxformer import plots
    from jaxformer.inspect import token_cosine_similarity

    report = Report(args.out)
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

    path = args.out / "pe_heatmap.png"
    plots.positional_encoding_heatmap(pe, title=f"sinusoidal positional encoding ({P} x {D})", path=path)
    report.figure(path)
    path = args.out / "pe_curves.png"
    plots.positional_curves(pe, dims=[d for d in (0, 1, 6, 14, 30) if d < D], path=path)
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

    # What adding positions does to attention: one random head, no causal mask.
    rng = np.random.default_rng(0)
    Dm = 16
    vocab = sorted(set(SENTENCE))
    ids = np.array([vocab.index(w) for w in SENTENCE])
    emb = rng.normal(0, 1, (len(vocab), Dm))
    params = {n: jnp.asarray(rng.normal(0, 0.5, (Dm, 1, Dm)), jnp.float32) for n in ("wq", "wk", "wv")}
    params["wo"] = jnp.asarray(np.eye(Dm)[None], jnp.float32)
    T = len(SENTENCE)
    pos = np.asarray(F.sinusoidal_positions(T, Dm))
    weights = {}
    for name, x in (("tokens only", emb[ids]), ("tokens + sinusoidal positions", emb[ids] + pos)):
        _, wts, _ = F.multi_head_attention(params, jnp.asarray(x, jnp.float32)[None])
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
    _, wp, _ = F.multi_head_attention(params, jnp.asarray(emb[ids][perm], jnp.float32)[None])
    err = np.abs(np.asarray(wp)[0, 0] - weights["tokens only"][np.ix_(perm, perm)]).max()
    report(f"  check: attention(shuffled words) = shuffled attention(words), max error {err:.1e}")
    path = args.out / "attention_with_without_positions.png"
    plots.head_grid(np.stack(list(weights.values())), SENTENCE, head_titles=list(weights),
                    title="one attention head: the repeated 'the' rows are identical without positions",
                    path=path)
    report.figure(path)
    report.save()
    return {"relative_spread": float(rel)}


if __name__ == "__main__":
    main()
