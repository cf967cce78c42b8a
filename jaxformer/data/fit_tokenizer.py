"""The tokenizer of a :func:`jaxformer.data.prepare.prepare`: resolved from its name
(:func:`resolve_tokenizer`) or built from the corpus (:func:`build_from_corpus`), and what a
worker needs to encode like it (:func:`encoder_spec`, :func:`line_cuts_exact`)."""
from __future__ import annotations

import collections
import json
import math
import pathlib
from typing import Iterable, Optional

import numpy as np

from jaxformer.data.corpus import cut_pieces, iter_documents, joined
from jaxformer.data.encode_pool import Encoder
from jaxformer.data.hf_tokenizer import cache_snapshot, load_hf_tokenizer, tokenizer_from_hf_json
from jaxformer.errors import DataError
from jaxformer.data.tokenizers import (BPETokenizer, ByteTokenizer, CharTokenizer, encode_plain,
                                       tokenizer_from_dict)
from jaxformer.data.words import NEWLINE, WordTokenizer, split_words

TOKENIZER_FILE = "tokenizer.json"
BPE_TRAIN_PIECE = 100_000               # the piece size of BPETokenizer.train
#: Texts ``a, b`` (``a`` ending in a newline after a non-space, ``b`` starting with a
#: non-space) that a tokenizer must encode as ``encode(a) + encode(b)`` for line cuts to be exact.
_PROBES = (("Hello world.\n", "Second line"), ("a\n", "'s b"), ("x1\n", "23 y"), ("é\n", "ü"),
           ("}\n", "{"), ("fin\n", "Début"))


def _hf_tokenizer(name: str, label: str):
    """A tokenizer from a folder (a jaxformer run or a Hugging Face folder), a JSON file (a
    jaxformer tokenizer.json or a Hugging Face one), or a model name in the local HF cache."""
    p = pathlib.Path(name).expanduser()
    if p.is_file():
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise DataError(f"--tokenizer {label}: {str(p)!r} cannot be read as JSON: {e}") from None
        if isinstance(d, dict) and d.get("type") in ("char", "byte", "word", "bpe"):
            return tokenizer_from_dict(d)
        tok = load_hf_tokenizer(p.parent) if p.name == "tokenizer.json" else None
        if tok is None:
            tok = tokenizer_from_hf_json(p.read_text(encoding="utf-8"), where=str(p))
        return tok
    if p.is_dir():
        if (p / TOKENIZER_FILE).is_file():
            return _hf_tokenizer(str(p / TOKENIZER_FILE), label)
        tok = load_hf_tokenizer(p)
        if tok is None:
            raise DataError(f"--tokenizer {label}: {str(p)!r} holds neither tokenizer.json nor "
                            "vocab.json + merges.txt")
        return tok
    snap = cache_snapshot(name)
    tok = load_hf_tokenizer(snap) if snap is not None else None
    if tok is None:
        raise DataError(f"--tokenizer {label}: {name!r} is not a file, a folder or a model with tokenizer "
                        "files in the local Hugging Face cache (nothing is downloaded); pass hf:FOLDER "
                        "with tokenizer.json or vocab.json + merges.txt")
    return tok


def resolve_tokenizer(spec) -> Optional[object]:
    """The tokenizer of ``spec`` when it does not depend on the data: ``"byte"``, ``"gpt2"``
    (GPT-2's BPE from the local Hugging Face cache), ``"hf:PATH"`` (see :func:`_hf_tokenizer`)
    or a tokenizer object; None for ``"char"``, ``"word"`` and ``"bpe"`` (built from the corpus)."""
    if not isinstance(spec, str):
        if not all(hasattr(spec, a) for a in ("encode", "vocab_size", "to_dict")):
            raise DataError(f"tokenizer={spec!r} is not a tokenizer or one of 'char', 'byte', 'word', 'bpe', "
                            "'gpt2', 'hf:PATH'")
        return spec
    if spec in ("char", "word", "bpe"):
        return None
    if spec == "byte":
        return ByteTokenizer()
    if spec == "gpt2":
        return _hf_tokenizer("gpt2", "gpt2")
    if spec.startswith("hf:") and len(spec) > 3:
        return _hf_tokenizer(spec[3:], spec)
    raise DataError(f"tokenizer={spec!r} is not one of 'char', 'byte', 'word', 'bpe', 'gpt2', 'hf:PATH'")


def train_bpe(texts: Iterable[str], vocab_size: int) -> BPETokenizer:
    """:meth:`BPETokenizer.train` on an iterator of texts (the same trainer settings)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(texts, trainer=trainer)
    return BPETokenizer(tk)


#: How far back from the end of a block the word counter looks for a space (longer runs of
#: non-space characters are counted as they are cut).
_MAX_WORD = 4096


def _words(sources, text_field, step) -> WordTokenizer:
    """A ``word`` vocabulary: every word of the corpus (a full pass; minimum count 1)."""
    counts: collections.Counter = collections.Counter()
    carry = ""      # the text after the last space of the blocks so far: maybe half a word
    for block in joined(iter_documents(sources, text_field, step("words"))):
        text = carry + block
        lo, cut = max(0, len(text) - _MAX_WORD), len(text)   # back to the last space (blocks cut anywhere)
        while cut > lo and not text[cut - 1].isspace():
            cut -= 1
        if cut == lo and lo and not text[lo - 1].isspace():
            cut = len(text)
        text, carry = text[:cut], text[cut:]
        counts.update(p for p in split_words(text) if p != NEWLINE)
    counts.update(p for p in split_words(carry) if p != NEWLINE)
    if not counts:
        raise DataError(f"data={sources[0].name!r} holds no words")
    return WordTokenizer(sorted(counts, key=lambda w: (-counts[w], w)))


def build_from_corpus(kind, sources, text_field, separator, vocab_size, sample_chars, step):
    """The ``char`` alphabet or ``word`` vocabulary (a full pass over the corpus) or a ``bpe`` trained on a sample:
    every k-th 100,000-character piece, k = ceil(corpus bytes / ``sample_chars``), cut from
    the corpus as ``BPETokenizer.train`` cuts its text (the documents joined by a blank line
    for ``separator="blank_line"``, else one by one). ``step(stage)``: a progress callback."""
    if kind == "char":
        chars: set = set()
        for block in joined(iter_documents(sources, text_field, step("alphabet"))):
            chars.update(block)
        if not chars:
            raise DataError(f"data={sources[0].name!r} holds no text")
        return CharTokenizer(sorted(chars))
    if kind == "word":
        return _words(sources, text_field, step)
    stride = max(1, math.ceil(sum(s.size() for s in sources) / sample_chars))
    docs = iter_documents(sources, text_field, step("bpe sample"))
    pieces = (cut_pieces(joined(docs), BPE_TRAIN_PIECE, False) if separator == "blank_line"
              else (p for d in docs for p in cut_pieces(d, BPE_TRAIN_PIECE, False)))
    sample = (p for i, p in enumerate(pieces) if i % stride == 0)
    first = next(sample, None)
    if first is None:
        raise DataError(f"data={sources[0].name!r} holds no text")
    return train_bpe(_chain(first, sample), vocab_size)


def _chain(first, rest):
    yield first
    yield from rest


def encoder_spec(tokenizer, dtype: np.dtype, eos: Optional[int]) -> dict:
    """What a worker needs to encode like ``tokenizer`` (JSON-safe, small)."""
    if isinstance(tokenizer, ByteTokenizer):
        kind = {"kind": "byte"}
    elif isinstance(tokenizer, CharTokenizer):
        kind = {"kind": "char", "chars": "".join(tokenizer.chars)}
    elif isinstance(tokenizer, BPETokenizer):
        kind = {"kind": "bpe", "tokenizer": tokenizer.tk.to_str()}
    else:
        kind = {"kind": "other"}
    return {**kind, "dtype": dtype.str, "eos": eos}


class _PlainEncoder:
    """Encodes work items with any tokenizer object through :func:`encode_plain` (in this
    process only; the tokenizers of this project go through :class:`Encoder`)."""

    def __init__(self, tokenizer, dtype: np.dtype, eos: Optional[int]):
        self.tokenizer, self.dtype, self.eos = tokenizer, dtype, eos

    def __call__(self, item) -> np.ndarray:
        parts = []
        for text, sep in item:
            if sep:
                parts.append(np.array([self.eos], dtype=self.dtype))
            parts.append(np.asarray(encode_plain(self.tokenizer, text), dtype=self.dtype))
        return np.concatenate(parts) if parts else np.empty(0, dtype=self.dtype)


def line_cuts_exact(spec: dict, tokenizer) -> bool:
    """Whether cutting after a newline between two non-spaces keeps the tokens exact."""
    if spec["kind"] in ("byte", "char"):
        return True
    enc = Encoder(spec) if spec["kind"] == "bpe" else _PlainEncoder(tokenizer, np.dtype(spec["dtype"]), None)
    return all(np.array_equal(enc([(a + b, False)]), enc([(a, False), (b, False)])) for a, b in _PROBES)
