"""Tokenizers of converted Hugging Face models encode as ``transformers.AutoTokenizer`` does:
the BOS first for Llama- and Gemma-style folders, none for GPT-NeoX-style ones; every eos id of
the model ends a sample; a converted random Llama run samples and scores as transformers
does on the BOS-prefixed ids; run folders written before these settings still load."""
import json

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from tokenizers import (AddedToken, Tokenizer, decoders, models, normalizers,  # noqa: E402
                        pre_tokenizers, processors, trainers)

from jaxformer.training.checkpoint import load_run  # noqa: E402
from jaxformer.cli import main  # noqa: E402
from jaxformer.data import BPETokenizer, encode_corpus, end_ids, start_ids, tokenizer_from_dict  # noqa: E402
from jaxformer.errors import CheckpointError, DataError  # noqa: E402
from jaxformer.interop import load_hf_tokenizer  # noqa: E402
from jaxformer.interop.hf_files import _write_tokenizer  # noqa: E402

transformers.logging.set_verbosity_error()

CORPUS = ("The quick brown fox jumps over the lazy dog. A stitch in time saves nine. "
          "To be, or not to be, that is the question. All that glitters is not gold.\n") * 4
TEXTS = ["To be, or not to be", "  leading spaces and\nnew lines\n", "naïve café 🦊 — ünïcödé",
         "x", "", "the dog </s> and <eos> inside"]


def _trained_merges(pre_tokenizer, normalizer=None, n=320):
    tk = Tokenizer(models.BPE())
    tk.normalizer = normalizer
    tk.pre_tokenizer = pre_tokenizer
    tk.train_from_iterator([CORPUS], trainers.BpeTrainer(vocab_size=n, show_progress=False))
    d = json.loads(tk.to_str())["model"]
    return d["vocab"], [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in d["merges"]]


def _byte_fallback_bpe(specials, *, gemma: bool):
    """A SentencePiece-like BPE as Llama / Gemma tokenizer.json files have it: specials first,
    then ``<0x00>``..``<0xFF>`` byte-fallback tokens, then the merged pieces."""
    if gemma:      # Gemma: spaces become "▁" in the normalizer, split after each "▁"
        norm, pre = normalizers.Replace(" ", "▁"), pre_tokenizers.Split(" ", behavior="merged_with_previous")
        dec = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    else:          # Llama (legacy=False): Metaspace, "▁" before the first word only
        norm, pre = None, pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
        dec = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                 decoders.Strip(" ", 1, 0)])
    # merges learned word by word (Metaspace split=True), applied as Llama does (split=False)
    train_pre = pre if gemma else pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trained, merges = _trained_merges(train_pre, norm)
    vocab = {}
    for t in specials + [f"<0x{i:02X}>" for i in range(256)] + sorted(trained, key=trained.get):
        vocab.setdefault(t, len(vocab))
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tk.normalizer, tk.pre_tokenizer, tk.decoder = norm, pre, dec
    return tk


def _bos_template(tk, bos):
    return processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1",
                                         special_tokens=[(bos, tk.token_to_id(bos))])


def _byte_level_bpe(specials):
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator([CORPUS], trainers.BpeTrainer(
        vocab_size=330, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return tk


def write_style(folder, style: str):
    """Write ``tokenizer.json`` + ``tokenizer_config.json`` (+ ``generation_config.json`` for
    llama3) of one style into ``folder``; returns the ``tokenizers.Tokenizer``."""
    folder.mkdir(parents=True, exist_ok=True)
    if style == "llama":
        tk = _byte_fallback_bpe(["<unk>", "<s>", "</s>"], gemma=False)
        tk.post_processor = _bos_template(tk, "<s>")
        cfg = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
               "bos_token": {"content": "<s>", "special": True, "__type": "AddedToken"},
               "eos_token": "</s>", "unk_token": "<unk>", "legacy": False}
    elif style == "gemma":
        tk = _byte_fallback_bpe(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"], gemma=True)
        tk.post_processor = _bos_template(tk, "<bos>")
        cfg = {"tokenizer_class": "GemmaTokenizer", "add_bos_token": True, "add_eos_token": False,
               "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>"}
    elif style == "neox":
        tk = _byte_level_bpe(["<|endoftext|>", "<|padding|>"])
        tk.post_processor = processors.ByteLevel(trim_offsets=False)
        cfg = {"tokenizer_class": "GPTNeoXTokenizer", "add_bos_token": False, "add_eos_token": False,
               "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    elif style == "llama3":
        tk = _byte_level_bpe(["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"])
        tk.post_processor = processors.Sequence([processors.ByteLevel(trim_offsets=False),
                                                 _bos_template(tk, "<|begin_of_text|>")])
        cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
               "eos_token": "<|eot_id|>"}
        ids = [tk.token_to_id("<|end_of_text|>"), tk.token_to_id("<|eot_id|>")]
        (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": ids}))
    else:
        raise ValueError(style)
    tk.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    return tk


STYLES = {"llama": ("<s>", "</s>"), "gemma": ("<bos>", "<eos>"), "neox": (None, "<|endoftext|>"),
          "llama3": ("<|begin_of_text|>", "<|eot_id|>")}


@pytest.mark.parametrize("style", list(STYLES))
def test_encode_equals_transformers_auto_tokenizer(style, tmp_path):
    tk = write_style(tmp_path, style)
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path)
    tok = load_hf_tokenizer(tmp_path)
    bos, eos = STYLES[style]
    assert tok.bos_id == (None if bos is None else tk.token_to_id(bos))
    assert tok.eos_id == tk.token_to_id(eos) == ref.eos_token_id
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == ref(text)["input_ids"], text
        assert tok.encode(text, add_special_tokens=False) == ref(text, add_special_tokens=False)["input_ids"]
        plain = tok.encode(text, add_special_tokens=False)
        assert ids == ([] if bos is None else [tok.bos_id]) + plain
    if style in ("llama", "gemma"):       # byte fallback reached, and text round-trips
        ids = tok.encode(TEXTS[2], add_special_tokens=False)
        assert any(tk.id_to_token(i).startswith("<0x") for i in ids) and tok.decode(ids) == TEXTS[2]
    assert start_ids(tok) == ([tok.bos_id] if bos is not None else [tok.eos_id])
    back = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
    assert back.special_settings() == tok.special_settings()
    assert [back.encode(t) for t in TEXTS] == [tok.encode(t) for t in TEXTS]


def test_llama3_stops_at_every_eos_id(tmp_path):
    tk = write_style(tmp_path, "llama3")
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": tk.token_to_id("<|end_of_text|>"),
                                                      "bos_token_id": tk.token_to_id("<|begin_of_text|>")}))
    tok = load_hf_tokenizer(tmp_path)
    eot, end = tk.token_to_id("<|eot_id|>"), tk.token_to_id("<|end_of_text|>")
    assert tok.eos_id == eot and tok.stop_ids == (eot, end) == end_ids(tok)
    assert tok.bos_id == tk.token_to_id("<|begin_of_text|>")


def test_tokenizer_config_decides_when_the_post_processor_adds_nothing(tmp_path):
    """A tokenizer.json without a BOS template follows tokenizer_config.json's add_bos_token /
    add_eos_token (transformers 4's Llama tokenizer did; transformers 5 reads only the
    post-processor when tokenizer.json has one, and the folders it writes always do)."""
    tk = _byte_fallback_bpe(["<unk>", "<s>", "</s>"], gemma=False)
    tk.save(str(tmp_path / "tokenizer.json"))
    cfg = {"add_bos_token": True, "add_eos_token": True, "bos_token": "<s>", "eos_token": "</s>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = load_hf_tokenizer(tmp_path)
    assert tok.encode("to be") == [1] + tk.encode("to be").ids + [2]
    out = tmp_path / "exported"                  # written back, transformers 5 adds them too
    out.mkdir()
    _write_tokenizer(tok, out, max_len=64)
    assert transformers.AutoTokenizer.from_pretrained(out)("to be")["input_ids"] == tok.encode("to be")
    cfg["bos_token"] = "<absent>"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"add_bos_token=true but bos_token='<absent>'"):
        load_hf_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": "yes"}))
    with pytest.raises(CheckpointError, match=r"add_bos_token='yes' must be true or false"):
        load_hf_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{}")
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": "two"}))
    with pytest.raises(CheckpointError, match=r"config.json eos_token_id='two' must be a token id"):
        load_hf_tokenizer(tmp_path)


def test_saved_settings_and_old_tokenizer_files(tmp_path):
    trained = BPETokenizer.train(CORPUS, 300)
    assert set(trained.to_dict()) == {"type", "tokenizer"}          # the format of a BPE without a BOS
    write_style(tmp_path, "llama")
    tok = load_hf_tokenizer(tmp_path)
    d = tok.to_dict()
    assert (d["bos_id"], d["eos_id"], d["stop_ids"], d["add_eos"]) == (1, 2, [2], False)
    old = tokenizer_from_dict({"type": "bpe", "tokenizer": d["tokenizer"]})   # a run folder from before
    assert old.bos_id is None and old.eos_id == 2 and old.encode("to be") == tok.encode("to be")[1:]
    data = encode_corpus(CORPUS, tok, val_fraction=0.1)           # training data: no BOS anywhere
    assert list(data.train) + list(data.val) == tok.encode(CORPUS, add_special_tokens=False)
    with pytest.raises(DataError, match=r"bos_id=9999 is outside its vocabulary"):
        tokenizer_from_dict({**d, "bos_id": 9999})
    with pytest.raises(DataError, match=r"stop_ids=3 must be a list"):
        tokenizer_from_dict({**d, "stop_ids": 3})


# ----------------------------------------------------------------------------- a converted run
PROMPT = "To be, or not"


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory):
    """(hf_model, AutoTokenizer, run folder): a random Llama with a Llama-style tokenizer
    (``<s>`` first) and two eos ids, one of which it is made to produce after a few tokens."""
    root = tmp_path_factory.mktemp("bos_llama")
    hf_dir, run = root / "hf", root / "run"
    tk = write_style(hf_dir, "llama")
    V = tk.get_vocab_size()
    cfg = transformers.LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
        initializer_range=0.2, bos_token_id=1, eos_token_id=[2, V - 1], attn_implementation="eager")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    ref = transformers.AutoTokenizer.from_pretrained(hf_dir)
    ids = ref(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():   # make the second eos id win the greedy step where token t* would
        out = model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
        target = int(out[0, -1])
        assert model(out[:, :-1]).logits[0, -1, target] > 0
        model.lm_head.weight[V - 1] = 1.05 * model.lm_head.weight[target]
    model.save_pretrained(hf_dir)
    return model, ref, run, hf_dir


@pytest.fixture(scope="module")
def converted(llama_run):
    model, ref, run, hf_dir = llama_run
    assert main(["convert", "--from-hf", str(hf_dir), "--out", str(run)]) == 0
    return llama_run


@pytest.mark.parametrize("prompt", [PROMPT, ""])
def test_sample_is_transformers_generate_with_the_bos(converted, prompt, capsys):
    model, ref, run, _ = converted
    capsys.readouterr()
    assert main(["sample", "--run", str(run), "--prompt", prompt, "--max-new-tokens", "12",
                 "--temperature", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    ids = ref(prompt, return_tensors="pt").input_ids
    assert out["prompt_ids"] == ids[0].tolist() and out["prompt_ids"][0] == 1
    assert out["settings"]["stop_tokens"] == [2, model.config.vocab_size - 1]
    with torch.no_grad():
        theirs = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)[0, ids.shape[1]:]
    sample = out["samples"][0]
    assert sample["token_ids"] == theirs.tolist()
    if prompt:
        assert sample["stopped"] and sample["token_ids"][-1] == model.config.vocab_size - 1
        # the continuation keeps its leading space (SentencePiece decoders drop a first one)
        assert prompt + sample["text"] == ref.decode(ids[0, 1:].tolist() + theirs[:-1].tolist())


def test_score_is_transformers_log_probs_after_the_bos(converted, capsys):
    model, ref, run, _ = converted
    text = "All that glitters is not gold."
    capsys.readouterr()
    assert main(["score", "--run", str(run), "--text", text, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    ids = ref(text)["input_ids"]
    assert out["token_ids"] == ids and ids[0] == 1 and len(out["logprobs"]) == len(ids) - 1
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    np.testing.assert_allclose(out["logprobs"], [float(logp[t, ids[t + 1]]) for t in range(len(ids) - 1)],
                               atol=1e-4)


def test_attention_and_run_users_see_the_bos(converted, tmp_path, capsys):
    _, ref, run, _ = converted
    r = load_run(run)
    assert r.tokenizer.encode(PROMPT) == ref(PROMPT)["input_ids"]
    capsys.readouterr()
    assert main(["attention", "--run", str(run), "--text", PROMPT, "--out", str(tmp_path / "a.html")]) == 0
    assert f"{len(ref(PROMPT)['input_ids'])} tokens" in capsys.readouterr().out
    assert "&lt;s&gt;" in (tmp_path / "a.html").read_text() or "<s>" in (tmp_path / "a.html").read_text()


def test_export_keeps_the_bos_for_transformers(converted, tmp_path):
    model, ref, run, _ = converted
    assert main(["convert", "--from-run", str(run), "--out", str(tmp_path / "hf")]) == 0
    again = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert [again(t)["input_ids"] for t in TEXTS] == [ref(t)["input_ids"] for t in TEXTS]
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["bos_token_id"] == 1 and cfg["eos_token_id"] == [2, model.config.vocab_size - 1]


def test_old_style_run_folder_loads_without_a_bos(converted, tmp_path, capsys):
    import shutil
    _, ref, run, _ = converted
    old = tmp_path / "old"
    shutil.copytree(run, old)
    d = json.loads((old / "tokenizer.json").read_text())
    (old / "tokenizer.json").write_text(json.dumps({"type": "bpe", "tokenizer": d["tokenizer"]}))
    r = load_run(old)
    assert r.tokenizer.bos_id is None
    assert r.tokenizer.encode(PROMPT) == ref(PROMPT, add_special_tokens=False)["input_ids"]
    capsys.readouterr()
    assert main(["sample", "--run", str(old), "--prompt", PROMPT, "--max-new-tokens", "3",
                 "--temperature", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["prompt_ids"][0] != 1


def test_convert_with_a_tokenizer_json_file_takes_the_models_end_tokens(converted, tmp_path, capsys):
    import shutil
    model, ref, _, hf_dir = converted
    bare = tmp_path / "bare"                     # the weights and configs, no tokenizer files
    bare.mkdir()
    for f in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(hf_dir / f, bare / f)
    capsys.readouterr()
    assert main(["convert", "--from-hf", str(bare), "--out", str(tmp_path / "run"),
                 "--tokenizer", str(hf_dir / "tokenizer.json")]) == 0
    V = model.config.vocab_size
    assert "tokenizer: BOS '<s>' (id 1) first; a sample stops at '</s>' (2), " in capsys.readouterr().out
    tok = load_run(tmp_path / "run").tokenizer
    assert (tok.bos_id, tok.eos_id, tok.stop_ids) == (1, 2, (2, V - 1))
    assert tok.encode(PROMPT) == ref(PROMPT)["input_ids"]
