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
"""
from jaxformer.data.batches import (SPLIT_IDS, TokenData, batch_rng, encode_corpus, get_batch, host_batch,  # noqa: F401
                                    host_rows, prefetch, sequential_windows, token_dtype)
from jaxformer.data.prepare import prepare  # noqa: F401
from jaxformer.data.shards import TokenShards, TokenView, is_prepared  # noqa: F401
from jaxformer.data.texts import TEXT_SUFFIXES, cache_dir, load_corpus, pydoc_text, shakespeare_text  # noqa: F401
from jaxformer.data.tokenizers import (BPETokenizer, ByteTokenizer, CharTokenizer, build_tokenizer,  # noqa: F401
                                       encode_plain, end_ids, load_tokenizer, save_tokenizer, start_ids,
                                       tokenizer_from_dict)
