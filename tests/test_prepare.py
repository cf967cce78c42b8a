"""Streaming prepare (jaxformer.data.prepare) and its reader (jaxformer.data.shards.TokenShards): the
same tokens as the whole-corpus path, shards, resume, corruption, bad inputs."""
import json

import numpy as np
import pytest

from jaxformer.cli import main
from jaxformer.data.corpus import cut_pieces, list_sources
from jaxformer.data import (BPETokenizer, TokenData, build_tokenizer, encode_corpus, encode_plain, get_batch,
                            host_batch, load_corpus, pydoc_text)
from jaxformer.errors import DataError
from jaxformer.data.prepare import MANIFEST, prepare
from jaxformer.data.shards import TokenShards

SMALL = dict(chunk_chars=3000, shard_tokens=4000)   # many work items and shards on a small corpus
MULTI = "Grüße aus Köln — καλημέρα κόσμε; 中文：你好！ emoji 🙂🎉👩‍💻.\n\tTabs, 'quotes' \"too\".\n"


@pytest.fixture(scope="module")
def docs():
    """Eight documents: pydoc text with non-ASCII lines, trailing spaces, blank runs."""
    text = pydoc_text()
    out = []
    for i in range(8):
        d = text[i * 6000:(i + 1) * 6000]
        out.append(f"Doc {i}.\n{MULTI}{d}\nline with trailing spaces   \n\n\n  indented\nend {i}")
    return out


def write_folder(root, docs):
    (root / "sub").mkdir(parents=True)
    for i, d in enumerate(docs):
        (root / ("sub" if i % 3 == 0 else ".") / f"doc{i}.txt").write_text(d, encoding="utf-8")
    (root / "ignored.bin").write_bytes(b"\x00\xff")        # not a text suffix: not read
    return root


def tokens(out, split=None):
    ts = TokenShards(out)
    return np.asarray(ts.tokens() if split is None else ts.split(split)), ts


def reference(text, kind, V=300):
    tok = build_tokenizer(kind, text, V)
    return tok, encode_corpus(text, tok, val_fraction=0.1)


@pytest.mark.parametrize("kind", ["byte", "char", "bpe"])
def test_text_file_and_folder_equal_whole_corpus(tmp_path, docs, kind):
    """A file and a folder give encode_corpus(load_corpus(path)) token for token, splits and
    tokenizer included, across many pieces and shards."""
    f = tmp_path / "one.txt"
    f.write_bytes("\n\n".join(docs).replace("\n", "\r\n").encode())   # \r\n read as \n, as read_text does
    folder = write_folder(tmp_path / "corpus", docs)
    V = 300 if kind == "bpe" else None
    for path in (f, folder):
        text = load_corpus(str(path))
        ref_tok, ref = reference(text, kind)
        out = tmp_path / f"out-{path.name}"
        m = prepare(str(path), kind, out, vocab_size=V, **SMALL)
        train, ts = tokens(out, "train")
        assert ts.tokenizer.to_dict() == ref_tok.to_dict()
        assert np.array_equal(train, ref.train) and np.array_equal(np.asarray(ts.split("val")), ref.val)
        assert len(m["shards"]) > 5 and m["exact_cuts"] and m["source"]["separator"] == "blank_line"
        assert m["dtype"] == "uint16" and all(s["tokens"] == 4000 for s in m["shards"][:-1])


@pytest.mark.parametrize("kind", ["byte", "char", "bpe"])
def test_jsonl_and_parquet_records(tmp_path, docs, kind):
    """Records are encoded one by one, joined by the end-of-text token (BPE) or a blank line
    (tokenizers without one); empty and null records are skipped; JSONL == Parquet."""
    recs = [{"content": d, "id": i} for i, d in enumerate(docs)] + [{"content": ""}, {"content": None}]
    jl = tmp_path / ("data.jsonl" if kind != "char" else "data.json")   # a .json file named alone: JSON lines
    jl.write_text("\n".join(json.dumps(r) for r in recs) + "\n\n", encoding="utf-8")
    m = prepare(str(jl), kind, tmp_path / "j", vocab_size=300 if kind == "bpe" else None, text_field="content",
                **SMALL)
    got, ts = tokens(tmp_path / "j")
    tok = ts.tokenizer
    if kind == "bpe":
        assert m["source"]["separator"] == "eos"
        parts = [np.asarray(encode_plain(tok, d)) for d in docs]
        want = np.concatenate([np.concatenate([[tok.eos_id], p]) if i else p for i, p in enumerate(parts)])
    else:
        assert tok.to_dict() == build_tokenizer(kind, "\n\n".join(docs)).to_dict()
        want = np.asarray(encode_plain(tok, "\n\n".join(docs)))
    assert np.array_equal(got, want)

    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    table = pa.table({"id": list(range(len(recs))), "content": [r["content"] for r in recs]})
    pq.write_table(table, tmp_path / "data.parquet", row_group_size=3)
    with pa.OSFile(str(tmp_path / "file.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table, max_chunksize=4)
    with pa.OSFile(str(tmp_path / "stream.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table, max_chunksize=4)       # the format of Hugging Face datasets' cache files
    for name in ("data.parquet", "file.arrow", "stream.arrow"):
        prepare(str(tmp_path / name), kind, tmp_path / name.replace(".", "-"),
                vocab_size=300 if kind == "bpe" else None, text_field="content", **SMALL)
        assert np.array_equal(tokens(tmp_path / name.replace(".", "-"))[0], got), name


def test_glob_list_and_workers(tmp_path, docs):
    """A glob and a list read the files in order; two worker processes write the same shards."""
    folder = write_folder(tmp_path / "c", docs)
    m1 = prepare(str(folder / "*.txt"), "bpe", tmp_path / "a", vocab_size=300, **SMALL)
    text = "\n\n".join(p.read_text() for p in sorted(folder.glob("*.txt")))
    assert np.array_equal(tokens(tmp_path / "a")[0], encode_plain(BPETokenizer.train(text, 300), text))
    m2 = prepare([str(p) for p in sorted(folder.glob("*.txt"))], "bpe", tmp_path / "b", vocab_size=300,
                 workers=2, **SMALL)
    assert [s["sha256"] for s in m1["shards"]] == [s["sha256"] for s in m2["shards"]]


def test_resume_after_interruption_and_corrupted_shard(tmp_path, docs):
    folder = write_folder(tmp_path / "c", docs)
    full = prepare(str(folder), "bpe", tmp_path / "full", vocab_size=300, **SMALL)
    n = len(full["shards"])
    out, written = tmp_path / "out", []

    def stop_after_3(entry):
        written.append(entry["name"])
        if len(written) == 3:
            raise KeyboardInterrupt   # as a kill would, between two shards

    with pytest.raises(KeyboardInterrupt):
        prepare(str(folder), "bpe", out, vocab_size=300, on_shard=stop_after_3, **SMALL)
    with pytest.raises(DataError, match="did not finish .3 shards written.; run the same"):
        TokenShards(out)
    assert not list(out.glob("*.tmp"))
    written.clear()
    m = prepare(str(folder), "bpe", out, vocab_size=300, on_shard=lambda e: written.append(e["name"]), **SMALL)
    assert written[0] == "shard_00003.bin" and len(written) == n - 3    # only the remaining shards
    assert [s["sha256"] for s in m["shards"]] == [s["sha256"] for s in full["shards"]]

    shard = out / "shard_00002.bin"
    raw = bytearray(shard.read_bytes())
    raw[10] ^= 1
    shard.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"shard '.*shard_00002.bin' does not match its sha256"):
        TokenShards(out)
    logs = []
    m = prepare(str(folder), "bpe", out, vocab_size=300, log=logs.append, **SMALL)
    assert len(logs) == 1 and "shard_00002.bin" in logs[0] and "rebuilding" in logs[0]
    assert [s["sha256"] for s in m["shards"]] == [s["sha256"] for s in full["shards"]]
    assert np.array_equal(tokens(out)[0], tokens(tmp_path / "full")[0])
    # a finished folder is checked and kept; a new val_fraction only rewrites the splits
    m = prepare(str(folder), "bpe", out, vocab_size=300, val_fraction=0.2, on_shard=written.append, **SMALL)
    assert len(written) == n - 3 and m["splits"]["val"][0] == m["total_tokens"] - round(0.2 * m["total_tokens"])


def test_token_view_indexing_and_batches(tmp_path, docs):
    """A split view behaves as the flat array it stands for, across shard boundaries."""
    f = tmp_path / "t.txt"
    f.write_text("\n\n".join(docs))
    prepare(str(f), "byte", tmp_path / "o", shard_tokens=1000, chunk_chars=700)
    ts = TokenShards(tmp_path / "o")
    ref = encode_corpus(load_corpus(str(f)), build_tokenizer("byte", ""))
    for name in ("train", "val"):
        view, arr = ts.split(name), ref.split(name)
        assert len(view) == len(arr) and view.shape == arr.shape and view.dtype == arr.dtype
        for i in (0, 999, 1000, 1001, len(arr) - 1, -1, -len(arr)):
            assert view[i] == arr[i]
        for sl in (slice(990, 2010), slice(None, 5), slice(-3, None), slice(5, 5), slice(0, 3000, 7)):
            assert np.array_equal(view[sl], arr[sl])
        idx = np.array([[0, 999, 1000], [len(arr) - 1, 1500, -2]])
        assert np.array_equal(view[idx], arr[idx])
        with pytest.raises(IndexError):
            view[len(arr)]
    data = TokenData(ts.split("train"), ts.split("val"))
    for step in (0, 7):
        for split in ("train", "val"):
            assert np.array_equal(get_batch(data.split(split), 8, 64, seed=3, step=step, split=split),
                                  get_batch(ref.split(split), 8, 64, seed=3, step=step, split=split))
    # each host reads only its rows; they reassemble the global batch
    parts = [host_batch(data.train, 8, 64, seed=3, step=5, process_index=k, process_count=4) for k in range(4)]
    assert np.array_equal(np.concatenate(parts), get_batch(ref.train, 8, 64, seed=3, step=5))


def test_pieces_depend_on_text_only(docs):
    text = "\n\n".join(docs) + "x" * 30_000 + "\nend"   # a long line forces a hard cut
    for line_cuts in (True, False):
        runs = [list(cut_pieces([text[i:i + b] for i in range(0, len(text), b)], 1000, line_cuts))
                for b in (1, 999, 10 ** 6)]
        assert runs[0] == runs[1] == runs[2] and "".join(runs[0]) == text
        assert max(map(len, runs[0])) <= 4000


def test_bpe_sampled_training_and_hf_tokenizer_file(tmp_path, docs):
    """BPE on a corpus larger than bpe_sample_chars trains on every k-th 100,000-character
    piece; a Hugging Face tokenizer.json (hf:PATH) encodes as its BPETokenizer does."""
    f = tmp_path / "t.txt"
    text = "\n\n".join(docs) * 6                  # ~300,000 characters: 3 pieces, k = 3
    f.write_text(text)
    m = prepare(str(f), "bpe", tmp_path / "s", vocab_size=300, bpe_sample_chars=110_000, **SMALL)
    got, ts = tokens(tmp_path / "s")
    assert ts.tokenizer.to_dict() == BPETokenizer.train(text[:100_000], 300).to_dict()
    assert np.array_equal(got, encode_plain(ts.tokenizer, text))
    hf = tmp_path / "hf" / "tokenizer.json"         # a Hugging Face tokenizer.json (not jaxformer's format)
    hf.parent.mkdir()
    ts.tokenizer.tk.save(str(hf))
    m2 = prepare(str(f), f"hf:{hf}", tmp_path / "h", **SMALL)
    assert m2["tokenizer"]["type"] == "bpe" and np.array_equal(tokens(tmp_path / "h")[0], got)
    assert m["exact_cuts"] and m2["exact_cuts"]


def test_tokenizer_errors_from_workers_and_inexact_cuts(tmp_path, docs):
    """Worker processes give the in-process ids, in order, and report an error with its item;
    a tokenizer that marks the start of a text (SentencePiece-style) is flagged as not cut
    exactly."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from jaxformer.data import CharTokenizer
    from jaxformer.data.encode_pool import Encoder, WorkerError, WorkerPool
    f = tmp_path / "t.txt"
    f.write_text("\n\n".join(docs))
    tok = CharTokenizer(sorted(set(f.read_text()))[:-1])     # misses one character
    with pytest.raises(DataError, match="is not in the char tokenizer's vocabulary"):
        prepare(str(f), tok, tmp_path / "w", **SMALL)
    spec = {"kind": "char", "chars": "".join(tok.chars), "dtype": "<u2", "eos": None}
    items = [[(d[:k], False)] for d in docs for k in (10, 3)]
    pool = WorkerPool(spec, 2)
    try:
        assert [np.array_equal(ids, Encoder(spec)(it)) for _, it, ids in pool.map(enumerate(items))] == \
            [True] * len(items)
    finally:
        pool.close()
    pool = WorkerPool(spec, 2)
    with pytest.raises(WorkerError, match="is not in the char vocabulary") as e:
        list(pool.map(enumerate(items + [[("".join(docs), False)]])))
    pool.close(kill=True)
    assert e.value.item == [("".join(docs), False)]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always")
    tk.train_from_iterator(docs, trainers.BpeTrainer(vocab_size=300, special_tokens=["</s>"], show_progress=False))
    tk.save(str(tmp_path / "sp.json"))
    m = prepare(str(f), f"hf:{tmp_path / 'sp.json'}", tmp_path / "sp", **SMALL)
    assert not m["exact_cuts"] and m["tokenizer"]["eos_id"] == 0


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "bad.txt").write_bytes(b"ok\n" * 10 + b"\xff\xfe")
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{"text": \n')
    (tmp_path / "nofield.jsonl").write_text('{"body": "a"}\n')
    (tmp_path / "empty").mkdir()
    (tmp_path / "tiny.txt").write_text("ab")
    (tmp_path / "ok.txt").write_text("hello world\n" * 50)
    cases = [
        (["--data", str(tmp_path / "missing.txt"), "--tokenizer", "byte"], "is not a file, a folder, a glob"),
        (["--data", str(tmp_path / "empty"), "--tokenizer", "byte"], "folder without text, JSONL"),
        (["--data", str(tmp_path / "nomatch*.txt"), "--tokenizer", "byte"], "glob pattern matches no file"),
        (["--data", str(tmp_path / "bad.txt"), "--tokenizer", "byte"], "is not UTF-8 text (invalid start byte at byte 30)"),
        (["--data", str(tmp_path / "bad.jsonl"), "--tokenizer", "byte"], "line 2 is not JSON"),
        (["--data", str(tmp_path / "nofield.jsonl"), "--tokenizer", "byte"], "no 'text' field (it has 'body'); pass --text-field"),
        (["--data", str(tmp_path / "ok.txt"), "--tokenizer", "sentencepiece"], "--tokenizer 'sentencepiece' is not one of"),
        (["--data", str(tmp_path / "ok.txt"), "--tokenizer", "byte", "--vocab-size", "500"], "--vocab-size 500 applies to"),
        (["--data", str(tmp_path / "ok.txt"), "--tokenizer", "bpe", "--vocab-size", "100"], "--vocab-size 100 must be an int >= 258"),
        (["--data", str(tmp_path / "ok.txt"), "--tokenizer", "byte", "--val-fraction", "0.9"], "--val-fraction 0.9 must be"),
        (["--data", str(tmp_path / "ok.txt"), "--tokenizer", "byte", "--workers", "0"], "--workers 0 must be an int >= 1"),
        (["--data", str(tmp_path / "ok.txt"), "--tokenizer", f"hf:{tmp_path / 'empty'}"], "holds neither tokenizer.json"),
        (["--data", str(tmp_path / "tiny.txt"), "--tokenizer", "byte"], "corpus of 2 tokens is too short"),
    ]
    assert load_corpus.__name__  # the whole-corpus path words a bad file the same way:
    with pytest.raises(DataError, match=r"not UTF-8 text \(invalid start byte at byte 30\)"):
        load_corpus(str(tmp_path / "bad.txt"))
    for i, (argv, message) in enumerate(cases):
        rc = main(["prepare", "--no-progress", "--out", str(tmp_path / f"out{i}")] + argv)
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.startswith("jaxformer prepare: error: ") and message in err, (argv, err)
        assert "\n" not in err
    # another corpus into a prepared folder is refused
    assert main(["prepare", "--no-progress", "--data", str(tmp_path / "ok.txt"), "--tokenizer", "byte",
                 "--out", str(tmp_path / "o")]) == 0
    assert "prepared 600 tokens (train 540, val 60) in 1 uint16 shards" in capsys.readouterr().out
    assert main(["prepare", "--data", str(tmp_path / "ok.txt"), "--tokenizer", "char", "--out",
                 str(tmp_path / "o")]) == 2
    assert "already holds tokens prepared from other data or settings" in capsys.readouterr().err
    with pytest.raises(DataError, match="no manifest.json"):
        TokenShards(tmp_path / "empty")
    (tmp_path / "o" / "shard_00000.bin").write_bytes(b"\x00" * 10)
    with pytest.raises(DataError, match="shard_00000.bin' is 10 bytes, manifest.json says 1200 bytes"):
        TokenShards(tmp_path / "o")


def test_shakespeare_matches_train_path(tmp_path, shakespeare_path):
    """The real corpus: prepare == the memmap `jaxformer train --data FILE` builds today."""
    text = load_corpus(str(shakespeare_path))
    tok, ref = reference(text, "bpe", 512)
    prepare(str(shakespeare_path), "bpe", tmp_path / "o", vocab_size=512, shard_tokens=100_000)
    ts = TokenShards(tmp_path / "o")
    assert ts.tokenizer.to_dict() == tok.to_dict()
    assert np.array_equal(np.asarray(ts.train), ref.train) and np.array_equal(np.asarray(ts.val), ref.val)
    assert json.loads((tmp_path / "o" / MANIFEST).read_text())["complete"]
    assert len(list_sources(str(shakespeare_path))) == 1


TINY = ["model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.d_ff=64", "model.max_len=32",
        "train.batch_size=8", "train.lr=3e-3", "train.min_lr=3e-4", "train.warmup_steps=2", "train.log_interval=3",
        "train.eval_interval=6", "train.eval_steps=1", "train.checkpoint_interval=6", "train.max_steps=12",
        "train.sample_tokens=0"]


def test_train_on_prepared_folder_equals_text_file_and_resumes_exactly(tmp_path, docs):
    """`train --data DIR` (many shards), interrupted and resumed, ends with the parameters of an
    uninterrupted `train --data FILE` bit for bit: the batch of step s is a function of
    (seed, s) whatever the shards, and a resume continues it exactly."""
    import jax

    from jaxformer import load_config
    from jaxformer.runfolder import read_metrics
    from jaxformer.training.checkpoint import load_run
    from jaxformer.training.loop import train

    f = tmp_path / "c.txt"
    f.write_text("\n\n".join(docs))
    m = prepare(str(f), "char", tmp_path / "tok", shard_tokens=3000)
    assert len(m["shards"]) > 10

    def cfg(path, *more):
        return load_config(None, TINY + [f"data.path={path}", *more])

    def same(x, y):
        return all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y)))

    a = train(cfg(f, "data.tokenizer=char"), tmp_path / "a", progress=False)
    b = train(cfg(tmp_path / "tok", "data.tokenizer=byte"), tmp_path / "b", progress=False, stop_after=5)
    assert b.interrupted and b.step == 5
    assert load_run(tmp_path / "b").config.data.tokenizer == "char"      # the folder's tokenizer wins
    b = train(cfg(tmp_path / "tok", "data.tokenizer=byte"), tmp_path / "b", resume=True, progress=False)
    assert b.step == 12 and same(b.params, a.params) and same(b.opt_state, a.opt_state)
    # the same evaluations; train_loss is a mean over the steps since the last log, which a resume cuts
    val = lambda rs: [(r["step"], r.get("val_loss"), r.get("grad_norm")) for r in rs if r["step"] != 5]  # noqa
    assert val(read_metrics(tmp_path / "b")) == val(a.metrics)
