"""Lab 9 (experiments/09_multilingual_attention.py): the pieces a multilingual tokenizer cuts one
sentence into in five languages, and an encoder's attention maps on them.

- ``--small``: the Unigram tokenizer and tiny encoder trained in the lab; its pieces are the
  tokenizer's own encoding, decode back to each sentence, the figures are written, the maps are
  full (weight above the diagonal) and their rows sum to 1;
- ``--hf DIR`` (marked ``hf``): a tiny random ``XLMRobertaForMaskedLM`` and a Unigram tokenizer
  saved here with ``transformers``: the lab's ids and pieces are ``AutoTokenizer``'s, its
  attention maps ``output_attentions``' within 1e-5;
- the full run (``slow``): the masked-LM loss falls far, and Chinese needs more pieces per
  character than English.
"""
import pathlib
import runpy
import sys

import numpy as np
import pytest
from jaxformer_testing.hf_models import perturb, xlmr_unigram_tokenizer

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"
NAME = "09_multilingual_attention"
PROBE = {"en": "The dog drinks water.", "es": "El perro bebe agua.", "zh": "狗喝水。", "hi": "कुत्ता पानी पीता है।",
         "ar": "الكلب يشرب الماء."}


def run_lab(tmp_path, monkeypatch, *extra, small=True):
    """Run the lab as ``python 09_multilingual_attention.py [--small] --out DIR ...`` would, in
    this process; returns its namespace and output folder."""
    out = tmp_path / NAME
    monkeypatch.setattr(sys, "argv", [f"{NAME}.py", *(["--small"] if small else []), "--out", str(out), *extra])
    monkeypatch.delenv("JAXFORMER_EXPERIMENT_ARGS", raising=False)
    monkeypatch.delenv("JAXFORMER_LAB09_HF", raising=False)
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    ns = runpy.run_path(str(EXPERIMENTS / f"{NAME}.py"), run_name="__main__")
    assert ns["result"]["sentences"] == PROBE
    return ns, out


def check_attention(result, config, *, every_head=True):
    """Every map ``[L, H, T, T]`` has one row per token, rows summing to 1, and real weight on
    later tokens (an encoder's map is no triangle): in every head (``every_head``: an untrained
    or random model), else in some head of every layer and on average (a trained encoder may
    grow a previous-token head, nearly triangular on its own)."""
    for lang, w in result["attention"].items():
        T = len(result["ids"][lang])
        assert w.shape == (config.n_layer, config.n_head, T, T), lang
        assert np.all(w >= 0) and np.abs(w.sum(-1) - 1).max() < 1e-5, lang
        above = np.triu(w, 1).sum((-2, -1)) / T                 # mean weight a row puts on later tokens
        if every_head:   # a random model's head may be peaked, but none is a triangle
            assert above.min() > 0.01 and above.mean() > 0.2, (lang, above)
        else:
            assert above.max(-1).min() > 0.3 and above.mean() > 0.2, (lang, above)


def check_figures(out, langs):
    for name in ["pieces"] + [f"attention_{lang}" for lang in langs]:
        assert (out / f"{name}.png").stat().st_size > 5000, name
    assert "pieces /" in (out / "summary.txt").read_text(encoding="utf-8")


def test_09_small_pieces_decode_and_full_attention(tmp_path, monkeypatch):
    ns, out = run_lab(tmp_path, monkeypatch)
    result, tk = ns["result"], ns["tokenizer"].tk
    assert result["source"] == "tiny encoder trained here on 120 sentences" == ns["source"]
    bos, eos = tk.token_to_id("<s>"), tk.token_to_id("</s>")
    for lang, sentence in PROBE.items():
        enc = tk.encode(sentence, add_special_tokens=False)
        assert result["ids"][lang] == [bos] + enc.ids + [eos], lang
        assert result["pieces"][lang] == ["<s>"] + enc.tokens + ["</s>"], lang
        assert result["decoded"][lang] == sentence == tk.decode(enc.ids), lang
        assert "<unk>" not in result["pieces"][lang], lang
        # the pieces spell the sentence (▁ = a space; the first one is the added prefix)
        assert "".join(enc.tokens).replace("\u2581", " ").lstrip() == sentence, lang
    assert np.mean(result["losses"][-10:]) < np.mean(result["losses"][:10]) - 0.3
    check_attention(result, ns["mcfg"])
    check_figures(out, ("zh", "hi"))
    # a piece no installed font can draw is labelled by its code points
    from jaxformer.viz.text import displayable
    label = ns["piece_label"]
    assert label("\u2581" + "狗") == "\u2581" + ("狗" if displayable("狗") == "狗" else "U+72D7")
    assert label("त्") == ("त्" if displayable("त्") == "त्" else "U+0924 094D")
    assert result["drawable"]["en"] and result["drawable"]["es"]


# ----------------------------------------------------------------------------- --hf DIR
def xlmr_folder(folder):
    """A tiny random XLMRobertaForMaskedLM and a Unigram tokenizer (as XLM-R's, trained on a few
    sentences of the five languages), saved with ``save_pretrained``. Returns the model."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    texts = list(PROBE.values()) + ["The cat sleeps on the mat.", "El gato duerme.", "猫在睡觉。", "बिल्ली सो रही है।",
                                    "القطة نائمة."]
    tokenizer = xlmr_unigram_tokenizer(texts, 150)
    torch.manual_seed(0)
    cfg = transformers.XLMRobertaConfig(vocab_size=len(tokenizer), hidden_size=24, num_hidden_layers=2,
                                        num_attention_heads=3, intermediate_size=40, max_position_embeddings=40,
                                        pad_token_id=1, attn_implementation="eager")
    # sharper than the init, so the maps are not uniform
    hf = perturb(transformers.XLMRobertaForMaskedLM(cfg).eval(), seed=1, scale=0.3)
    hf.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return hf


@pytest.mark.hf
def test_09_hf_folder_uses_its_weights_and_tokenizer(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "tiny-xlmr"
    hf = xlmr_folder(folder)
    ns, out = run_lab(tmp_path, monkeypatch, "--hf", str(folder))
    result = ns["result"]
    assert result["source"] == f"weights from {folder}" and result["losses"] == []
    assert ns["mcfg"].causal is False and (ns["mcfg"].n_layer, ns["mcfg"].n_head) == (2, 3)
    auto = transformers.AutoTokenizer.from_pretrained(folder)
    for lang, sentence in PROBE.items():
        ids = auto(sentence)["input_ids"]
        assert result["ids"][lang] == ids, lang
        assert result["pieces"][lang] == auto.convert_ids_to_tokens(ids), lang
        assert result["decoded"][lang] == sentence, lang
        with torch.no_grad():
            want = np.stack([a[0].numpy() for a in hf(torch.tensor([ids]), output_attentions=True).attentions])
        np.testing.assert_allclose(result["attention"][lang], want, atol=1e-5, err_msg=lang)
    check_attention(result, ns["mcfg"])
    check_figures(out, ("zh", "hi"))
    assert f"weights from {folder}" in (out / "summary.txt").read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- the full run
@pytest.mark.slow
def test_09_full_run(tmp_path, monkeypatch):
    """At its normal budget (500 steps, under a minute on 2 cores): the masked-LM loss falls
    from about ln V to below 3 nats, Chinese takes more pieces per character than English,
    and every language gets its figure."""
    ns, out = run_lab(tmp_path, monkeypatch, small=False)
    result = ns["result"]
    losses = result["losses"]
    assert len(losses) == 500 and np.mean(losses[:10]) > 5.0 and np.mean(losses[-10:]) < 3.0
    ppc = result["pieces_per_char"]
    assert ppc["zh"] > 2 * ppc["en"]
    check_attention(result, ns["mcfg"], every_head=False)
    check_figures(out, tuple(PROBE))
