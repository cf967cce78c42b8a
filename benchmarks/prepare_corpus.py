"""Peak memory and throughput of ``jaxformer prepare`` (streaming, sharded) on large corpora.

Generates text corpora of the given sizes from Tiny Shakespeare with variations (every copy
shuffles the paragraphs, upper-cases some, and numbers some words, so the text does not
repeat), one file each, in a temporary folder deleted afterwards. Each is prepared with the
byte tokenizer and a byte-level BPE (trained once on Tiny Shakespeare, ``--vocab`` tokens,
given as a tokenizer file so the runs time the encoding), with 1 and 2 worker processes,
each run in a fresh subprocess. Reported per run: the peak resident memory of the whole
process tree (the prepare process, the forkserver and the workers; RSS summed over the
processes, sampled every 0.1 s, which counts pages they share once per process, or the
largest ``ru_maxrss`` of one process when that is larger, as a sample can miss a spike), and the throughput in MB of input text per second
(the ``prepare`` call, worker start-up included). Next to them, a straightforward whole-file
encode (``load_corpus`` + ``encode_plain`` + ``np.asarray``, as ``jaxformer train --data
FILE`` does today) at the sizes up to ``--whole-max-mb`` / ``--whole-bpe-max-mb``, and the
time and memory of ``prepare``'s BPE training on a sample of the largest corpus
(``--train-sizes-mb``, ``--sample-chars``).

``TOKENIZERS_PARALLELISM=false`` is set for every run, so the number of workers is the number
of cores tokenizing (with 1 worker, ``prepare`` otherwise lets the ``tokenizers`` library use
all cores for a BPE).

    python benchmarks/prepare_corpus.py                         # 0.5, 1, 2 GB; byte and BPE; 1 and 2 workers
    python benchmarks/prepare_corpus.py --sizes-mb 64,128 --json /tmp/prep.json
    python benchmarks/prepare_corpus.py --bpe-sizes-mb 50,100,200 --bpe-one-worker-max-mb 50  # BPE (~1 MB/s per core) on less
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]


def shakespeare_path() -> pathlib.Path:
    for p in (os.environ.get("JAXFORMER_SHAKESPEARE"), REPO.parent / "shared" / "data" / "tinyshakespeare.txt"):
        if p and pathlib.Path(p).is_file():
            return pathlib.Path(p)
    sys.path.insert(0, str(REPO))
    from jaxformer.data.texts import shakespeare_file, shakespeare_text
    shakespeare_text()
    return shakespeare_file()


def write_corpus(path: pathlib.Path, size_bytes: int, source: str, seed: int = 0) -> int:
    """A text file of about ``size_bytes`` made of varied copies of ``source``."""
    rng = np.random.default_rng(seed)
    paragraphs = source.split("\n\n")
    written, k = 0, 0
    with open(path, "w", encoding="utf-8") as fh:
        while written < size_bytes:
            order = rng.permutation(len(paragraphs))
            r = rng.random(len(paragraphs))
            parts = []
            for j, x in zip(order, r):
                p = paragraphs[j]
                if x < 0.05:
                    p = p.upper()
                elif x < 0.15:
                    p = p.replace(" the ", f" the{k % 997} ")
                parts.append(p)
            block = "\n\n".join(parts) + "\n\n"
            fh.write(block)
            written += len(block.encode("utf-8"))
            k += 1
    return path.stat().st_size


# ----------------------------------------------------------------------------- child runs
CHILD = r"""
import json, resource, sys, time
args = json.loads(sys.argv[1])
sys.path.insert(0, args["repo"])
import numpy as np
from jaxformer.data import ByteTokenizer, encode_plain, load_corpus, load_tokenizer
from jaxformer.data.prepare import prepare
tok = ByteTokenizer() if args["tokenizer"] == "byte" else load_tokenizer(args["tokenizer_file"])
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
if args["mode"] == "prepare":
    m = prepare(args["data"], tok, args["out"], workers=args["workers"])
    n = m["total_tokens"]
elif args["mode"] == "train":
    from jaxformer.data.corpus import list_sources
    from jaxformer.data.fit_tokenizer import build_from_corpus
    tok = build_from_corpus("bpe", list_sources(args["data"]), "text", "blank_line", args["vocab"],
                            args["sample_chars"], lambda stage: None)
    n = tok.vocab_size
else:
    ids = np.asarray(encode_plain(tok, load_corpus(args["data"])), dtype=np.uint16)
    n = len(ids)
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "tokens": int(n), "maxrss_self_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "maxrss_children_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                  "rss_after_imports_kb": rss0}))
"""


def run_child(args: dict, timeout: float) -> dict:
    """Run one prepare / whole-file encode in a fresh process; sample its tree's memory."""
    import psutil
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    peak = {"rss_sum": 0}
    stop = threading.Event()

    def sample():
        root = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                procs = [root] + root.children(recursive=True)
                total = 0
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                peak["rss_sum"] = max(peak["rss_sum"], total)
            except psutil.Error:
                pass
            stop.wait(0.1)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        stop.set()
        return {"error": f"timed out after {timeout:.0f} s"}
    stop.set()
    t.join()
    if proc.returncode != 0:
        return {"error": (err.strip().splitlines() or ["?"])[-1]}
    r = json.loads(out.strip().splitlines()[-1])
    r["peak_tree_rss_mb"] = peak["rss_sum"] / 2 ** 20
    r["peak_process_rss_mb"] = max(r["maxrss_self_kb"], r["maxrss_children_kb"]) / 1024
    r["peak_rss_mb"] = max(r["peak_tree_rss_mb"], r["peak_process_rss_mb"])   # sampling can miss a spike
    r["rss_after_imports_mb"] = r.pop("rss_after_imports_kb") / 1024
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes-mb", default="500,1000,2000", help="corpus sizes in MB (1e6 bytes) for the byte tokenizer")
    ap.add_argument("--bpe-sizes-mb", default=None, help="corpus sizes for BPE (default: --sizes-mb)")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--bpe-workers", default=None, help="worker counts for BPE (default: --workers)")
    ap.add_argument("--bpe-one-worker-max-mb", type=float, default=float("inf"),
                    help="BPE with 1 worker only on corpora up to this size")
    ap.add_argument("--vocab", type=int, default=1024, help="BPE vocabulary")
    ap.add_argument("--train-sizes-mb", default=None, help="also time `prepare`'s BPE training (sampling "
                    "--sample-chars characters) on these corpus sizes (default: the largest byte size; '' for none)")
    ap.add_argument("--sample-chars", type=int, default=100_000_000, help="BPE training sample")
    ap.add_argument("--whole-max-mb", type=float, default=500, help="whole-file byte encode up to this size")
    ap.add_argument("--whole-bpe-max-mb", type=float, default=64, help="whole-file BPE encode up to this size")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    ap.add_argument("--dir", help="work folder (default: a temp folder, deleted)")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)

    sys.path.insert(0, str(REPO))
    from jaxformer.data import BPETokenizer, save_tokenizer

    sizes = [float(s) for s in a.sizes_mb.split(",")]
    bpe_sizes = [float(s) for s in (a.bpe_sizes_mb or a.sizes_mb).split(",")]
    train_sizes = [float(s) for s in (str(max(sizes)) if a.train_sizes_mb is None else a.train_sizes_mb).split(",") if s]
    workers = [int(w) for w in a.workers.split(",")]
    bpe_workers = [int(w) for w in (a.bpe_workers or a.workers).split(",")]
    work = pathlib.Path(a.dir or tempfile.mkdtemp(prefix="jaxformer-prepare-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    source = shakespeare_path().read_text(encoding="utf-8")
    tok_file = work / "bpe.json"
    save_tokenizer(BPETokenizer.train(source, a.vocab), tok_file)
    results = []
    try:
        for size in sorted(set(sizes) | set(bpe_sizes) | set(train_sizes)):
            corpus = work / f"corpus-{size:g}MB.txt"
            t0 = time.perf_counter()
            nbytes = write_corpus(corpus, int(size * 1e6), source)
            print(f"# corpus {corpus.name}: {nbytes / 1e6:.0f} MB written in {time.perf_counter() - t0:.0f} s",
                  flush=True)
            plan = [("byte", w) for w in workers if size in sizes] + \
                [("bpe", w) for w in bpe_workers if size in bpe_sizes and (w > 1 or size <= a.bpe_one_worker_max_mb)]
            for kind, w in plan:
                out = work / "out"
                shutil.rmtree(out, ignore_errors=True)
                r = run_child({"repo": str(REPO), "mode": "prepare", "data": str(corpus), "out": str(out),
                               "tokenizer": kind, "tokenizer_file": str(tok_file), "workers": w}, a.timeout)
                shutil.rmtree(out, ignore_errors=True)
                results.append(_record(r, "prepare", kind, w, nbytes))
            for kind, limit in (("byte", a.whole_max_mb), ("bpe", a.whole_bpe_max_mb)):
                if size <= limit and (size in sizes if kind == "byte" else size in bpe_sizes):
                    r = run_child({"repo": str(REPO), "mode": "whole", "data": str(corpus), "tokenizer": kind,
                                   "tokenizer_file": str(tok_file), "workers": 1}, a.timeout)
                    results.append(_record(r, "whole-file", kind, 1, nbytes))
            if size in train_sizes:
                r = run_child({"repo": str(REPO), "mode": "train", "data": str(corpus), "tokenizer": "byte",
                               "vocab": a.vocab, "sample_chars": a.sample_chars}, a.timeout)
                results.append(_record(r, "bpe-train", "bpe", 1, nbytes))
            corpus.unlink()
    finally:
        if not a.dir:
            shutil.rmtree(work, ignore_errors=True)
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps({"results": results, "cpus": os.cpu_count(),
                                                    "vocab": a.vocab}, indent=1))
    return 0


def _record(r: dict, method: str, kind: str, workers: int, nbytes: int) -> dict:
    rec = {"method": method, "tokenizer": kind, "workers": workers, "corpus_mb": round(nbytes / 1e6, 1), **r}
    if "error" not in r and method == "bpe-train":
        print(f"{method:10s} bpe  w=1 {rec['corpus_mb']:7.0f} MB: {r['seconds']:6.1f} s (reads the corpus, trains on the "
              f"sample)  peak RSS {r['peak_rss_mb']:6.0f} MB", flush=True)
    elif "error" in r:
        print(f"{method:10s} {kind:4s} w={workers} {rec['corpus_mb']:7.0f} MB: {r['error']}", flush=True)
    else:
        rec["mb_per_s"] = nbytes / 1e6 / r["seconds"]
        print(f"{method:10s} {kind:4s} w={workers} {rec['corpus_mb']:7.0f} MB: {rec['mb_per_s']:7.1f} MB/s "
              f"({r['seconds']:6.1f} s, {r['tokens']:,} tokens)  peak RSS {r['peak_rss_mb']:6.0f} MB (tree sampled "
              f"{r['peak_tree_rss_mb']:.0f}, largest process {r['peak_process_rss_mb']:.0f}, after imports "
              f"{r['rss_after_imports_mb']:.0f})",
              flush=True)
    return rec


if __name__ == "__main__":
    sys.exit(main())
