"""Lab 3: one decoder block with pre-norm, post-norm and no norm side by side (same weights,
same input), then a stack of 6 layers and how token representations evolve with depth
(norms of the residual stream, cosine similarity across layers).

    python experiments/03_block_and_stack.py [--out DIR] [--small]
"""
from __future__ import annotations

import dataclasses

import numpy as np

from common import Report, parse

TEXT = "the cat sat on the mat"


def main(argv=None) -> dict:
    args = parse(__file__, __doc__.splitlines()[0], argv)
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxformer import GPT, ModelConfig, capture
    from jaxformer import functional as F
    from jaxformer import plots
    from jaxformer.data import CharTokenizer
    from jaxformer.inspect import layer_cosine_similarity, token_labels

    report = Report(args.out)
    tok = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz .,")
    ids = tok.encode(TEXT)
    labels = token_labels(tok, ids)
    T = len(ids)
    D, H = (16, 2) if args.small else (64, 4)
    base = ModelConfig(vocab_size=tok.vocab_size, d_model=D, n_head=H, n_layer=6, max_len=32,
                       init_std=0.2, activation="gelu")

    # ---- one block, three norm placements, the same weights and input
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
        report(f"  {_nm(pos):>9s}: output norm per token {n.min():6.2f} .. {n.max():6.2f}, "
               f"mean {outs[pos].mean():+.3f}, std {outs[pos].std():.3f}, "
               f"attention entropy {-(attn[pos] * np.log(attn[pos] + 1e-12)).sum(-1).mean():.3f} nats")
    report("  post-norm re-normalises every token (norm ~ sqrt(D) = "
           f"{np.sqrt(D):.1f}); pre-norm and no-norm keep the input's scale in the residual stream")
    path = args.out / "block_attention.png"
    plots.head_grid(np.stack([attn[k] for k in outs]), labels,
                    head_titles=[f"{_nm(k)}, head 0" for k in outs],
                    title="the same block's attention with each norm placement", path=path)
    report.figure(path)
    path = args.out / "block_output_norms.png"
    plots.line_plot({f"{_nm(k)}": np.linalg.norm(v, axis=-1) for k, v in outs.items()}
                    | {"input": np.linalg.norm(np.asarray(x)[0], axis=-1)},
                    xticklabels=labels, xlabel="token", ylabel="L2 norm of the block's output",
                    title="one block: output norm per token", path=path)
    report.figure(path)

    # ---- a stack of 6 layers: how representations evolve
    report(f"a stack of 6 layers (width {D}, GPT-2 initialisation with std {base.init_std}) on {TEXT!r}:")
    mean_norms, sims = {}, {}
    for pos in ("pre", "post", "none"):
        cfg = dataclasses.replace(base, norm_position=pos)
        model = GPT(cfg, rngs=nnx.Rngs(1))
        acts = capture(model, [ids], with_logit_lens=False)
        resid = np.asarray(acts["resid"])[0]                       # [L+1, T, D]
        mean_norms[pos] = np.linalg.norm(resid, axis=-1).mean(-1)
        sims[pos] = layer_cosine_similarity(resid)
        tok_sim = np.array([_mean_offdiag(r) for r in resid])
        report(f"  {_nm(pos):>9s}: mean token norm by depth " + " ".join(f"{v:6.2f}" for v in mean_norms[pos]))
        report(f"             cos(embedding, layer l)     " + " ".join(f"{v:6.2f}" for v in sims[pos][0]))
        report(f"             mean cos between tokens     " + " ".join(f"{v:6.2f}" for v in tok_sim))
        if pos == "pre":
            path = args.out / "stack_residual_norms_pre.png"
            plots.residual_norms(resid, labels, title="pre-norm stack: norm of each token's residual stream",
                                 path=path)
            report.figure(path)
        path = args.out / f"stack_layer_similarity_{pos}.png"
        plots.layer_similarity(sims[pos], title=f"{_nm(pos)} stack: cosine similarity across depth", path=path)
        report.figure(path)
    path = args.out / "stack_norm_by_depth.png"
    plots.line_plot({f"{_nm(k)}": v for k, v in mean_norms.items()},
                    xticklabels=["emb"] + [f"L{i}" for i in range(1, 7)], xlabel="residual stream after block",
                    ylabel="mean token norm", title="how the residual stream grows with depth", path=path)
    report.figure(path)
    report.save()
    return {"mean_norms": {k: v.tolist() for k, v in mean_norms.items()}}


def _nm(pos: str) -> str:
    return "no norm" if pos == "none" else f"{pos}-norm"


def _mean_offdiag(x_TD) -> float:
    from jaxformer.inspect import token_cosine_similarity

    s = token_cosine_similarity(x_TD)
    T = s.shape[0]
    return float((s.sum() - np.trace(s)) / (T * (T - 1)))


if __name__ == "__main__":
    main()
