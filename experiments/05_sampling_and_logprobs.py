"""Lab 5: sampling on a trained model. Temperature, top-k and top-p change the next-token
distribution (figure) and the text (printed); token log-probabilities and the top
alternatives at every step of a greedy continuation.

    python experiments/05_sampling_and_logprobs.py [--out DIR] [--small] [--run RUN_DIR]

Without --run a tiny byte-level model is trained first (about half a minute).
"""
from __future__ import annotations

import math

import numpy as np

from common import Report, add_run_args, parse, trained_model

SETTINGS = [("greedy (T=0)", dict(temperature=0.0)), ("T=0.5", dict(temperature=0.5)),
            ("T=1.0", dict(temperature=1.0)), ("T=1.5", dict(temperature=1.5)),
            ("top-k=5", dict(temperature=1.0, top_k=5)), ("top-p=0.9", dict(temperature=1.0, top_p=0.9))]


def main(argv=None) -> dict:
    args = parse(__file__, __doc__.splitlines()[0], argv, add_run_args)
    import jax
    import jax.numpy as jnp

    from jaxformer import generate, plots
    from jaxformer.inspect import next_token_distribution, token_labels

    report = Report(args.out)
    model, tok, _ = trained_model(args, report, steps=400)
    cfg = model.config
    prompt = "ROMEO:\nWhat is th"
    ids = tok.encode(prompt)[-(cfg.max_len // 2):]
    shown = tok.decode(ids)
    dec = lambda i: token_labels(tok, [i])[0]  # noqa: E731

    logits_V = np.asarray(model(jnp.asarray([ids]))[0, -1])
    dists = {name: next_token_distribution(logits_V, **kw) for name, kw in SETTINGS}
    report(f"prompt {shown!r}: next-token distribution under each setting")
    for name, p in dists.items():
        top = np.argsort(-p)[:4]
        alive = int((p > 0).sum())
        ent = abs(float(-(p[p > 0] * np.log2(p[p > 0])).sum()))
        report(f"  {name:13s} {alive:3d} possible tokens, entropy {ent:5.2f} bits, top: "
               + ", ".join(f"{dec(i)!s} {p[i]:.2f}" for i in top))
    path = args.out / "next_token_distributions.png"
    plots.sampling_comparison(dists, dec, title=f"next token after {shown[-12:]!r} under each setting", path=path)
    report.figure(path)

    n_new = min(cfg.max_len - len(ids), 12 if args.small else 40)
    report(f"continuations ({n_new} tokens, same random key for every setting):")
    for name, kw in SETTINGS:
        g = generate(model, ids, max_new_tokens=n_new, key=jax.random.key(0), **kw)
        text = tok.decode(g.sequences[0])
        report(f"  {name:13s} {text!r}")

    g = generate(model, ids, max_new_tokens=n_new, temperature=0.0, return_logprobs=True, top_n=3)
    new = g.sequences[0]
    lp = np.asarray(g.logprobs[0][:len(new)], np.float64)
    report(f"greedy continuation with log-probs: total {lp.sum():.2f} nats, "
           f"perplexity {math.exp(-lp.mean()):.2f}; first steps and their top-3 alternatives:")
    for s in range(min(12, len(new))):
        alts = ", ".join(f"{dec(int(i))} {math.exp(float(v)):.2f}"
                         for i, v in zip(g.top_ids[0][s], g.top_logprobs[0][s]))
        report(f"  step {s:2d}: chose {dec(new[s])!s:4s} log p = {lp[s]:6.3f}   alternatives: {alts}")
    path = args.out / "greedy_logprobs.png"
    plots.line_plot({"log p(chosen token)": lp,
                     "log p(2nd best)": np.asarray(g.top_logprobs[0][:len(new), 1], np.float64)},
                    xticklabels=[dec(i) for i in new], xlabel="generated token (greedy)",
                    ylabel="log-probability (nats)", title="greedy decoding: confidence at each step", path=path)
    report.figure(path)
    report.save()
    return {"entropies": {k: float(-(p[p > 0] * np.log(p[p > 0])).sum()) for k, p in dists.items()}}


if __name__ == "__main__":
    main()
