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
# # Lab 8: induction heads, found, knocked out and traced
#
# Lab 6 *looked* at attention to find induction heads. Here we *intervene* on a model to show
# what they do, with `jaxformer.interp` (TransformerLens's hook points and experiments, on the
# textbook forward pass):
#
# 1. train a **two-layer attention-only** model (no MLPs: `model.attn_only=true`, the model
#    of Anthropic's "mathematical framework" paper) on random letter sequences that repeat;
# 2. find the heads with the **detectors** (`interp.detect_heads`): previous-token,
#    first-token, duplicate-token and induction scores for every head;
# 3. **ablate** the induction heads (`interp.ablate_heads`) and watch the loss on the
#    repeated half go back up while the first half barely moves;
# 4. **patch** activations from a clean run into a corrupted one (`interp.patch_activations`)
#    to see where, in layer and position, the answer travels, and which heads carry it, next
#    to its gradient approximation (`interp.attribution_patching`);
# 5. split the answer's logit into what each head wrote (`interp.direct_logit_attribution`).
#
# - Script: `python experiments/08_induction_heads.py [--out DIR] [--small] [--steps N]`
#   (about a minute on a 2-core CPU; `--small` is a smoke test in seconds)
# - Notebook: `jupytext --to ipynb experiments/08_induction_heads.py`, then open it in Jupyter
#   from `experiments/`. Arguments go in `JAXFORMER_EXPERIMENT_ARGS`.

# %%
import string
import time

import numpy as np

from lab_common import Report, parse

NAME = "08_induction_heads"


def extra(ap):
    ap.add_argument("--steps", type=int, default=800, help="training steps (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the weights and the data (default %(default)s)")


args = parse(NAME, "Lab 8: induction heads in a 2-layer attention-only model: detectors, ablation, "
             "activation patching and direct logit attribution.", extra=extra)

import jax  # noqa: E402  (after parse: --help answers without importing JAX)
import jax.numpy as jnp  # noqa: E402

from jaxformer import functional as F  # noqa: E402
from jaxformer import interp, load_config
from jaxformer.viz import plots  # noqa: E402
from jaxformer.data import CharTokenizer  # noqa: E402
from jaxformer.training.steps import init_params, make_optimizer, make_train_step, micro_batches  # noqa: E402

report = Report(args.out)

# %% [markdown]
# ## 1. Data and model
#
# Each training sequence is `P` random letters (P between 4 and 16, drawn per sequence)
# repeated until the 32-letter context is full. The first `P` letters are unpredictable
# (about ln 26 = 3.3 nats each); every later one can be copied from the previous period *by
# induction*: find the earlier occurrence of the current letter and predict the letter that
# followed it. As `P` changes from sequence to sequence, "look `P` back" is no fixed offset
# the model could learn instead.
#
# The model: 2 layers, 4 heads each, width 64, rotary positions, pre-norm, no MLPs, and
# separate input and output embeddings (`tie_embeddings=false`, as in TransformerLens's
# attention-only models: with tied ones the same model did not form induction heads within
# 1,500 steps). Trained with the library's own jitted train step (AdamW).

# %%
ALPHABET = string.ascii_lowercase
T = 32
P_MIN, P_MAX = 4, 16
P_PROBE = T // 2                                 # the probe: 16 random letters, exactly twice
tok = CharTokenizer(ALPHABET)
ids = np.array([tok.encode(c)[0] for c in ALPHABET])


def repeated(rng, n: int, length: int, period=None) -> np.ndarray:
    """``[n, length]`` token ids: ``P`` distinct random letters repeated (``P`` random per row
    unless ``period`` is given)."""
    rows = []
    for _ in range(n):
        p = period or int(rng.integers(P_MIN, P_MAX + 1))
        rows.append(np.resize(rng.permutation(len(ALPHABET))[:p], length))
    return ids[np.stack(rows)].astype(np.int32)


small = args.small
d, steps, B = (32, min(args.steps, 30), 16) if small else (64, args.steps, 32)
cfg = load_config(None, [
    f"model.vocab_size={tok.vocab_size}", f"model.d_model={d}", "model.n_head=4", "model.n_layer=2",
    "model.attn_only=true", f"model.max_len={T}", "model.positions=rope", "model.bias=false",
    "model.tie_embeddings=false", "model.init_std=0.02",
    f"train.batch_size={B}", f"train.max_steps={steps}", "train.lr=1e-3", "train.min_lr=1e-3",
    "train.warmup_steps=20", "train.weight_decay=0.0", f"train.seed={args.seed}"])
mcfg = cfg.model
params = init_params(cfg)
n_params = sum(x.size for x in jax.tree.leaves(params))
report(f"model: {mcfg.n_layer} layers x {mcfg.n_head} heads, width {mcfg.d_model}, attention only, "
       f"{n_params:,} parameters; {steps} steps of {B} x {T} letters")

rng = np.random.default_rng(args.seed)
probe = repeated(np.random.default_rng(10_000 + args.seed), 64, T, period=P_PROBE)   # held out


@jax.jit
def logits_of(params, tokens_BT):
    """``[B, T, V]`` logits of the model (``jax.jit``: one compiled program, not op by op)."""
    return F.decoder(params, tokens_BT, mcfg)[0]


@jax.jit
def token_losses(params, tokens_BT):
    """``[B, T-1]`` next-token loss (nats) of the model's logits."""
    return per_token(logits_of(params, tokens_BT), tokens_BT)


@jax.jit
def per_token(logits_BTV, tokens_BT):
    logp = jax.nn.log_softmax(jnp.asarray(logits_BTV, jnp.float32)[:, :-1], -1)
    return -jnp.take_along_axis(logp, jnp.asarray(tokens_BT)[:, 1:, None], -1)[..., 0]


def halves(loss_BT) -> tuple:
    loss = np.asarray(loss_BT).mean(0)
    return float(loss[: P_PROBE - 1].mean()), float(loss[P_PROBE - 1:].mean())


# %% [markdown]
# ## 2. Training: the repeated half becomes predictable all at once
#
# Every few steps: the loss on the probe's first half (unpredictable) and repeated half, and
# the best induction score of any head. Look for the sudden drop of the repeated half's loss
# together with the jump of the induction score (the "phase change" of induction heads).

# %%
optimizer = make_optimizer(cfg.train, params)
opt_state = optimizer.init(params)
train_step = make_train_step(cfg, optimizer)
history, every, start = [], max(steps // 15, 1), time.perf_counter()
for step in range(steps + 1):
    if step % every == 0 or step == steps:
        a, b = halves(token_losses(params, probe))
        best = float(interp.detect_heads((params, mcfg), probe[:16], ["induction"])["induction"].max())
        history.append({"step": step, "first_half": a, "repeated_half": b, "induction": best,
                        "seconds": time.perf_counter() - start})
        report(f"  step {step:4d} ({history[-1]['seconds']:5.1f} s): loss first half {a:.2f}, "
               f"repeated half {b:.2f} nats; best induction score {best:.2f}")
    if step == steps:
        break
    batch = repeated(rng, B, T + 1)
    params, opt_state, _ = train_step(params, opt_state, jnp.asarray(micro_batches(batch, 1)), jnp.int32(step))

path = args.out / "training.png"
plots.line_plot({"loss, first half (unpredictable)": [h["first_half"] for h in history],
                 "loss, repeated half": [h["repeated_half"] for h in history],
                 "best induction score (0-1)": [h["induction"] for h in history]},
                x=[h["step"] for h in history], xlabel="training step", ylabel="nats per letter / score",
                title="the repeats become predictable when an induction head forms", path=path)
report.figure(path)
model = (params, mcfg)

# %% [markdown]
# ## 3. The detectors
#
# `interp.detect_heads(model, probe)` scores every head on the probe (16 random letters,
# twice) as the mean attention it puts where each kind of head looks: the previous token, the
# first token, earlier copies of the current token, and the token after an earlier copy
# (induction). Expect a previous-token head in layer 0 and induction heads in layer 1: an
# induction head needs to know, at every key, which token came before it, which only a
# layer-0 previous-token head can have written there (K-composition).

# %%
scores = interp.detect_heads(model, probe)
report("detector scores (rows: layer.head):")
report("  head  " + "  ".join(f"{k:>15s}" for k in interp.KINDS))
for layer in range(mcfg.n_layer):
    for h in range(mcfg.n_head):
        report(f"  L{layer}H{h}  " + "  ".join(f"{scores[k][layer, h]:15.2f}" for k in interp.KINDS))
path = args.out / "head_scores.png"
plots.head_detector_scores(scores, title="what each head looks at (probe: 16 random letters, twice)", path=path)
report.figure(path)
named = interp.name_heads({k: scores[k] for k in ("previous-token", "induction")}, threshold=0.4)
induction_heads = [(layer, h) for layer, h, kind, _ in named if kind == "induction"]
for layer, h, kind, score in named:
    report(f"  L{layer}H{h}: {kind} head (score {score:.2f})")
if not induction_heads:       # (--small, or an unlucky seed): keep going with the best one
    layer, h = np.unravel_index(np.argmax(scores["induction"]), scores["induction"].shape)
    induction_heads = [(int(layer), int(h))]
    report(f"  no head scores 0.4 as an induction head; using the best, L{layer}H{h}")

# %% [markdown]
# ## 4. Ablation: knock the induction heads out
#
# `interp.ablate_heads(model, tokens, heads, mode)` sets the heads' outputs (`hook_z`) to zero,
# or to their mean over the batch and positions. If those heads *are* the induction mechanism,
# the repeated half's loss should go back towards the first half's, and the first half (where
# there is nothing to copy) should barely move. Ablating the layer-0 previous-token head
# instead should hurt the repeated half too: the induction heads find their key through
# what it wrote (K-composition).

# %%
clean_loss = np.asarray(token_losses(params, probe))
previous = [(layer, h) for layer, h, kind, _ in named if kind == "previous-token" and layer == 0]
runs = {"no ablation": clean_loss}
for mode in ("zero", "mean"):
    runs[f"induction heads, {mode}-ablated"] = np.asarray(per_token(interp.ablate_heads(model, probe, induction_heads, mode), probe))
if previous:
    runs["previous-token heads, zero-ablated"] = np.asarray(per_token(interp.ablate_heads(model, probe, previous), probe))
ablation = {}
for name, loss in runs.items():
    a, b = halves(loss)
    ablation[name] = {"first_half": a, "repeated_half": b}
    report(f"  {name:42s} loss first half {a:.3f}, repeated half {b:.3f} nats")
heads_txt = ", ".join(f"L{layer}H{h}" for layer, h in induction_heads)
path = args.out / "ablation.png"
plots.line_plot({k: v.mean(0) for k, v in runs.items()}, x=np.arange(1, T), xlabel="position of the predicted letter",
                ylabel="loss (nats), mean over 64 probes",
                title=f"ablating the induction heads ({heads_txt}) undoes the repeated half only", path=path)
report.figure(path)

# %% [markdown]
# ## 5. Activation patching: where does the answer travel?
#
# A clean prompt: 16 random letters, then the first 8 again, so the next letter is the 9th
# of the first copy. A corrupted prompt: the same, but that 9th letter changed in the first
# copy, so an induction model predicts the new letter instead. The metric is the logit
# difference between the two answers at the last position (clean answer minus corrupted
# answer; averaged over 16 prompts). `interp.patch_activations` runs the corrupted prompt once
# for every (layer, position) with the residual stream there taken from the clean run, and once
# for every (layer, head) with that head's output (`hook_z`) taken from the clean run. Shown as
# the fraction of the clean logit difference each patch restores.
#
# What to look for: patching the stream *entering layer 0* at the changed letter restores
# everything (it is the only difference); entering layer 1, still only at that position: the
# answer sits there until an induction head at the last position reads it. Among the heads,
# only the induction heads of layer 1 restore it.

# %%
M = 8
base = repeated(np.random.default_rng(20_000 + args.seed), 16, P_PROBE, period=P_PROBE)
clean = np.concatenate([base, base[:, :M]], 1)
corrupted = clean.copy()
pick = np.random.default_rng(30_000 + args.seed)
corrupted[:, M] = [pick.choice(np.setdiff1d(ids, row)) for row in base]     # a letter the prompt lacks
right, wrong = jnp.asarray(base[:, M]), jnp.asarray(corrupted[:, M])
metric = lambda logits: interp.logit_difference(logits, right, wrong)       # noqa: E731
m_clean = float(metric(logits_of(params, jnp.asarray(clean))))
m_corrupted = float(metric(logits_of(params, jnp.asarray(corrupted))))
report(f"logit difference (clean answer - corrupted answer): clean run {m_clean:.2f}, corrupted run {m_corrupted:.2f}")
resid = np.asarray(interp.patch_activations(model, clean, corrupted, metric, over="position"))
by_head = np.asarray(interp.patch_activations(model, clean, corrupted, metric, over="head"))
approx = np.asarray(interp.attribution_patching(model, clean, corrupted, metric, over="head"))
labels = [f"{tok.decode([int(t)])}" for t in clean[0]]
labels[M] = f"{labels[M]}/{tok.decode([int(corrupted[0, M])])}"
path = args.out / "patching_residual.png"
plots.patching_heatmap(resid, labels=labels, clean=m_clean, corrupted=m_corrupted, over="position",
                       title="patching the residual stream entering each layer, clean -> corrupted "
                             f"(first prompt's letters; position {M} changed)", path=path)
report.figure(path)
path = args.out / "patching_heads.png"
plots.patching_heatmap(by_head, clean=m_clean, corrupted=m_corrupted, over="head",
                       title="patching each head's output (hook_z), clean -> corrupted", path=path)
report.figure(path)
restored = (by_head - m_corrupted) / (m_clean - m_corrupted)
report("fraction restored by patching each head (exact; attribution patching in brackets):")
for layer in range(mcfg.n_layer):
    approx_frac = (approx[layer] - m_corrupted) / (m_clean - m_corrupted)
    report(f"  layer {layer}: " + "  ".join(f"H{h} {restored[layer, h]:5.2f} [{approx_frac[h]:5.2f}]"
                                            for h in range(mcfg.n_head)))
frac_resid = (resid - m_corrupted) / (m_clean - m_corrupted)
report(f"residual stream: entering layer 0 at position {M} restores {frac_resid[0, M]:.2f}, "
       f"entering layer 1 at position {M}: {frac_resid[1, M]:.2f}, at the last position: {frac_resid[1, -1]:.2f}")

# %% [markdown]
# ## 6. Direct logit attribution: who writes the answer?
#
# `interp.direct_logit_attribution` splits the final residual stream at the last position into
# what the embedding and each head wrote, and passes each part through the final norm (its
# scale frozen at the clean run's) and the unembedding. The parts sum to the logits exactly;
# their share of the clean logit difference shows which heads write the answer directly.

# %%
nb = clean.shape[0]
parts, attr = interp.direct_logit_attribution(model, clean, np.concatenate([right, wrong]))   # [C, B, 2B]
rows = np.arange(nb)
diff = np.asarray(attr)[:, rows, rows] - np.asarray(attr)[:, rows, nb + rows]          # each prompt's own pair
diff = diff.mean(1)
for name, v in zip(parts, diff):
    report(f"  {name:16s} {v:7.2f}")
report(f"  sum {diff.sum():.2f} = the clean logit difference {m_clean:.2f}")
path = args.out / "logit_attribution.png"
plots.logit_attribution(parts, diff, xlabel="contribution to the logit difference, clean answer - corrupted answer",
                        title="direct logit attribution at the last position", path=path)
report.figure(path)

# %%
result = {"scores": {k: v.tolist() for k, v in scores.items()}, "induction_heads": induction_heads,
          "ablation": ablation, "history": history, "patching_heads": restored.tolist(),
          "patching_residual": frac_resid.tolist(), "attribution_patching_heads": approx.tolist(),
          "logit_attribution": dict(zip(parts, diff.tolist())), "logit_difference": [m_clean, m_corrupted]}
report.save()
