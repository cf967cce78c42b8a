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
# # Lab 6: previous-token and induction heads
#
# An attention map is easy to plot and hard to read: on ordinary text after a short training
# run, most heads look "mixed" or "diffuse". So this lab trains on text where structure appears
# quickly: **random letters repeated with a random period**, e.g. `qxmzdk` `qxmzdk` `qxmzdk` ...
# The first time a letter appears nothing can predict it (about ln 26 = 3.3 nats of loss), but
# once the sequence repeats every next letter is predictable *by induction*: find where the
# current letter occurred before, and copy the letter that followed it. A two-layer model
# learns this with two heads that work together:
#
# 1. a **previous-token head** (layer 0) writes into each position which token came before it;
# 2. an **induction head** (layer 1) at the current letter attends to the position whose
#    *previous* token is that same letter, the position right after its earlier occurrence,
#    and copies that position's letter as its prediction.
#
# We measure each behaviour with a detector score per head, watch the scores appear during
# training, and name the heads that do each job.
#
# - Script: `python experiments/06_multihead_patterns.py [--out DIR] [--small] [--steps N] [--run RUN_DIR]`
# - Notebook: `jupytext --to ipynb experiments/06_multihead_patterns.py`, then open the notebook
#   in Jupyter from `experiments/`. Arguments go in `JAXFORMER_EXPERIMENT_ARGS`.

# %%
import string
import time

import numpy as np

from lab_common import Report, parse

NAME = "06_multihead_patterns"


def extra(ap):
    ap.add_argument("--steps", type=int, default=800, help="training steps (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the weights and the data (default %(default)s)")
    ap.add_argument("--run", help="analyse this trained run folder instead of training here")


args = parse(NAME, "Lab 6: previous-token and induction heads, found by their detector scores.",
             extra=extra)

import jax  # noqa: E402  (after parse: --help answers without importing JAX)
import jax.numpy as jnp  # noqa: E402

from jaxformer import interp, load_config
from jaxformer.viz import attention_figures, plots  # noqa: E402
from jaxformer.data import CharTokenizer  # noqa: E402
from jaxformer.viz.explorer import write_attention_explorer  # noqa: E402
from jaxformer.interp.activations import capture_fn  # noqa: E402
from jaxformer.interp.heads import describe_heads, head_statistics  # noqa: E402
from jaxformer.viz.text import token_labels  # noqa: E402
from jaxformer.training.steps import init_params, make_optimizer, make_train_step, micro_batches  # noqa: E402

report = Report(args.out)
small = args.small

# %% [markdown]
# ## 1. The data: random letters, repeated
#
# Each training sequence picks a period `P` between 4 and 16 and `P` distinct random letters,
# then repeats them until the context (32 letters) is full. Because `P` changes from sequence
# to sequence, "look `P` positions back" is not a fixed position the model could memorise: it
# has to find the earlier occurrence by *content*. A letter is predictable by induction when
# the letter *before* it already occurred earlier: then it is the letter that followed that
# earlier occurrence. The loss on those letters can go to 0; the others (the first period,
# and the first letter of the first repeat, which could still have been a new letter) cannot
# be known and cost about ln 26 = 3.3 nats.

# %%
ALPHABET = string.ascii_lowercase
T = 32                                     # context length
P_MIN, P_MAX = 4, 16                       # random period of the repeats
P_PROBE = 16                               # detector scores: 16 letters, exactly twice
P_SHOW = 11                                # the period of the sequences we plot


def repeated_letters(rng, n: int, length: int, period=None) -> np.ndarray:
    """``[n, length]`` letter indices (0-25): ``P`` distinct random letters repeated, with
    ``P`` drawn from [P_MIN, P_MAX] per row unless ``period`` is given."""
    rows = []
    for _ in range(n):
        p = period or int(rng.integers(P_MIN, P_MAX + 1))
        rows.append(np.resize(rng.permutation(len(ALPHABET))[:p], length))
    return np.stack(rows)


def predictable(batch_BT1) -> np.ndarray:
    """``[B, T]`` bool for the targets ``batch[:, 1:]``: the input before the target (the
    current letter) already occurred earlier, so induction can tell what comes next."""
    return np.asarray(interp.detector_targets(batch_BT1[:, :-1], "duplicate-token")[1])


example = repeated_letters(np.random.default_rng(1), 1, T + 1, period=6)
report(f"an example with period 6: {''.join(ALPHABET[i] for i in example[0])}")
report(f"  next letters predictable by induction: {predictable(example).sum()} of {T}")

# %% [markdown]
# ## 2. A two-layer model and a training loop from the library's pieces
#
# Two layers of four heads, width 64, rotary position embeddings (RoPE makes "one token back"
# the same rotation everywhere, so a previous-token head is easy to learn). The loop is the
# library's own pure train step (`jaxformer.training.steps.make_train_step`: AdamW, gradient
# clipping, a jitted step over the parameter pytree) fed with our batches. Every few steps we
# measure, on held-out sequences, the loss on unpredictable and on predictable letters, and
# the two detector scores of every head (on 64 "probe" sequences of 16 random letters
# repeated exactly twice, the classic induction test, so each letter has one earlier occurrence):
#
# - **previous-token score** of a head: its mean attention from position `i` to `i - 1`;
# - **induction score**: its mean attention from a position `i` whose letter occurred before to
#   the position right after that earlier occurrence (for the probe's period 16: key `i - 15`).
#
# Both are between 0 and 1; a head that does the job perfectly scores 1.
#
# With `--run DIR` the lab skips training and analyses the heads of that run instead (any
# model whose tokenizer has the 26 lowercase letters as single tokens).

# %%
rng = np.random.default_rng(args.seed)
history = []
if args.run:
    from jaxformer.training.checkpoint import load_run

    run = load_run(args.run)
    tok, params, mcfg = run.tokenizer, run.model.params(), run.model.config
    T = min(T, mcfg.max_len)
    report(f"model: {args.run} (step {run.step}): {mcfg.n_layer} layers x {mcfg.n_head} heads")
else:
    tok = CharTokenizer(ALPHABET)
    d, steps, B = (32, min(args.steps, 40), 16) if small else (64, args.steps, 32)
    cfg = load_config(None, [
        f"model.vocab_size={tok.vocab_size}", f"model.d_model={d}", "model.n_head=4", "model.n_layer=2",
        f"model.d_ff={4 * d}", f"model.max_len={T}", "model.positions=rope", "model.init_std=0.02",
        f"train.batch_size={B}",
        f"train.max_steps={steps}", "train.lr=1e-3", "train.min_lr=1e-3", "train.warmup_steps=20",
        "train.weight_decay=0.0", f"train.seed={args.seed}"])
    mcfg = cfg.model
    params = init_params(cfg)
if any(len(tok.encode(c)) != 1 for c in ALPHABET):
    raise SystemExit("this lab needs a tokenizer with every lowercase letter as one token")
letter_ids = np.array([tok.encode(c)[0] for c in ALPHABET])      # letter index -> token id

data_rng = np.random.default_rng(10_000 + args.seed)                     # held out: not the training stream
held_out = letter_ids[repeated_letters(data_rng, 64, T + 1)]             # the training mix of periods
repeats = predictable(held_out)                                          # [B, T] of the targets
probe = letter_ids[repeated_letters(data_rng, 64, T, period=min(P_PROBE, T // 2))]


def forward(params, tokens_BT):
    """``(log-probs [B, T, V], attention weights [B, L, H, T, T])`` through the library's capture."""
    out = capture_fn(params, jnp.asarray(tokens_BT), mcfg, with_logit_lens=False)
    return jax.nn.log_softmax(out["logits"], axis=-1), np.asarray(out["weights"])


def token_losses(params, batch_BT1) -> np.ndarray:
    """``[B, T]`` next-token loss (nats) of ``batch [B, T+1]``."""
    logp, _ = forward(params, batch_BT1[:, :-1])
    return -np.asarray(jnp.take_along_axis(logp, jnp.asarray(batch_BT1[:, 1:, None]), -1)[..., 0])


def measure(params) -> dict:
    """Loss on unpredictable and on predictable letters of the held-out batch, and both
    detector scores per head on the probe batch (each letter occurs exactly twice, so "the
    previous occurrence" is unambiguous)."""
    nll = token_losses(params, held_out)
    _, w = forward(params, probe)                                          # [B, L, H, T, T]
    return {"loss_unpredictable": float(nll[~repeats].mean()),
            "loss_predictable": float(nll[repeats].mean()),
            **dict(zip(("prev", "induction"), interp.head_scores(w, probe, ("previous-token", "induction")).values())),
            "weights": w}


if not args.run:
    m, t = cfg.model, cfg.train
    report(f"training {m.n_layer} layers x {m.n_head} heads, width {m.d_model}, RoPE, "
           f"{t.max_steps} steps of {t.batch_size} sequences x {T} letters, AdamW lr {t.lr}")
    optimizer = make_optimizer(cfg.train, params)
    opt_state = optimizer.init(params)
    train_step = make_train_step(cfg, optimizer)
    every = max(steps // 20, 1)
    start = time.perf_counter()
    for step in range(steps + 1):
        if step % every == 0 or step == steps:
            now = measure(params)
            now.pop("weights")
            history.append({"step": step, "seconds": time.perf_counter() - start, **now})
            report(f"  step {step:5d} ({history[-1]['seconds']:5.1f} s): loss unpredictable "
                   f"{now['loss_unpredictable']:.2f}, predictable {now['loss_predictable']:.2f} nats; "
                   f"best previous-token score {now['prev'].max():.2f}, "
                   f"best induction score {now['induction'].max():.2f}")
        if step == steps:
            break
        batch = letter_ids[repeated_letters(rng, t.batch_size, T + 1)].astype(np.int32)
        params, opt_state, _ = train_step(params, opt_state, jnp.asarray(micro_batches(batch, 1)),
                                          jnp.int32(step))

# %% [markdown]
# ## 3. Training: a sudden drop, and the heads that cause it
#
# What to look for: for a while the model learns only a weak heuristic (the next letter is
# probably one already seen in this sequence), and the loss on predictable letters falls
# slowly from ln 26 = 3.3 nats. Then, within about a hundred steps, the loss on **predictable**
# letters drops towards 0 while the loss on the others stays high (nothing can predict them;
# it even rises for a while, as the model starts copying where there is nothing to copy).
# The drop comes with a jump of the best induction score (and the previous-token head
# sharpening): the two-head circuit forming is what makes the repeats predictable. This
# sudden "phase change" is the signature of induction heads.

# %%
if history:
    steps_seen = [h["step"] for h in history]
    path = args.out / "training_loss.png"
    plots.line_plot({"loss on unpredictable letters (first period)": [h["loss_unpredictable"] for h in history],
                     "loss on letters predictable by induction": [h["loss_predictable"] for h in history]},
                    x=steps_seen, xlabel="training step", ylabel="loss (nats per letter)",
                    title="the repeats become predictable all at once", path=path)
    report.figure(path)
    path = args.out / "training_scores.png"
    plots.line_plot({"best previous-token score (any head)": [h["prev"].max() for h in history],
                     "best induction score (any head)": [h["induction"].max() for h in history]},
                    x=steps_seen, xlabel="training step", ylabel="detector score (0-1)",
                    title="the induction circuit forms during the drop", path=path)
    report.figure(path)

# %% [markdown]
# ## 4. The detector scores of every head
#
# Both scores for every layer and head of the final model, on the probe batch. What to look
# for: a bright cell in layer 0 of the previous-token map (a head that always looks one letter
# back) and bright cells in layer 1 of the induction map. An induction head cannot sit in
# layer 0: it needs the previous-token information that layer 0 writes first.

# %%
final = measure(params)
L, H = final["prev"].shape
report(f"detector scores per head (64 probe sequences: {P_PROBE} random letters, twice):")
report("  layer head  previous-token  induction")
for layer in range(L):
    for h in range(H):
        report(f"  {layer:5d} {h:4d}  {final['prev'][layer, h]:14.2f}  {final['induction'][layer, h]:9.2f}")
head_names = [f"L{layer} H{h}" for layer in range(L) for h in range(H)]
for key, label, meaning, fname in (
        ("prev", "previous-token score", "mean attention on the token before", "previous_token_scores.png"),
        ("induction", "induction score", "mean attention on the token after the previous occurrence",
         "induction_scores.png")):
    path = args.out / fname
    plots.matrix_heatmap(final[key], xlabels=[f"head {h}" for h in range(H)],
                         ylabels=[f"layer {layer}" for layer in range(L)], vmin=0, vmax=1, cmap="viridis",
                         xlabel="head", ylabel="layer", cbar_label=f"{label} (0-1)",
                         title=f"{label} of every head: {meaning}", path=path)
    report.figure(path)

# %% [markdown]
# ## 5. Naming the heads
#
# A head is named after its larger score when that score is at least 0.4; the others get the
# library's generic description (`jaxformer.interp.describe_heads`: first-token, self,
# diffuse or mixed, from the entropy and the mean offset of its attention).

# %%
named = interp.name_heads({"previous-token": final["prev"], "induction": final["induction"]}, threshold=0.4)
stats = [head_statistics(w) for w in final["weights"]]
generic = describe_heads({k: np.mean([s[k] for s in stats], axis=0) for k in stats[0]})
named_at = {(layer, h): (kind, score) for layer, h, kind, score in named}
report("heads:")
for layer in range(L):
    for h in range(H):
        if (layer, h) in named_at:
            kind, score = named_at[layer, h]
            report(f"  layer {layer} head {h}: {kind} head (score {score:.2f})")
        else:
            report(f"  layer {layer} head {h}: {generic[layer][h]}")
kinds = [kind for _, _, kind, _ in named]
for kind in ("previous-token", "induction"):
    report(f"{kind} heads found: {kinds.count(kind)}")
if set(kinds) != {"previous-token", "induction"}:
    report("  (a model trained elsewhere may have neither: try it on this lab's data first)" if args.run
           else "  (train longer with --steps to see both)")

# %% [markdown]
# ## 6. What the named heads look like
#
# One held-out sequence with period 11, every layer (rows) and head (columns), then the best
# previous-token head and the best induction head side by side. What to look for: the
# previous-token head is a line just below the diagonal; the induction head is a line
# `P - 1 = 10` positions below it that starts only at the second copy of the letters (the
# first copy has nothing to look back to). The HTML explorer shows the same maps
# interactively.

# %%
show = letter_ids[repeated_letters(np.random.default_rng(7), 1, T, period=P_SHOW)]
w_show = forward(params, show)[1][0]                                       # [L, H, T, T]
labels = token_labels(tok, show[0])
report(f"sequence shown: {''.join(labels)} (period {P_SHOW})")
path = args.out / "all_heads.png"
attention_figures.layer_head_grid(w_show, labels, title="every layer (rows) x head (columns) on a repeated sequence",
                      path=path)
report.figure(path)
best = {"previous-token": np.unravel_index(np.argmax(final["prev"]), final["prev"].shape),
        "induction": np.unravel_index(np.argmax(final["induction"]), final["induction"].shape)}
path = args.out / "named_heads.png"
attention_figures.head_grid(np.stack([w_show[lh] for lh in best.values()]), labels,
                head_titles=[f"{k}: layer {lh[0]} head {lh[1]}" for k, lh in best.items()],
                title="the best previous-token head and the best induction head", path=path)
report.figure(path)
path = args.out / "explorer.html"
write_attention_explorer(path, labels, w_show, title="attention explorer: random letters, repeated")
report(f"  interactive explorer: {path}")

# %% [markdown]
# ## 7. Where the loss goes
#
# The final model's loss at each position of held-out sequences that all have period 11. What
# to look for: high loss for the first 11 predictions (letters 1 to 10 are new, and letter 11
# could still be a new one: the repeat is only certain once it has begun), then a cliff:
# every later letter is predicted almost perfectly, by induction.

# %%
fixed = letter_ids[repeated_letters(np.random.default_rng(11), 64, T + 1, period=P_SHOW)]
by_pos = token_losses(params, fixed).mean(0)
report(f"loss by position (period {P_SHOW}): first {P_SHOW} predictions {by_pos[:P_SHOW].mean():.2f}, "
       f"the rest {by_pos[P_SHOW:].mean():.2f} nats per letter")
path = args.out / "loss_by_position.png"
plots.line_plot({f"loss (mean over 64 sequences, period {P_SHOW})": by_pos}, x=np.arange(1, T + 1),
                xlabel="position of the predicted letter", ylabel="loss (nats)",
                title="after one period, every letter is predicted by induction", path=path)
report.figure(path)

# %%
report.save()
result = {"named": named, "previous_token": final["prev"].tolist(), "induction": final["induction"].tolist(),
          "history": [{"step": h["step"], "loss_predictable": h["loss_predictable"],
                       "prev": float(h["prev"].max()), "induction": float(h["induction"].max())}
                      for h in history]}
result["named"]
