"""A word-level tokenizer: the labs' small vocabularies (``["hello", "i", "am", "moooaahhh"]``).

Text splits into words (runs of letters, digits and ``_``, with inner apostrophes: ``don't``),
single punctuation marks and line breaks; spaces and tabs only separate them. The vocabulary
is ``<unk>`` (id 0), ``"\\n"`` (id 1), then every word of the corpus seen at least
``min_count`` times, most frequent first (ties alphabetically). Anything else encodes as
``<unk>``.

Decoding joins the pieces with one space, except: no space next to a line break, none before
a closing mark (``. , ; : ! ? ) ] } %``) and none after an opening one (``( [ {``). So a text
made of known words written that way (one space between words, punctuation attached as in
English prose, lines without trailing spaces) decodes to exactly itself.
"""
from __future__ import annotations

import collections
import re
from typing import Iterable, Sequence

from jaxformer.errors import DataError

UNK = "<unk>"
NEWLINE = "\n"
#: A word (with inner apostrophes), a line break, or one mark that is neither word nor space.
PIECE = re.compile(r"\n|\w+(?:'\w+)*|[^\w\s]")
CLOSING = frozenset(".,;:!?)]}%")
OPENING = frozenset("([{")


def split_words(text: str) -> list[str]:
    """The pieces of ``text``: words, punctuation marks and ``"\\n"``, in order."""
    return PIECE.findall(text)


def join_words(pieces: Sequence[str]) -> str:
    """The pieces as text with the standard spacing (see the module docstring)."""
    out = []
    for i, piece in enumerate(pieces):
        prev = pieces[i - 1] if i else None
        glued = prev is None or NEWLINE in (prev, piece) or piece in CLOSING or prev in OPENING
        out.append(piece if glued else " " + piece)
    return "".join(out)


class WordTokenizer:
    """Words as tokens: ``words`` is the vocabulary after ``<unk>`` and ``"\\n"`` (ids 2, 3, ...).

    ``encode`` maps unknown words to ``unk_id`` (0); ``decode`` of one id is the whole word, so
    figures label tokens with words.
    """

    unk_id = 0
    eos_id = None
    bos_id = None

    def __init__(self, words: Iterable[str]):
        self.words = list(words)
        specials = (UNK, NEWLINE)
        if len(set(self.words)) != len(self.words) or any(w in specials or not w for w in self.words):
            raise DataError("word tokenizer words must be distinct, non-empty, and neither '<unk>' nor '\\n'")
        self.vocab = list(specials) + self.words
        self._ids = {w: i for i, w in enumerate(self.vocab)}

    @classmethod
    def from_text(cls, text: str, min_count: int = 1) -> "WordTokenizer":
        """The words of ``text`` seen at least ``min_count`` times, most frequent first."""
        counts = collections.Counter(p for p in split_words(text) if p != NEWLINE)
        words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        if not words:
            raise DataError(f"no word occurs {min_count} or more times in the text "
                            f"({len(counts)} distinct words): lower data.word_min_count")
        return cls(words)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        return [self._ids.get(p, self.unk_id) for p in split_words(text)]

    def decode(self, ids: Iterable[int]) -> str:
        pieces = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise DataError(f"token id {i} is outside the word vocabulary [0, {self.vocab_size})")
            pieces.append(self.vocab[i])
        return join_words(pieces)

    def to_dict(self) -> dict:
        return {"type": "word", "words": list(self.words)}
