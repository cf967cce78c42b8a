"""Lab 4: train a tiny GPT for about a minute on a 2-core CPU with the library's training API
(`jaxformer.training.train`), plot its train/val loss curves from the run's metrics.jsonl,
and sample from it.

    python experiments/04_train_tiny_gpt.py [--out DIR] [--small] [--steps N] [--data PATH]

The run folder (<out>/run) is a normal jaxformer run: `jaxformer sample --run` and
`jaxformer attention --run` work on it, and labs 05 and 06 accept it with `--run`.
"""
from __future__ import annotations

import math

from common import Report, corpus, fresh, parse, tiny_config


def extra(ap):
    ap.add_argument("--steps", type=int, default=500, help="training steps (default %(default)s)")
    ap.add_argument("--data", help="text file or folder (default: Tiny Shakespeare if present locally, "
                                   "else the Python docs)")


def main(argv=None) -> dict:
    args = parse(__file__, __doc__.splitlines()[0], argv, extra)
    import jax

    from jaxformer import generate, plots
    from jaxformer.training import train

    report = Report(args.out)
    text, name = corpus(args.data)
    cfg = tiny_config(args.small, n_layer=2 if args.small else 3, steps=args.steps)
    m, t = cfg.model, cfg.train
    report(f"data: {name} ({len(text):,} characters), byte tokenizer (256 ids)")
    report(f"model: {m.n_layer} layers, width {m.d_model}, {m.n_head} heads, context {m.max_len}; "
           f"{t.max_steps} steps of {t.batch_size} x {m.max_len} tokens, AdamW lr {t.lr} (cosine to {t.min_lr})")
    res = train(cfg, fresh(args.out / "run"), progress=False, data_text=text)
    report(f"parameters: {res.model.num_params():,}")
    train_losses = [r["train_loss"] for r in res.metrics if r.get("train_loss") is not None]
    vals = [(r["step"], r["val_loss"]) for r in res.metrics if r.get("val_loss") is not None]
    speeds = [r["tokens_per_s"] for r in res.metrics if r.get("tokens_per_s")]
    report(f"val loss by step: " + ", ".join(f"{s}: {v:.3f}" for s, v in vals))
    report(f"final train loss {train_losses[-1]:.3f}, val loss {vals[-1][1]:.3f} nats/byte "
           f"(perplexity {math.exp(vals[-1][1]):.2f}; a uniform guess is ln 256 = {math.log(256):.3f})")
    if speeds:
        report(f"throughput: {sorted(speeds)[len(speeds) // 2]:,.0f} tokens/s (median of logged steps)")
    path = args.out / "loss_curves.png"
    plots.loss_curves(res.run_dir, title=f"tiny GPT on {name}: loss", path=path)
    report.figure(path)

    prompt = "ROMEO:\n" if name == "shakespeare" else "The "
    ids = res.tokenizer.encode(prompt)
    n_new = min(m.max_len - len(ids), 200)
    g = generate(res.model, ids, max_new_tokens=n_new, temperature=0.8, top_k=20, key=jax.random.key(0))
    report(f"sample (temperature 0.8, top-k 20):\n{prompt}{res.tokenizer.decode(g.sequences[0])}")
    report(f"run folder: {res.run_dir}")
    report.save()
    return {"val_loss": vals[-1][1], "run_dir": str(res.run_dir)}


if __name__ == "__main__":
    main()
