"""``jaxformer prepare``: tokenize a corpus of any size into sharded token files (see
:mod:`jaxformer.data.prepare`); ``jaxformer train --data DIR`` trains on the folder."""
from __future__ import annotations

import argparse
import time

HELP = "tokenize a corpus of any size (text, folders, globs, JSONL, Parquet) into sharded token files"

#: Library wording -> this command's flags.
FLAG_WORDING = (("val_fraction=", "--val-fraction "), ("vocab_size=", "--vocab-size "),
                ("shard_tokens=", "--shard-tokens "), ("chunk_chars=", "--chunk-chars "),
                ("text_field=", "--text-field "), ("separator=", "--separator "), ("workers=", "--workers "),
                ("bpe_sample_chars=", "--bpe-sample-chars "), ("tokenizer=", "--tokenizer "),
                ("set the text field", "pass --text-field NAME"), ("data=", "--data "))


def add_arguments(p: argparse.ArgumentParser) -> None:
    from jaxformer.data.prepare import DEFAULT_BPE_SAMPLE_CHARS, DEFAULT_CHUNK_CHARS, DEFAULT_SHARD_TOKENS

    p.add_argument("--data", required=True, action="append", metavar="PATH",
                   help="a text file, a folder, a glob pattern (quote it), a .jsonl / .parquet / .arrow file, "
                        "'pydoc' or 'shakespeare' (repeatable; read in the order given)")
    p.add_argument("--tokenizer", required=True, metavar="char|byte|word|bpe|gpt2|hf:PATH",
                   help="char or bpe are built from the data; gpt2 comes from the local Hugging Face cache; "
                        "hf:PATH is a folder with tokenizer.json or vocab.json + merges.txt, a tokenizer.json, "
                        "a run folder, or a model name in the local Hugging Face cache")
    p.add_argument("--vocab-size", type=int, metavar="N", help="with --tokenizer bpe: vocabulary size (default 1024)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (run again with the same "
                   "arguments to resume an interrupted prepare)")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="BPE tokenizer processes (default 1: "
                   "in this process, where tokenizers uses its own threads; char and byte always encode here, "
                   "at disk speed)")
    p.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                   help="the last fraction F of the tokens validates (default 0.1)")
    p.add_argument("--text-field", default="text", metavar="NAME",
                   help="JSONL field / Parquet or Arrow column holding the text (default: text)")
    p.add_argument("--separator", default="auto", choices=("auto", "eos", "blank_line"),
                   help="between documents: auto (files joined by a blank line as `train --data` joins "
                        "them; records separated by the end-of-text token when the tokenizer has one)")
    p.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, metavar="N",
                   help=f"tokens per shard file (default {DEFAULT_SHARD_TOKENS:,})")
    p.add_argument("--chunk-chars", type=int, default=DEFAULT_CHUNK_CHARS, metavar="N",
                   help=f"characters handed to a worker at a time; bounds the memory (default {DEFAULT_CHUNK_CHARS:,})")
    p.add_argument("--bpe-sample-chars", type=int, default=DEFAULT_BPE_SAMPLE_CHARS, metavar="N",
                   help="with --tokenizer bpe: train on about N characters sampled across the corpus")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _in_flags(message: str) -> str:
    for lib, cli in FLAG_WORDING:
        message = message.replace(lib, cli)
    return message


def run(args) -> int:
    from tqdm.auto import tqdm

    from jaxformer.data.corpus import list_sources
    from jaxformer.errors import JaxformerError
    from jaxformer.data.prepare import prepare

    bars: dict = {}

    def progress(stage: str, n: int) -> None:
        if args.no_progress:
            return
        if stage not in bars:
            for bar in bars.values():
                bar.close()
            total = sum(s.size() for s in list_sources(data))
            bars[stage] = tqdm(total=total, desc=stage, unit="B", unit_scale=True, unit_divisor=1024)
        bars[stage].update(n)

    data = args.data if len(args.data) > 1 else args.data[0]
    written = []
    write = print if args.no_progress else tqdm.write
    t0 = time.perf_counter()
    try:
        m = prepare(data, args.tokenizer, args.out, vocab_size=args.vocab_size, workers=args.workers,
                    val_fraction=args.val_fraction, shard_tokens=args.shard_tokens, text_field=args.text_field,
                    chunk_chars=args.chunk_chars, separator=args.separator,
                    bpe_sample_chars=args.bpe_sample_chars, progress=progress, log=write,
                    on_shard=written.append)
    except JaxformerError as e:
        e.args = (_in_flags(str(e)),)
        raise
    finally:
        for bar in bars.values():
            bar.close()
    dt = time.perf_counter() - t0
    (a, b), (c, d) = m["splits"]["train"], m["splits"]["val"]
    tok = m["tokenizer"]
    if not written:
        print(f"{args.out} is up to date: its {len(m['shards'])} shards match their checksums")
    print(f"prepared {m['total_tokens']:,} tokens (train {b - a:,}, val {d - c:,}) in {len(m['shards'])} "
          f"{m['dtype']} shards in {args.out} from {m['source']['files']} files, {m['source']['bytes'] / 1e6:,.1f} MB "
          f"in {dt:.1f} s; tokenizer {tok['spec']} ({tok['vocab_size']:,} tokens), documents joined by "
          f"{'the end-of-text token' if m['source']['separator'] == 'eos' else 'a blank line'}")
    if not m["exact_cuts"]:
        print("note: this tokenizer does not cut exactly at line breaks: documents longer than a piece "
              f"({m['settings']['piece_chars']:,} characters) are encoded piece by piece")
    return 0
