"""What a run starts from: its resolved config, tokenizer, token data and the run whose
weights it starts from (:func:`prepare_run`), and the files of its run folder
(:func:`open_run_folder`), for :func:`jaxformer.training.loop.train`."""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Optional

from jaxformer.config import Config, load_config
from jaxformer.data.batches import TokenData, encode_corpus
from jaxformer.data.shards import TokenShards, is_prepared
from jaxformer.data.texts import load_corpus
from jaxformer.data.tokenizers import build_tokenizer, load_tokenizer
from jaxformer.errors import CheckpointError, DataError, RunExistsError
from jaxformer.runfolder import CONFIG_FILE, INIT_FILE, METRICS_FILE, TOKENIZER_FILE, truncate_metrics
from jaxformer.training.checkpoint import checkpoint_steps, save_run_folder
from jaxformer.training.init_from import (InitSource, check_init_compatible, open_init_source, read_init_record,
                                          write_init_record)


def resolve_config(config: Config, tokenizer) -> Config:
    """``config`` with ``model.vocab_size`` set to the tokenizer's vocabulary size (plus one for an
    encoder: its last id is the mask token, docs/encoders.md)."""
    vocab = tokenizer.vocab_size + (not config.model.causal)
    if config.model.vocab_size == vocab:
        return config
    return dataclasses.replace(config, model=dataclasses.replace(config.model, vocab_size=vocab))


def prepared_config(config: Config, shards: TokenShards) -> Config:
    """``config`` with the ``data.tokenizer``, ``data.val_fraction`` (and a BPE ``data.vocab_size``) of a folder written by
    :func:`jaxformer.data.prepare` (its tokenizer and split are the data's)."""
    m = shards.manifest
    kind = m["tokenizer"]["type"]
    vocab = shards.tokenizer.vocab_size if kind == "bpe" else config.data.vocab_size
    data = dataclasses.replace(config.data, tokenizer=kind, val_fraction=m["val_fraction"], vocab_size=vocab)
    return config if data == config.data else dataclasses.replace(config, data=data)


def check_same_run(saved: Config, config: Config, run_dir) -> None:
    """:class:`CheckpointError` naming the first ``model`` or ``data`` field of ``config`` that
    differs from the ``saved`` config of the run in ``run_dir`` (a resume must not change them)."""
    for section in ("model", "data"):
        a, b = getattr(saved, section), getattr(config, section)
        for f in dataclasses.fields(a):
            if getattr(a, f.name) != getattr(b, f.name):
                raise CheckpointError(
                    f"cannot resume {str(run_dir)!r}: {section}.{f.name}={getattr(b, f.name)!r} differs "
                    f"from the run's {getattr(a, f.name)!r}")


def prepare_run(config: Config, run_dir: pathlib.Path, resume: bool, data_text: Optional[str],
             source: Optional[InitSource]):
    """Tokenizer, resolved config, token data, the run to take the initial parameters from
    (``source``; on resume, the recorded one when no checkpoint was written yet) and the
    ``init_from`` record of the run (None for a run with a random init). The tokenizer is
    the run's own on resume, ``source``'s for a new run started from it."""
    has_run = (run_dir / CONFIG_FILE).is_file() and (run_dir / TOKENIZER_FILE).is_file()
    if not resume and checkpoint_steps(run_dir):
        raise RunExistsError(run_dir)
    record = source.record() if source is not None else read_init_record(run_dir) if resume and has_run else None
    if source is None and record is not None and not checkpoint_steps(run_dir):
        source = open_init_source(record["run"], record["step"])   # stopped before its first checkpoint
    shards = TokenShards(config.data.path) if data_text is None and is_prepared(config.data.path) else None
    if shards is not None:     # a prepared folder: its shards, tokenizer and split
        config = prepared_config(config, shards)
        text = None
    else:
        text = data_text if data_text is not None else load_corpus(config.data.path)
    if resume and has_run:
        tokenizer = load_tokenizer(run_dir / TOKENIZER_FILE)
        if record is None:   # a started-from run keeps its source's vocab_size
            config = resolve_config(config, tokenizer)
        check_same_run(load_config(run_dir / CONFIG_FILE), config, run_dir)
    elif source is not None:
        check_init_compatible(config, source)
        tokenizer = source.tokenizer
    else:
        tokenizer = shards.tokenizer if shards is not None else \
            build_tokenizer(config.data.tokenizer, text, config.data.vocab_size, config.data.word_min_count)
        config = resolve_config(config, tokenizer)
    if shards is not None:
        if tokenizer.to_dict() != shards.tokenizer.to_dict():
            whose = f"the run started from init_from={record['run']!r}" if record is not None else "the run"
            raise DataError(f"data.path={config.data.path!r} was prepared with another tokenizer than {whose}'s; "
                            "prepare the data with that tokenizer (tokenizer 'hf:RUN_FOLDER')")
        return config, tokenizer, TokenData(shards.split("train"), shards.split("val")), source, record
    try:
        data = encode_corpus(text, tokenizer, val_fraction=config.data.val_fraction, folder=run_dir / "data")
    except DataError as e:
        if record is None:
            raise
        raise DataError(f"{e}; the data of a run started from init_from={record['run']!r} is encoded "
                        "with that run's tokenizer") from None
    return config, tokenizer, data, source, record


def open_run_folder(run_dir: pathlib.Path, config: Config, tokenizer, origin: Optional[dict], *,
                    resume: bool, restoring: bool, start: int, main: bool) -> None:
    """Create the run folder and write its config, tokenizer and ``init_from.json``; drop the
    metrics past ``start`` (a resume) or all of them (a new run). In a multi-host job only
    process 0 writes these files; checkpoints are written collectively."""
    if restoring:
        if main:
            truncate_metrics(run_dir, start)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        if main:
            (run_dir / METRICS_FILE).unlink(missing_ok=True)
    if not main:
        return
    save_run_folder(run_dir, config, tokenizer)
    if origin is not None:
        write_init_record(run_dir, origin)
    elif not resume:
        (run_dir / INIT_FILE).unlink(missing_ok=True)   # left by an earlier attempt in this folder
