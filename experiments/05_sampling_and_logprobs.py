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
# # Lab 5: sampling and log-probabilities
#
# A language model gives a probability for every possible next token; *how* we pick from it
# decides what the text looks like. This lab shows on a trained model how temperature, top-k
# and top-p reshape the next-token distribution (figure) and the text (printed), how top-p
# adapts to the model's confidence while top-k does not, and the log-probability of each
# token of a greedy continuation with the runners-up at every step.
#
# - Script: `python experiments/05_sampling_and_logprobs.py [--out DIR] [--small] [--run RUN_DIR] [--data PATH]`
# - Notebook: `jupytext --to ipynb experiments/05_sampling_and_logprobs.py`, then open the
#   notebook in Jupyter from `experiments/`. Arguments go in `JAXFORMER_EXPERIMENT_ARGS`.
#
# Without `--run` a tiny byte-level model is trained first (about half a minute).

# %%
import math

import numpy as np

from lab_common import Report, add_run_args, parse, prompt_for, trained_model

args = parse("05_sampling_and_logprobs", "Lab 5: temperature, top-k and top-p on a trained model; "
             "token log-probabilities.", extra=add_run_args)

import jax  # noqa: E402  (after parse: --help answers without importing JAX)
import jax.numpy as jnp  # noqa: E402

from jaxformer import generate
from jaxformer.viz import plots  # noqa: E402
from jaxformer.interp.activations import next_token_distribution  # noqa: E402
from jaxformer.viz.text import token_labels  # noqa: E402

report = Report(args.out)

# %% [markdown]
# ## 1. A trained model and a prompt that fits its text
#
# A tiny byte-level model trained for a few hundred steps (or the run given with `--run`).
# The prompt is written in the style of the text it was trained on (Shakespeare's play
# layout, or a sentence of the Python documentation), because a model continues well only
# text that looks like what it has seen.

# %%
model, tok, _, corpus_name, corpus_text = trained_model(args, report, steps=400)
cfg = model.config
prompt = prompt_for(corpus_name, corpus_text)
ids = tok.encode(prompt)[-(cfg.max_len // 2):]
shown = tok.decode(ids)
dec = lambda i: token_labels(tok, [i])[0]  # noqa: E731
report(f"prompt for a model trained on {corpus_name}: {shown!r}")

# %% [markdown]
# ## 2. One next-token distribution, six ways to sample from it
#
# - **greedy** (temperature 0) always takes the most likely token;
# - **temperature** divides the logits before the softmax: below 1 it sharpens the
#   distribution (safer, more repetitive text), above 1 it flattens it (more surprising,
#   more mistakes);
# - **top-k** keeps the `k` most likely tokens, always `k`, however confident the model is;
# - **top-p** (nucleus) keeps the smallest set of most likely tokens whose probabilities add up
#   to at least `p`: few tokens when the model is sure, many when it is not.
#
# We take `p = 0.9` and pick `k` (5, or more when the model is confident here) so that at this
# position the two filters keep clearly different numbers of tokens, at least a factor 2
# apart (otherwise their panels would look alike), and print how many each keeps.

# %%
logits_V = np.asarray(model(jnp.asarray([ids]))[0, -1])
full = next_token_distribution(logits_V)
TOP_P = 0.9
nucleus = int((next_token_distribution(logits_V, top_p=TOP_P) > 0).sum())
# the first k at least a factor 2 away from the nucleus size, so that the two panels differ
TOP_K = next(k for k in (5, 10, 20, 40) if k >= 2 * nucleus or nucleus >= 2 * k)
SETTINGS = [("greedy (T=0)", dict(temperature=0.0)), ("T=0.5", dict(temperature=0.5)),
            ("T=1.0", dict(temperature=1.0)), ("T=1.5", dict(temperature=1.5)),
            (f"top-k={TOP_K}", dict(temperature=1.0, top_k=TOP_K)),
            (f"top-p={TOP_P}", dict(temperature=1.0, top_p=TOP_P))]
dists = {name: next_token_distribution(logits_V, **kw) for name, kw in SETTINGS}
kept_k = set(np.flatnonzero(dists[f"top-k={TOP_K}"]).tolist())
kept_p = set(np.flatnonzero(dists[f"top-p={TOP_P}"]).tolist())
report(f"next-token distribution after {shown!r} under each setting:")
for name, p in dists.items():
    top = np.argsort(-p)[:4]
    alive = int((p > 0).sum())
    ent = abs(float(-(p[p > 0] * np.log2(p[p > 0])).sum()))
    report(f"  {name:13s} {alive:3d} possible tokens, entropy {ent:5.2f} bits, top: "
           + ", ".join(f"{dec(i)!s} {p[i]:.2f}" for i in top))
report(f"top-k={TOP_K} keeps {len(kept_k)} tokens; top-p={TOP_P} keeps {len(kept_p)} tokens, the most "
       f"likely ones until {sum(full[i] for i in kept_p):.0%} of the probability is covered")
assert max(len(kept_k), len(kept_p)) >= 2 * min(len(kept_k), len(kept_p)), \
    "top-k and top-p keep about the same tokens here: the comparison would show nothing"

# %% [markdown]
# What to look for in the figure: the same candidate tokens in every panel. Greedy puts all
# the probability on one bar; a low temperature nearly so; a high temperature spreads it
# out. Top-k and top-p both cut the tail and renormalise what is left: compare how many bars
# survive in each (the panel titles count them).

# %%
path = args.out / "next_token_distributions.png"
plots.sampling_comparison(dists, dec, title=f"next token after {shown[-12:]!r} under each setting", path=path)
report.figure(path)

# %% [markdown]
# ## 3. The text each setting writes
#
# The same random key for every setting, so the differences come from the settings alone.
# What to look for: greedy and T=0.5 are fluent but soon repeat themselves; T=1.5 drifts into
# nonsense; top-k and top-p sit in between.

# %%
n_new = min(cfg.max_len - len(ids), 12 if args.small else 40)
report(f"continuations ({n_new} tokens, same random key for every setting):")
for name, kw in SETTINGS:
    g = generate(model, ids, max_new_tokens=n_new, key=jax.random.key(0), **kw)
    report(f"  {name:13s} {tok.decode(g.sequences[0])!r}")

# %% [markdown]
# ## 4. Log-probabilities along a greedy continuation
#
# `generate(..., return_logprobs=True, top_n=3)` also returns the log-probability of each
# chosen token and the three most likely alternatives at every step. The sum of the
# log-probabilities is the log-probability of the whole continuation; `exp(-mean)` is its
# perplexity (how many equally likely choices the model was hesitating between, on average).

# %%
g = generate(model, ids, max_new_tokens=n_new, temperature=0.0, return_logprobs=True, top_n=3)
new = g.sequences[0]
lp = np.asarray(g.logprobs[0][:len(new)], np.float64)
report(f"greedy continuation with log-probs: total {lp.sum():.2f} nats, "
       f"perplexity {math.exp(-lp.mean()):.2f}; first steps and their top-3 alternatives:")
for s in range(min(12, len(new))):
    alts = ", ".join(f"{dec(int(i))} {math.exp(float(v)):.2f}"
                     for i, v in zip(g.top_ids[0][s], g.top_logprobs[0][s]))
    report(f"  step {s:2d}: chose {dec(new[s])!s:4s} log p = {lp[s]:6.3f}   alternatives: {alts}")

# %% [markdown]
# What to look for: steps where the chosen token's log-probability is near 0 (the model is
# sure: the middle of a word) and steps where it drops and the second-best is close (a new
# word begins, several are plausible).

# %%
path = args.out / "greedy_logprobs.png"
plots.line_plot({"log p(chosen token)": lp,
                 "log p(2nd best)": np.asarray(g.top_logprobs[0][:len(new), 1], np.float64)},
                xticklabels=[dec(i) for i in new], xlabel="generated token (greedy)",
                ylabel="log-probability (nats)", title="greedy decoding: confidence at each step", path=path)
report.figure(path)

# %% [markdown]
# ## 5. Top-p adapts, top-k does not
#
# At every step of that greedy continuation, how many tokens would each filter keep? Top-k
# always keeps `k`. Top-p keeps a few tokens where the model is confident (inside a word,
# after "th" comes "e") and many more where it is not (after a space, any word may start): it
# cuts the unlikely tail without forcing a fixed number of choices. What to look for: the
# top-p curve dips below `k` in the middle of words and rises far above it between words.

# %%
seq = jnp.asarray([list(ids) + [int(i) for i in new]])
step_logits = np.asarray(model(seq)[0, len(ids) - 1:len(ids) - 1 + len(new)])
nucleus_sizes = [int((next_token_distribution(row, top_p=TOP_P) > 0).sum()) for row in step_logits]
report(f"tokens kept by top-p={TOP_P} along the continuation: min {min(nucleus_sizes)}, "
       f"max {max(nucleus_sizes)}, mean {np.mean(nucleus_sizes):.1f} (top-k={TOP_K} keeps {TOP_K} every time)")
path = args.out / "tokens_kept.png"
plots.line_plot({f"top-p={TOP_P}": nucleus_sizes, f"top-k={TOP_K}": [TOP_K] * len(nucleus_sizes)},
                xticklabels=[dec(i) for i in new], xlabel="token chosen at that step (greedy)",
                ylabel="candidate tokens kept", title="how many candidate tokens each filter keeps",
                path=path)
report.figure(path)

# %%
report.save()
result = {"entropies": {k: float(-(p[p > 0] * np.log(p[p > 0])).sum()) for k, p in dists.items()},
          "kept": {"top_k": len(kept_k), "top_p": len(kept_p)}, "prompt": shown}
result
