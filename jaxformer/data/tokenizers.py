"""Tokenizers: characters, UTF-8 bytes, words (:mod:`jaxformer.data.words`), and BPE (trained
here, or a converted model's).

They share one small interface: ``encode(text) -> list[int]``, ``decode(ids) -> str``,
``vocab_size``, ``eos_id`` and ``bos_id`` (None if absent) and ``to_dict()`` (JSON-safe, with a
``"type"`` key); :func:`save_tokenizer` / :func:`load_tokenizer` write and read JSON only;
:func:`start_ids` is the token an empty prompt starts from, :func:`end_ids` the ids that end a
sample. ``encode`` gives what the model expects for a text on its own: a converted Llama's or
Gemma's :class:`BPETokenizer` puts its BOS first, as ``transformers``' ``tokenizer(text)``
does (prompts, ``score``, ``attention``, ``Run.tokenizer.encode``); a training corpus is
encoded without it (:func:`encode_plain`): it is one long text cut into windows anywhere.
:mod:`jaxformer.data` re-exports every name here.
"""
from __future__ import annotations

import json
import os
from typing import Iterable, Optional, Sequence

import numpy as np

from jaxformer.data.words import WordTokenizer
from jaxformer.errors import DataError

__all__ = ["CharTokenizer", "ByteTokenizer", "BPETokenizer", "WordTokenizer", "start_ids", "end_ids", "encode_plain",
           "tokenizer_from_dict", "save_tokenizer", "load_tokenizer", "build_tokenizer"]


class CharTokenizer:
    """Character-level tokenizer over a fixed alphabet (usually built from the training text).

    ``encode`` raises :class:`DataError` naming a character outside the alphabet.
    """

    def __init__(self, chars: Iterable[str]):
        self.chars = list(chars)
        if len(set(self.chars)) != len(self.chars) or any(len(c) != 1 for c in self.chars):
            raise DataError("char tokenizer alphabet must be distinct single characters")
        self._stoi = {c: i for i, c in enumerate(self.chars)}
        self.eos_id = None
        self.bos_id = None

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        """The sorted set of characters of ``text``."""
        if not text:
            raise DataError("cannot build a char tokenizer from empty text")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self._stoi[c] for c in text]
        except KeyError as e:
            c = e.args[0]
            pos = text.index(c)
            raise DataError(f"character {c!r} (U+{ord(c):04X}) at position {pos} is not in the "
                            f"char tokenizer's vocabulary of {self.vocab_size} characters") from None

    def decode(self, ids: Iterable[int]) -> str:
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise DataError(f"token id {i} is outside the char vocabulary [0, {self.vocab_size})")
            out.append(self.chars[i])
        return "".join(out)

    def to_dict(self) -> dict:
        return {"type": "char", "chars": "".join(self.chars)}


class ByteTokenizer:
    """UTF-8 bytes as tokens (vocabulary 256): any text round-trips exactly."""

    vocab_size = 256
    eos_id = None
    bos_id = None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < 256]
        if bad:
            raise DataError(f"token id {bad[0]} is outside the byte vocabulary [0, 256)")
        # A sampled sequence may cut a multi-byte character: show U+FFFD rather than fail.
        return bytes(ids).decode("utf-8", errors="replace")

    def to_dict(self) -> dict:
        return {"type": "byte"}


class BPETokenizer:
    """Wraps any ``tokenizers.Tokenizer`` (e.g. byte-level BPE trained here, or GPT-2's), plus
    the special tokens a model expects (a converted model's come from its Hugging Face
    folder, see ``jaxformer.interop.load_hf_tokenizer``).

    ``bos_id``: the token :meth:`encode` puts first (None: nothing, as for GPT-2 and the BPEs
    trained here). ``eos_id``: the end-of-text token (default: the first of
    :attr:`EOS_CANDIDATES` in the vocabulary). ``stop_ids``: every id that ends a sample,
    ``eos_id`` first (default: just ``eos_id``; Llama 3 has two). ``add_eos``: :meth:`encode`
    also appends ``eos_id`` (a tokenizer_config's ``add_eos_token``; rare; BERT's ``[SEP]``).
    ``mask_id``: a converted masked LM's mask token (``[MASK]``, ``<mask>``; None: an encoder
    trained here masks with its last id). The wrapped tokenizer's own post-processor is never
    applied: these settings say it all.
    """

    EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>")
    _DETECT = object()

    def __init__(self, tk, *, bos_id: Optional[int] = None, eos_id=_DETECT,
                 stop_ids: Optional[Sequence[int]] = None, add_eos: bool = False, mask_id: Optional[int] = None):
        self.tk = tk
        eos_id = self.detect_eos(tk) if eos_id is self._DETECT else eos_id
        stop_ids = (() if eos_id is None else (eos_id,)) if stop_ids is None else tuple(stop_ids)
        for name, i in [("bos_id", bos_id), ("eos_id", eos_id), ("mask_id", mask_id)] + [("stop_ids", i) for i in stop_ids]:
            if i is not None and (isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 0):
                raise DataError(f"BPE tokenizer {name}={i!r} must be a token id (an int >= 0)")
        for name, i in (("bos_id", bos_id), ("mask_id", mask_id)):
            if i is not None and i >= self.vocab_size:
                raise DataError(f"BPE tokenizer {name}={i} is outside its vocabulary [0, {self.vocab_size})")
        if add_eos and eos_id is None:
            raise DataError("BPE tokenizer add_eos=true needs an eos_id")
        self.bos_id = None if bos_id is None else int(bos_id)
        self.eos_id = None if eos_id is None else int(eos_id)
        self.stop_ids = tuple(int(i) for i in stop_ids)
        self.add_eos = bool(add_eos)
        self.mask_id = None if mask_id is None else int(mask_id)

    @classmethod
    def detect_eos(cls, tk) -> Optional[int]:
        """The first of :attr:`EOS_CANDIDATES` in ``tk``'s vocabulary, or None."""
        for name in cls.EOS_CANDIDATES:
            i = tk.token_to_id(name)
            if i is not None:
                return int(i)
        return None

    @classmethod
    def train(cls, text: str, vocab_size: int) -> "BPETokenizer":
        """Train a byte-level BPE (GPT-2 style pre-tokenization) with ``vocab_size`` tokens,
        the last of them ``<|endoftext|>``."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if not isinstance(vocab_size, int) or vocab_size < 258:
            raise DataError(f"data.vocab_size={vocab_size!r} must be an integer >= 258 for a BPE trained "
                            "here (the 256 bytes, end-of-text and at least one merge)")
        if not text:
            raise DataError("cannot train a BPE tokenizer on empty text")
        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        chunks = [text[i:i + 100_000] for i in range(0, len(text), 100_000)]
        tk.train_from_iterator(chunks, trainer=trainer)
        return cls(tk)

    @property
    def vocab_size(self) -> int:
        return int(self.tk.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """The ids of ``text``: ``bos_id`` first (when set), then the text, then ``eos_id``
        when ``add_eos``; ``add_special_tokens=False`` gives the text's ids alone."""
        ids = list(self.tk.encode(text, add_special_tokens=False).ids)
        if not add_special_tokens:
            return ids
        return ([] if self.bos_id is None else [self.bos_id]) + ids + ([self.eos_id] if self.add_eos else [])

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise DataError(f"token id {bad[0]} is outside the BPE vocabulary [0, {self.vocab_size})")
        return self.tk.decode(ids, skip_special_tokens=False)

    def special_settings(self) -> dict:
        """``bos_id``, ``eos_id``, ``stop_ids``, ``add_eos`` and ``mask_id`` as JSON values."""
        return {"bos_id": self.bos_id, "eos_id": self.eos_id, "stop_ids": list(self.stop_ids),
                "add_eos": self.add_eos, "mask_id": self.mask_id}

    def to_dict(self) -> dict:
        """``{"type": "bpe", "tokenizer": ...}``, plus the special-token settings when they
        differ from a plain wrapper's (so a tokenizer without a BOS saves as it always did)."""
        d = {"type": "bpe", "tokenizer": self.tk.to_str()}
        special = self.special_settings()
        if special != BPETokenizer(self.tk).special_settings():
            d.update(special)
        return d


def start_ids(tokenizer) -> list[int]:
    """The one token an empty prompt starts from (never part of the sampled text).

    The BOS token (``bos_id``) when the tokenizer puts one first (a converted Llama or
    Gemma); else the end-of-text token (``eos_id``) when there is one (BPE); otherwise a
    newline (char and byte tokenizers); and for a char tokenizer whose alphabet has no
    ``"\\n"``, the first id, 0.
    """
    if getattr(tokenizer, "bos_id", None) is not None:
        return [int(tokenizer.bos_id)]
    if tokenizer.eos_id is not None:
        return [int(tokenizer.eos_id)]
    if isinstance(tokenizer, CharTokenizer) and "\n" not in tokenizer.chars:
        return [0]
    return list(tokenizer.encode("\n"))


def end_ids(tokenizer) -> tuple[int, ...]:
    """Every id that ends a sample: the tokenizer's ``stop_ids`` (all of a converted model's
    eos ids), else its ``eos_id``; empty when it has none."""
    stops = getattr(tokenizer, "stop_ids", None)
    if stops is not None:
        return tuple(int(i) for i in stops)
    return () if tokenizer.eos_id is None else (int(tokenizer.eos_id),)


def encode_plain(tokenizer, text: str) -> list[int]:
    """The ids of ``text`` without the special tokens ``encode`` adds (no BOS): what a
    training corpus is made of."""
    if getattr(tokenizer, "bos_id", None) is None and not getattr(tokenizer, "add_eos", False):
        return list(tokenizer.encode(text))
    return list(tokenizer.encode(text, add_special_tokens=False))


def tokenizer_from_dict(d: dict):
    """Rebuild a tokenizer from its :meth:`to_dict` form."""
    kind = d.get("type") if isinstance(d, dict) else None
    if kind == "char":
        return CharTokenizer(d["chars"])
    if kind == "byte":
        return ByteTokenizer()
    if kind == "word":
        if not isinstance(d.get("words"), list) or not all(isinstance(w, str) for w in d["words"]):
            raise DataError("word tokenizer 'words' must be a list of strings")
        return WordTokenizer(d["words"])
    if kind == "bpe":
        from tokenizers import Tokenizer
        tk = Tokenizer.from_str(d["tokenizer"])
        special = {k: d[k] for k in ("bos_id", "eos_id", "stop_ids", "add_eos", "mask_id") if k in d}
        if "stop_ids" in special and not isinstance(special["stop_ids"], list):
            raise DataError(f"tokenizer stop_ids={special['stop_ids']!r} must be a list of token ids")
        if not isinstance(special.get("add_eos", False), bool):
            raise DataError(f"tokenizer add_eos={special['add_eos']!r} must be true or false")
        return BPETokenizer(tk, **special)   # a file without these keys: no BOS, eos detected
    raise DataError(f"tokenizer type {kind!r} is not one of 'char', 'byte', 'word', 'bpe'")


def save_tokenizer(tok, path) -> None:
    """Write ``tok.to_dict()`` as JSON (atomically)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(tok.to_dict(), fh, ensure_ascii=False)
    os.replace(tmp, path)


def load_tokenizer(path):
    """Read a tokenizer written by :func:`save_tokenizer` (JSON only)."""
    try:
        with open(path, encoding="utf-8") as fh:
            d = json.load(fh)
    except FileNotFoundError:
        raise DataError(f"tokenizer file {str(path)!r} does not exist") from None
    except (OSError, ValueError) as e:
        raise DataError(f"tokenizer file {str(path)!r} cannot be read: {e}") from None
    return tokenizer_from_dict(d)


def build_tokenizer(kind: str, text: str, vocab_size: int = 1024, word_min_count: int = 1):
    """A new ``char`` | ``byte`` | ``word`` | ``bpe`` tokenizer for ``text`` (``vocab_size``: the
    BPE's; ``word_min_count``: how often a word must occur to be in a word vocabulary)."""
    if kind == "char":
        return CharTokenizer.from_text(text)
    if kind == "byte":
        return ByteTokenizer()
    if kind == "word":
        return WordTokenizer.from_text(text, word_min_count)
    if kind == "bpe":
        return BPETokenizer.train(text, vocab_size)
    raise DataError(f"data.tokenizer={kind!r} is not one of 'char', 'byte', 'word', 'bpe'")
