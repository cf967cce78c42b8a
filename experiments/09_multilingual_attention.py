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
# # Lab 9: one sentence, five languages: pieces and attention
#
# A multilingual encoder (XLM-R, multilingual BERT) reads a hundred languages with one
# vocabulary. Here we give it the *same* sentence in English, Spanish, Chinese, Hindi and
# Arabic and look at two things:
#
# 1. **the pieces**: how the tokenizer cuts each language. A SentencePiece-Unigram vocabulary
#    is shared by every script, so a language it saw a lot of gets whole words as pieces,
#    and one it saw less of is cut into more, smaller pieces (down to single characters or
#    vowel signs): more tokens for the same meaning;
# 2. **the attention**: an encoder's attention maps on each version (`model.causal=False`:
#    every token sees every token, so the maps are full squares, not triangles).
#
# Where the model comes from:
#
# - `--hf DIR` (or `$JAXFORMER_LAB09_HF`): a local XLM-R or multilingual-BERT folder
#   (`config.json`, weights, `tokenizer.json`) loaded with `jaxformer.load_hf`, its own
#   tokenizer included. Nothing is downloaded.
# - otherwise, a **tiny encoder trained here**: a SentencePiece-Unigram tokenizer (the
#   `tokenizers` library) and a 2-layer encoder trained with masked-LM for 500 steps on
#   the few dozen short parallel sentences written below. It is a toy: it shows the
#   mechanics (and how a shared vocabulary treats scripts), not what XLM-R learned from 2.5 TB.
#
# - Script: `python experiments/09_multilingual_attention.py [--out DIR] [--small] [--hf DIR]`
#   (under a minute on a 2-core CPU; `--small` is a smoke test in seconds)
# - Notebook: `jupytext --to ipynb experiments/09_multilingual_attention.py`, then open it in
#   Jupyter from `experiments/`. Arguments go in `JAXFORMER_EXPERIMENT_ARGS`.

# %%
import json
import os
import time

import numpy as np

from lab_common import Report, parse

NAME = "09_multilingual_attention"
HF_ENV = "JAXFORMER_LAB09_HF"


def extra(ap):
    ap.add_argument("--hf", default=os.environ.get(HF_ENV),
                    help=f"a local XLM-R / multilingual-BERT folder to use (default ${HF_ENV}; "
                         "without it a tiny encoder is trained here)")
    ap.add_argument("--steps", type=int, default=500, help="masked-LM steps of the tiny encoder (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the tokenizer sampling, weights and masks")


args = parse(NAME, "Lab 9: the same sentence in five languages: how a multilingual tokenizer cuts it, "
             "and an encoder's attention maps on each.", extra=extra)

import jax  # noqa: E402  (after parse: --help answers without importing JAX)
import jax.numpy as jnp  # noqa: E402

from jaxformer import attention_maps, load_config, load_hf  # noqa: E402
from jaxformer.data import BPETokenizer  # noqa: E402
from jaxformer.viz import attention_figures  # noqa: E402
from jaxformer.viz.figure import figure_title, new_figure, save, with_fonts  # noqa: E402
from jaxformer.viz.text import displayable, font_chain, text_width_pt  # noqa: E402
from jaxformer.training.steps import init_params, make_optimizer, make_train_step, micro_batches  # noqa: E402

report = Report(args.out)

# %% [markdown]
# ## 1. The sentences
#
# Twenty-four short everyday sentences, each in five languages (written for this lab; simple
# present-tense statements so that the five versions say the same thing), and one more, the
# **probe**, that the tiny encoder never trains on but whose words it has seen: "The dog
# drinks water."

# %%
LANGUAGES = {"en": "English", "es": "Spanish", "zh": "Chinese", "hi": "Hindi", "ar": "Arabic"}
PARALLEL = [  # (en, es, zh, hi, ar)
    ("The cat sleeps.", "El gato duerme.", "猫在睡觉。", "बिल्ली सो रही है।", "القطة نائمة."),
    ("The dog runs in the park.", "El perro corre en el parque.", "狗在公园里跑。", "कुत्ता पार्क में दौड़ता है।",
     "الكلب يركض في الحديقة."),
    ("I drink water every morning.", "Bebo agua cada mañana.", "我每天早上喝水。", "मैं हर सुबह पानी पीता हूँ।",
     "أشرب الماء كل صباح."),
    ("The book is on the table.", "El libro está en la mesa.", "书在桌子上。", "किताब मेज़ पर है।", "الكتاب على الطاولة."),
    ("My mother reads a letter.", "Mi madre lee una carta.", "我的母亲在读一封信。", "मेरी माँ एक पत्र पढ़ रही है।",
     "أمي تقرأ رسالة."),
    ("The children play in the garden.", "Los niños juegan en el jardín.", "孩子们在花园里玩。",
     "बच्चे बगीचे में खेलते हैं।", "الأطفال يلعبون في الحديقة."),
    ("The sun is hot today.", "El sol está caliente hoy.", "今天太阳很热。", "आज सूरज गरम है।", "الشمس حارة اليوم."),
    ("We eat bread and rice.", "Comemos pan y arroz.", "我们吃面包和米饭。", "हम रोटी और चावल खाते हैं।",
     "نأكل الخبز والأرز."),
    ("The teacher writes on the board.", "El profesor escribe en la pizarra.", "老师在黑板上写字。",
     "शिक्षक बोर्ड पर लिखते हैं।", "المعلم يكتب على السبورة."),
    ("The train arrives at noon.", "El tren llega a mediodía.", "火车中午到达。", "ट्रेन दोपहर को आती है।",
     "يصل القطار عند الظهر."),
    ("My friend lives in a big city.", "Mi amigo vive en una ciudad grande.", "我的朋友住在一个大城市。",
     "मेरा दोस्त एक बड़े शहर में रहता है।", "صديقي يعيش في مدينة كبيرة."),
    ("The bird sings in the tree.", "El pájaro canta en el árbol.", "鸟在树上唱歌。", "चिड़िया पेड़ पर गाती है।",
     "الطائر يغني في الشجرة."),
    ("It rains in the evening.", "Llueve por la tarde.", "晚上下雨。", "शाम को बारिश होती है।", "تمطر في المساء."),
    ("The water is cold.", "El agua está fría.", "水很冷。", "पानी ठंडा है।", "الماء بارد."),
    ("I see a small house.", "Veo una casa pequeña.", "我看见一座小房子。", "मुझे एक छोटा घर दिखता है।", "أرى بيتا صغيرا."),
    ("The woman buys fruit at the market.", "La mujer compra fruta en el mercado.", "女人在市场买水果。",
     "औरत बाज़ार में फल खरीदती है।", "المرأة تشتري الفاكهة من السوق."),
    ("The student opens the door.", "El estudiante abre la puerta.", "学生打开门。", "छात्र दरवाज़ा खोलता है।",
     "الطالب يفتح الباب."),
    ("My father drinks tea.", "Mi padre bebe té.", "我的父亲喝茶。", "मेरे पिता चाय पीते हैं।", "أبي يشرب الشاي."),
    ("The moon is bright tonight.", "La luna brilla esta noche.", "今晚月亮很亮。", "आज रात चाँद चमक रहा है।",
     "القمر ساطع الليلة."),
    ("The cat drinks milk.", "El gato bebe leche.", "猫喝牛奶。", "बिल्ली दूध पीती है।", "القطة تشرب الحليب."),
    ("The dog sleeps in the house.", "El perro duerme en la casa.", "狗在房子里睡觉。", "कुत्ता घर में सोता है।",
     "الكلب ينام في البيت."),
    ("We read books in the evening.", "Leemos libros por la tarde.", "我们晚上读书。", "हम शाम को किताबें पढ़ते हैं।",
     "نقرأ الكتب في المساء."),
    ("The children drink water.", "Los niños beben agua.", "孩子们喝水。", "बच्चे पानी पीते हैं।", "الأطفال يشربون الماء."),
    ("The city is big and beautiful.", "La ciudad es grande y hermosa.", "这座城市又大又美。", "शहर बड़ा और सुंदर है।",
     "المدينة كبيرة وجميلة."),
]
PROBE = dict(zip(LANGUAGES, ("The dog drinks water.", "El perro bebe agua.", "狗喝水。", "कुत्ता पानी पीता है।",
                             "الكلب يشرب الماء.")))
TRAIN_TEXTS = [s for row in PARALLEL for s in row]
assert all(len(row) == len(LANGUAGES) for row in PARALLEL) and not set(PROBE.values()) & set(TRAIN_TEXTS)
report(f"{len(PARALLEL)} parallel sentences x {len(LANGUAGES)} languages ({', '.join(LANGUAGES.values())}); "
       "probe: " + " | ".join(PROBE.values()))


# %% [markdown]
# ## 2. The model and its tokenizer
#
# With `--hf DIR`, `load_hf` gives the encoder (`jaxformer.Encoder`, masked-LM head included)
# and its tokenizer (XLM-R's SentencePiece Unigram or mBERT's WordPiece, read from
# `tokenizer.json`, `<s> ... </s>` / `[CLS] ... [SEP]` added as `transformers` adds them).
#
# Without it we build both here. The tokenizer is a **Unigram** model (SentencePiece's
# default, XLM-R's kind): start from many candidate substrings, then repeatedly drop the
# ones whose removal costs the corpus's likelihood least, until `vocab_size` remain. Spaces
# become `▁` (the Metaspace pre-tokenizer), so a piece that starts a word says so, and
# decoding is exact. The encoder: 2 layers x 4 heads, width 64, rotary positions, trained with
# BERT's masked-LM (15% of the tokens masked; the library's jitted train step does it when
# `model.causal=false`) on windows cut from the shuffled sentences, each `<s> ... </s>`.

# %%
def unigram_tokenizer(texts, vocab_size: int) -> BPETokenizer:
    """A SentencePiece-Unigram tokenizer trained on ``texts``, wrapped so that ``encode`` gives
    ``<s> pieces </s>`` (as XLM-R's does)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.Unigram())
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Metaspace()
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    tk.train_from_iterator(texts, trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>", show_progress=False))
    # The trainer finds the same pieces every run, but their order (ids) and scores (to about
    # 0.002) vary from process to process (Rust's randomly seeded hash maps): sorted pieces and
    # scores rounded to 0.01 make the tokenizer, and so the whole lab, the same on every run.
    learned = json.loads(tk.to_str())["model"]["vocab"][len(specials):]
    vocab = [(p, 0.0) for p in specials] + sorted((p, round(score, 2)) for p, score in learned)
    tk.model = models.Unigram(vocab, unk_id=specials.index("<unk>"), byte_fallback=False)
    return BPETokenizer(tk, bos_id=tk.token_to_id("<s>"), eos_id=tk.token_to_id("</s>"), add_eos=True)


def train_encoder(tokenizer, texts, *, small: bool, steps: int, seed: int):
    """A tiny encoder trained with masked-LM on windows of ``texts`` (each ``<s> ... </s>``,
    shuffled, concatenated). Returns ``((params, config), losses)``."""
    d, T, B = (32, 32, 8) if small else (64, 48, 32)
    cfg = load_config(None, [
        f"model.vocab_size={tokenizer.vocab_size + 1}",      # + the mask token, the last id
        f"model.d_model={d}", "model.n_head=4", "model.n_layer=2", f"model.d_ff={4 * d}", "model.max_len=64",
        "model.causal=false", "model.positions=rope", "model.init_std=0.02",
        f"train.batch_size={B}", f"train.max_steps={steps}", "train.lr=3e-3", "train.min_lr=3e-4",
        f"train.warmup_steps={max(steps // 20, 1)}", "train.weight_decay=0.01", f"train.seed={seed}"])
    rng = np.random.default_rng(seed)
    encoded = [tokenizer.encode(s) for s in texts]
    stream = np.concatenate([np.concatenate([encoded[i] for i in rng.permutation(len(encoded))])
                             for _ in range(4)]).astype(np.int32)
    starts = np.cumsum([0] + [len(e) for e in encoded] * 4)[:-1]     # where a sentence begins
    starts = starts[starts + T + 1 <= len(stream)]
    params = init_params(cfg)
    optimizer = make_optimizer(cfg.train, params)
    opt_state, train_step, losses = optimizer.init(params), make_train_step(cfg, optimizer), []
    for step in range(steps):
        batch = np.stack([stream[s:s + T + 1] for s in rng.choice(starts, B)])
        params, opt_state, m = train_step(params, opt_state, jnp.asarray(micro_batches(batch, 1)), jnp.int32(step))
        losses.append(m["loss"])
    return (params, cfg.model), [float(x) for x in jax.device_get(losses)]


start = time.perf_counter()
if args.hf:
    model, mcfg, tokenizer = load_hf(args.hf)
    if tokenizer is None:
        raise SystemExit(f"--hf {args.hf}: no tokenizer.json (or vocab.json + merges.txt) in the folder")
    source = f"weights from {args.hf}"
    n_sentences, losses = None, []
else:
    vocab = 300 if args.small else 500
    tokenizer = unigram_tokenizer(TRAIN_TEXTS, vocab)
    steps = min(args.steps, 40) if args.small else args.steps
    model, losses = train_encoder(tokenizer, TRAIN_TEXTS, small=args.small, steps=steps, seed=args.seed)
    mcfg = model[1]
    n_sentences = len(TRAIN_TEXTS)
    source = f"tiny encoder trained here on {n_sentences} sentences"
    report(f"Unigram tokenizer trained here: {tokenizer.vocab_size} pieces (asked for {vocab})")
    report(f"masked-LM loss: first 10 steps {np.mean(losses[:10]):.2f}, last 10 steps {np.mean(losses[-10:]):.2f} "
           f"nats ({steps} steps; ln V = {np.log(mcfg.vocab_size):.2f})")
report(f"model: {source}: {mcfg.n_layer} layers x {mcfg.n_head} heads, width {mcfg.d_model}, "
       f"vocabulary {mcfg.vocab_size}, causal={mcfg.causal} ({time.perf_counter() - start:.1f} s)")

# %% [markdown]
# ## 3. The pieces
#
# Each probe sentence encoded; its pieces are the vocabulary entries of its ids (`▁` marks a
# word start). Decoding the ids without `<s>`/`</s>` gives the sentence back. The figure
# shows the pieces as boxes, one row per language, and how many pieces each language needs
# per character of text.
#
# Fonts: matplotlib draws each glyph from the first font of the library's fallback chain that
# has it (`jaxformer.viz.text.font_chain`). A machine without CJK or Devanagari fonts (this
# one has only DejaVu and Liberation; `fc-list` shows what yours has) would draw empty boxes
# for those characters; the library writes them as `<U+72D7>` instead, and this lab labels such
# a piece by its code points, `U+72D7` (狗) or `U+0924 094D` (त्), and says in the summary and the
# figure's title which languages were drawn so. Install `fonts-noto-cjk` and `fonts-noto-core`
# (Devanagari) to see the glyphs. Arabic is in DejaVu Sans; matplotlib shapes it and draws
# it right to left within each label.

# %%
def pieces_of(tokenizer, ids):
    """The vocabulary entry of each id (``<s>``, ``▁The``, ``猫``, ...)."""
    return [tokenizer.tk.id_to_token(int(i)) for i in ids]


def piece_label(piece: str) -> str:
    """``piece`` as a figure can show it: each run of characters no installed font draws
    written as its code points, ``U+72D7`` or ``U+0924 094D`` (shorter than the library's
    ``<U+0924><U+094D>``, so heatmap labels stay readable)."""
    out, run = [], []
    for ch in piece + "\0":
        if ch != "\0" and displayable(ch) != ch:
            run.append(f"{ord(ch):04X}")
            continue
        if run:
            out.append("U+" + " ".join(run))
            run = []
        out.append(ch)
    return "".join(out[:-1])


special = {i for i in (tokenizer.bos_id, tokenizer.eos_id, getattr(tokenizer, "mask_id", None)) if i is not None}
ids, pieces, decoded, drawable = {}, {}, {}, {}
for lang, sentence in PROBE.items():
    ids[lang] = tokenizer.encode(sentence)
    pieces[lang] = pieces_of(tokenizer, ids[lang])
    decoded[lang] = tokenizer.tk.decode([i for i in ids[lang] if i not in special])
    drawable[lang] = displayable(sentence) == sentence
    text_pieces = [p for i, p in zip(ids[lang], pieces[lang]) if i not in special]
    report(f"  {LANGUAGES[lang]:8s} {len(text_pieces):2d} pieces / {len(sentence):2d} characters "
           f"= {len(text_pieces) / len(sentence):.2f}: " + " ".join(pieces[lang])
           + ("" if decoded[lang] == sentence else f"   (decodes to {decoded[lang]!r})"))
missing = [LANGUAGES[lang] for lang in PROBE if not drawable[lang]]
font_note = (f"no installed font draws {', '.join(missing)}: their pieces are shown as code points (U+XXXX)" if missing
             else "every script drawn with an installed font")
report(f"fonts: {', '.join(font_chain())}; {font_note}")

BOX_PT = 10.0


@with_fonts
def piece_boxes(pieces_by_row, names, special_pieces, *, title, path):
    """One row of coloured boxes per language, one box per piece (alternating colours, special
    tokens grey), with ``pieces / characters`` at the right."""
    import matplotlib.patches as mpatches

    shown = {k: [piece_label(p) for p in v] for k, v in pieces_by_row.items()}
    widths = {k: [text_width_pt(p, BOX_PT) / 72 + 0.16 for p in v] for k, v in shown.items()}
    span_in = max(sum(w) + 0.06 * len(w) for w in widths.values())
    fig = new_figure(min(max(span_in + 3.2, 7.0), 26.0), 0.55 * len(shown) + 1.2)
    ax = fig.add_subplot()
    colours = ("#cfe2f3", "#f9cb9c")
    for r, (lang, row) in enumerate(shown.items()):
        x = 0.0
        for j, (label, w) in enumerate(zip(row, widths[lang])):
            face = "#e0e0e0" if pieces_by_row[lang][j] in special_pieces else colours[j % 2]
            ax.add_patch(mpatches.FancyBboxPatch((x, -r - 0.35), w, 0.7, boxstyle="round,pad=0,rounding_size=0.05",
                                                 facecolor=face, edgecolor="#555555", linewidth=0.6))
            ax.text(x + w / 2, -r, label, ha="center", va="center", fontsize=BOX_PT)
            x += w + 0.06
        ax.text(x + 0.1, -r, names[lang], ha="left", va="center", fontsize=9, color="#333333")
    ax.set_xlim(-0.05, span_in + 2.6)
    ax.set_ylim(-len(shown) + 0.4, 0.6)
    ax.set_yticks(range(0, -len(shown), -1), [LANGUAGES[k] for k in shown], fontsize=10)
    ax.set_xticks([])
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    figure_title(fig, title, fontsize=11)
    return save(fig, path)


counts = {lang: sum(i not in special for i in ids[lang]) for lang in PROBE}
ratio = {lang: counts[lang] / len(PROBE[lang]) for lang in PROBE}
names = {lang: f"{counts[lang]} pieces / {len(PROBE[lang])} chars = {ratio[lang]:.2f}" for lang in PROBE}
path = args.out / "pieces.png"
piece_boxes(pieces, names, {pieces_of(tokenizer, [i])[0] for i in special},
            title=f"'The dog drinks water.' in five languages, cut by the tokenizer of the {source} "
                  f"({tokenizer.vocab_size} pieces){'' if not missing else '; ' + font_note}", path=path)
report.figure(path)

# %% [markdown]
# ## 4. Attention maps
#
# `jaxformer.attention_maps(model, ids[None])` returns every layer's and head's weights
# `[1, L, H, T, T]` (rows: the attending token, columns: the attended one). The model is an
# encoder, so each row spreads over the whole sentence, before and after the token: the
# maps are full squares, and every row sums to 1. One figure per language: all heads of the
# last layer (`jaxformer.viz.attention_figures.head_grid`), token-labelled.
#
# What to look for: heads that look at the neighbouring piece (a band beside the diagonal,
# on *either* side: a decoder could only show the one below), heads that park their
# attention on `<s>` or `</s>` (a column), and how the same head behaves on the short
# Chinese row and the long Hindi one.

# %%
attention = {}
last = mcfg.n_layer - 1
drawn = ("zh", "hi") if args.small else tuple(PROBE)      # --small: two figures (drawing is the slow part)
for lang in PROBE:
    w = np.asarray(attention_maps(model, np.asarray([ids[lang]], np.int32)))[0]      # [L, H, T, T]
    attention[lang] = w
    above = float(np.triu(w, 1).sum(-1).mean())         # weight on later tokens, mean over rows
    report(f"  {LANGUAGES[lang]:8s} {w.shape[-1]:2d} tokens: mean weight a row puts on later tokens {above:.2f}; "
           f"rows sum to 1 within {np.abs(w.sum(-1) - 1).max():.1e}")
    if lang not in drawn:
        continue
    path = args.out / f"attention_{lang}.png"
    attention_figures.head_grid(
        w[last], [piece_label(p) for p in pieces[lang]], layer=last,
        title=f"{LANGUAGES[lang]}: layer {last}, every head ({source}); rows sum to 1, keys on both sides",
        path=path)
    report.figure(path)

# %% [markdown]
# ## 5. Where each head looks, per language
#
# A summary over every head: how far (in pieces) a head's attention reaches, on average,
# and how much weight goes to `<s>`/`</s>`, language by language. A head that looks "one
# piece over" covers a whole word in English but a single vowel sign in Hindi: piece
# distance is not text distance, which is one reason multilingual models are compared per
# character, not per token.

# %%
distance, on_special = {}, {}
for lang, w in attention.items():
    T = w.shape[-1]
    offsets = np.abs(np.arange(T)[:, None] - np.arange(T)[None, :])
    distance[lang] = (w * offsets).sum(-1).mean(-1)                          # [L, H]
    is_special = np.isin(ids[lang], list(special))
    on_special[lang] = w[..., is_special].sum(-1).mean(-1)                    # [L, H]
for layer in range(mcfg.n_layer):
    for h in range(mcfg.n_head):
        report(f"  L{layer}H{h} mean distance (pieces) " + "  ".join(
            f"{lang} {distance[lang][layer, h]:4.1f}" for lang in PROBE) + "   on <s>/</s> " + "  ".join(
            f"{lang} {on_special[lang][layer, h]:.2f}" for lang in PROBE))

# %%
result = {"source": source, "n_sentences": n_sentences, "vocab_size": tokenizer.vocab_size, "losses": losses,
          "sentences": PROBE, "ids": {k: list(map(int, v)) for k, v in ids.items()}, "pieces": pieces,
          "decoded": decoded, "drawable": drawable, "pieces_per_char": ratio,
          "attention": attention, "distance": {k: v.tolist() for k, v in distance.items()},
          "on_special": {k: v.tolist() for k, v in on_special.items()}}
report.save()
