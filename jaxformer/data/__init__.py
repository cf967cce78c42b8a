"""Text data: tokenizers, corpora, flat token memmaps and deterministic batches.

- Tokenizers (``CharTokenizer``, ``ByteTokenizer``, ``BPETokenizer``, ``start_ids``,
  ``end_ids``, ``save_tokenizer`` / ``load_tokenizer``, ...) live in
  :mod:`jaxformer.data.tokenizers` and are re-exported here. ``encode`` gives what the model
  expects for a text on its own (a converted Llama's BOS first); corpora are encoded without
  it (:func:`encode_plain`).
- Corpora: a text file, a folder of text files, ``"pydoc"`` (the Python reference
  documentation shipped with every CPython, no network) or ``"shakespeare"`` (Tiny
  Shakespeare, downloaded once into a cache folder).
- Encoded corpora live in flat ``uint16``/``uint32`` NumPy memmaps split 90/10 (by default)
  into train and val; :func:`get_batch` draws ``[B, T+1]`` windows from a generator seeded by
  ``(seed, split, step)``, so the data order is a pure function of the step (exact resume).
- Corpora larger than memory: :func:`prepare` (:mod:`jaxformer.data.prepare`) streams them into
  sharded token files once; :class:`TokenShards` (:mod:`jaxformer.data.shards`) reads such a folder,
  its ``split("train")`` a drop-in for the arrays above (same batches, across shards).

These names are this package's public face (``from jaxformer.data import get_batch``); code
inside the package imports each from its defining module.
"""
from jaxformer.data.batches import (SPLIT_IDS, TokenData, batch_rng, encode_corpus, get_batch, host_batch,
                                    host_rows, prefetch, sequential_windows, token_dtype)
from jaxformer.data.prepare import prepare
from jaxformer.data.shards import TokenShards, TokenView, is_prepared
from jaxformer.data.texts import TEXT_SUFFIXES, cache_dir, load_corpus, pydoc_text, shakespeare_text
from jaxformer.data.tokenizers import (BPETokenizer, ByteTokenizer, CharTokenizer, build_tokenizer,
                                       encode_plain, end_ids, load_tokenizer, save_tokenizer, start_ids,
                                       tokenizer_from_dict)

__all__ = [
    "BPETokenizer", "ByteTokenizer", "CharTokenizer", "build_tokenizer", "tokenizer_from_dict",
    "encode_plain", "start_ids", "end_ids", "save_tokenizer", "load_tokenizer",
    "TEXT_SUFFIXES", "cache_dir", "load_corpus", "pydoc_text", "shakespeare_text",
    "SPLIT_IDS", "TokenData", "batch_rng", "encode_corpus", "get_batch", "host_batch", "host_rows",
    "prefetch", "sequential_windows", "token_dtype",
    "prepare", "TokenShards", "TokenView", "is_prepared",
]
