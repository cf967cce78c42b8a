"""The word-level tokenizer (``data.tokenizer: word``) and small prepared vocabularies."""
from __future__ import annotations

import random

import pytest

from jaxformer.cli import main
from jaxformer.config import load_config
from jaxformer.data.tokenizers import build_tokenizer, load_tokenizer, save_tokenizer, start_ids
from jaxformer.data.words import WordTokenizer, join_words, split_words
from jaxformer.errors import ConfigError, DataError

LAB = ["hello", "i", "am", "moooaahhh"]


def _lab_text(lines=40, seed=0) -> str:
    r = random.Random(seed)
    return "\n".join(" ".join(r.choice(LAB) for _ in range(8)) + "." for _ in range(lines)) + "\n"


def test_split_words_and_punctuation():
    assert split_words("Hello, world! don't (x)\n  f(a_1).") == \
        ["Hello", ",", "world", "!", "don't", "(", "x", ")", "\n", "f", "(", "a_1", ")", "."]


def test_vocabulary_counts_min_count_and_unknown():
    tok = WordTokenizer.from_text("b a b c b a", min_count=2)
    assert tok.vocab == ["<unk>", "\n", "b", "a"]
    assert tok.encode("a b c") == [3, 2, 0]
    assert tok.decode([3, 0]) == "a <unk>"
    assert build_tokenizer("word", "hello i am moooaahhh").vocab_size == 6
    with pytest.raises(DataError, match="word_min_count"):
        WordTokenizer.from_text("a b", min_count=2)


@pytest.mark.parametrize("text", ["hello i am moooaahhh", "Hello, world! (This is it.) don't stop: 100%",
                                  "one line.\ntwo lines; [three]\n\nend?"])
def test_known_words_with_standard_spacing_round_trip(text):
    tok = WordTokenizer.from_text(text)
    assert tok.decode(tok.encode(text)) == text
    assert join_words(split_words(text)) == text


def test_save_load_and_start(tmp_path):
    tok = WordTokenizer.from_text(_lab_text())
    save_tokenizer(tok, tmp_path / "t.json")
    back = load_tokenizer(tmp_path / "t.json")
    assert back.vocab == tok.vocab and back.to_dict() == {"type": "word", "words": tok.words}
    assert start_ids(back) == [1]                      # an empty prompt starts at a line break
    assert [back.decode([i]) for i in back.encode("hello moooaahhh")] == ["hello", "moooaahhh"]


def test_config_accepts_word_and_min_count():
    cfg = load_config("toy", ["data.tokenizer=word", "data.word_min_count=3"])
    assert (cfg.data.tokenizer, cfg.data.word_min_count) == ("word", 3)
    with pytest.raises(ConfigError, match="data.word_min_count=0 must be an integer >= 1"):
        load_config("toy", ["data.tokenizer=word", "data.word_min_count=0"])


TINY = ["--set", "train.max_steps=2", "--set", "train.eval_interval=2", "--set", "train.eval_steps=1",
        "--set", "train.checkpoint_interval=2", "--set", "train.batch_size=2", "--set", "model.max_len=8",
        "--set", "model.n_layer=1", "--no-progress"]


def test_train_word_tokenizer_then_sample_whole_words(tmp_path, capsys):
    (tmp_path / "lab.txt").write_text(_lab_text(), encoding="utf-8")
    out = tmp_path / "run"
    assert main(["train", "--config", "toy", "--data", str(tmp_path / "lab.txt"), "--set", "data.tokenizer=word",
                 "--set", "train.sample_tokens=0", "--out", str(out), *TINY]) == 0
    assert load_tokenizer(out / "tokenizer.json").vocab_size == 7      # <unk>, \n, 4 words, "."
    capsys.readouterr()
    assert main(["sample", "--run", str(out), "--prompt", "hello i", "--max-new-tokens", "12", "--seed", "0"]) == 0
    text = capsys.readouterr().out
    words = set(split_words(text)) - {"\n"}
    assert words and words <= set(LAB) | {"."}, text


def test_prepared_folder_with_a_5_word_vocabulary_trains(tmp_path):
    """A tokenizers WordLevel tokenizer.json (5 ids) through ``prepare --tokenizer hf:PATH``, then train."""
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"<unk>": 0, "hello": 1, "i": 2, "am": 3, "moooaahhh": 4}
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tk.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "lab.txt").write_text(_lab_text(80).replace(".", ""), encoding="utf-8")
    assert main(["prepare", "--data", str(tmp_path / "lab.txt"), "--tokenizer", f"hf:{tmp_path / 'tokenizer.json'}",
                 "--out", str(tmp_path / "prep")]) == 0
    out = tmp_path / "run"
    assert main(["train", "--config", "toy", "--data", str(tmp_path / "prep"), "--set", "train.sample_tokens=0",
                 "--out", str(out), *TINY]) == 0
    saved = load_config(out / "config.yaml")
    assert saved.model.vocab_size == 5 and saved.data.vocab_size == 5


def test_bpe_trained_here_still_needs_258():
    with pytest.raises(DataError, match="data.vocab_size=100 must be an integer >= 258"):
        build_tokenizer("bpe", "some text", 100)


def test_prepare_counts_a_word_cut_by_a_block_boundary_once(tmp_path, monkeypatch):
    """``prepare --tokenizer word`` reads a file in blocks; a word a block boundary cuts is still
    one word: the vocabulary (and so the tokens) equal those of the whole text read at once."""
    from jaxformer.data import corpus
    from jaxformer.data.shards import TokenShards
    monkeypatch.setattr(corpus, "BLOCK_BYTES", 7)       # every few words cut somewhere
    text = ("the quick brown fox jumps over the lazy dog, don't you think?\n"
            "a moooaahhh sound (loud) from the barn: quick!\n") * 3 + "unfinished"
    (tmp_path / "c.txt").write_text(text, encoding="utf-8")
    assert main(["prepare", "--data", str(tmp_path / "c.txt"), "--tokenizer", "word", "--out", str(tmp_path / "p"), "--no-progress"]) == 0
    whole = WordTokenizer.from_text(text)
    tok = load_tokenizer(tmp_path / "p" / "tokenizer.json")
    assert tok.vocab == whole.vocab and "moooaahhh" in tok.vocab and "oaa" not in tok.vocab
    assert list(TokenShards(tmp_path / "p").tokens()) == whole.encode(text)
