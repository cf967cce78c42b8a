"""Tokenizers (round trips, errors, JSON save/load), corpora, memmaps and deterministic batches."""
import numpy as np
import pytest

from jaxformer.data import (BPETokenizer, ByteTokenizer, CharTokenizer, encode_corpus, get_batch, host_batch,
                            host_rows, load_corpus, load_tokenizer, pydoc_text, save_tokenizer, token_dtype,
                            tokenizer_from_dict)
from jaxformer.errors import DataError

MULTILINGUAL = ("Grüße aus Köln, Straße — Ελληνικά: καλημέρα κόσμε; 中文：你好，世界！"
                " emoji 🙂🎉👩‍💻 and ASCII text.\n\tTabs, 'quotes' \"too\".")


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(pydoc_text()[:60_000] + MULTILINGUAL[:20], 400)


def test_byte_round_trip_multilingual():
    tok = ByteTokenizer()
    ids = tok.encode(MULTILINGUAL)
    assert ids == list(MULTILINGUAL.encode("utf-8")) and max(ids) < 256
    assert tok.decode(ids) == MULTILINGUAL
    assert tok.vocab_size == 256


def test_bpe_round_trip_multilingual(bpe):
    assert bpe.vocab_size == 400
    for text in (MULTILINGUAL, "", " leading space", "def f(x):\n    return x ** 2\n"):
        assert bpe.decode(bpe.encode(text)) == text
    # the merges compress English: fewer tokens than bytes
    english = pydoc_text()[100_000:102_000]
    assert len(bpe.encode(english)) < 0.6 * len(english.encode())
    assert bpe.eos_id == bpe.tk.token_to_id("<|endoftext|>")


def test_char_round_trip_and_unknown_character_error():
    tok = CharTokenizer.from_text("hello world")
    assert tok.vocab_size == len(set("hello world"))
    assert tok.decode(tok.encode("low droll")) == "low droll"
    with pytest.raises(DataError, match=r"character 'ß' \(U\+00DF\) at position 3"):
        tok.encode("lowß")
    with pytest.raises(DataError, match="token id 99"):
        tok.decode([99])


@pytest.mark.parametrize("make", [lambda: CharTokenizer.from_text(MULTILINGUAL), ByteTokenizer])
def test_save_load_json(tmp_path, make):
    tok = make()
    save_tokenizer(tok, tmp_path / "tok.json")
    text = (tmp_path / "tok.json").read_text(encoding="utf-8")
    assert text.startswith("{")      # JSON, nothing else
    back = load_tokenizer(tmp_path / "tok.json")
    assert type(back) is type(tok) and back.vocab_size == tok.vocab_size
    assert back.encode(MULTILINGUAL) == tok.encode(MULTILINGUAL)


def test_bpe_save_load(tmp_path, bpe):
    save_tokenizer(bpe, tmp_path / "tok.json")
    back = load_tokenizer(tmp_path / "tok.json")
    assert back.to_dict()["type"] == "bpe" and back.encode(MULTILINGUAL) == bpe.encode(MULTILINGUAL)
    with pytest.raises(DataError, match="'wordpiece' is not one of"):
        tokenizer_from_dict({"type": "wordpiece"})


def test_corpora(tmp_path, shakespeare_path):
    text = load_corpus("pydoc")
    assert len(text) > 300_000 and "Python" in text
    (tmp_path / "a.txt").write_text("first file\n", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("second Grüße\n", encoding="utf-8")
    (tmp_path / "skip.bin").write_bytes(b"\xff\x00")
    assert load_corpus(str(tmp_path)) == "first file\n\n\nsecond Grüße\n"
    assert load_corpus(str(tmp_path / "a.txt")) == "first file\n"
    with pytest.raises(DataError, match="is not a file, a folder"):
        load_corpus(str(tmp_path / "missing.txt"))
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match="not UTF-8"):
        load_corpus(str(tmp_path / "bad.txt"))
    assert load_corpus(str(shakespeare_path)).startswith("First Citizen")


def test_memmap_split_and_reuse(tmp_path):
    text = pydoc_text()[:20_000]
    tok = CharTokenizer.from_text(text)
    d = encode_corpus(text, tok, val_fraction=0.1, folder=tmp_path)
    assert isinstance(d.train, np.memmap) and d.train.dtype == np.uint16
    assert len(d.train) == 18_000 and len(d.val) == 2_000
    assert tok.decode(d.train[:50]) == text[:50] and tok.decode(d.val[-50:]) == text[-50:]
    again = encode_corpus(text, tok, val_fraction=0.1, folder=tmp_path)
    assert np.array_equal(again.train, d.train) and np.array_equal(again.val, d.val)
    assert token_dtype(50_257) == np.uint16 and token_dtype(100_000) == np.uint32


def test_batches_are_a_pure_function_of_seed_and_step():
    ids = np.arange(1000, dtype=np.uint16)
    a = get_batch(ids, 4, 16, seed=1, step=7)
    assert a.shape == (4, 17) and a.dtype == np.int32
    # windows of consecutive tokens: targets are inputs shifted by one
    assert np.all(np.diff(a, axis=1) == 1)
    assert np.array_equal(a, get_batch(ids, 4, 16, seed=1, step=7))
    assert not np.array_equal(a, get_batch(ids, 4, 16, seed=1, step=8))
    assert not np.array_equal(a, get_batch(ids, 4, 16, seed=2, step=7))
    assert not np.array_equal(a, get_batch(ids, 4, 16, seed=1, step=7, split="val"))
    # every valid offset is reachable, none past the end
    starts = np.concatenate([get_batch(ids, 64, 16, seed=0, step=s)[:, 0] for s in range(50)])
    assert starts.min() == 0 and starts.max() == 1000 - 17
    with pytest.raises(DataError, match="fewer than the context"):
        get_batch(ids[:10], 2, 16, seed=0, step=0)


class ReadLog(np.ndarray):
    """Token ids that record which positions were read."""

    def __getitem__(self, index):
        self.read.update(np.asarray(index).ravel().tolist())
        return np.asarray(self)[index]


@pytest.mark.parametrize("hosts,grad_accum", [(1, 1), (2, 1), (4, 1), (2, 2), (4, 3)])
def test_host_batches_make_up_the_global_batch(hosts, grad_accum):
    """Each host computes only its rows of the batch of ``(seed, step)``; the hosts' rows,
    micro-batch by micro-batch, are the single-host global batch, at every step."""
    from jaxformer.training.steps import micro_batches
    ids = np.random.default_rng(0).integers(0, 500, 5000).astype(np.uint16)
    B, T = 24, 16
    for step in (0, 1, 7, 123):
        whole = micro_batches(get_batch(ids, B, T, seed=3, step=step), grad_accum)     # [K, B/K, T+1]
        parts = [host_batch(ids, B, T, seed=3, step=step, process_index=i, process_count=hosts,
                            grad_accum=grad_accum) for i in range(hosts)]
        assert all(p.shape == (B // hosts, T + 1) for p in parts)
        assert np.array_equal(np.concatenate([micro_batches(p, grad_accum) for p in parts], axis=1), whole)
        if grad_accum == 1:
            assert np.array_equal(np.concatenate(parts), whole[0])
    assert sorted(np.concatenate([host_rows(B, grad_accum, i, hosts) for i in range(hosts)])) == list(range(B))


def test_a_host_reads_only_its_own_rows():
    ids = np.arange(100_000, dtype=np.uint32).view(ReadLog)
    ids.read = set()
    mine = host_batch(ids, 16, 8, seed=0, step=5, process_index=1, process_count=4)
    assert mine.shape == (4, 9) and len(ids.read) <= 4 * 9
    assert ids.read == set(mine.ravel().tolist())     # ids[i] == i: what was read is what it holds
    assert np.array_equal(get_batch(np.arange(100_000), 16, 8, seed=0, step=5, rows=[4, 5, 6, 7]), mine)


def test_host_rows_errors():
    with pytest.raises(DataError, match="batch_size=10 is not divisible into train.grad_accum=2 micro-batches of 2"):
        host_rows(10, 2, 0, 2)
    with pytest.raises(DataError, match=r"process_index=2 is not in \[0, 2\)"):
        host_rows(8, 1, 2, 2)


def test_prefetch_keeps_order_and_values():
    from jaxformer.data import prefetch
    assert list(prefetch(iter(range(50)), size=3)) == list(range(50))
    assert list(prefetch([], size=1)) == []


def test_prefetch_reraises_producer_error_at_its_item():
    from jaxformer.data import prefetch

    def items():
        yield 1
        yield 2
        raise DataError("bad batch 3")

    got = []
    with pytest.raises(DataError, match="bad batch 3"):
        for x in prefetch(items()):
            got.append(x)
    assert got == [1, 2]


def test_prefetch_stops_its_thread_when_closed():
    import itertools
    import threading

    from jaxformer.data import prefetch
    gen = prefetch(itertools.count(), size=2)
    assert [next(gen) for _ in range(5)] == [0, 1, 2, 3, 4]
    gen.close()
    assert not any(t.name == "jaxformer-prefetch" and t.is_alive() for t in threading.enumerate())
    with pytest.raises(ValueError, match="size"):
        next(prefetch([1], size=0))


def test_shakespeare_is_found_only_where_it_is_named(tmp_path, monkeypatch):
    """$JAXFORMER_SHAKESPEARE or the cache, never a guess at the folders around the
    repository or the working directory; offline, the error says how to point at a copy."""
    from jaxformer.data import shakespeare_text
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "shared" / "data" / "tinyshakespeare.txt").write_text("sibling", encoding="utf-8")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("JAXFORMER_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("JAXFORMER_SHAKESPEARE", raising=False)
    with pytest.raises(DataError, match="not available locally; put the file at .*cache.*, set "
                                        "JAXFORMER_SHAKESPEARE=/path/to/tinyshakespeare.txt"):
        shakespeare_text(download=False)
    monkeypatch.setenv("JAXFORMER_SHAKESPEARE", str(tmp_path / "shared" / "data" / "tinyshakespeare.txt"))
    assert shakespeare_text(download=False) == "sibling"
    monkeypatch.setenv("JAXFORMER_SHAKESPEARE", str(tmp_path / "missing.txt"))
    with pytest.raises(DataError, match="JAXFORMER_SHAKESPEARE='.*missing.txt' is not a file"):
        shakespeare_text()
