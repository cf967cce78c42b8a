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
# # Lab 4: train a tiny GPT
#
# About a minute of training on a 2-core CPU with the library's training API
# (`jaxformer.training.loop.train`), the train and validation loss curves read back from the
# run's `metrics.jsonl`, and a sample from the trained model.
#
# The run folder (`<out>/run`) is a normal jaxformer run: `jaxformer sample --run` and
# `jaxformer attention --run` work on it, and labs 05 and 06 accept it with `--run`.
#
# - Script: `python experiments/04_train_tiny_gpt.py [--out DIR] [--small] [--steps N] [--data PATH]`
# - Notebook: `jupytext --to ipynb experiments/04_train_tiny_gpt.py`, then open the notebook in
#   Jupyter from `experiments/`. Arguments go in `JAXFORMER_EXPERIMENT_ARGS`.

# %%
import math

from lab_common import Report, corpus, fresh, parse, prompt_for, tiny_config


def extra(ap):
    ap.add_argument("--steps", type=int, default=500, help="training steps (default %(default)s)")
    ap.add_argument("--data", help="text file or folder (default: Tiny Shakespeare if present locally, "
                                   "else the Python docs)")


args = parse("04_train_tiny_gpt", "Lab 4: train a tiny GPT, plot its loss curves, sample from it.", extra=extra)

import jax  # noqa: E402  (after parse: --help answers without importing JAX)

from jaxformer import generate
from jaxformer.viz import plots  # noqa: E402
from jaxformer.training.loop import train  # noqa: E402

report = Report(args.out)

# %% [markdown]
# ## 1. Data and model
#
# The text is Tiny Shakespeare when a copy is on this machine (it is never downloaded here),
# else the Python documentation that ships with CPython, or `--data PATH`. The tokenizer is
# byte-level: 256 ids, one per byte, so a uniform guess costs ln 256 = 5.55 nats per byte.
# The model is small enough to train in about a minute: 3 layers of width 64, a context of
# 64 bytes.

# %%
text, name = corpus(args.data)
cfg = tiny_config(args.small, n_layer=2 if args.small else 3, steps=args.steps, data=name)
m, t = cfg.model, cfg.train
report(f"data: {name} ({len(text):,} characters), byte tokenizer (256 ids)")
report(f"model: {m.n_layer} layers, width {m.d_model}, {m.n_head} heads, context {m.max_len}; "
       f"{t.max_steps} steps of {t.batch_size} x {m.max_len} tokens, AdamW lr {t.lr} (cosine to {t.min_lr})")

# %% [markdown]
# ## 2. Train
#
# One call: `train(config, run_folder, data_text=text)`. It writes the resolved
# `config.yaml`, the tokenizer, checkpoints and `metrics.jsonl` (one JSON object per logged
# step) into the run folder, and returns the trained model with its metrics. The last 10% of
# the text is held out for the validation loss.

# %%
res = train(cfg, fresh(args.out / "run"), progress=False, data_text=text)
report(f"parameters: {res.model.num_params():,}")
train_losses = [r["train_loss"] for r in res.metrics if r.get("train_loss") is not None]
vals = [(r["step"], r["val_loss"]) for r in res.metrics if r.get("val_loss") is not None]
speeds = [r["tokens_per_s"] for r in res.metrics if r.get("tokens_per_s")]
report("val loss by step: " + ", ".join(f"{s}: {v:.3f}" for s, v in vals))
report(f"final train loss {train_losses[-1]:.3f}, val loss {vals[-1][1]:.3f} nats/byte "
       f"(perplexity {math.exp(vals[-1][1]):.2f}; a uniform guess is ln 256 = {math.log(256):.3f})")
if speeds:
    report(f"throughput: {sorted(speeds)[len(speeds) // 2]:,.0f} tokens/s (median of logged steps)")

# %% [markdown]
# ## 3. Loss curves
#
# What to look for: a fast drop in the first steps (the model learns which bytes are common:
# letters, spaces), then a slower decline as it learns spelling and short words. Train and
# validation loss stay close: a model this small, trained this briefly, is far from
# memorising the text. A validation loss rising while the train loss falls would be
# overfitting.

# %%
path = args.out / "loss_curves.png"
plots.loss_curves(res.run_dir, title=f"tiny GPT on {name}: loss", path=path)
report.figure(path)

# %% [markdown]
# ## 4. A sample
#
# A prompt in the style of the corpus, continued with temperature 0.8 and top-k 20 (lab 5
# explains these settings). What to look for: after a minute of training, the right
# characters, word lengths and layout, with a few real words in between.

# %%
prompt = prompt_for(name, text, kind="short")
ids = res.tokenizer.encode(prompt)
n_new = min(m.max_len - len(ids), 200)
g = generate(res.model, ids, max_new_tokens=n_new, temperature=0.8, top_k=20, key=jax.random.key(0))
report(f"sample (temperature 0.8, top-k 20):\n{prompt}{res.tokenizer.decode(g.sequences[0])}")
report(f"run folder: {res.run_dir}")

# %%
report.save()
result = {"val_loss": vals[-1][1], "step0_val_loss": vals[0][1] if vals[0][0] == 0 else None,
          "run_dir": str(res.run_dir)}
result
