"""Hugging Face masked-LM encoders: BertForMaskedLM, RobertaForMaskedLM, XLMRobertaForMaskedLM.

Each is a tiny random ``transformers`` model (odd shapes: hidden 24, 3 heads, 2 layers, vocab 101,
intermediate 40; every weight perturbed, layer norms and the decoder bias included), saved with
``save_pretrained``. Checked: masked-LM logits within 1e-4, attention maps equal to
``output_attentions`` (eager attention) within 1e-5, a right-padded batch with its attention mask,
token types, export -> ``transformers`` loads it with our logits within 1e-5; WordPiece and
Unigram tokenizers trained here and saved through ``BertTokenizerFast`` / ``XLMRobertaTokenizerFast``
encode multilingual text as ``AutoTokenizer`` does; ``fill`` uses the model's own mask token; errors.
"""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

import jaxformer  # noqa: E402
from jaxformer_testing.hf_models import perturb, xlmr_unigram_tokenizer  # noqa: E402
from jaxformer import ModelConfig  # noqa: E402
from jaxformer.errors import CheckpointError, ConfigError  # noqa: E402
from jaxformer.infer.fill import fill_masks  # noqa: E402
from jaxformer.interop import load_hf, load_hf_tokenizer, model_config_from_hf_family, save_hf  # noqa: E402
from jaxformer.model.modules import Encoder  # noqa: E402

pytestmark = pytest.mark.hf
transformers.logging.set_verbosity_error()

V, P = 101, 20
FAMILIES = {"bert": ("BertConfig", "BertForMaskedLM", 0), "roberta": ("RobertaConfig", "RobertaForMaskedLM", 1),
            "xlmr": ("XLMRobertaConfig", "XLMRobertaForMaskedLM", 1)}
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Café déjà vu, naïve résumé!",
         "東京は日本の首都です。北京是中国的首都。", "नमस्ते दुनिया, यह एक परीक्षण है।", "مرحبا بالعالم، هذا اختبار.",
         "Hello world again and again 12345"]


def hf_model(name: str, **kw):
    cfg_cls, cls, pad = FAMILIES[name]
    torch.manual_seed(0)
    kw = dict(dict(vocab_size=V, hidden_size=24, num_hidden_layers=2, num_attention_heads=3, intermediate_size=40,
                   max_position_embeddings=P, type_vocab_size=3, pad_token_id=pad), **kw)
    cfg = getattr(transformers, cfg_cls)(attn_implementation="eager", **kw)
    return perturb(getattr(transformers, cls)(cfg).eval(), 1)


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    hf = hf_model(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(folder)
    return request.param, hf, folder


def tokens(B=2, T=9, seed=0):
    return np.random.default_rng(seed).integers(3, V, (B, T))


def test_logits_attention_maps_and_padding_equal_transformers(family):
    name, hf, folder = family
    model, config, _ = load_hf(folder)
    assert isinstance(model, Encoder) and config.position_offset == (0 if name == "bert" else 2)
    assert (config.norm_position, config.activation, config.norm_eps) == ("post", "gelu_exact", 1e-12)
    ids = tokens()
    types = np.random.default_rng(1).integers(0, 3, ids.shape)
    with torch.no_grad():
        out = hf(torch.from_numpy(ids), output_attentions=True)
        typed = hf(torch.from_numpy(ids), token_type_ids=torch.from_numpy(types)).logits.numpy()
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids))), out.logits.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids), token_type_ids=types)), typed, atol=1e-4, rtol=0)
    maps = np.asarray(jaxformer.attention_maps(model, jnp.asarray(ids)))
    np.testing.assert_allclose(maps, np.stack([a.numpy() for a in out.attentions], axis=1), atol=1e-5, rtol=0)
    mask = np.ones_like(ids)
    mask[1, 5:] = 0                    # right padding, with the padding id as transformers pads
    padded = np.where(mask == 1, ids, hf.config.pad_token_id)
    with torch.no_grad():
        want = hf(torch.from_numpy(padded), attention_mask=torch.from_numpy(mask)).logits.numpy()
    got = np.asarray(model(jnp.asarray(padded), attention_mask=mask))
    np.testing.assert_allclose(got[mask == 1], want[mask == 1], atol=1e-4, rtol=0)
    assert np.abs(got[1, :5] - np.asarray(model(jnp.asarray(ids[1:, :5])))[0]).max() < 1e-4   # padding unseen


def test_export_is_loaded_by_transformers_with_our_logits(family, tmp_path):
    name, hf, folder = family
    model, config, _ = load_hf(folder)
    out = save_hf(model, tmp_path / "out", architecture=FAMILIES[name][1])
    written = json.loads((out / "config.json").read_text())
    assert written["architectures"] == [FAMILIES[name][1]] and written["max_position_embeddings"] == P
    back = transformers.AutoModelForMaskedLM.from_pretrained(out).eval()
    ids = tokens(seed=3)
    with torch.no_grad():
        theirs = back(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(theirs, np.asarray(model(jnp.asarray(ids))), atol=1e-5, rtol=0)
    again, config2, _ = load_hf(out)
    assert config2 == config                      # export -> import: the same config and bits
    for a, b in zip(jax.tree.leaves(model.params()), jax.tree.leaves(again.params())):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_tied_decoder_bias_that_differs_is_refused(tmp_path):
    from safetensors.numpy import load_file, save_file
    hf = hf_model("bert")
    hf.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["cls.predictions.decoder.bias"] = tensors["cls.predictions.bias"] + 1.0
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="'cls.predictions.decoder.bias' differs from 'cls.predictions.bias'"):
        load_hf(tmp_path)
    tensors["cls.predictions.decoder.bias"] = tensors["cls.predictions.bias"]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    load_hf(tmp_path)                     # an equal copy loads


@pytest.mark.parametrize("key, value, match", [
    ("position_embedding_type", "relative_key", "position_embedding_type='relative_key' is not supported"),
    ("is_decoder", True, "is_decoder=True is not supported"),
    ("add_cross_attention", True, "add_cross_attention=True is not supported"),
    ("hidden_act", "silu", "hidden_act='silu' is not supported")])
def test_unsupported_variants_are_one_line_errors(key, value, match):
    hf = {"architectures": ["BertForMaskedLM"], "vocab_size": V, "hidden_size": 24, "num_attention_heads": 3,
          "num_hidden_layers": 2, "intermediate_size": 40, key: value}
    with pytest.raises(CheckpointError, match=match) as e:
        model_config_from_hf_family(hf)
    assert "\n" not in str(e.value)


def test_an_encoder_bert_cannot_express_is_refused_in_one_line(tmp_path):
    cfg = ModelConfig(vocab_size=29, d_model=16, n_head=4, n_layer=2, d_ff=32, max_len=16, causal=False)
    with pytest.raises(ConfigError, match=r"model.causal=False cannot be exported \(.*type_vocab_size=0") as e:
        save_hf(Encoder(cfg, rngs=nnx.Rngs(0)), tmp_path / "x")
    assert "\n" not in str(e.value)


def test_new_knobs_are_validated_in_one_line():
    with pytest.raises(ConfigError, match="model.type_vocab_size=-1 must be an integer >= 0"):
        ModelConfig(type_vocab_size=-1)
    with pytest.raises(ConfigError, match="model.position_offset=2 needs model.positions='learned'"):
        ModelConfig(position_offset=2, positions="rope")
    with pytest.raises(ConfigError, match="model.mlm_head=true needs an ungated"):
        ModelConfig(mlm_head=True, activation="swiglu")


# ----------------------------------------------------------------------------- tokenizers
def wordpiece():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    tk = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.train_from_iterator(TEXTS * 5, trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False))
    cls, sep = tk.token_to_id("[CLS]"), tk.token_to_id("[SEP]")
    tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                      special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tk.decoder = decoders.WordPiece()
    return transformers.BertTokenizerFast(tokenizer_object=tk)


def unigram():
    return xlmr_unigram_tokenizer(TEXTS, 300)


def byte_bpe():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.train_from_iterator(TEXTS * 5, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tk.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tk.decoder = decoders.ByteLevel()
    return transformers.RobertaTokenizerFast(tokenizer_object=tk)


@pytest.mark.parametrize("make, mask", [(wordpiece, "[MASK]"), (unigram, "<mask>"), (byte_bpe, "<mask>")])
def test_tokenizers_encode_as_autotokenizer_does(make, mask, tmp_path):
    make().save_pretrained(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ours = load_hf_tokenizer(tmp_path)
    for text in TEXTS + [" ".join(TEXTS), f"Paris is the {mask} of France."]:
        assert ours.encode(text) == hf(text)["input_ids"], text
    assert ours.mask_id == hf.mask_token_id and ours.bos_id == hf.cls_token_id and ours.eos_id == hf.sep_token_id


def test_fill_uses_the_converted_models_own_mask_token(tmp_path):
    tokenizer = wordpiece()
    hf = hf_model("bert", vocab_size=len(tokenizer))
    hf.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, config, tok = load_hf(tmp_path)
    assert tok.mask_id == 4 != config.vocab_size - 1
    filled = fill_masks(model, tok, "paris is the [MASK] of france.", top=3)
    ids = transformers.AutoTokenizer.from_pretrained(tmp_path)("paris is the [MASK] of france.")["input_ids"]
    (m,) = filled
    assert m["position"] == ids.index(4)
    with torch.no_grad():
        logits = hf(torch.tensor([ids])).logits[0, m["position"]].numpy().astype(np.float64)
    logits[4] = -np.inf
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert [c[0] for c in m["candidates"]] == list(np.argsort(-probs, kind="stable")[:3])
    np.testing.assert_allclose([c[2] for c in m["candidates"]], np.sort(probs)[::-1][:3], atol=1e-5)


def test_convert_and_fill_commands_speak_of_the_mask_token(tmp_path, capsys):
    """``jaxformer convert`` on a BERT folder names the mask token ``fill`` uses (not where a
    sample would stop); ``fill`` on the run gives ``fill_masks``'s candidates; the way back names
    the masked-LM auto class."""
    from jaxformer.cli import main
    from jaxformer.training.checkpoint import load_run
    tokenizer = wordpiece()
    hf = hf_model("bert", vocab_size=len(tokenizer))
    hf.save_pretrained(tmp_path / "hf")
    tokenizer.save_pretrained(tmp_path / "hf")
    run = tmp_path / "run"
    assert main(["convert", "--from-hf", str(tmp_path / "hf"), "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "; jaxformer fill masks with '[MASK]' (id 4)" in out and "a sample stops" not in out
    text = "paris is the [MASK] of france."
    assert main(["fill", "--run", str(run), "--text", text, "--top", "3", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)["masks"]
    loaded = load_run(run)
    expected = json.loads(json.dumps(fill_masks(loaded.model, loaded.tokenizer, text, top=3)))
    assert printed == expected and len(printed) == 1 and len(printed[0]["candidates"]) == 3
    assert main(["convert", "--from-run", str(run), "--out", str(tmp_path / "back")]) == 0
    assert "transformers.AutoModelForMaskedLM.from_pretrained loads it" in capsys.readouterr().out
